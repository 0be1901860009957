//! Publish/subscribe across processes: one publisher, three subscriber processes.
//!
//! The engine copies each published `Tick` once into the topic's broadcast segment, which
//! every subscriber maps read-only; each subscriber reads it in place. Two subscribers use
//! `Overflow::Block` and receive every tick in order (the publisher waits for them when they
//! fall behind); the third is deliberately slow and uses `Overflow::DropOldest`: its stream
//! yields `Lagged(n)` with the exact number of ticks it lost, so received + lagged always
//! equals what was published. Nothing is lost silently.
//!
//! Run: `cargo run --release --example pubsub`

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{Engine, Message, Node, Overflow, SubscribeError, SubscribeOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Tick {
    seq: u64,
    price: f64,
}

const TICKS: u64 = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("subscriber") => runtime.block_on(subscriber(&args[2], &args[3])),
        _ => runtime.block_on(publisher()),
    }
}

async fn subscriber(socket: &str, kind: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, kind).await?;
    let slow = kind == "slow";
    let options = if slow {
        SubscribeOptions {
            overflow: Overflow::DropOldest,
            queue: 16,
            ..SubscribeOptions::default()
        }
    } else {
        SubscribeOptions {
            overflow: Overflow::Block {
                untether_ms: 10_000,
            },
            ..SubscribeOptions::default()
        }
    };
    let mut ticks = node
        .subscribe_with::<Tick, shmlink::Bincode>("market/ticks", options)
        .await?;
    println!("ready");
    let (mut received, mut lagged, mut next) = (0u64, 0u64, 0u64);
    while received + lagged < TICKS {
        match ticks.next().await.ok_or("the engine went away")? {
            Ok(tick) => {
                assert!(tick.seq >= next, "ticks arrive in order");
                if !slow {
                    assert_eq!(tick.seq, next, "a Block subscriber loses nothing");
                }
                next = tick.seq + 1;
                received += 1;
                if slow {
                    // A reader that cannot keep up (a real one would do work here).
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            Err(SubscribeError::Lagged(n)) => {
                if lagged == 0 {
                    eprintln!("  [{kind}] Lagged({n}): {n} ticks dropped for this reader");
                }
                lagged += n;
            }
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!(
        "  [{kind}] received {received}, told of {lagged} lost: {} in all",
        received + lagged
    );
    Ok(())
}

async fn publisher() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmlink-pubsub-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder().socket(&socket).spawn()?;
    let mut children = Vec::new();
    for kind in ["fast-1", "fast-2", "slow"] {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["subscriber", socket.to_str().ok_or("path")?, kind])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next_line().await?;
        if line.as_deref() != Some("ready") {
            return Err(format!("subscriber {kind} said {line:?}").into());
        }
        children.push(child);
    }
    let node = Node::connect(&socket, "market").await?;
    let mut ticks = node.publish::<Tick>("market/ticks").await?;
    let started = Instant::now();
    for seq in 0..TICKS {
        ticks
            .feed(Tick {
                seq,
                price: 100.0 + (seq % 100) as f64 / 100.0,
            })
            .await?;
    }
    ticks.flush().await?;
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("a subscriber failed: {status}").into());
        }
    }
    let stats = engine.stats();
    println!(
        "{TICKS} ticks published in {:.1?}: copied once each ({} published), {} deliveries, {} reported as lagged",
        started.elapsed(),
        stats.topic_published,
        stats.topic_delivered,
        stats.topic_lagged,
    );
    drop((ticks, node));
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
