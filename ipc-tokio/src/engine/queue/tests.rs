//! The queue state machine without a router: events in, deliveries and actions out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ipc_core::QueueSettle;
use ipc_core::control::{MessageType, QueueSpec};
use ipc_core::descriptor::queue_outcome;

use super::state::{Hostile, QueueCounts, encode_spec};
use super::store::StoreOp;
use super::*;

/// A delivery as the fake router saw it: (node, consumer, payload, tag, count, redelivered).
type Seen = (u32, u32, Bytes, u64, u32, bool);

fn queues(durable: bool) -> Queues {
    Queues::new(QueuesConfig {
        memory_budget: 1 << 20,
        durable,
    })
}

fn bytes_ty() -> MessageType {
    MessageType::bytes()
}

/// Pumps with every node accepting; returns what was delivered.
fn pump(q: &mut Queues, now: Instant) -> Vec<Seen> {
    let mut seen = Vec::new();
    q.pump(
        |o| {
            seen.push((
                o.node,
                o.consumer,
                o.payload.clone(),
                o.tag,
                o.count,
                o.redelivered,
            ));
            true
        },
        now,
    );
    seen
}

fn produce(q: &mut Queues, producer: u32, text: &'static str) -> Vec<Action> {
    assert_eq!(q.admit(producer, text.len() as u32), Produced::Room);
    q.accept(producer, Bytes::from_static(text.as_bytes()))
}

fn ack(q: &mut Queues, node: u32, consumer: u32, tag: u64, how: QueueSettle) -> Vec<Action> {
    q.settle(node, consumer, tag, how, Instant::now())
        .unwrap()
        .1
}

#[test]
fn competing_consumers_each_message_once_fifo_round_robin() {
    let mut q = queues(false);
    q.declare("jobs", &QueueSpec::default()).unwrap();
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 10, 0).unwrap();
    q.add_consumer(3, 300, "jobs", &bytes_ty(), 10, 0).unwrap();
    for text in ["a", "b", "c", "d"] {
        let actions = produce(&mut q, 100, text);
        assert!(actions.contains(&Action::Confirm {
            node: 1,
            producer: 100,
            outcome: queue_outcome::OK,
            durable: false
        }));
    }
    let seen = pump(&mut q, Instant::now());
    let order: Vec<&[u8]> = seen.iter().map(|s| &s.2[..]).collect();
    assert_eq!(order, [b"a", b"b", b"c", b"d"]);
    assert_eq!(seen.iter().filter(|s| s.1 == 200).count(), 2);
    assert_eq!(seen.iter().filter(|s| s.1 == 300).count(), 2);
    assert!(seen.iter().all(|s| s.4 == 1 && !s.5));
    assert_eq!(q.depth("jobs"), Some((0, 4)));
    for s in &seen {
        ack(&mut q, s.0, s.1, s.3, QueueSettle::Ack);
    }
    assert_eq!(q.depth("jobs"), Some((0, 0)));
    assert_eq!(q.bytes(), 0);
}

#[test]
fn a_dead_consumers_deliveries_return_to_the_head_in_order_marked_redelivered() {
    let mut q = queues(false);
    q.declare("jobs", &QueueSpec::default()).unwrap();
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 3, 0).unwrap();
    for text in ["a", "b", "c", "d", "e"] {
        produce(&mut q, 100, text);
    }
    assert_eq!(pump(&mut q, Instant::now()).len(), 3);
    q.node_gone(2);
    assert_eq!(q.depth("jobs"), Some((5, 0)));
    q.add_consumer(4, 400, "jobs", &bytes_ty(), 10, 0).unwrap();
    let seen = pump(&mut q, Instant::now());
    let order: Vec<(&[u8], bool)> = seen.iter().map(|s| (&s.2[..], s.5)).collect();
    assert_eq!(
        order,
        [
            (&b"a"[..], true),
            (b"b", true),
            (b"c", true),
            (b"d", false),
            (b"e", false)
        ]
    );
    assert_eq!(seen[0].4, 2, "the second delivery of a");
}

#[test]
fn nack_requeues_reject_dead_letters_and_max_deliveries_dead_letters() {
    let mut q = queues(false);
    let spec = QueueSpec {
        max_deliveries: 2,
        dead_letter: "dead".into(),
        ..QueueSpec::default()
    };
    q.declare("jobs", &spec).unwrap();
    assert!(
        q.depth("dead").is_some(),
        "the dead-letter queue is declared with it"
    );
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 1, 0).unwrap();
    produce(&mut q, 100, "poison");
    produce(&mut q, 100, "bad");
    let s = pump(&mut q, Instant::now());
    assert_eq!(&s[0].2[..], b"poison");
    ack(&mut q, 2, 200, s[0].3, QueueSettle::Nack);
    let s = pump(&mut q, Instant::now());
    assert_eq!((&s[0].2[..], s[0].4, s[0].5), (&b"poison"[..], 2, true));
    // Its second delivery was the last allowed: a nack now dead-letters it.
    ack(&mut q, 2, 200, s[0].3, QueueSettle::Nack);
    assert_eq!(q.depth("dead"), Some((1, 0)));
    let s = pump(&mut q, Instant::now());
    assert_eq!(&s[0].2[..], b"bad");
    ack(&mut q, 2, 200, s[0].3, QueueSettle::Reject);
    assert_eq!(q.depth("dead"), Some((2, 0)));
    assert_eq!(q.depth("jobs"), Some((0, 0)));
    q.add_consumer(3, 300, "dead", &bytes_ty(), 10, 0).unwrap();
    let s = pump(&mut q, Instant::now());
    let dead: Vec<&[u8]> = s.iter().map(|s| &s.2[..]).collect();
    assert_eq!(dead, [&b"poison"[..], b"bad"]);
}

#[test]
fn an_expired_lease_returns_the_delivery_and_a_late_ack_is_not_held() {
    let mut q = queues(false);
    q.declare("jobs", &QueueSpec::default()).unwrap();
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 5, 100).unwrap();
    produce(&mut q, 100, "a");
    produce(&mut q, 100, "b");
    let t0 = Instant::now();
    let s = pump(&mut q, t0);
    assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(100)));
    // b's lease is renewed; a's runs out.
    let (_, actions) = q
        .settle(
            2,
            200,
            s[1].3,
            QueueSettle::Extend,
            t0 + Duration::from_millis(50),
        )
        .unwrap();
    assert!(matches!(actions[0], Action::Settled { outcome: 0, .. }));
    let (expired, _) = q.tick(t0 + Duration::from_millis(120));
    assert_eq!(expired, 1);
    assert_eq!(q.depth("jobs"), Some((1, 1)));
    let (outcome, actions) = q.settle(2, 200, s[0].3, QueueSettle::Ack, t0).unwrap();
    assert_eq!(outcome, SettleOutcome::NotHeld);
    assert!(matches!(
        actions[0],
        Action::Settled {
            outcome: queue_outcome::NOT_HELD,
            ..
        }
    ));
    // A double ack is not held either, and changes nothing.
    ack(&mut q, 2, 200, s[1].3, QueueSettle::Ack);
    let (outcome, _) = q.settle(2, 200, s[1].3, QueueSettle::Ack, t0).unwrap();
    assert_eq!(outcome, SettleOutcome::NotHeld);
    let s = pump(&mut q, t0 + Duration::from_millis(120));
    assert_eq!((&s[0].2[..], s[0].5), (&b"a"[..], true));
    let (expired, _) = q.tick(t0 + Duration::from_secs(10));
    assert_eq!(expired, 1, "the stale heap entry of b is skipped");
}

#[test]
fn hostile_settlements_are_breaches() {
    let mut q = queues(false);
    q.declare("jobs", &QueueSpec::default()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 5, 0).unwrap();
    let now = Instant::now();
    assert_eq!(
        q.settle(2, 200, 1, QueueSettle::Ack, now),
        Err(Hostile::NeverDelivered {
            consumer: 200,
            tag: 1
        })
    );
    assert_eq!(
        q.settle(3, 200, 1, QueueSettle::Ack, now),
        Err(Hostile::NotOwner(200))
    );
    assert_eq!(
        q.settle(2, 999, 0, QueueSettle::Nack, now),
        Err(Hostile::NotOwner(999))
    );
}

#[test]
fn a_full_queue_blocks_or_refuses_and_room_unblocks() {
    let mut q = queues(false);
    let spec = QueueSpec {
        max_length: 2,
        ..QueueSpec::default()
    };
    let (blocking, _) = q.declare("wait", &spec).unwrap();
    let refusing = QueueSpec {
        reject_when_full: true,
        ..spec.clone()
    };
    q.declare("refuse", &refusing).unwrap();
    q.add_producer(1, 100, "wait", &bytes_ty()).unwrap();
    q.add_producer(1, 101, "refuse", &bytes_ty()).unwrap();
    for _ in 0..2 {
        produce(&mut q, 100, "x");
        produce(&mut q, 101, "x");
    }
    assert_eq!(q.admit(100, 1), Produced::Blocked);
    assert_eq!(q.admit(101, 1), Produced::Refused);
    q.add_consumer(2, 200, "wait", &bytes_ty(), 5, 0).unwrap();
    let s = pump(&mut q, Instant::now());
    let actions = ack(&mut q, 2, 200, s[0].3, QueueSettle::Ack);
    assert!(actions.contains(&Action::Unblock { queue: blocking }));
    assert_eq!(q.admit(100, 1), Produced::Room);
}

#[test]
fn declarations_are_idempotent_and_checked() {
    let mut q = queues(false);
    q.declare("jobs", &QueueSpec::default()).unwrap();
    assert!(q.declare("jobs", &QueueSpec::default()).is_ok());
    let other = QueueSpec {
        max_length: 5,
        ..QueueSpec::default()
    };
    assert_eq!(
        q.declare("jobs", &other),
        Err(QueueError::Mismatch("jobs".into()))
    );
    let durable = QueueSpec {
        durable: true,
        ..QueueSpec::default()
    };
    assert_eq!(
        q.declare("disk", &durable),
        Err(QueueError::NotDurable("disk".into()))
    );
    let typed = MessageType {
        name: "Job".into(),
        fingerprint: 7,
    };
    q.add_producer(1, 100, "jobs", &typed).unwrap();
    let other_type = MessageType {
        name: "Other".into(),
        fingerprint: 8,
    };
    assert!(matches!(
        q.add_consumer(2, 200, "jobs", &other_type, 1, 0),
        Err(QueueError::SchemaMismatch { .. })
    ));
    assert_eq!(
        q.add_consumer(2, 200, "nope", &typed, 1, 0),
        Err(QueueError::NoQueue("nope".into()))
    );
}

#[test]
fn durable_queues_say_what_to_store_and_confirm_after_commit() {
    let mut q = queues(true);
    let spec = QueueSpec {
        durable: true,
        dead_letter: "dead".into(),
        ..QueueSpec::default()
    };
    let (_, actions) = q.declare("jobs", &spec).unwrap();
    assert_eq!(
        actions.len(),
        2,
        "the dead-letter queue and the queue: {actions:?}"
    );
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 5, 0).unwrap();
    let actions = produce(&mut q, 100, "a");
    assert!(matches!(
        &actions[0],
        Action::Store(StoreOp::Put { id: 1, .. })
    ));
    assert!(matches!(actions[1], Action::Confirm { durable: true, .. }));
    produce(&mut q, 100, "b");
    let s = pump(&mut q, Instant::now());
    let actions = ack(&mut q, 2, 200, s[0].3, QueueSettle::Ack);
    assert!(matches!(
        &actions[0],
        Action::Store(StoreOp::Ack { id: 1, .. })
    ));
    let actions = ack(&mut q, 2, 200, s[1].3, QueueSettle::Reject);
    assert!(matches!(
        &actions[0],
        Action::Store(StoreOp::DeadLetter {
            id: 2,
            new_id: 1,
            ..
        })
    ));
    // Recovery: everything comes back redelivered, ids continue.
    let mut r = queues(true);
    r.recover(
        "jobs",
        spec,
        vec![
            (4, Bytes::from_static(b"x"), 1),
            (9, Bytes::from_static(b"y"), 0),
        ],
    );
    r.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    r.add_consumer(2, 200, "jobs", &bytes_ty(), 5, 0).unwrap();
    let s = pump(&mut r, Instant::now());
    assert_eq!(
        s.iter().map(|s| (s.4, s.5)).collect::<Vec<_>>(),
        [(2, true), (1, true)]
    );
    let actions = produce(&mut r, 100, "z");
    assert!(matches!(
        &actions[0],
        Action::Store(StoreOp::Put { id: 10, .. })
    ));
}

#[test]
fn options_round_trip_through_their_stored_bytes() {
    let spec = QueueSpec {
        durable: true,
        max_length: 77,
        reject_when_full: true,
        max_deliveries: 5,
        dead_letter: "jobs.dead".into(),
        lease_ms: 1234,
    };
    let bytes = encode_spec(&spec);
    assert_eq!(decode_spec(&bytes), Some(spec));
    assert_eq!(
        decode_spec(&encode_spec(&QueueSpec::default())),
        Some(QueueSpec::default())
    );
    for cut in 0..bytes.len() {
        assert_eq!(decode_spec(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode_spec(&longer), None);
    let mut other_version = bytes;
    other_version[0] = 2;
    assert_eq!(decode_spec(&other_version), None);
}

#[test]
fn a_dead_consumers_deliveries_go_first_to_the_others_durable_or_not() {
    for durable in [false, true] {
        let mut q = queues(true);
        let spec = QueueSpec {
            durable,
            ..QueueSpec::default()
        };
        q.declare("jobs", &spec).unwrap();
        q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
        for (node, id) in [(2, 200), (3, 300), (4, 400)] {
            q.add_consumer(node, id, "jobs", &bytes_ty(), 2, 0).unwrap();
        }
        for text in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            produce(&mut q, 100, text);
        }
        let first = pump(&mut q, Instant::now());
        assert_eq!(first.len(), 6);
        let held_by_3: Vec<Bytes> = first
            .iter()
            .filter(|s| s.1 == 300)
            .map(|s| s.2.clone())
            .collect();
        q.node_gone(3);
        // Node 2 acks one: the next it gets is the first of node 3's.
        let s2 = first.iter().find(|s| s.1 == 200).unwrap();
        ack(&mut q, 2, 200, s2.3, QueueSettle::Ack);
        let next = pump(&mut q, Instant::now());
        assert_eq!(next.len(), 1, "durable {durable}: {next:?}");
        assert_eq!(next[0].2, held_by_3[0], "durable {durable}");
        assert!(next[0].5);
    }
}

#[test]
fn counts_follow_every_path_a_message_takes() {
    let mut q = queues(false);
    let spec = QueueSpec {
        max_deliveries: 2,
        dead_letter: "dead".into(),
        ..QueueSpec::default()
    };
    q.declare("jobs", &spec).unwrap();
    q.add_producer(1, 100, "jobs", &bytes_ty()).unwrap();
    q.add_consumer(2, 200, "jobs", &bytes_ty(), 2, 0).unwrap();
    for text in ["a", "b", "c"] {
        produce(&mut q, 100, text);
    }
    let now = Instant::now();
    assert_eq!(pump(&mut q, now).len(), 2);
    assert_eq!((q.ready_count(), q.unacked_count()), (1, 2));
    ack(&mut q, 2, 200, 1, QueueSettle::Ack); // "a" gone
    ack(&mut q, 2, 200, 2, QueueSettle::Nack); // "b" back to the head
    // "b" again (its second delivery) and "c".
    let seen = pump(&mut q, now);
    assert_eq!(seen.len(), 2);
    assert!(seen[0].5 && !seen[1].5, "{seen:?}");
    // The node dies: "b" is over its deliveries (dead-lettered), "c" returns.
    q.node_gone(2);
    assert_eq!((q.ready_count(), q.unacked_count()), (2, 0));
    let totals = q.totals();
    assert_eq!(
        totals,
        QueueCounts {
            enqueued: 4,
            delivered: 4,
            redelivered: 1,
            acked: 1,
            dead_lettered: 1,
        }
    );
    let (views, consumers) = q.views();
    assert!(consumers.is_empty());
    let jobs = views.iter().find(|v| v.name == "jobs").unwrap();
    assert_eq!((jobs.ready, jobs.unacked, jobs.bytes), (1, 0, 1));
    assert_eq!((jobs.producers, jobs.consumers), (1, 0));
    assert_eq!(jobs.counts.enqueued, 3);
    assert_eq!(jobs.counts.dead_lettered, 1);
    let dead = views.iter().find(|v| v.name == "dead").unwrap();
    assert_eq!((dead.ready, dead.counts.enqueued), (1, 1));

    // A lease that runs out returns the delivery; the consumer's own counts show it.
    q.add_consumer(3, 300, "jobs", &bytes_ty(), 1, 10).unwrap();
    assert_eq!(pump(&mut q, now).len(), 1);
    let (_, consumers) = q.views();
    assert_eq!((consumers[0].delivered, consumers[0].unacked), (1, 1));
    assert_eq!(consumers[0].lease, Some(Duration::from_millis(10)));
    let (expired, _) = q.tick(now + Duration::from_secs(1));
    assert_eq!(expired, 1);
    assert_eq!((q.ready_count(), q.unacked_count()), (2, 0));
}
