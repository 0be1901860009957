//! `shmlinkctl queues`, `consumers` and `status` (and their `--json`) match the engine's
//! queues after a known workload, with a real child consumer that is SIGKILLed; a scrape of
//! `shmlinkd --metrics-addr` sees the queue series rise.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Consumer, ConsumerOptions, Engine, Node, Producer, QueueOptions};

use crate::metrics::{scrape_until, value};
use crate::support::{self, ChildSpec, Commands, TestDir, connect, ctx, say, spawn_child, within};
use crate::{Daemon, ctl, ctl_json};

/// Messages produced.
const PRODUCED: u64 = 10;
/// Deliveries the consumer takes.
const TAKEN: u32 = 4;
/// Of which it acknowledges the first.
const ACKED: u32 = 2;
/// Its prefetch: full with the deliveries it holds, so nothing more comes to it.
const PREFETCH: u32 = TAKEN - ACKED;

// ===== the child =====

/// The child's roles.
pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        match spec.role.as_str() {
            "consume-some" => consume_some(&spec.args[0], &spec.args[1], cmds).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// Takes [`TAKEN`] deliveries of `queue`, acknowledges the first [`ACKED`] (each ack frees
/// room in its prefetch for the next), says `DONE`, and holds the rest unsettled until
/// killed.
async fn consume_some(socket: &str, queue: &str, mut cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "worker").await?;
    let options = ConsumerOptions {
        prefetch: PREFETCH,
        lease: None,
    };
    let mut consumer: Consumer<Bytes> = node
        .consumer_with(queue, options)
        .await
        .map_err(ctx("consume"))?;
    let mut held = Vec::new();
    for i in 0..TAKEN {
        let delivery = consumer
            .next()
            .await
            .ok_or("the stream ended")?
            .map_err(ctx("delivery"))?;
        if i < ACKED {
            delivery.ack().await.map_err(ctx("ack"))?;
        } else {
            held.push(delivery);
        }
    }
    say("DONE");
    // Holds the rest until the parent kills it.
    let _ = cmds.next().await;
    Err("not killed".into())
}

// ===== the tests =====

/// Waits until the engine's snapshot satisfies `pred`.
async fn snapshot_until(
    engine: &Engine,
    what: &str,
    pred: impl Fn(&shmlink::inspect::Snapshot) -> bool,
) -> shmlink::inspect::Snapshot {
    within(what, async {
        loop {
            let snapshot = engine.inspect().await.expect("a snapshot");
            if pred(&snapshot) {
                return snapshot;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_listings_match_the_engine() {
    let dir = TestDir::new("inspect-queues");
    let socket = dir.socket();
    let data = dir.path().join("data");
    let engine = support::engine_builder(&dir)
        .data_dir(&data)
        .queue_memory(1 << 20)
        .spawn()
        .expect("engine");
    let node = within("connect", Node::connect(&socket, "boss"))
        .await
        .expect("connect");
    let options = QueueOptions {
        durable: true,
        max_length: Some(100),
        dead_letter: Some("jobs.dead".into()),
        max_deliveries: 5,
        ..QueueOptions::default()
    };
    within("declare", node.declare_queue("jobs", options))
        .await
        .expect("declare");
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    for i in 0..PRODUCED {
        producer
            .feed(Bytes::from(vec![7u8; 100 + i as usize]))
            .await
            .expect("feed");
    }
    within("confirmed", producer.flush()).await.expect("flush");

    // The child takes 4 and acknowledges 2: 6 ready, 2 unacked (its prefetch, full).
    let mut worker = spawn_child(
        "consume-some",
        &[socket.display().to_string(), "jobs".into()],
    );
    worker.expect("DONE").await;
    let snapshot = snapshot_until(&engine, "the child's acks", |s| {
        s.queues.iter().any(|q| q.name == "jobs" && q.acked == 2)
    })
    .await;

    let queues = ctl_json(&socket, &["queues"]).await;
    assert_eq!(
        queues,
        serde_json::to_value(&snapshot.queues).expect("json"),
        "the subcommand prints the engine's queues"
    );
    let queues = queues.as_array().expect("array");
    let names: Vec<&str> = queues
        .iter()
        .map(|q| q["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["jobs", "jobs.dead"], "{queues:?}");
    let (jobs, dead) = (&queues[0], &queues[1]);
    assert_eq!(jobs["durable"], true);
    assert_eq!(jobs["message_type"], serde_json::Value::Null, "raw bytes");
    assert_eq!(jobs["ready"], 6);
    assert_eq!(jobs["unacked"], 2);
    assert_eq!(jobs["depth"], 8, "ready and unacked");
    let bytes: u64 = (ACKED as u64..PRODUCED).map(|i| 100 + i).sum();
    assert_eq!(jobs["bytes"], bytes, "the payloads not yet acknowledged");
    assert_eq!(jobs["producers"], 1);
    assert_eq!(jobs["consumers"], 1);
    assert_eq!(jobs["max_length"], 100);
    assert_eq!(jobs["max_deliveries"], 5);
    assert_eq!(jobs["dead_letter"], "jobs.dead");
    assert_eq!(jobs["enqueued"], PRODUCED);
    assert_eq!(jobs["delivered"], TAKEN);
    assert_eq!(jobs["redelivered"], 0);
    assert_eq!(jobs["acked"], ACKED);
    assert_eq!(jobs["dead_lettered"], 0);
    assert_eq!(dead["durable"], true, "declared with its queue");
    assert_eq!(dead["depth"], 0);
    assert_eq!(dead["dead_letter"], serde_json::Value::Null);

    let consumers = ctl_json(&socket, &["consumers"]).await;
    assert_eq!(
        consumers,
        serde_json::to_value(&snapshot.consumers).expect("json")
    );
    let consumers = consumers.as_array().expect("array");
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    let c = &consumers[0];
    assert_eq!(c["node_name"], "worker");
    assert_eq!(c["queue"], "jobs");
    assert_eq!(c["prefetch"], PREFETCH);
    assert_eq!(c["lease_ms"], serde_json::Value::Null);
    assert_eq!(c["unacked"], TAKEN - ACKED);
    assert_eq!(c["delivered"], TAKEN);
    assert_eq!(c["acked"], ACKED);

    let status = ctl_json(&socket, &["status"]).await;
    assert_eq!(
        status["engine"]["data_dir"],
        data.display().to_string().as_str()
    );
    assert_eq!(status["engine"]["queue_memory_budget"], 1 << 20);
    assert_eq!(status["engine"]["queue_memory_in_use"], bytes);
    let counters = &status["counters"];
    assert_eq!(counters["queues"], 2);
    assert_eq!(counters["queue_ready"], 6);
    assert_eq!(counters["queue_unacked"], 2);
    assert_eq!(counters["queue_enqueued"], PRODUCED);
    assert_eq!(counters["queue_delivered"], TAKEN);
    assert_eq!(counters["queue_acked"], ACKED);

    // The tables, aligned under their headers.
    let (code, table, _) = ctl(&socket, &["queues"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("QUEUE"), "{table}");
    assert!(lines[1].starts_with("jobs "), "{table}");
    let col = lines[0].find("READY").expect("READY column");
    assert!(lines[1][col..].starts_with("6 "), "{table}");
    let col = lines[0].find("UNACKED").expect("UNACKED column");
    assert!(lines[1][col..].starts_with("2 "), "{table}");
    let (code, table, _) = ctl(&socket, &["consumers"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    let col = lines[0].find("NODE").expect("NODE column");
    assert!(lines[1][col..].starts_with("worker"), "{table}");
    let (code, table, _) = ctl(&socket, &["status"]).await;
    assert_eq!(code, Some(0));
    assert!(
        table.contains("6 ready, 2 unacked; 10 enqueued, 4 delivered (0 redelivered), 2 acked"),
        "{table}"
    );

    // SIGKILL the child: its 2 unacked deliveries return to the head, marked redelivered.
    worker.kill_and_reap().await;
    snapshot_until(&engine, "the dead consumer's deliveries back", |s| {
        s.consumers.is_empty() && s.queues.iter().any(|q| q.name == "jobs" && q.ready == 8)
    })
    .await;
    // A consumer here rejects the first (one of those two): it goes to the dead-letter queue;
    // the next (the other) is delivered to it at once.
    let one = ConsumerOptions {
        prefetch: 1,
        lease: None,
    };
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer_with("jobs", one))
        .await
        .expect("consumer");
    let first = within("a delivery", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    assert!(first.redelivered());
    within("reject", first.reject()).await.expect("reject");
    let snapshot = snapshot_until(&engine, "the next delivery", |s| {
        s.queues
            .iter()
            .any(|q| q.name == "jobs" && q.delivered == 6)
    })
    .await;
    let jobs = &snapshot.queues[0];
    assert_eq!((jobs.ready, jobs.unacked, jobs.depth), (6, 1, 7));
    assert_eq!(jobs.redelivered, 2);
    assert_eq!(jobs.acked, 2);
    assert_eq!(jobs.dead_lettered, 1);
    let dead = &snapshot.queues[1];
    assert_eq!(
        (dead.name.as_str(), dead.enqueued, dead.ready),
        ("jobs.dead", 1, 1)
    );
    assert_eq!(snapshot.counters.queue_dead_lettered, 1);
    assert_eq!(snapshot.counters.queue_enqueued, PRODUCED + 1);
    assert_eq!(snapshot.consumers.len(), 1);
    assert_eq!(snapshot.consumers[0].node_name, "boss");
    drop(consumer);
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_counts_queue_messages() {
    let dir = TestDir::new("inspect-queue-metrics");
    let socket = dir.socket();
    let (daemon, addr) = Daemon::metered(&socket).await;
    let node = within("connect", Node::connect(&socket, "metered"))
        .await
        .expect("connect");
    within(
        "declare",
        node.declare_queue("work", QueueOptions::default()),
    )
    .await
    .expect("declare");
    let mut producer: Producer<Bytes> = within("producer", node.producer("work"))
        .await
        .expect("producer");
    for _ in 0..PRODUCED {
        producer
            .feed(Bytes::from_static(b"job"))
            .await
            .expect("feed");
    }
    within("confirmed", producer.flush()).await.expect("flush");
    let options = ConsumerOptions {
        prefetch: PREFETCH,
        lease: None,
    };
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer_with("work", options))
        .await
        .expect("consumer");
    let mut held = Vec::new();
    for i in 0..TAKEN {
        let delivery = within("a delivery", consumer.next())
            .await
            .expect("open")
            .expect("delivery");
        if i < ACKED {
            within("ack", delivery.ack()).await.expect("ack");
        } else {
            held.push(delivery);
        }
    }
    let samples = scrape_until(&addr, |s| {
        value(s, "shmlink_queue_acked_total") == f64::from(ACKED)
            && value(s, "shmlink_queue_messages_unacked") == f64::from(TAKEN - ACKED)
    })
    .await;
    assert_eq!(value(&samples, "shmlink_queues"), 1.0);
    assert_eq!(
        value(&samples, "shmlink_queue_enqueued_total"),
        PRODUCED as f64
    );
    assert_eq!(
        value(&samples, "shmlink_queue_delivered_total"),
        f64::from(TAKEN)
    );
    assert_eq!(value(&samples, "shmlink_queue_messages_ready"), 6.0);
    assert_eq!(
        value(&samples, "shmlink_queue_memory_bytes_in_use"),
        (3 * (PRODUCED - u64::from(ACKED))) as f64
    );
    assert_eq!(value(&samples, "shmlink_queue_dead_lettered_total"), 0.0);
    // Rejecting one raises the dead-letter counter (dropped: the queue has no dead-letter
    // queue), and the ready gauge falls as the consumer takes the next.
    let rejected = held.pop().expect("held");
    within("reject", rejected.reject()).await.expect("reject");
    scrape_until(&addr, |s| {
        value(s, "shmlink_queue_dead_lettered_total") == 1.0
            && value(s, "shmlink_queue_messages_ready") == 5.0
            && value(s, "shmlink_queue_delivered_total") == f64::from(TAKEN + 1)
    })
    .await;
    drop(held);
    daemon.kill().await.expect("kill shmlinkd");
}
