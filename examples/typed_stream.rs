//! A typed stream between two processes: `Sink<Tick>` on one side, `Stream<Item = Result<Tick>>`
//! on the other, each `Tick` serialised straight into shared memory and decoded in place.
//!
//! The child publishes 100,000 ticks on a "ticks" session and half-closes; the parent checks
//! every sequence number and prints the rate. A schema mismatch is shown too: opening the
//! same name with another type fails with an error naming both types.
//!
//! Run: `cargo run --release --example typed_stream`

use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{Engine, Message, Node, OpenError};

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Tick {
    seq: u64,
    symbol: String,
    price: f64,
    side: Side,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
enum Side {
    Bid,
    Ask,
}

#[derive(Message, Serialize, Deserialize, Debug)]
struct NotATick {
    text: String,
}

const TICKS: u64 = 100_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("publisher") => runtime.block_on(publisher(&args[2])),
        _ => runtime.block_on(subscriber()),
    }
}

async fn publisher(socket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, "market").await?;
    let mut listener = node.listen::<Tick>("ticks").await?;
    let mut session = listener.accept().await.ok_or("engine went away")?;
    for seq in 0..TICKS {
        let side = if seq.is_multiple_of(2) {
            Side::Bid
        } else {
            Side::Ask
        };
        session
            .feed(Tick {
                seq,
                symbol: "ACME".to_owned(),
                price: 100.0 + (seq % 100) as f64 / 100.0,
                side,
            })
            .await?;
    }
    session.close().await?; // the subscriber's stream ends after the last tick
    Ok(())
}

async fn subscriber() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmlink-ticks-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder().socket(&socket).spawn()?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["publisher", socket.to_str().ok_or("path")?])
        .kill_on_drop(true)
        .spawn()?;
    engine.wait_for_stats(|s| s.services == 1).await;
    let node = Node::connect(&socket, "trader").await?;

    match node.open::<NotATick>("ticks").await {
        Err(e @ OpenError::SchemaMismatch { .. }) => println!("wrong type refused: {e}"),
        other => return Err(format!("expected a schema mismatch, got {other:?}").into()),
    }

    let mut ticks = node.open::<Tick>("ticks").await?;
    let started = Instant::now();
    let mut expected = 0u64;
    while let Some(tick) = ticks.next().await {
        let tick = tick?;
        assert_eq!(tick.seq, expected, "ticks arrive in order, none lost");
        assert_eq!(
            tick.side,
            if expected.is_multiple_of(2) {
                Side::Bid
            } else {
                Side::Ask
            }
        );
        expected += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "{expected} typed ticks received in order in {elapsed:.1?} ({:.0} ticks/s)",
        expected as f64 / elapsed.as_secs_f64()
    );
    child.wait().await?;
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
