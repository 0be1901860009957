//! Hostile subscribers: lying releases (of a slot never delivered, of a slot released
//! already, naming a topic that does not exist or that the node is not subscribed to) close
//! only the node that sent them, and free nothing another holder still holds.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::{self, EngineFrame, MessageType, NodeFrame};
use ipc_core::{Block, Consumer, Doorbell, Producer, RawDescriptor, ShmRing, kind};
use shmlink::{Engine, Node, Overflow, Publisher, SubscribeOptions, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::{self, TestDir, seq_message, within};

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

/// A node made by hand (raw socket, raw rings) that subscribes to a topic the way the
/// library does, then plays by no rule: what a hostile process can do.
struct HandMade {
    stream: UnixStream,
    bell: Doorbell,
    deliver: Consumer<ShmRing>,
    release: Producer<ShmRing>,
    /// The subscription id from `SubscribeOk`.
    subscription: u32,
    /// The topic id from `TopicAttach` (its segment's fd is dropped: never needed here).
    topic: u32,
    /// Keeps the block mapped while the rings are in use.
    _block: Arc<Block>,
}

impl HandMade {
    /// Registers as `name` (the engine then counts `nodes` nodes) and subscribes to
    /// `pattern` with the default options.
    async fn subscribe(
        engine: &Engine,
        socket: &Path,
        name: &str,
        nodes: usize,
        pattern: &str,
    ) -> Self {
        let welcomed = within("welcome", support::hello_and_welcome(socket, name))
            .await
            .expect("hello and welcome");
        let mut fds = welcomed.fds.into_iter();
        let block = Arc::new(Block::open(fds.next().expect("block")).expect("block"));
        let bell = Doorbell::from_fd(fds.next().expect("engine bell")).expect("bell");
        let mut stream = welcomed.stream;
        stream
            .write_all(&NodeFrame::Ready.encode())
            .await
            .expect("ready");
        within(
            "the hand-made node joins",
            engine.wait_for_stats(|s| s.nodes == nodes),
        )
        .await;
        let subscribe = NodeFrame::Subscribe {
            req: 1,
            pattern: pattern.to_owned(),
            ty: MessageType::bytes(),
            options: control::SubscribeOptions::default(),
        };
        stream
            .write_all(&subscribe.encode())
            .await
            .expect("subscribe");
        let mut bytes = welcomed.rest;
        let mut fds = Vec::new();
        let (mut subscription, mut topic) = (None, None);
        let mut chunk = vec![0u8; 4096];
        while subscription.is_none() || topic.is_none() {
            match control::decode_engine_frame(&bytes).expect("a valid frame") {
                Some((frame, used)) => {
                    bytes.drain(..used);
                    match frame {
                        EngineFrame::SubscribeOk {
                            req: 1,
                            subscription: id,
                        } => subscription = Some(id),
                        EngineFrame::TopicAttach { topic: id, .. } => topic = Some(id),
                        other => panic!("unexpected frame {other:?}"),
                    }
                }
                None => {
                    let n = within(
                        "frames",
                        support::recv_with_fds(&stream, &mut chunk, &mut fds),
                    )
                    .await
                    .expect("recvmsg");
                    assert!(n > 0, "the engine closed the hand-made node");
                    bytes.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Self {
            stream,
            bell,
            deliver: Consumer::new(block.deliver_ring()),
            release: Producer::new(block.release_ring()),
            subscription: subscription.expect("subscribed"),
            topic: topic.expect("attached"),
            _block: block,
        }
    }

    /// The next `n` entries of its deliver ring, every one a `TOPIC_DATA` of its
    /// subscription (the ring is polled: this node never announces sleep).
    async fn deliveries(&mut self, n: usize) -> Vec<RawDescriptor> {
        let poll = async {
            let mut got = Vec::new();
            while got.len() < n {
                match self.deliver.pop().expect("a sound ring") {
                    Some(entry) => got.push(entry),
                    None => tokio::task::yield_now().await,
                }
            }
            got
        };
        let got = within("deliveries to the hand-made node", poll).await;
        for entry in &got {
            assert_eq!(entry.kind, kind::TOPIC_DATA, "{entry:?}");
            assert_eq!(entry.session, self.subscription, "{entry:?}");
        }
        got
    }

    /// Pushes `entries` on its release ring and rings the engine.
    fn push_releases(&mut self, entries: &[RawDescriptor]) {
        for entry in entries {
            assert!(self.release.push(*entry).expect("push"), "room in the ring");
        }
        self.bell.ring().expect("ring");
    }

    /// Waits until the engine closed its connection.
    async fn closed(mut self) {
        let mut rest = Vec::new();
        within(
            "the hand-made node's socket ends",
            self.stream.read_to_end(&mut rest),
        )
        .await
        .expect("read to the end");
    }
}

/// An honest publisher and subscriber in this process, subscribed (`Block`: it loses
/// nothing, the publisher waits for it) and publishing on `topic`.
async fn honest(socket: &Path, topic: &str) -> (Node, Subscription<Bytes>, Publisher<Bytes>) {
    let node = within("connect", Node::connect(socket, "honest"))
        .await
        .expect("connect");
    let deep = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 600_000,
        },
        queue: 256,
        ..SubscribeOptions::default()
    };
    let sub: Subscription<Bytes> = within("subscribe", node.subscribe_with(topic, deep))
        .await
        .expect("subscribe");
    let publisher: Publisher<Bytes> = within("publish", node.publish(topic))
        .await
        .expect("publish");
    (node, sub, publisher)
}

/// The honest pair exchanges `count` messages of `len` bytes (marked by `first + i`),
/// published while the subscriber reads and drops them: the segment's free slots are reused
/// over and over.
async fn churn(
    publisher: &mut Publisher<Bytes>,
    sub: &mut Subscription<Bytes>,
    first: u64,
    count: u64,
    len: usize,
) {
    let send = async {
        for seq in first..first + count {
            let message = Bytes::from(seq_message(3, seq, len));
            publisher.send(message).await.expect("send");
        }
    };
    let receive = async {
        for seq in first..first + count {
            let got = sub.next().await.expect("open").expect("msg");
            assert_eq!(got, Bytes::from(seq_message(3, seq, len)), "message {seq}");
        }
    };
    within("churn", futures::future::join(send, receive)).await;
}

/// A subscriber that releases a slot it really was delivered, twice: the first release is
/// honest, the second closes its node (and only it). The slot is still held by the honest
/// subscriber, so the engine must not free it: the honest subscriber's `Bytes` of it (and of
/// every other held message) stay intact while the topic then churns through its segment,
/// reusing every slot that is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_release_closes_only_its_node_and_frees_nothing_early() {
    let dir = TestDir::new("topics-double");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let (_node, mut sub, mut publisher) = honest(&socket, "d").await;
    let mut liar = HandMade::subscribe(&engine, &socket, "liar", 2, "d").await;
    let originals: Vec<Bytes> = (0..10)
        .map(|seq| Bytes::from(seq_message(1, seq, 100)))
        .collect();
    for message in &originals {
        within("send", publisher.send(message.clone()))
            .await
            .expect("send");
    }
    let mut held = Vec::new();
    for message in &originals {
        let got = within("receive", sub.next())
            .await
            .expect("open")
            .expect("msg");
        assert_eq!(&got, message);
        held.push(got);
    }
    let delivered = liar.deliveries(originals.len()).await;
    let first = RawDescriptor::topic_release(liar.subscription, liar.topic, delivered[0].offset);
    // Once honestly, once more: the slot is still live (the honest subscriber holds it).
    liar.push_releases(&[first, first]);
    let stats = within(
        "the liar is closed",
        engine.wait_for_stats(|s| s.violations == 1 && s.nodes == 1),
    )
    .await;
    assert_eq!(stats.topics, 1);
    liar.closed().await;

    // Small messages take the slots just freed first (the allocator reuses its most recent
    // frees), large ones cycle through the whole 8 MiB segment.
    churn(&mut publisher, &mut sub, 0, 300, 100).await;
    churn(&mut publisher, &mut sub, 300, 160, 64 << 10).await;
    churn(&mut publisher, &mut sub, 460, 300, 100).await;
    for (got, want) in held.iter().zip(&originals) {
        assert_eq!(
            got, want,
            "a held message was overwritten: its slot was freed early"
        );
    }
    assert_eq!(engine.stats().violations, 1);
    drop(held);
    churn(&mut publisher, &mut sub, 800, 10, 100).await;
}

/// Releases naming a topic that does not exist, and a live slot of a topic the node is not
/// subscribed to (held by the honest subscriber), each close only the node that sent it;
/// the honest subscriber's message stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_of_unknown_or_foreign_topics_close_only_their_node() {
    let dir = TestDir::new("topics-foreign");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let (_node, mut sub, mut publisher) = honest(&socket, "mine").await;
    // Subscribed properly to "mine", it learns the topic's id and a live slot's offset.
    let mut unknown = HandMade::subscribe(&engine, &socket, "unknown", 2, "mine").await;
    let original = Bytes::from(seq_message(1, 0, 100));
    within("send", publisher.send(original.clone()))
        .await
        .expect("send");
    let kept = within("receive", sub.next())
        .await
        .expect("open")
        .expect("msg");
    let live = unknown.deliveries(1).await[0];

    // A release naming a topic id that was never created.
    unknown.push_releases(&[RawDescriptor::topic_release(unknown.subscription, 4242, 0)]);
    within(
        "the release of no topic is refused",
        engine.wait_for_stats(|s| s.violations == 1 && s.nodes == 1),
    )
    .await;
    unknown.closed().await;

    // Subscribed to another topic, it releases the live slot of "mine" the honest subscriber
    // holds, under its own subscription id.
    let mut foreign = HandMade::subscribe(&engine, &socket, "foreign", 2, "theirs").await;
    assert_ne!(
        foreign.topic, live.segment,
        "\"theirs\" is a topic of its own"
    );
    foreign.push_releases(&[RawDescriptor::topic_release(
        foreign.subscription,
        live.segment,
        live.offset,
    )]);
    within(
        "the foreign release is refused",
        engine.wait_for_stats(|s| s.violations == 2 && s.nodes == 1),
    )
    .await;
    foreign.closed().await;

    churn(&mut publisher, &mut sub, 0, 300, 100).await;
    assert_eq!(
        kept, original,
        "the kept message was overwritten: its slot was freed early"
    );
    assert_eq!(engine.stats().violations, 2);
}
