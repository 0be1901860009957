//! Topics in one process: delivery to several subscribers, prefix subscriptions, history,
//! schema mismatch, and the counters.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, Publisher, SubscribeOptions, Subscription, TopicSetupError};

use crate::support::{self, TestDir, within};

#[tokio::test]
async fn one_publisher_two_subscribers_and_a_prefix() {
    let dir = TestDir::new("topics-basics");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let pub_node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let sub_node = within("connect", Node::connect(&socket, "sub"))
        .await
        .expect("connect");
    // Everything is published before anything is read: queues deep enough for all of it
    // (the default DropOldest queue of 64 would report `Lagged`, as it must).
    let deep = SubscribeOptions {
        queue: 256,
        ..SubscribeOptions::default()
    };
    let mut exact: Subscription<Bytes> =
        within("subscribe", sub_node.subscribe_with("sensors/a", deep))
            .await
            .expect("subscribe");
    let mut prefix: Subscription<Bytes> =
        within("subscribe", sub_node.subscribe_with("sensors/**", deep))
            .await
            .expect("subscribe prefix");
    let mut other: Subscription<Bytes> = within("subscribe", sub_node.subscribe("other"))
        .await
        .expect("subscribe other");
    let mut a: Publisher<Bytes> = within("publish", pub_node.publish("sensors/a"))
        .await
        .expect("publish");
    let mut b: Publisher<Bytes> = within("publish", pub_node.publish("sensors/b"))
        .await
        .expect("publish");
    for i in 0..100u32 {
        let body = Bytes::from(vec![i as u8; (i as usize) * 37]);
        within("send a", a.send(body.clone())).await.expect("send");
        within("send b", b.send(body)).await.expect("send");
    }
    for i in 0..100u32 {
        let got = within("exact", exact.next())
            .await
            .expect("open")
            .expect("msg");
        assert_eq!(
            got,
            Bytes::from(vec![i as u8; (i as usize) * 37]),
            "exact {i}"
        );
    }
    // The prefix sees both topics, each in publisher order.
    let (mut na, mut nb) = (0u32, 0u32);
    for _ in 0..200 {
        let got = within("prefix", prefix.next())
            .await
            .expect("open")
            .expect("msg");
        let n = if got.len() == (na as usize) * 37 && got.iter().all(|&x| x == na as u8) {
            na += 1;
            na
        } else {
            assert_eq!(got, Bytes::from(vec![nb as u8; (nb as usize) * 37]));
            nb += 1;
            nb
        };
        assert!(n <= 100);
    }
    assert_eq!((na, nb), (100, 100));
    // Nothing was published on "other".
    assert!(futures::FutureExt::now_or_never(other.next()).is_none());
    // The router publishes its counters at the end of a pass: wait for the last one.
    let stats = within(
        "counters",
        engine.wait_for_stats(|s| s.topic_delivered == 300),
    )
    .await;
    assert_eq!(stats.topic_published, 200);
    assert_eq!(
        stats.topic_delivered, 300,
        "100 to the exact subscription, 200 to the prefix"
    );
    assert_eq!(stats.topic_lagged, 0);
    drop((exact, prefix, other, a, b));
    within(
        "topics gone",
        engine.wait_for_stats(|s| s.topics == 0 && s.topic_segments == 0),
    )
    .await;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, shmlink::Message)]
struct Tick {
    n: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, shmlink::Message)]
struct Other {
    s: String,
}

#[tokio::test]
async fn typed_topics_check_schemas_and_keep_history() {
    let dir = TestDir::new("topics-typed");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "n"))
        .await
        .expect("connect");
    let mut publisher = within(
        "publish",
        node.publish_with_history::<Tick, shmlink::Bincode>("ticks", 4),
    )
    .await
    .expect("publish");
    for n in 0..10 {
        within("send", publisher.send(Tick { n }))
            .await
            .expect("send");
    }
    // A late joiner asking for history gets the last four, then what follows.
    let mut late: Subscription<Tick> = within(
        "subscribe",
        node.subscribe_with(
            "ticks",
            shmlink::SubscribeOptions {
                history: 4,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("subscribe");
    within("send", publisher.send(Tick { n: 10 }))
        .await
        .expect("send");
    for n in 6..=10 {
        let got = within("late", late.next())
            .await
            .expect("open")
            .expect("tick");
        assert_eq!(got, Tick { n });
    }
    // Another type on the same topic is refused, naming both types.
    let err = within("mismatch", node.subscribe::<Other>("ticks"))
        .await
        .expect_err("mismatch");
    match &err {
        TopicSetupError::SchemaMismatch { message, .. } => {
            assert!(
                message.contains("Tick") && message.contains("Other"),
                "{err}"
            );
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    let err = within("mismatch", node.publish::<Other>("ticks"))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, TopicSetupError::SchemaMismatch { .. }),
        "{err}"
    );
    drop((publisher, late));
    within(
        "topics gone",
        engine.wait_for_stats(|s| s.topics == 0 && s.topic_segments == 0),
    )
    .await;
}

/// A `Block` subscriber that never reads holds the publisher back only until its untether
/// timeout: then it is cut loose (its stream ends with `Untethered`, never a silent gap) and
/// the publisher goes on. The router wakes for the deadline although nothing else happens.
#[tokio::test]
async fn a_stuck_block_subscriber_is_cut_loose_and_says_so() {
    let dir = TestDir::new("topics-untether");
    let engine = support::engine(&dir);
    let node = within("connect", Node::connect(dir.socket(), "n"))
        .await
        .expect("connect");
    let options = SubscribeOptions {
        overflow: shmlink::Overflow::Block { untether_ms: 50 },
        queue: 1,
        ..SubscribeOptions::default()
    };
    let mut stuck: Subscription<Bytes> = within("subscribe", node.subscribe_with("u", options))
        .await
        .expect("subscribe");
    let mut publisher: Publisher<Bytes> =
        within("publish", node.publish("u")).await.expect("publish");
    // Far more than its window and queue: only the untether lets these through.
    for i in 0..500u32 {
        within(
            "send past the stuck subscriber",
            publisher.send(Bytes::from(i.to_le_bytes().to_vec())),
        )
        .await
        .expect("send");
    }
    within(
        "all published",
        engine.wait_for_stats(|s| s.topic_published == 500),
    )
    .await;
    // What it was delivered comes in order, then the error, then the end.
    let mut next = 0u32;
    loop {
        match within("stuck", stuck.next()).await {
            Some(Ok(msg)) => {
                assert_eq!(msg, Bytes::from(next.to_le_bytes().to_vec()));
                next += 1;
            }
            Some(Err(shmlink::SubscribeError::Untethered)) => break,
            other => panic!("expected messages then Untethered, got {other:?}"),
        }
    }
    assert!(next < 500, "cut loose before it was delivered everything");
    assert!(within("end", stuck.next()).await.is_none());
}
