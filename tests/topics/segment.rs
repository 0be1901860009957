//! The topic segment size (`EngineBuilder::topic_segment_size`): validated at spawn, told to
//! publishers, and a small one works under pressure.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{
    Engine, MAX_TOPIC_SEGMENT, MIN_TOPIC_SEGMENT, Node, Overflow, PublishError, Publisher,
    SpawnError, SubscribeOptions, Subscription,
};

use crate::support::{self, TestDir, pattern, within};

/// Sizes that are not a power of two, or out of range, are refused by `spawn`, naming the
/// bounds; nothing listens afterwards.
#[tokio::test]
async fn bad_segment_sizes_are_refused_at_spawn() {
    let dir = TestDir::new("topics-segment-bad");
    for size in [
        0,
        MIN_TOPIC_SEGMENT / 2,
        MIN_TOPIC_SEGMENT + 1,
        3 << 20,
        MAX_TOPIC_SEGMENT * 2,
        u64::MAX,
    ] {
        let spawned = support::engine_builder(&dir)
            .topic_segment_size(size)
            .spawn();
        match spawned {
            Err(SpawnError::TopicSegment { size: s, min, max }) => {
                assert_eq!((s, min, max), (size, MIN_TOPIC_SEGMENT, MAX_TOPIC_SEGMENT));
            }
            other => panic!("segment of {size} bytes: {other:?}"),
        }
        assert!(!dir.socket().exists(), "nothing created for {size}");
    }
    let engine: Engine = support::engine_builder(&dir)
        .topic_segment_size(MIN_TOPIC_SEGMENT)
        .spawn()
        .expect("the smallest size is valid");
    engine.shutdown().await;
}

/// With a 16 KiB segment, publishers learn the limit and refuse a larger message themselves
/// (their node stays connected); a `Block` subscriber gets 400 messages of up to 16 KiB
/// (over a hundred times the segment) in order and intact, slots being reused as it
/// releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_segment_carries_many_times_its_size() {
    const SEGMENT: u64 = 16 << 10;
    const MESSAGES: u64 = 400;
    let dir = TestDir::new("topics-segment-small");
    let engine = support::engine_builder(&dir)
        .topic_segment_size(SEGMENT)
        .spawn()
        .expect("spawn");
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "small"))
        .await
        .expect("connect");
    let block = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 600_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = within("subscribe", node.subscribe_with("small", block))
        .await
        .expect("subscribe");
    let mut publisher: Publisher<Bytes> = within("publish", node.publish("small"))
        .await
        .expect("publish");
    assert_eq!(publisher.max_message(), SEGMENT);
    let too_large = Bytes::from(vec![0u8; SEGMENT as usize + 1]);
    assert_eq!(
        within("send too large", publisher.send(too_large)).await,
        Err(PublishError::TooLarge {
            len: SEGMENT + 1,
            max: SEGMENT
        })
    );
    let len = |i: u64| match i % 4 {
        0 => SEGMENT as usize,
        1 => 0,
        _ => (i * 997 % SEGMENT) as usize,
    };
    let send = async {
        for i in 0..MESSAGES {
            publisher
                .send(Bytes::from(pattern(9, i, len(i))))
                .await
                .expect("send");
        }
    };
    let receive = async {
        for i in 0..MESSAGES {
            let got = sub.next().await.expect("open").expect("message");
            assert_eq!(got, Bytes::from(pattern(9, i, len(i))), "message {i}");
        }
    };
    within("publish and receive", futures::future::join(send, receive)).await;
    let stats = engine.stats();
    assert_eq!(stats.violations, 0);
    assert_eq!(stats.topic_lagged, 0);
}
