//! `shmlinkctl topics` and `subscriptions` (and their `--json`) match the engine's topics;
//! `shmlinkd --topic-segment` sets the segment size.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node, Overflow, Publisher, SubscribeError, SubscribeOptions, Subscription};
use tokio::process::Command;

use crate::support::{self, TestDir, within};
use crate::{Daemon, ctl, ctl_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_listings_match_the_engine() {
    let dir = TestDir::new("inspect-topics");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .topic_segment_size(1 << 20)
        .spawn()
        .expect("engine");
    let node = within("connect", Node::connect(&socket, "pubsub"))
        .await
        .expect("connect");
    let block = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 60_000,
        },
        queue: 32,
        ..SubscribeOptions::default()
    };
    let mut all: Subscription<Bytes> = within("subscribe", node.subscribe_with("t/**", block))
        .await
        .expect("subscribe");
    // Reads nothing until everything is published: with a queue of 2 behind a window of 64
    // it loses some, each counted.
    let slow_options = SubscribeOptions {
        queue: 2,
        ..SubscribeOptions::default()
    };
    let mut slow: Subscription<Bytes> =
        within("subscribe", node.subscribe_with("t/a", slow_options))
            .await
            .expect("subscribe");
    let mut a: Publisher<Bytes> = within("publish", node.publish("t/a")).await.expect("a");
    let mut b: Publisher<Bytes> = within("publish", node.publish("t/b")).await.expect("b");
    const A: u64 = 80;
    const B: u64 = 5;
    let send = async {
        for i in 0..A {
            a.send(Bytes::from(vec![1u8; 100 + i as usize]))
                .await
                .expect("send a");
        }
        for i in 0..B {
            b.send(Bytes::from(vec![2u8; 10 + i as usize]))
                .await
                .expect("send b");
        }
    };
    let read = async {
        for _ in 0..A + B {
            all.next().await.expect("open").expect("message");
        }
    };
    within("publish and read", futures::future::join(send, read)).await;
    within(
        "all published",
        engine.wait_for_stats(|s| s.topic_published == A + B),
    )
    .await;
    // The slow subscriber holds the 64 deliveries of its window unreleased, and lost the rest
    // but its queue of 2. The fast one released everything it read: wait until the engine
    // took those releases in.
    let slow_lagged = A - 64 - 2;
    within("the fast subscriber's releases", async {
        loop {
            let snapshot = engine.inspect().await.expect("a snapshot");
            if snapshot.topics.iter().map(|t| t.in_flight).sum::<u64>() == 64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    let topics = ctl_json(&socket, &["topics"]).await;
    let topics = topics.as_array().expect("array");
    let names: Vec<&str> = topics
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["t/a", "t/b"], "{topics:?}");
    let (ta, tb) = (&topics[0], &topics[1]);
    assert_eq!(ta["publishers"], 1);
    assert_eq!(ta["subscribers"], 2);
    assert_eq!(ta["published"], A);
    assert_eq!(ta["delivered"], A + 64);
    assert_eq!(ta["lagged"], slow_lagged);
    assert_eq!(
        ta["in_flight"], 64,
        "the slow subscriber's window, unreleased"
    );
    assert_eq!(tb["subscribers"], 1);
    assert_eq!(tb["published"], B);
    assert_eq!(tb["delivered"], B);
    assert_eq!(tb["lagged"], 0);
    assert_eq!(tb["in_flight"], 0);

    let subs = ctl_json(&socket, &["subscriptions"]).await;
    let subs = subs.as_array().expect("array");
    assert_eq!(subs.len(), 2, "{subs:?}");
    let prefix = subs.iter().find(|s| s["pattern"] == "t/**").expect("t/**");
    assert_eq!(prefix["policy"], "block");
    assert_eq!(prefix["untether_ms"], 60_000);
    assert_eq!(prefix["node_name"], "pubsub");
    assert_eq!(prefix["topics"].as_array().expect("topics").len(), 2);
    assert_eq!(prefix["delivered"], A + B);
    assert_eq!(prefix["lagged"], 0);
    assert_eq!(prefix["in_flight"], 0);
    let exact = subs.iter().find(|s| s["pattern"] == "t/a").expect("t/a");
    assert_eq!(exact["policy"], "drop-oldest");
    assert_eq!(exact["delivered"], 64);
    assert_eq!(exact["lagged"], slow_lagged);
    assert_eq!(exact["in_flight"], 64);
    assert_eq!(exact["pending"], 2);

    // The status shows the topic counters and the segment size.
    let status = ctl_json(&socket, &["status"]).await;
    assert_eq!(status["engine"]["topic_segment_bytes"], 1 << 20);
    assert_eq!(status["counters"]["topics"], 2);
    assert_eq!(status["counters"]["topic_published"], A + B);

    // The tables, aligned under their headers.
    let (code, table, _) = ctl(&socket, &["topics"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TOPIC"), "{table}");
    assert!(
        lines[1].starts_with("t/a") && lines[2].starts_with("t/b"),
        "{table}"
    );
    let col = lines[0].find("PUBLISHED").expect("PUBLISHED column");
    assert!(lines[1][col..].starts_with(&A.to_string()), "{table}");
    let (code, table, _) = ctl(&socket, &["subscriptions"]).await;
    assert_eq!(code, Some(0));
    let col = table
        .lines()
        .next()
        .expect("header")
        .find("LAGGED")
        .expect("LAGGED");
    assert!(
        table
            .lines()
            .any(|l| l.contains("t/a") && l[col..].starts_with(&slow_lagged.to_string())),
        "{table}"
    );

    let (code, help, _) = ctl(&socket, &["--help"]).await;
    assert_eq!(code, Some(0));
    assert!(
        help.contains("topics") && help.contains("subscriptions"),
        "{help}"
    );

    // The slow subscriber then reads what it was told it lost, and everything else.
    let (mut received, mut lagged) = (0, 0);
    while received + lagged < A {
        match within("slow", slow.next()).await.expect("open") {
            Ok(_) => received += 1,
            Err(SubscribeError::Lagged(n)) => lagged += n,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((received, lagged), (66, slow_lagged));
    // The engine-wide counter counts losses as they are reported; the topic's and the
    // subscription's (above) as they happen.
    within(
        "the loss reported",
        engine.wait_for_stats(|s| s.topic_lagged == slow_lagged),
    )
    .await;
    drop((a, b, all, slow));
    engine.shutdown().await;
}

/// `shmlinkd --topic-segment`: a size that is not a power of two in range is refused with
/// the bounds, before a socket exists; a valid one is what the engine uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shmlinkd_takes_the_topic_segment_size() {
    let dir = TestDir::new("inspect-topic-segment");
    let socket = dir.socket();
    let out = within(
        "shmlinkd with a bad segment",
        Command::new(env!("CARGO_BIN_EXE_shmlinkd"))
            .args([
                "--socket",
                &socket.display().to_string(),
                "--topic-segment",
                "3K",
            ])
            .output(),
    )
    .await
    .expect("run shmlinkd");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a topic segment of 3072 bytes") && stderr.contains("power of two"),
        "{stderr}"
    );
    assert!(!socket.exists(), "nothing created");

    let daemon = Daemon::start(&socket, &["--topic-segment", "64K"]).await;
    let status = ctl_json(&socket, &["status"]).await;
    assert_eq!(status["engine"]["topic_segment_bytes"], 64 << 10);
    let node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let publisher: Publisher<Bytes> = within("publish", node.publish("sized"))
        .await
        .expect("publish");
    assert_eq!(publisher.max_message(), 64 << 10);
    drop((publisher, node));
    let _ = daemon.kill().await;
}
