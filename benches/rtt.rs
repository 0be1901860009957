//! Round-trip time of one message through the engine beside Tokio `UnixStream` with
//! length-delimited frames, measured in the same run, each against a real child process.
//!
//! `cargo bench -p shmlink-benches --bench rtt -- [--size BYTES] [--iters N] [--runs R]`
//!
//! Each run measures every transport in turn (interleaved, so drift hits them alike) with a
//! warm-up, and records the median round trip; the report is the median over runs and the
//! ratio shmlink / UDS. The endpoints are not pinned: expect noise on a 2-core machine.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{BlockConfig, Engine, Node};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

struct Options {
    size: usize,
    iters: usize,
    runs: usize,
}

fn options() -> Options {
    let mut o = Options {
        size: 64,
        iters: 20_000,
        runs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--size" => o.size = value().unwrap_or(o.size),
            "--iters" => o.iters = value().unwrap_or(o.iters),
            "--runs" => o.runs = value().unwrap_or(o.runs),
            "--quick" => {
                o.iters = 5_000;
                o.runs = 3;
            }
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("child-shm") => rt.block_on(child_shm(&args[2])),
        Some("child-uds") => rt.block_on(child_uds(&args[2])),
        _ => rt.block_on(parent(options())),
    }
}

async fn child_shm(socket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, "echo").await?;
    let mut listener = node.listen::<Bytes>("echo").await?;
    let mut session = listener.accept().await.ok_or("engine gone")?;
    while let Some(msg) = session.next().await {
        let msg = msg?;
        let mut loan = session.loan(msg.len()).await?;
        loan.copy_from_slice(&msg);
        drop(msg);
        session.send(loan).await?;
    }
    Ok(())
}

async fn child_uds(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let stream = UnixStream::connect(path).await?;
    let mut framed = Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(64 << 20)
            .new_codec(),
    );
    while let Some(frame) = framed.next().await {
        let frame = frame?.freeze();
        framed.send(frame).await?;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn parent(o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmlink-rtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let arena = (o.size as u64 * 4).next_power_of_two().max(1 << 20);
    let engine = Engine::builder()
        .socket(dir.join("engine.sock"))
        .block(BlockConfig {
            tx_arena: arena,
            rx_arena: arena,
            ..BlockConfig::default()
        })
        .spawn()?;

    // shmlink: the echo child serves, this process is the client node.
    let mut shm_child = tokio::process::Command::new(&exe)
        .args(["child-shm", engine.socket_path().to_str().ok_or("path")?])
        .kill_on_drop(true)
        .spawn()?;
    engine.wait_for_stats(|s| s.services == 1).await;
    let node = Node::connect(engine.socket_path(), "client").await?;
    let mut session = node.open::<Bytes>("echo").await?;

    // UDS: this process listens, the echo child connects.
    let uds_path = dir.join("uds.sock");
    let listener = UnixListener::bind(&uds_path)?;
    let mut uds_child = tokio::process::Command::new(&exe)
        .args(["child-uds", uds_path.to_str().ok_or("path")?])
        .kill_on_drop(true)
        .spawn()?;
    let (stream, _) = listener.accept().await?;
    let mut framed = Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(64 << 20)
            .new_codec(),
    );

    let payload = Bytes::from(vec![0xA5u8; o.size]);
    let mut shm_runs = Vec::new();
    let mut uds_runs = Vec::new();
    for run in 0..o.runs {
        let mut samples = Vec::with_capacity(o.iters);
        for i in 0..o.iters + o.iters / 10 {
            let t = Instant::now();
            let mut loan = session.loan(o.size).await?;
            loan.copy_from_slice(&payload);
            session.send(loan).await?;
            let back = session.next().await.ok_or("echo gone")??;
            assert_eq!(back.len(), o.size);
            if i >= o.iters / 10 {
                samples.push(t.elapsed());
            }
        }
        shm_runs.push(median(samples));
        let mut samples = Vec::with_capacity(o.iters);
        for i in 0..o.iters + o.iters / 10 {
            let t = Instant::now();
            framed.send(payload.clone()).await?;
            let back = framed.next().await.ok_or("echo gone")??;
            assert_eq!(back.len(), o.size);
            if i >= o.iters / 10 {
                samples.push(t.elapsed());
            }
        }
        uds_runs.push(median(samples));
        println!(
            "run {run}: shmlink p50 {:>8.2?}   uds p50 {:>8.2?}",
            shm_runs[run], uds_runs[run]
        );
    }
    let (shm, uds) = (median(shm_runs), median(uds_runs));
    println!(
        "{} B round trip, median of {} runs x {} iterations: shmlink {:.2?}, uds {:.2?}, ratio shmlink/uds {:.2}",
        o.size,
        o.runs,
        o.iters,
        shm,
        uds,
        shm.as_secs_f64() / uds.as_secs_f64()
    );
    drop(session);
    drop(framed);
    let _ = shm_child.wait().await;
    let _ = uds_child.wait().await;
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
