//! CloudWeGo's `shmipc` (the `shmipc` crate): Tokio-native shared-memory streams, set up
//! over a Unix socket, in its recommended V4 mode with eventfd wake-ups on memfd memory.
//! A stream is a byte stream, so messages are length-prefixed (4 bytes, little-endian) as
//! the socket transports' frames are: the sender reserves each frame in the stream's
//! shared-memory send buffer and writes every byte in place, and flushes every 256 messages
//! (`stream`) or after each (`stream-flush`); the receiver reads each frame in place
//! (`read_exact_bytes`, zero-copy within a buffer slice) and checks every byte. A flush the
//! queue has no room for (`QueueFull`) is retried after yielding to the runtime, as
//! shmipc's own benchmark retries it.

use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use shmipc::buffer::BufferReader as _;
use shmipc::config::Config;
use shmipc::session::{SessionManager, SessionManagerConfig};
use shmipc::stream::Stream;
use shmipc::transport::{DefaultUnixConnect, DefaultUnixListen};

use crate::common::{
    BATCH, CpuProbe, MARKER_LEN, check_ack, check_streamed, finish, path_str, phase_loop,
    seed_byte, server_spec, spawn_role,
};
use crate::{Measured, Pattern, Res, Spec};

/// Both ends' configuration: V4 with eventfd wake-ups, memfd memory under names of this run.
fn config(tag: &str) -> Config {
    let mut c = Config::default().with_v4_eventfd();
    c.queue_cap = 65536;
    c.share_memory_path_prefix = format!("/dev/shm/shmlink-compare-shmipc-{tag}");
    c.queue_path = format!("/dev/shm/shmlink-compare-shmipc-queue-{tag}");
    c
}

/// Queues one frame: a 4-byte length, then `n` bytes of `b`, written in place.
fn put_frame(stream: &mut Stream, n: usize, b: u8) -> Res<()> {
    let len = u32::try_from(n)?.to_le_bytes();
    let frame = stream.reserve(4 + n)?;
    frame[..4].copy_from_slice(&len);
    frame[4..].fill(b);
    Ok(())
}

/// Flushes, retrying while shmipc's queue is full.
async fn flush(stream: &mut Stream) -> Res<()> {
    loop {
        match stream.flush(false).await {
            Err(shmipc::Error::QueueFull) => tokio::task::yield_now().await,
            other => return Ok(other?),
        }
    }
}

/// The next frame's payload, handed to `f` while it is read in place; `None` at the end.
async fn next_frame<R>(stream: &mut Stream, f: impl FnOnce(&[u8]) -> R) -> Res<Option<R>> {
    let len = match stream.read_exact_bytes(4).await {
        Ok(len) => u32::from_le_bytes(len.as_ref().try_into()?) as usize,
        Err(shmipc::Error::StreamClosed | shmipc::Error::EndOfStream) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let out = f(stream.read_exact_bytes(len).await?.as_ref());
    stream.recv_buf().release_previous_read();
    Ok(Some(out))
}

/// The measuring client: starts the server, connects to it, streams to it.
pub(crate) async fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    if !spec.pattern.is_stream() {
        return Err("shmipc is measured on streams only".into());
    }
    let path = dir.join("shmipc.sock");
    let mut server = spawn_role("serve", &server_spec(spec, path_str(&path)?), true)?;
    // The server's listener is bound once it says so (a short blocking read).
    server.ready()?;
    let tag = std::process::id().to_string();
    let sm = SessionManager::new(
        SessionManagerConfig::new()
            .with_config(config(&tag))
            .with_session_num(1),
        DefaultUnixConnect,
        SocketAddr::from_pathname(&path)?,
    )
    .await?;
    // A stream opened here reaches the server's `accept` with its first data.
    let mut stream = sm.get_stream()?;
    let cpu = CpuProbe::client_and(server.pid());
    let n = spec.size;
    let per_flush = if spec.pattern == Pattern::StreamFlush {
        1
    } else {
        BATCH
    };
    let m = phase_loop(spec, &cpu, async |d| {
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            for _ in 0..BATCH / per_flush {
                for _ in 0..per_flush {
                    put_frame(&mut stream, n, seed_byte(i))?;
                    i += 1;
                }
                flush(&mut stream).await?;
            }
            if t0.elapsed() >= d {
                break;
            }
        }
        put_frame(&mut stream, MARKER_LEN, 0xFF)?;
        flush(&mut stream).await?;
        let ack = next_frame(&mut stream, <[u8]>::to_vec)
            .await?
            .ok_or("server gone")?;
        check_ack(&ack, i)?;
        Ok(i)
    })
    .await?;
    stream.close().await?;
    sm.close().await;
    finish(server).await?;
    Ok(m)
}

/// The server: listens, checks every message of the stream it accepts, acknowledges each
/// end marker with the count; ends with the stream.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    let tag = format!("{}-srv", std::process::id());
    let mut listener = shmipc::Listener::new(
        DefaultUnixListen,
        SocketAddr::from_pathname(&spec.addr)?,
        config(&tag),
    )
    .await?;
    println!("ready");
    let mut stream = listener.accept().await?;
    let mut count = 0u64;
    loop {
        let seen = count;
        let got = next_frame(&mut stream, |msg| {
            if msg.len() == MARKER_LEN {
                return Ok(true);
            }
            check_streamed(msg, seen).map(|()| false)
        })
        .await?;
        match got {
            None => break,
            Some(Ok(true)) => {
                stream.write_bytes(&8u32.to_le_bytes())?;
                stream.write_bytes(&count.to_le_bytes())?;
                flush(&mut stream).await?;
                count = 0;
            }
            Some(Ok(false)) => count += 1,
            Some(Err(e)) => return Err(e),
        }
    }
    listener.close().await;
    Ok(())
}
