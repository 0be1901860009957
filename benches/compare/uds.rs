//! Tokio `UnixStream` with `LengthDelimitedCodec` frames; `fanout`: one socket per
//! subscriber, each message written to every socket.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use futures::SinkExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::common::*;
use crate::fanout::{Subscribers, Tally, fanout_loop};
use crate::{BoxError, Measured, Pattern, Res, Spec};

/// The measuring client: listens, starts the server, measures over its connection.
pub(crate) async fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    let path = dir.join("uds.sock");
    let listener = UnixListener::bind(&path)?;
    let server = spawn_role("serve", &server_spec(spec, path_str(&path)?), false)?;
    let (stream, _) = listener.accept().await?;
    measure_framed(spec, stream, server).await
}

/// The server: connects to the client's socket and serves the pattern; `fanout`: a
/// subscriber, which counts and checks until its socket ends.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    let mut conn = FramedConn::new(UnixStream::connect(&spec.addr).await?);
    if spec.pattern == Pattern::Fanout {
        println!("ready");
        let mut tally = Tally::default();
        while let Some(msg) = conn.recv().await? {
            if !tally.take(&msg)? {
                break;
            }
        }
        return Ok(());
    }
    serve_conn(&mut conn, spec.pattern).await
}

// ===== UDS fan-out =====

type Fan = Framed<UnixStream, LengthDelimitedCodec>;

/// `fanout`: this process accepts one connection per subscriber and writes every message to
/// each of them (`BATCH` frames fed to every socket, then flushed, all sockets at once).
pub(crate) async fn measure_fanout(spec: &Spec, dir: &Path) -> Res<Measured> {
    let path = dir.join("uds.sock");
    let listener = UnixListener::bind(&path)?;
    let mut subs = Subscribers::spawn(spec, &path_str(&path)?)?;
    let mut conns: Vec<Fan> = Vec::with_capacity(spec.subscribers);
    for _ in 0..spec.subscribers {
        let (stream, _) = listener.accept().await?;
        conns.push(Framed::new(stream, codec()));
    }
    subs.ready().await?;
    let n = spec.size;
    // Every frame of a batch is held until all sockets took it.
    let mut payloads = Payloads::new(BATCH as usize);
    let mut frames = Vec::with_capacity(BATCH as usize);
    let m = fanout_loop(spec, &mut subs, None, async |d| {
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            frames.clear();
            for _ in 0..BATCH {
                // Every byte written once; each socket's codec and kernel buffer copy it.
                frames.push(payloads.fill(n, seed_byte(i)));
                i += 1;
            }
            send_all(&mut conns, &frames).await?;
            if t0.elapsed() >= d {
                break;
            }
        }
        send_all(&mut conns, &[Bytes::from_static(&[0xFF; MARKER_LEN])]).await?;
        Ok(i)
    })
    .await;
    // The subscribers end with their sockets.
    drop(conns);
    let m = m?;
    subs.finish().await?;
    Ok(m)
}

/// Feeds `frames` to every socket and flushes them, the sockets progressing together (a
/// full socket waits while the others are written).
async fn send_all(conns: &mut [Fan], frames: &[Bytes]) -> Res<()> {
    futures::future::try_join_all(conns.iter_mut().map(|conn| async move {
        let conn: &mut Fan = conn;
        for frame in frames {
            conn.feed(frame.clone()).await?;
        }
        SinkExt::<Bytes>::flush(conn).await
    }))
    .await
    .map_err(|e: std::io::Error| BoxError::from(e))?;
    Ok(())
}
