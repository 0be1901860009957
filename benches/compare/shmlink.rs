//! shmlink: raw `Bytes` sessions through the engine (written in place on the send side: small
//! payloads into frames, `SessionSink::feed_in_place`, large ones into loans), typed sessions
//! of `Blob`s, and typed request/response through the tower client and `Node::serve`. The
//! engine is embedded in the measuring process, except in `fanout` (a raw `Bytes` topic, the
//! engine in a process of its own so that its CPU time is measured alone).

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{
    BlockConfig, Engine, Node, Overflow, Publisher, Session, SubscribeOptions, Subscription,
};
use tower::{Service as _, ServiceExt as _};

use crate::common::*;
use crate::fanout::{Subscribers, Tally, fanout_loop};
use crate::{Measured, Pattern, Res, Spec, Transport};

pub(crate) fn block_config() -> BlockConfig {
    BlockConfig {
        tx_arena: 32 << 20,
        rx_arena: 32 << 20,
        ..BlockConfig::default()
    }
}

/// The measuring client of `shmlink` and `shmlink-typed`.
pub(crate) async fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    let engine = Engine::builder()
        .socket(dir.join("engine.sock"))
        .block(block_config())
        .spawn()?;
    let server = spawn_role(
        "serve",
        &server_spec(spec, path_str(engine.socket_path())?),
        false,
    )?;
    let typed_rpc = spec.transport == Transport::ShmlinkTyped && !spec.pattern.is_stream();
    engine
        .wait_for_stats(|s| s.services == if typed_rpc { 2 } else { 1 })
        .await;
    let node = Node::connect(engine.socket_path(), "client").await?;
    let m = match spec.transport {
        Transport::Shmlink => {
            let mut conn = ShmConn(node.open::<Bytes>("bench").await?);
            drive_conn(spec, &mut conn, server.pid()).await?
        }
        _ if spec.pattern.is_stream() => {
            let mut conn = TypedConn(node.open::<Blob>("bench").await?);
            drive_conn(spec, &mut conn, server.pid()).await?
        }
        _ => {
            let lifeline = node.open::<Bytes>("lifeline").await?;
            let client = node.client::<Blob, Blob>("bench").await?;
            let m = typed_client(spec, client, server.pid()).await?;
            drop(lifeline);
            m
        }
    };
    finish(server).await?;
    drop(node);
    engine.shutdown().await;
    Ok(m)
}

/// A raw shmlink session: payloads written in place (into frames when small), received
/// zero-copy.
pub(crate) struct ShmConn(pub(crate) Session<Bytes>);

impl Conn for ShmConn {
    type Msg = Bytes;
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        self.0
            .sink()
            .feed_in_place(n, |buf| {
                buf[..n].fill(b);
                n
            })
            .await?;
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        self.0
            .sink()
            .feed_in_place(data.len(), |buf| {
                buf[..data.len()].copy_from_slice(data);
                data.len()
            })
            .await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        self.0.flush().await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().await.transpose()?)
    }
    fn try_recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().now_or_never().flatten().transpose()?)
    }
}

/// The typed payload: bytes, serialised as such, and decoded as a view of the received
/// shared memory (`shared_bytes`: what a shmlink user writes for a blob field; tarpc's side
/// uses `serde_bytes::ByteBuf`, its own best).
#[derive(shmlink::Message, Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Blob {
    #[serde(with = "shmlink::message::shared_bytes")]
    pub(crate) data: Bytes,
}

impl Blob {
    pub(crate) fn filled(n: usize, b: u8) -> Self {
        Self {
            data: Bytes::from(vec![b; n]),
        }
    }
}

/// A typed shmlink session of `Blob`s (the typed stream API).
pub(crate) struct TypedConn(Session<Blob>);

impl Conn for TypedConn {
    type Msg = Bytes;
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        self.0.feed(Blob::filled(n, b)).await?;
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        self.0
            .feed(Blob {
                data: Bytes::copy_from_slice(data),
            })
            .await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        self.0.flush().await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().await.transpose()?.map(|b| b.data))
    }
    fn try_recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self
            .0
            .next()
            .now_or_never()
            .flatten()
            .transpose()?
            .map(|b| b.data))
    }
}

// ===== shmlink typed request/response (the tower client) =====

pub(crate) async fn typed_client(
    spec: &Spec,
    mut client: shmlink::Client<Blob, Blob>,
    server: u32,
) -> Res<Measured> {
    let cpu = CpuProbe::client_and(server);
    let n = spec.size;
    match spec.pattern {
        Pattern::Rtt => {
            rtt_loop(spec, &cpu, async |i| {
                let b = seed_byte(i);
                let reply = client.ready().await?.call(Blob::filled(n, b)).await?;
                check_reply(&reply.data, n, b)
            })
            .await
        }
        Pattern::Concurrent => {
            let inflight = spec.inflight;
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut calls = FuturesUnordered::new();
                let mut next = 0u64;
                let mut done = 0u64;
                loop {
                    while calls.len() < inflight && t0.elapsed() < d {
                        let b = seed_byte(next);
                        next += 1;
                        let call = client.ready().await?.call(Blob::filled(n, b));
                        calls.push(async move { (b, call.await) });
                    }
                    let Some((b, reply)) = calls.next().await else {
                        break;
                    };
                    check_reply(&reply?.data, n, b)?;
                    done += 1;
                }
                Ok(done)
            })
            .await
        }
        _ => Err("typed streams use a session".into()),
    }
}

/// The server of `shmlink` and `shmlink-typed`: a node on the engine at `spec.addr`.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    if spec.pattern == Pattern::Fanout {
        return subscribe_fanout(spec).await;
    }
    match spec.transport {
        Transport::ShmlinkTyped if spec.pattern.is_stream() => {
            let node = Node::connect(&spec.addr, "server").await?;
            let mut listener = node.listen::<Blob>("bench").await?;
            let session = listener.accept().await.ok_or("engine gone")?;
            serve_conn(&mut TypedConn(session), spec.pattern).await
        }
        Transport::ShmlinkTyped => {
            let node = Node::connect(&spec.addr, "server").await?;
            let handler = tower::service_fn(|req: Blob| async move {
                let b = reply_byte(checksum(&req.data));
                Ok::<_, std::convert::Infallible>(Blob::filled(req.data.len(), b))
            });
            let mut lifeline = node.listen::<Bytes>("lifeline").await?;
            let server = node.serve("bench", handler).await?;
            // Serve until the client closes its lifeline session.
            let mut session = lifeline.accept().await.ok_or("engine gone")?;
            while session.next().await.is_some() {}
            server.shutdown().await;
            Ok(())
        }
        _ => {
            let node = Node::connect(&spec.addr, "server").await?;
            let mut listener = node.listen::<Bytes>("bench").await?;
            if spec.pattern == Pattern::IdleNodes {
                // The measuring process opens its session once this says so.
                println!("ready");
            }
            let session = listener.accept().await.ok_or("engine gone")?;
            serve_conn(&mut ShmConn(session), spec.pattern).await
        }
    }
}

// ===== shmlink fan-out: a raw topic, the engine in a process of its own =====

/// The topic of `fanout`.
const FANOUT_TOPIC: &str = "bench/fanout";

/// `fanout`: the engine host (pinned with this process under `split`), this process's node
/// publishing raw `Bytes` on a topic, and `spec.subscribers` subscriber processes, each
/// subscribed with `Overflow::Block` so that every message reaches every subscriber.
pub(crate) fn measure_fanout(spec: &Spec, dir: &Path) -> Res<Measured> {
    let addr = path_str(&dir.join("engine.sock"))?;
    let mut host = spawn_role("engine-host", &server_spec(spec, addr.clone()), true)?;
    host.ready()?;
    let rt = current_thread()?;
    let measured = rt.block_on(publish_fanout(spec, &addr, host.pid()));
    // The node leaves (its runtime with it) before the engine stops: a node whose engine
    // goes away while its runtime still runs can busy-loop on the closed doorbell.
    drop(rt);
    drop(host.0.stdin.take()); // tells the engine host to stop
    host.finish(std::time::Duration::from_secs(10))?;
    measured
}

async fn publish_fanout(spec: &Spec, addr: &str, engine: u32) -> Res<Measured> {
    let node = Node::connect(addr, "publisher").await?;
    let mut publisher: Publisher<Bytes> = node.publish(FANOUT_TOPIC).await?;
    let mut subs = Subscribers::spawn(spec, addr)?;
    subs.ready().await?;
    let n = spec.size;
    let m = fanout_loop(spec, &mut subs, Some(engine), async |d| {
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            for _ in 0..BATCH {
                // Every byte written here, in place in the publisher's transmit arena (a
                // loan, as iceoryx2 loans its sample); the engine copies it once into the
                // topic's segment.
                let mut loan = publisher.loan(n).await?;
                loan.fill(seed_byte(i));
                publisher.feed(loan).await?;
                i += 1;
            }
            publisher.flush().await?;
            if t0.elapsed() >= d {
                break;
            }
        }
        publisher
            .send(Bytes::from_static(&[0xFF; MARKER_LEN]))
            .await?;
        Ok(i)
    })
    .await;
    let quit = publisher.send(Bytes::from_static(&[0xFE; QUIT_LEN])).await;
    let m = m?;
    quit?;
    subs.finish().await?;
    drop(publisher);
    drop(node);
    Ok(m)
}

/// A `fanout` subscriber: a node on the engine at `spec.addr`, a `Block` subscription to the
/// topic, every message checked; ends at the quit message.
pub(crate) async fn subscribe_fanout(spec: &Spec) -> Res<()> {
    let node = Node::connect(&spec.addr, &format!("sub-{}", std::process::id())).await?;
    let options = SubscribeOptions {
        // Never cut loose on a loaded machine: the run's time limit catches a hang.
        overflow: Overflow::Block {
            untether_ms: 600_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = node.subscribe_with(FANOUT_TOPIC, options).await?;
    println!("ready");
    let mut tally = Tally::default();
    while let Some(msg) = sub.next().await {
        if !tally.take(&msg?)? {
            return Ok(());
        }
    }
    Err("the subscription ended before the quit message".into())
}
