//! One publisher, many subscriber processes, `Block`: every subscriber gets every message, in
//! order, every byte checked.

use bytes::Bytes;
use futures::SinkExt;
use shmlink::{Node, Publisher};

use crate::children::fan_len;
use crate::support::{self, TestDir, ok_field, seq_message, spawn_child, within};

/// Subscriber processes (the issue asks 32; so many on a loaded 2-core machine is fine).
const SUBSCRIBERS: usize = 32;
/// Messages published (scaled from the 100,000 to keep the suite fast).
const MESSAGES: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_to_32_subscriber_processes_block() {
    let dir = TestDir::new("topics-fanout");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let mut children = Vec::new();
    for _ in 0..SUBSCRIBERS {
        children.push(spawn_child(
            "sub-block",
            &[socket.clone(), "fan".into(), MESSAGES.to_string()],
        ));
    }
    for child in &mut children {
        child.expect_line("READY").await;
    }
    let mut publisher: Publisher<Bytes> = within("publish", node.publish("fan"))
        .await
        .expect("publish");
    let send_all = async {
        for seq in 0..MESSAGES {
            publisher
                .feed(Bytes::from(seq_message(1, seq, fan_len(seq))))
                .await
                .expect("send");
        }
        publisher.flush().await.expect("flush");
    };
    within("publish", send_all).await;
    for child in children {
        let ok = child.finish_ok().await;
        assert_eq!(ok_field(&ok, "count"), MESSAGES);
    }
    // The router publishes its counters at the end of a pass: wait for the last one.
    let stats = within(
        "counters",
        engine.wait_for_stats(|s| s.topic_delivered == MESSAGES * SUBSCRIBERS as u64),
    )
    .await;
    assert_eq!(stats.topic_published, MESSAGES);
    assert_eq!(stats.topic_delivered, MESSAGES * SUBSCRIBERS as u64);
    assert_eq!(stats.topic_lagged, 0);
}

/// Four publisher processes, eight subscriber processes, `Block`: each subscriber gets every
/// message of every publisher, each publisher's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_publishers_eight_subscribers_keep_per_publisher_order() {
    const PUBLISHERS: u32 = 4;
    const EACH: u64 = 300;
    let dir = TestDir::new("topics-4x8");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let mut subs = Vec::new();
    for _ in 0..8 {
        subs.push(spawn_child(
            "sub-multi",
            &[
                socket.clone(),
                "multi".into(),
                PUBLISHERS.to_string(),
                EACH.to_string(),
            ],
        ));
    }
    for child in &mut subs {
        child.expect_line("READY").await;
    }
    let pubs: Vec<_> = (1..=PUBLISHERS)
        .map(|stream| {
            spawn_child(
                "pub-n",
                &[
                    socket.clone(),
                    "multi".into(),
                    stream.to_string(),
                    EACH.to_string(),
                ],
            )
        })
        .collect();
    for child in subs {
        let ok = child.finish_ok().await;
        assert_eq!(ok_field(&ok, "count"), u64::from(PUBLISHERS) * EACH);
    }
    for child in pubs {
        child.finish_ok().await;
    }
    let stats = within(
        "counters",
        engine.wait_for_stats(|s| s.topic_delivered == 8 * u64::from(PUBLISHERS) * EACH),
    )
    .await;
    assert_eq!(stats.topic_published, u64::from(PUBLISHERS) * EACH);
    assert_eq!(stats.violations, 0);
}
