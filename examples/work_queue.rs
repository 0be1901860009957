//! A work queue across processes: one producer, three worker processes, one of them killed
//! mid-work, every job done.
//!
//! The engine keeps a durable queue `jobs` (in a temporary data directory). The producer
//! sends 300 `Job`s; each `send` resolves once the engine has the job on disk. Three worker
//! processes compete for the jobs, each holding up to 8 at a time; a worker acknowledges a
//! job once it is done. Worker `w2` is SIGKILLed while it holds jobs it has not finished:
//! the engine sees its socket close and gives every job it held to the other workers at
//! once, marked redelivered. At the end every job was done; the jobs done twice are those
//! the killed worker had finished but not yet acknowledged (at least once).
//!
//! Run: `cargo run --release --example work_queue`

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{ConsumerOptions, Engine, Message, Node, QueueOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Job {
    id: u64,
    /// What the worker computes over.
    input: Vec<u32>,
}

const JOBS: u64 = 300;
/// The victim is killed once it has started this many jobs.
const KILL_AFTER: u64 = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => runtime.block_on(worker(&args[2], &args[3])),
        _ => runtime.block_on(producer()),
    }
}

/// A worker: takes jobs, works, prints `working <id> <redelivered> <count>` then
/// `done <id> <result>`, and acks.
async fn worker(socket: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, name).await?;
    let options = ConsumerOptions {
        prefetch: 8,
        lease: None,
    };
    let mut jobs = node
        .consumer_with::<Job, shmlink::Bincode>("jobs", options)
        .await?;
    println!("ready");
    while let Some(delivery) = jobs.next().await {
        let delivery = delivery?;
        println!(
            "working {} {} {}",
            delivery.id,
            delivery.redelivered(),
            delivery.delivery_count()
        );
        // The work: a checksum (a real worker would do real work here).
        let result = delivery.input.iter().fold(0u64, |acc, &x| {
            acc.wrapping_mul(31).wrapping_add(u64::from(x))
        });
        tokio::task::yield_now().await;
        // Reported done, then acknowledged: a worker killed between the two has its job done
        // again by another (at least once), never lost.
        println!("done {} {result}", delivery.id);
        delivery.ack().await?;
    }
    Ok(())
}

async fn producer() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmlink-work-queue-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder()
        .socket(&socket)
        .data_dir(dir.join("data"))
        .spawn()?;
    let node = Node::connect(&socket, "producer").await?;
    node.declare_queue("jobs", QueueOptions::durable()).await?;

    let (lines_tx, mut lines) = mpsc::unbounded_channel::<(String, String)>();
    let mut workers = BTreeMap::new();
    for name in ["w1", "w2", "w3"] {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["worker", socket.to_str().ok_or("path")?, name])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
        if out.next_line().await?.as_deref() != Some("ready") {
            return Err(format!("worker {name} did not start").into());
        }
        let tx = lines_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send((name.to_owned(), line));
            }
        });
        workers.insert(name, child);
    }

    let started = Instant::now();
    let mut producer = node.producer::<Job>("jobs").await?;
    for id in 0..JOBS {
        let input = (0..64)
            .map(|i| (id as u32).wrapping_mul(2654435761) ^ i)
            .collect();
        producer.feed(Job { id, input }).await?;
    }
    producer.flush().await?; // every job confirmed: on disk
    println!(
        "{JOBS} jobs queued and confirmed (durable) in {:.1?}",
        started.elapsed()
    );

    let mut done: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let (mut started_by_victim, mut redelivered, mut killed) = (0u64, 0u64, false);
    while done.len() < JOBS as usize {
        let (name, line) = lines.recv().await.ok_or("every worker ended")?;
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<u64>().ok()),
        ) {
            (Some("working"), Some(_)) => {
                if words.next() == Some("true") {
                    redelivered += 1;
                }
                if name == "w2" {
                    started_by_victim += 1;
                    if started_by_victim == KILL_AFTER && !killed {
                        if let Some(mut victim) = workers.remove("w2") {
                            victim.start_kill()?; // SIGKILL, mid-work
                            victim.wait().await?;
                        }
                        killed = true;
                        println!("w2 SIGKILLed while working on its job no. {KILL_AFTER}");
                    }
                }
            }
            (Some("done"), Some(id)) => done.entry(id).or_default().push(name),
            _ => return Err(format!("{name} said {line:?}").into()),
        }
    }
    let twice = done.values().filter(|by| by.len() > 1).count();
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for by in done.values() {
        for name in by {
            *per_worker.entry(name).or_default() += 1;
        }
    }
    println!(
        "all {JOBS} jobs done in {:.1?}: {per_worker:?}; {redelivered} deliveries were redeliveries of w2's jobs, {twice} jobs done twice",
        started.elapsed()
    );
    drop(workers); // the survivors are killed: every job they took is acknowledged
    drop((producer, node));
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
