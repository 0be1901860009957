//! A hostile subscriber's lying release closes only it.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::NodeFrame;
use ipc_core::{Block, Doorbell, Producer, RawDescriptor};
use shmlink::{Node, Publisher, SubscribeOptions, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, TestDir, within};

/// A hand-made node pushes a `TOPIC_RELEASE` of a slot it was never delivered: the engine
/// closes it (one violation) and the honest publisher and subscriber go on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_release_closes_only_its_node() {
    let dir = TestDir::new("topics-liar");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "honest"))
        .await
        .expect("connect");
    let deep = SubscribeOptions {
        queue: 256,
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = within("subscribe", node.subscribe_with("h", deep))
        .await
        .expect("subscribe");
    let mut publisher: Publisher<Bytes> =
        within("publish", node.publish("h")).await.expect("publish");
    for i in 0..10u8 {
        within("send", publisher.send(Bytes::from(vec![i; 100])))
            .await
            .expect("send");
    }
    // Held: slot 0 of topic 1 is live (and held by the honest subscriber only).
    let mut held = Vec::new();
    for i in 0..10u8 {
        let msg = within("receive", sub.next())
            .await
            .expect("open")
            .expect("msg");
        assert_eq!(msg, Bytes::from(vec![i; 100]));
        held.push(msg);
    }

    let welcomed = within("welcome", support::hello_and_welcome(&socket, "liar"))
        .await
        .expect("hello and welcome");
    let mut fds = welcomed.fds.into_iter();
    let block = std::sync::Arc::new(Block::open(fds.next().expect("block")).expect("block"));
    let bell = Doorbell::from_fd(fds.next().expect("engine bell")).expect("bell");
    let mut stream = welcomed.stream;
    stream
        .write_all(&NodeFrame::Ready.encode())
        .await
        .expect("ready");
    within("the liar joins", engine.wait_for_stats(|s| s.nodes == 2)).await;
    let mut release = Producer::new(block.release_ring());
    // Topic 1 is the only topic; offset 0 is a live slot, but never delivered to this node.
    let lie = RawDescriptor::topic_release(4242, 1, 0);
    assert!(release.push(lie).expect("push"), "room in a fresh ring");
    bell.ring().expect("ring");
    let stats = within(
        "the liar is closed",
        engine.wait_for_stats(|s| s.violations == 1 && s.nodes == 1),
    )
    .await;
    assert_eq!(stats.topics, 1);
    // The engine closed the liar's connection.
    let mut rest = Vec::new();
    within("the liar's socket ends", stream.read_to_end(&mut rest))
        .await
        .expect("read to the end");

    // The honest pair goes on, the slots it holds untouched.
    drop(held);
    for i in 10..40u8 {
        within("send", publisher.send(Bytes::from(vec![i; 1000])))
            .await
            .expect("send");
        let msg = within("receive", sub.next())
            .await
            .expect("open")
            .expect("msg");
        assert_eq!(msg, Bytes::from(vec![i; 1000]));
    }
    assert_eq!(engine.stats().violations, 1);
}
