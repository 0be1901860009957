//! Hostile consumers: settlements of deliveries they never got, or for consumers that are
//! not theirs, close only them.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::{EngineFrame, NodeFrame, decode_engine_frame};
use ipc_core::{Block, Doorbell, Producer as Ring, RawDescriptor, kind};
use shmlink::{Consumer, MessageType, Node, Producer, QueueOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common;
use crate::support::{self, TestDir, within};

/// Reads frames until a `QueueOk` answers `req`; returns its id.
async fn queue_ok(stream: &mut UnixStream, req: u32) -> u32 {
    let mut buf = Vec::new();
    loop {
        while let Some((frame, used)) = decode_engine_frame(&buf).expect("a valid frame") {
            buf.drain(..used);
            match frame {
                EngineFrame::QueueOk { req: r, id } if r == req => return id,
                other => assert!(
                    !matches!(other, EngineFrame::Error { .. }),
                    "refused: {other:?}"
                ),
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the engine closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One hand-made consumer node per lie: an ack for the honest node's consumer, an ack of a
/// tag never delivered to it, a nack for a consumer id that does not exist. Each closes
/// that node alone (one violation each); the honest producer and consumer go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_settlements_close_only_their_node() {
    let dir = TestDir::new("queues-liar");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "honest"))
        .await
        .expect("connect");
    common::declare(&node, "jobs", QueueOptions::default()).await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer("jobs"))
        .await
        .expect("consumer");
    within("send", producer.send(Bytes::from_static(b"before")))
        .await
        .expect("send");
    let held = within("receive", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    // Ids come in order from one space: the first liar's consumer id follows the honest
    // consumer's, which the first lie names (with a tag the honest consumer holds).
    let lies: [fn(u32) -> RawDescriptor; 3] = [
        |own| RawDescriptor::control(kind::QUEUE_ACK, own - 1, 1),
        |own| RawDescriptor::control(kind::QUEUE_ACK, own, 1),
        |_| RawDescriptor::control(kind::QUEUE_NACK, 999_999, 1),
    ];
    for (i, lie) in lies.into_iter().enumerate() {
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
        // It consumes "jobs" for real (bytes), with nothing ready for it.
        let consume = NodeFrame::Consume {
            req: 1,
            queue: "jobs".into(),
            ty: MessageType::bytes(),
            prefetch: 1,
            lease_ms: 0,
        };
        stream.write_all(&consume.encode()).await.expect("consume");
        let own = within("its consumer", queue_ok(&mut stream, 1)).await;
        let mut submit = Ring::new(block.submit_ring());
        assert!(submit.push(lie(own)).expect("push"), "room in a fresh ring");
        bell.ring().expect("ring");
        let violations = i as u64 + 1;
        within(
            "the liar is closed",
            engine.wait_for_stats(|s| s.violations == violations && s.nodes == 1),
        )
        .await;
        let mut rest = Vec::new();
        within("the liar's socket ends", stream.read_to_end(&mut rest))
            .await
            .expect("read to the end");
    }

    // The honest pair goes on; what it held is still its own.
    within("ack", held.ack()).await.expect("still held");
    within("send", producer.send(Bytes::from_static(b"after")))
        .await
        .expect("send");
    let after = within("receive", consumer.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(&after[..], b"after");
    assert!(!after.redelivered());
    after.ack().await.expect("ack");
}
