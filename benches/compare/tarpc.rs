//! tarpc over a Unix socket, `serde_transport` with tokio-serde's Bincode; streams keep 256
//! calls in flight (tarpc has no one-way call).

use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

use crate::common::*;
use crate::{BoxError, Measured, Pattern, Res, Spec};
use serde_bytes::ByteBuf;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel as _};

#[tarpc::service]
trait Bench {
    /// A reply of the request's size, filled from its checksum.
    async fn echo(data: ByteBuf) -> ByteBuf;
    /// One message of a stream, numbered by the sender; true if its bytes are right.
    async fn push(seq: u64, data: ByteBuf) -> bool;
}

#[derive(Clone)]
struct BenchServer;

impl Bench for BenchServer {
    async fn echo(self, _: context::Context, data: ByteBuf) -> ByteBuf {
        ByteBuf::from(vec![reply_byte(checksum(&data)); data.len()])
    }

    async fn push(self, _: context::Context, seq: u64, data: ByteBuf) -> bool {
        check_streamed(&data, seq).is_ok()
    }
}

fn transport<Item, SinkItem>(
    stream: UnixStream,
) -> tarpc::serde_transport::Transport<
    UnixStream,
    Item,
    SinkItem,
    tokio_serde::formats::Bincode<Item, SinkItem>,
>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    tarpc::serde_transport::new(
        Framed::new(stream, codec()),
        tokio_serde::formats::Bincode::default(),
    )
}

/// The measuring client: listens, starts the server, measures over its connection.
pub(crate) async fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    let path = dir.join("tarpc.sock");
    let listener = UnixListener::bind(&path)?;
    let server = spawn_role("serve", &server_spec(spec, path_str(&path)?), false)?;
    let (stream, _) = listener.accept().await?;
    let m = client(spec, stream, server.pid()).await?;
    finish(server).await?;
    Ok(m)
}

/// The server: connects to the client's socket and serves tarpc on it.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    let stream = UnixStream::connect(&spec.addr).await?;
    BaseChannel::with_defaults(transport(stream))
        .execute(BenchServer.serve())
        .for_each(|response| async {
            tokio::spawn(response);
        })
        .await;
    Ok(())
}

async fn client(spec: &Spec, stream: UnixStream, server: u32) -> Res<Measured> {
    let client = BenchClient::new(tarpc::client::Config::default(), transport(stream)).spawn();
    let cpu = CpuProbe::client_and(server);
    let n = spec.size;
    match spec.pattern {
        Pattern::Rtt => {
            rtt_loop(spec, &cpu, async |i| {
                let b = seed_byte(i);
                let reply = client
                    .echo(context::current(), ByteBuf::from(vec![b; n]))
                    .await?;
                check_reply(&reply, n, b)
            })
            .await
        }
        Pattern::Concurrent | Pattern::Stream => {
            let stream = spec.pattern == Pattern::Stream;
            let inflight = if stream {
                BATCH as usize
            } else {
                spec.inflight
            };
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut calls = FuturesUnordered::new();
                let mut next = 0u64;
                let mut done = 0u64;
                loop {
                    while calls.len() < inflight && t0.elapsed() < d {
                        let (seq, b) = (next, seed_byte(next));
                        next += 1;
                        let client = client.clone();
                        calls.push(async move {
                            let data = ByteBuf::from(vec![b; n]);
                            if stream {
                                match client.push(context::current(), seq, data).await {
                                    Ok(true) => Ok(()),
                                    Ok(false) => Err(BoxError::from("wrong data: tarpc push")),
                                    Err(e) => Err(e.into()),
                                }
                            } else {
                                let reply = client.echo(context::current(), data).await?;
                                check_reply(&reply, n, b)
                            }
                        });
                    }
                    let Some(result) = calls.next().await else {
                        break;
                    };
                    result?;
                    done += 1;
                }
                Ok(done)
            })
            .await
        }
        Pattern::Idle
        | Pattern::IdleNodes
        | Pattern::Fanout
        | Pattern::StreamFlush
        | Pattern::Queue => {
            Err("not a tarpc pattern (idle, fanout and queue are measured apart)".into())
        }
    }
}
