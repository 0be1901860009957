//! Queue semantics with nodes of this process: order, settlements, leases, dead letters,
//! full queues, types and declarations.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{
    AckError, Consumer, ConsumerOptions, Delivery, Message, ProduceError, Producer, QueueOptions,
    QueueSetupError, WhenFull,
};

use crate::common::{self, node};
use crate::support::{self, TestDir, expect_seq, seq_message, within};

async fn next<T: shmlink::Payload<shmlink::Bincode>>(c: &mut Consumer<T>) -> Delivery<T> {
    within("a delivery", c.next())
        .await
        .expect("the stream goes on")
        .expect("a delivery")
}

const ORDER: u64 = 2_000;

/// Two competing consumers get every confirmed message exactly once, each consumer in
/// queue order; acknowledged, the engine keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_get_each_message_once_in_order() {
    let dir = TestDir::new("queues-order");
    let engine = support::engine(&dir);
    let node = node(&dir, "both").await;
    common::declare(&node, "jobs", QueueOptions::default()).await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    let mut a: Consumer<Bytes> = within("consumer", node.consumer("jobs")).await.expect("a");
    let mut b: Consumer<Bytes> = within("consumer", node.consumer("jobs")).await.expect("b");
    let send = async {
        for seq in 0..ORDER {
            producer
                .feed(Bytes::from(seq_message(1, seq, 16 + (seq as usize % 300))))
                .await
                .expect("feed");
        }
        producer.flush().await.expect("every message confirmed");
        assert_eq!(producer.unconfirmed(), 0);
    };
    let receive = async {
        let mut seen = vec![false; ORDER as usize];
        let (mut last_a, mut last_b) = (None, None);
        let mut count = 0;
        while count < ORDER {
            let (delivery, last) = tokio::select! {
                d = next(&mut a) => (d, &mut last_a),
                d = next(&mut b) => (d, &mut last_b),
            };
            let (_, seq) = support::parse_seq(&delivery).expect("a sequenced message");
            assert!(!delivery.redelivered());
            assert_eq!(delivery.delivery_count(), 1);
            assert!(!seen[seq as usize], "message {seq} delivered twice");
            seen[seq as usize] = true;
            assert!(last.is_none_or(|l| l < seq), "out of order at {seq}");
            *last = Some(seq);
            delivery.ack().await.expect("ack");
            count += 1;
        }
    };
    within("produce and consume", futures::future::join(send, receive)).await;
    let stats = within(
        "settled",
        engine.wait_for_stats(|s| s.queue_settled == ORDER && s.queue_bytes == 0),
    )
    .await;
    assert_eq!(stats.queue_confirmed, ORDER);
    assert_eq!(stats.queue_delivered, ORDER);
    assert_eq!(stats.queues, 1);
}

/// A nack puts a delivery back at the head, marked redelivered; the last delivery allowed
/// goes to the dead-letter queue on its nack, and a reject goes there at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_requeues_and_reject_and_max_deliveries_dead_letter() {
    let dir = TestDir::new("queues-dead");
    let _engine = support::engine(&dir);
    let node = node(&dir, "n").await;
    let options = QueueOptions {
        max_deliveries: 3,
        dead_letter: Some("jobs.dead".into()),
        ..QueueOptions::default()
    };
    within("declare", node.declare_queue("jobs", options.clone()))
        .await
        .expect("declare");
    within("declare again", node.declare_queue("jobs", options))
        .await
        .expect("the same declaration again");
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    let one = ConsumerOptions {
        prefetch: 1,
        lease: None,
    };
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer_with("jobs", one))
        .await
        .expect("consumer");
    for text in ["poison", "bad", "good"] {
        within("send", producer.send(Bytes::from(text)))
            .await
            .expect("send");
    }
    for count in 1..=3 {
        let d = next(&mut consumer).await;
        assert_eq!(&d[..], b"poison");
        assert_eq!(d.delivery_count(), count);
        assert_eq!(d.redelivered(), count > 1);
        d.nack().await.expect("nack");
    }
    let d = next(&mut consumer).await;
    assert_eq!((&d[..], d.delivery_count()), (&b"bad"[..], 1));
    d.reject().await.expect("reject");
    let d = next(&mut consumer).await;
    assert_eq!(&d[..], b"good");
    d.ack().await.expect("ack");

    let mut dead: Consumer<Bytes> = within("dead consumer", node.consumer("jobs.dead"))
        .await
        .expect("the dead-letter queue was declared with its queue");
    for text in ["poison", "bad"] {
        let d = next(&mut dead).await;
        assert_eq!(&d[..], text.as_bytes());
        d.ack().await.expect("ack");
    }
}

/// A delivery whose lease runs out goes to another consumer, marked redelivered; the slow
/// consumer's late extension and ack are `NotHeld`. An extended lease keeps a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_redelivers_and_a_late_ack_is_not_held() {
    let dir = TestDir::new("queues-lease");
    let _engine = support::engine(&dir);
    let node = node(&dir, "n").await;
    common::declare(&node, "jobs", QueueOptions::default()).await;
    let mut producer: Producer<Bytes> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    let leased = |ms| ConsumerOptions {
        prefetch: 1,
        lease: Some(Duration::from_millis(ms)),
    };
    // A lease that cannot run out during the test: extended, then acked.
    let mut patient: Consumer<Bytes> =
        within("patient", node.consumer_with("jobs", leased(600_000)))
            .await
            .expect("patient");
    within("send", producer.send(Bytes::from_static(b"kept")))
        .await
        .expect("send");
    let kept = next(&mut patient).await;
    within("extend", kept.extend_lease())
        .await
        .expect("a fresh lease");
    within("ack", kept.ack())
        .await
        .expect("ack after extending");
    drop(patient);

    let mut slow: Consumer<Bytes> = within("slow", node.consumer_with("jobs", leased(100)))
        .await
        .expect("slow");
    within("send", producer.send(Bytes::from_static(b"job")))
        .await
        .expect("send");
    let first = next(&mut slow).await;
    // The other consumer (no lease) gets it once the lease runs out: no sleep here, the
    // engine's timer does it.
    let mut other: Consumer<Bytes> = within("other", node.consumer("jobs")).await.expect("other");
    let again = next(&mut other).await;
    assert_eq!(&again[..], b"job");
    assert!(again.redelivered());
    // At least its second delivery: the slow consumer, with room again once its lease ran
    // out, may have had it (and let it run out) once more before.
    assert!(again.delivery_count() >= 2, "{again:?}");
    assert_eq!(
        within("extend late", first.extend_lease()).await,
        Err(AckError::NotHeld)
    );
    assert_eq!(
        within("late ack", first.ack()).await,
        Err(AckError::NotHeld)
    );
    again.ack().await.expect("ack by the holder");
}

/// A full queue holds its producers back (their send waits until a consumer acks), or
/// refuses (`Full`), as declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_producers_back_or_refuses() {
    let dir = TestDir::new("queues-full");
    let _engine = support::engine(&dir);
    let node = node(&dir, "n").await;
    let wait = QueueOptions {
        max_length: Some(4),
        ..QueueOptions::default()
    };
    let refuse = QueueOptions {
        when_full: WhenFull::Refuse,
        ..wait.clone()
    };
    within("declare", node.declare_queue("wait", wait))
        .await
        .expect("declare");
    within("declare", node.declare_queue("refuse", refuse))
        .await
        .expect("declare");
    let mut refusing: Producer<Bytes> = within("producer", node.producer("refuse"))
        .await
        .expect("producer");
    for seq in 0..4 {
        within("send", refusing.send(Bytes::from(seq_message(1, seq, 64))))
            .await
            .expect("room");
    }
    assert_eq!(
        within(
            "send to a full queue",
            refusing.send(Bytes::from_static(b"x"))
        )
        .await,
        Err(ProduceError::Full(1))
    );

    let mut waiting: Producer<Bytes> = within("producer", node.producer("wait"))
        .await
        .expect("producer");
    for seq in 0..4 {
        within("send", waiting.send(Bytes::from(seq_message(1, seq, 64))))
            .await
            .expect("room");
    }
    // The fifth waits for room: it is confirmed only after a consumer acked one.
    let mut consumer: Consumer<Bytes> = within("consumer", node.consumer("wait"))
        .await
        .expect("consumer");
    let mut fifth = std::pin::pin!(waiting.send(Bytes::from(seq_message(1, 4, 64))));
    let mut held = Vec::new();
    for seq in 0..4 {
        let d = next(&mut consumer).await;
        expect_seq(&d, 1, seq).expect("in order");
        held.push(d);
    }
    assert!(
        futures::poll!(fifth.as_mut()).is_pending(),
        "a full queue confirmed a fifth message"
    );
    held.remove(0).ack().await.expect("ack");
    within("the fifth is confirmed", fifth).await.expect("send");
    let d = next(&mut consumer).await;
    expect_seq(&d, 1, 4).expect("the fifth");
}

#[derive(Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Job {
    id: u64,
    name: String,
}

#[derive(Message, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Other {
    x: u32,
}

/// A typed queue carries one type: another is refused with both named; an undeclared
/// queue and a durable one on an engine without a data directory are clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_and_declarations_are_checked() {
    let dir = TestDir::new("queues-types");
    let _engine = support::engine(&dir);
    let node = node(&dir, "n").await;
    common::declare(&node, "jobs", QueueOptions::default()).await;
    let mut producer: Producer<Job> = within("producer", node.producer("jobs"))
        .await
        .expect("producer");
    let mut consumer: Consumer<Job> = within("consumer", node.consumer("jobs"))
        .await
        .expect("consumer");
    let job = Job {
        id: 7,
        name: "seven".into(),
    };
    within("send", producer.send(job)).await.expect("send");
    let d = next(&mut consumer).await;
    assert_eq!(d.id, 7);
    assert_eq!(d.message().name, "seven");
    d.ack().await.expect("ack");

    let wrong = within("wrong type", node.consumer::<Other>("jobs")).await;
    assert!(
        matches!(&wrong, Err(QueueSetupError::SchemaMismatch { message, .. }) if message.contains("Job") && message.contains("Other")),
        "{wrong:?}"
    );
    let missing = within("no queue", node.producer::<Bytes>("nope")).await;
    assert_eq!(missing.err(), Some(QueueSetupError::NoQueue("nope".into())));
    let other_options = QueueOptions {
        max_length: Some(3),
        ..QueueOptions::default()
    };
    let mismatch = within("redeclare", node.declare_queue("jobs", other_options)).await;
    assert!(
        matches!(mismatch, Err(QueueSetupError::Mismatch(_))),
        "{mismatch:?}"
    );
    let durable = within(
        "durable",
        node.declare_queue("disk", QueueOptions::durable()),
    )
    .await;
    match durable {
        Err(QueueSetupError::NotDurable(message)) => {
            assert!(message.contains("data directory"), "{message}");
        }
        other => panic!("a durable queue without a data directory: {other:?}"),
    }
}
