//! Durable queues: confirmed messages survive the engine, acknowledged ones never come back,
//! an unreadable store stops the engine at start.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use shmlink::{
    AckError, Consumer, ConsumerOptions, Engine, Node, Producer, QueueOptions, SpawnError,
};

use crate::common;
use crate::support::{
    self, Rng, TestDir, parse_seq, seed_from_env, seq_message, spawn_child, within,
};

fn durable_engine(dir: &TestDir) -> Engine {
    support::engine_builder(dir)
        .data_dir(dir.path().join("data"))
        .spawn()
        .expect("spawn an engine with a data directory")
}

/// Confirmed messages outlive the engine; after a restart every one is delivered again,
/// marked redelivered, in order; those acknowledged before the next restart never return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_restarts_and_acked_ones_never_return() {
    let dir = TestDir::new("queues-durable");
    let engine = durable_engine(&dir);
    let node = common::node(&dir, "p").await;
    common::declare(&node, "jobs", QueueOptions::durable()).await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    for seq in 0..100 {
        producer
            .feed(Bytes::from(seq_message(1, seq, 40 + seq as usize)))
            .await
            .expect("feed");
    }
    within("confirmed", producer.flush())
        .await
        .expect("on disk");
    drop((producer, node));
    within("shutdown", engine.shutdown()).await;

    let engine = durable_engine(&dir);
    let node = common::node(&dir, "c").await;
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer("jobs"))
        .await
        .expect("the queue was recovered");
    for seq in 0..100 {
        let d = within("recovered", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        support::expect_seq(&d, 1, seq).expect("in order");
        assert!(d.redelivered(), "recovered messages count as redelivered");
        if seq < 60 {
            within("ack", d.ack()).await.expect("ack committed");
        }
    }
    drop((consumer, node));
    within("shutdown", engine.shutdown()).await;

    let _engine = durable_engine(&dir);
    let node = common::node(&dir, "c2").await;
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer("jobs"))
        .await
        .expect("consumer");
    for seq in 60..100 {
        let d = within("the rest", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        support::expect_seq(&d, 1, seq).expect("only the unacknowledged, in order");
        within("ack", d.ack()).await.expect("ack");
    }
}

/// A store file that is garbage, or cut short, stops the engine at start with the reason;
/// nothing listens, nothing is silently empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_or_truncated_store_is_a_startup_error() {
    let dir = TestDir::new("queues-corrupt");
    let data = dir.path().join("data");
    let engine = durable_engine(&dir);
    let node = common::node(&dir, "p").await;
    common::declare(&node, "jobs", QueueOptions::durable()).await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    within("send", producer.send(Bytes::from(vec![7u8; 5000])))
        .await
        .expect("send");
    drop((producer, node));
    within("shutdown", engine.shutdown()).await;

    let file = data.join("queues.redb");
    let whole = std::fs::read(&file).expect("the store file");
    for (what, bytes) in [
        ("truncated", whole[..whole.len() / 2].to_vec()),
        ("garbage", vec![0x5au8; whole.len()]),
    ] {
        std::fs::write(&file, &bytes).expect("damage the store");
        match support::engine_builder(&dir).data_dir(&data).spawn() {
            Err(SpawnError::Store(e)) => {
                let text = e.to_string();
                assert!(text.contains("queues.redb"), "{what}: {text}");
            }
            Ok(_) => panic!("{what}: an engine started on a damaged store"),
            Err(e) => panic!("{what}: another error: {e}"),
        }
    }
}

/// What the crash loop's producer and consumer know, by their own bookkeeping.
#[derive(Debug, Default)]
struct Book {
    sent: HashSet<u64>,
    /// Sends whose confirm the producer got.
    confirmed: BTreeSet<u64>,
    /// Messages delivered at least once.
    delivered: HashSet<u64>,
    /// Messages the consumer acknowledged (processed and sent the ack for).
    acked: HashSet<u64>,
    /// Acks the engine answered Ok: committed.
    committed: HashSet<u64>,
    /// Deliveries of a message delivered before whose ack was not committed (the crash cut
    /// it short, or came before it was sent): allowed duplicates, counted.
    duplicates: u64,
    /// Deliveries of a message whose ack was committed (must never happen).
    after_commit: Vec<u64>,
}

/// The engine runs in its own process and is SIGKILLed at random points while a producer
/// and a consumer (this process) work a durable queue; restarted on the same data directory
/// each time. Every confirmed message is acknowledged by the consumer's own bookkeeping;
/// none comes back once its ack was committed (answered Ok), while one whose ack the crash
/// cut short may come again (counted as a duplicate); every message acked was sent. The
/// last cycle is not killed: it sends the rest of the workload after all the crashes, and
/// must drain; it fails if no delivery comes for a whole step (a stall), not for a long drain.
///
/// A few cycles by default; `SHMLINK_QUEUE_CRASH_CYCLES=50 SHMLINK_QUEUE_CRASH_MESSAGES=20000`
/// runs the full loop. `SHMLINK_QUEUE_CRASH_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sigkill_loop_loses_no_confirmed_message() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map_or(default, |v| v.parse().expect(name))
    };
    let cycles = env("SHMLINK_QUEUE_CRASH_CYCLES", 4);
    let messages = env("SHMLINK_QUEUE_CRASH_MESSAGES", 1_600);
    let seed = seed_from_env("SHMLINK_QUEUE_CRASH_SEED");
    println!("engine crash loop: {cycles} cycles, {messages} messages, seed {seed:#x}");
    let mut rng = Rng::new(seed);
    let dir = TestDir::new("queues-crash");
    let socket = dir.socket().display().to_string();
    let data = dir.path().join("data").display().to_string();
    let book = Arc::new(Mutex::new(Book::default()));
    let acked = Arc::new(tokio::sync::Notify::new());
    let per_cycle = messages / cycles;
    let mut next_seq = 0u64;
    for cycle in 0..=cycles {
        let mut engine = spawn_child("engine", &[socket.clone(), data.clone()]);
        engine.expect_line("READY").await;
        let last = cycle == cycles;
        // Each cycle sends its share until the kill; the last one sends the rest of the
        // workload, uninterrupted, after the many crashes before it.
        let target = if last {
            messages.max(next_seq)
        } else {
            next_seq + per_cycle
        };
        // Killed once this many of the cycle's messages are confirmed.
        let kill_at = 1 + rng.below(per_cycle.max(1));
        let (confirmed_tx, mut confirmed_rx) = tokio::sync::watch::channel(0u64);
        let producer = tokio::spawn(produce(
            socket.clone(),
            next_seq,
            target,
            rng.next_u64(),
            book.clone(),
            confirmed_tx,
        ));
        let consumer = tokio::spawn(consume(socket.clone(), book.clone(), acked.clone()));
        if last {
            next_seq = within("the producer sends the rest", producer)
                .await
                .expect("producer task");
            assert_eq!(next_seq, target, "the last cycle's sends all went through");
            drain(&socket, &book, &acked).await;
            engine.kill_and_reap().await;
        } else {
            let _ = within(
                "the producer reaches the kill point",
                confirmed_rx.wait_for(|&c| c >= kill_at),
            )
            .await;
            engine.kill_and_reap().await;
            next_seq = within("the producer stops", producer)
                .await
                .expect("producer task");
        }
        within("the consumer stops", consumer)
            .await
            .expect("consumer task");
    }
    let b = book.lock().unwrap();
    let lost: Vec<_> = b
        .confirmed
        .iter()
        .filter(|s| !b.acked.contains(s))
        .collect();
    assert!(lost.is_empty(), "confirmed and never acked: {lost:?}");
    assert!(
        b.acked.iter().all(|s| b.sent.contains(s)),
        "acked a message never sent"
    );
    assert!(
        b.after_commit.is_empty(),
        "delivered again after a committed ack: {:?}",
        b.after_commit
    );
    println!(
        "engine crash loop: {} sent, {} confirmed, {} acked ({} committed acks), {} duplicates (acks cut short by a crash)",
        b.sent.len(),
        b.confirmed.len(),
        b.acked.len(),
        b.committed.len(),
        b.duplicates
    );
}

/// Waits until the consumer has every confirmed message. Fails only when no delivery came
/// for a whole [`support::STEP`] (a stall), never because the drain is long: after many
/// crashes the backlog is thousands of messages.
async fn drain(socket: &str, book: &Mutex<Book>, acked: &tokio::sync::Notify) {
    loop {
        let more = acked.notified();
        let missing: Vec<u64> = {
            let b = book.lock().unwrap();
            b.confirmed
                .iter()
                .filter(|s| !b.acked.contains(s))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        if tokio::time::timeout(support::STEP, more).await.is_err() {
            let counters = shmlink::inspect::inspect(socket)
                .await
                .map(|snapshot| format!("{:?}", snapshot.counters));
            panic!(
                "no delivery for {:?}; {} confirmed messages not acked, from {:?}; engine counters: {counters:?}",
                support::STEP,
                missing.len(),
                &missing[..missing.len().min(20)]
            );
        }
    }
}

/// Sends `from..to` in random batches, each flushed (confirmed) before the next; stops at
/// the first error (the engine died). Returns the next sequence number to use.
async fn produce(
    socket: String,
    from: u64,
    to: u64,
    seed: u64,
    book: Arc<Mutex<Book>>,
    confirmed: tokio::sync::watch::Sender<u64>,
) -> u64 {
    let mut rng = Rng::new(seed);
    let mut next = from;
    let mut count = 0;
    let Ok(node) = Node::connect(&socket, "producer").await else {
        return next;
    };
    if node
        .declare_queue("work", QueueOptions::durable())
        .await
        .is_err()
    {
        return next;
    }
    let Ok(mut producer) = node.producer::<Bytes>("work").await else {
        return next;
    };
    while next < to {
        let batch = (1 + rng.below(32)).min(to - next);
        let seqs: Vec<u64> = (next..next + batch).collect();
        next += batch;
        let mut ok = true;
        for &seq in &seqs {
            book.lock().unwrap().sent.insert(seq);
            if producer
                .feed(Bytes::from(seq_message(1, seq, 16 + (seq % 200) as usize)))
                .await
                .is_err()
            {
                ok = false;
                break;
            }
        }
        if !ok || producer.flush().await.is_err() {
            return next;
        }
        count += batch;
        book.lock().unwrap().confirmed.extend(seqs);
        let _ = confirmed.send(count);
    }
    next
}

/// Consumes and acks until the engine goes; keeps the book.
async fn consume(socket: String, book: Arc<Mutex<Book>>, acked: Arc<tokio::sync::Notify>) {
    let Ok(node) = Node::connect(&socket, "consumer").await else {
        return;
    };
    if node
        .declare_queue("work", QueueOptions::durable())
        .await
        .is_err()
    {
        return;
    }
    let options = ConsumerOptions {
        prefetch: 32,
        lease: None,
    };
    let Ok(mut consumer) = node
        .consumer_with::<Bytes, shmlink::Bincode>("work", options)
        .await
    else {
        return;
    };
    // Acks stay in flight while the next deliveries are processed, as a real worker's would:
    // acks arriving together share one commit (group commit). Awaiting each ack's fsync
    // before the next delivery drains at one fsync per message, which after 50 crashes (a
    // backlog of thousands) took minutes.
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some((seq, answer)) = acks.next(), if !acks.is_empty() => {
                record_ack(&book, seq, answer);
            }
            next = consumer.next() => {
                let Some(Ok(delivery)) = next else { break };
                let seq = parse_seq(&delivery).expect("a sequenced message").1;
                {
                    let mut b = book.lock().unwrap();
                    if b.committed.contains(&seq) {
                        b.after_commit.push(seq);
                    } else if !b.delivered.insert(seq) {
                        b.duplicates += 1;
                    }
                    b.acked.insert(seq);
                }
                acked.notify_waiters();
                let settle = delivery.ack();
                acks.push(async move { (seq, settle.await) });
            }
        }
    }
    while let Some((seq, answer)) = acks.next().await {
        record_ack(&book, seq, answer);
    }
}

/// The engine's answer to the ack of `seq`.
fn record_ack(book: &Mutex<Book>, seq: u64, answer: Result<(), AckError>) {
    match answer {
        Ok(()) => {
            book.lock().unwrap().committed.insert(seq);
        }
        // Cut short by the crash: it may come again.
        Err(AckError::Disconnected) => {}
        Err(e) => panic!("ack of {seq}: {e}"),
    }
}
