//! Consumers that die: what they held goes back at once, to the consumers still alive.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Consumer, ConsumerOptions, Node, Producer, QueueOptions};

use crate::common;
use crate::support::{self, TestDir, parse_seq, seq_message, spawn_child, within};

const HELD: u64 = 50;

/// A consumer process SIGKILLed while it holds 50 unacknowledged deliveries: all 50 go to
/// the consumer still alive, marked redelivered, in queue order, none lost; while the
/// holder lived, the survivor got none of them (each message to one live consumer at a
/// time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_consumers_fifty_deliveries_go_to_another_consumer() {
    let dir = TestDir::new("queues-kill");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let node = within("connect", Node::connect(&socket, "survivor"))
        .await
        .expect("connect");
    common::declare(&node, "jobs", QueueOptions::default()).await;
    let mut holder = spawn_child(
        "consume-hold",
        &[socket.clone(), "jobs".into(), HELD.to_string()],
    );
    within(
        "the holder consumes",
        engine.wait_for_stats(|s| s.nodes == 2),
    )
    .await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    for seq in 0..HELD {
        producer
            .feed(Bytes::from(seq_message(1, seq, 100)))
            .await
            .expect("feed");
    }
    within("confirmed", producer.flush()).await.expect("flush");
    let held: BTreeSet<u64> = holder
        .expect("HELD")
        .await
        .split(',')
        .map(|s| s.parse().expect("a seq"))
        .collect();
    assert_eq!(held, (0..HELD).collect(), "the holder got every message");

    // The survivor joins while the holder holds everything: nothing for it yet.
    let wide = ConsumerOptions {
        prefetch: 200,
        lease: None,
    };
    let mut survivor: Consumer<Bytes> = within("consumer", node.consumer_with("jobs", wide))
        .await
        .expect("consumer");
    within(
        "sentinel",
        producer.send(Bytes::from(seq_message(1, HELD, 100))),
    )
    .await
    .expect("send");
    let first = within("the sentinel", survivor.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(
        parse_seq(&first).expect("seq").1,
        HELD,
        "a message held by a live consumer went to another"
    );
    first.ack().await.expect("ack");

    holder.kill_and_reap().await;
    let mut seqs = Vec::new();
    for _ in 0..HELD {
        let d = within("a redelivery", survivor.next())
            .await
            .expect("open")
            .expect("delivery");
        assert!(d.redelivered(), "not marked redelivered: {d:?}");
        assert_eq!(d.delivery_count(), 2);
        seqs.push(parse_seq(&d).expect("seq").1);
        d.ack().await.expect("ack");
    }
    assert_eq!(
        seqs,
        (0..HELD).collect::<Vec<_>>(),
        "redelivered in queue order"
    );
    let stats = within(
        "nothing left",
        engine.wait_for_stats(|s| s.nodes == 1 && s.queue_bytes == 0),
    )
    .await;
    assert_eq!(stats.queue_settled, HELD + 1);
}
