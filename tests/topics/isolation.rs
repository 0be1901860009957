//! Slow and dying subscribers, dying publishers, and the read-only segment.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, Overflow, Publisher, SubscribeOptions, Subscription};

use crate::children::fan_len;
use crate::support::{
    self, STEP, TestDir, ok_field, open_fds, parse_seq, seq_message, spawn_child, within,
};

const DROP_MESSAGES: u64 = 600;

/// `DropOldest` with a subscriber stopped (SIGSTOP) while everything is published: once it
/// runs again, what it received plus its `Lagged` counts is exactly what was published, and
/// it did lose some; two subscribers with queues deep enough lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_counts_every_loss_and_fast_subscribers_lose_nothing() {
    let dir = TestDir::new("topics-drop");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let args = |queue: u64| {
        [
            socket.clone(),
            "drop".to_owned(),
            DROP_MESSAGES.to_string(),
            queue.to_string(),
        ]
    };
    let mut slow = spawn_child("sub-drop", &args(4));
    let mut fast = vec![
        spawn_child("sub-drop", &args(DROP_MESSAGES)),
        spawn_child("sub-drop", &args(DROP_MESSAGES)),
    ];
    slow.expect_line("READY").await;
    for child in &mut fast {
        child.expect_line("READY").await;
    }
    slow.stop().await;
    let mut publisher: Publisher<Bytes> = within("publish", node.publish("drop"))
        .await
        .expect("publish");
    for seq in 0..DROP_MESSAGES {
        within(
            "send",
            publisher.send(Bytes::from(seq_message(1, seq, fan_len(seq) / 64))),
        )
        .await
        .expect("send");
    }
    within(
        "all published",
        engine.wait_for_stats(|s| s.topic_published == DROP_MESSAGES),
    )
    .await;
    slow.resume();
    let ok = slow.finish_ok().await;
    let (received, lagged) = (ok_field(&ok, "received"), ok_field(&ok, "lagged"));
    assert_eq!(received + lagged, DROP_MESSAGES, "{ok}");
    assert!(lagged > 0, "the stopped subscriber lost nothing: {ok}");
    for child in fast {
        let ok = child.finish_ok().await;
        assert_eq!(ok_field(&ok, "received"), DROP_MESSAGES, "{ok}");
        assert_eq!(ok_field(&ok, "lagged"), 0, "{ok}");
    }
    let stats = within(
        "counters",
        engine.wait_for_stats(|s| s.topic_lagged == lagged),
    )
    .await;
    assert_eq!(stats.topic_lagged, lagged);
}

const KILL_MESSAGES: u64 = 1_000;

/// A `Block` subscriber that stops reading holds the publishers back; SIGKILLed, it holds
/// nothing any more. A publisher SIGKILLed mid-stream leaves the others alone: the in-process
/// subscriber gets every message of the surviving publisher in order, and a gap-free prefix
/// of the dead one's. Afterwards the engine's counts, this process's descriptors (the engine
/// is embedded here) and its mappings of topic segments are back to their baseline.
#[test]
fn sigkilled_subscriber_and_publisher_hold_nothing_back() {
    // Counts of this process's descriptors must not see other tests' (cargo test threads).
    support::run_isolated(
        "isolation::sigkilled_subscriber_and_publisher_hold_nothing_back",
        sigkill_body,
    );
}

async fn sigkill_body() {
    let dir = TestDir::new("topics-kill");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let node = within("connect", Node::connect(&socket, "local"))
        .await
        .expect("connect");
    // Warm up what the runtime creates lazily for children (reaping, signal handling), then
    // take the baselines.
    spawn_child("noop", &[]).finish_ok().await;
    let base = within("baseline", engine.wait_for_stats(|s| s.nodes == 1)).await;
    let base_fds = open_fds();
    assert_eq!(topic_mappings(), 0, "no topic yet");
    let block = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 600_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = within("subscribe", node.subscribe_with("k", block))
        .await
        .expect("subscribe");
    let mut stuck = spawn_child("sub-stuck", &[socket.clone(), "k".into()]);
    stuck.expect_line("READY").await;
    let mut publisher: Publisher<Bytes> =
        within("publish", node.publish("k")).await.expect("publish");
    let other = spawn_child("pub-forever", &[socket.clone(), "k".into()]);

    let publish = async {
        for seq in 0..KILL_MESSAGES {
            publisher
                .send(Bytes::from(seq_message(1, seq, fan_len(seq) / 16)))
                .await
                .expect("send");
        }
    };
    let read = async {
        let (mut mine, mut theirs) = (0u64, 0u64);
        while mine < KILL_MESSAGES {
            let msg = sub.next().await.expect("open").expect("message");
            match parse_seq(&msg).expect("intact") {
                (1, seq) => {
                    assert_eq!(seq, mine, "the surviving publisher's order");
                    mine += 1;
                }
                (2, seq) => {
                    assert_eq!(seq, theirs, "the dead publisher's messages, gap-free");
                    theirs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        theirs
    };
    let kill = async {
        let mut other = other;
        other.expect_line("PUBLISHING").await;
        stuck.expect_line("GOT10").await;
        // Both mid-stream: the stuck subscriber holds every publisher back by now or soon.
        stuck.sigkill();
        other.sigkill();
        stuck.reap_killed().await;
        other.reap_killed().await;
    };
    let ((), theirs, ()) = within(
        "publish and read past the kills",
        futures::future::join3(publish, read, kill),
    )
    .await;
    // The killed publisher's messages still parked behind the stuck subscriber when it died
    // go with it: how many arrived depends on timing, their order does not (checked above).
    println!("the killed publisher's messages received: {theirs}");
    drop((sub, publisher));
    let after = within(
        "back to baseline",
        engine.wait_for_stats(|s| s.nodes == base.nodes && s.topics == 0 && s.topic_segments == 0),
    )
    .await;
    assert_eq!(after.session_ends, base.session_ends);
    assert_eq!(after.violations, 0);
    // The dead nodes' sockets, blocks and doorbells, the segment's memfd in the engine and
    // its mapping here (the local subscriber's is unmapped once its subscription closed):
    // the descriptors return to the baseline as the engine and the node's driver finish.
    let back = async {
        loop {
            let fds = open_fds();
            if fds.len() == base_fds.len() && topic_mappings() == 0 {
                return fds;
            }
            tokio::task::yield_now().await;
        }
    };
    match tokio::time::timeout(STEP, back).await {
        Ok(fds) => assert_eq!(fds.len(), base_fds.len()),
        Err(_) => panic!(
            "not back to baseline: topic mappings {}\ndescriptors before {base_fds:?}\nafter {:?}",
            topic_mappings(),
            open_fds()
        ),
    }
    drop(node);
}

/// Mappings of topic segments (`memfd:shmlink-topic-*`) in this process.
fn topic_mappings() -> usize {
    support::procfs::shared_mappings("self")
        .iter()
        .filter(|l| l.contains("memfd:shmlink-topic-"))
        .count()
}

/// A subscriber's mapping of a topic segment is read-only, and writes through its
/// descriptor fail (checked in the subscriber's own process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cannot_write_the_segment() {
    let dir = TestDir::new("topics-ro");
    let _engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let mut child = spawn_child("sub-readonly", &[socket.clone(), "ro".into()]);
    child.expect_line("READY").await;
    let mut publisher: Publisher<Bytes> = within("publish", node.publish("ro"))
        .await
        .expect("publish");
    within("send", publisher.send(Bytes::from_static(b"read only")))
        .await
        .expect("send");
    let ok = child.finish_ok().await;
    assert!(ok_field(&ok, "mappings") >= 1, "{ok}");
    assert_eq!(ok_field(&ok, "len"), 9, "{ok}");
}
