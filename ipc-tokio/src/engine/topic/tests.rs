//! The topic state machine, driven by hand: no runtime, no sockets, no shared memory.
//!
//! [`Net`] plays the router and the nodes: it carries out the actions (remembering what each
//! subscription was delivered, in order, and which publishers were woken) and lets each test
//! decide when a subscriber releases.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ipc_core::broadcast::SlotError;
use ipc_core::control::MessageType;
use proptest::prelude::*;

use super::state::{
    Action, CloseReason, Policy, PubKey, Reserve, SubKey, SubOptions, TopicError, TopicId, Topics,
    TopicsConfig,
};

const NODE_A: u32 = 1;
const NODE_B: u32 = 2;
const NODE_C: u32 = 3;

fn config() -> TopicsConfig {
    TopicsConfig {
        segment_size: 1 << 16,
        min_block: 64,
        window: 4,
        max_history: 16,
    }
}

fn bytes() -> MessageType {
    MessageType::bytes()
}

fn typed(name: &str, fingerprint: u64) -> MessageType {
    MessageType {
        name: name.into(),
        fingerprint,
    }
}

fn drop_oldest(queue: u32) -> SubOptions {
    SubOptions {
        policy: Policy::DropOldest,
        queue,
        history: 0,
    }
}

fn block(queue: u32, untether: Duration) -> SubOptions {
    SubOptions {
        policy: Policy::Block { untether },
        queue,
        history: 0,
    }
}

/// An item a subscriber's stream would yield.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Msg {
        topic: TopicId,
        offset: u64,
        seq: u64,
    },
    Lagged(u64),
    Closed(CloseReason),
}

#[derive(Default)]
struct Net {
    /// Everything each subscription received, in order.
    received: BTreeMap<SubKey, Vec<Item>>,
    /// Delivered and not yet released, per subscription, oldest first.
    held: BTreeMap<SubKey, VecDeque<(TopicId, u64)>>,
    unblocked: Vec<PubKey>,
    attached: BTreeSet<(SubKey, TopicId)>,
    segments: BTreeSet<TopicId>,
    mismatches: Vec<(SubKey, TopicId)>,
}

impl Net {
    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::CreateSegment { topic, .. } => {
                    assert!(self.segments.insert(topic), "segment created twice");
                }
                Action::RemoveSegment { topic } => {
                    assert!(self.segments.remove(&topic), "removed an unknown segment");
                }
                Action::Attach { sub, topic } => {
                    assert!(self.segments.contains(&topic), "attach before the segment");
                    assert!(self.attached.insert((sub, topic)), "attached twice");
                }
                Action::Mismatch { sub, topic, .. } => self.mismatches.push((sub, topic)),
                Action::Deliver {
                    sub,
                    topic,
                    offset,
                    seq,
                    ..
                } => {
                    assert!(
                        self.attached.contains(&(sub, topic)),
                        "data before its TopicAttach"
                    );
                    self.received
                        .entry(sub)
                        .or_default()
                        .push(Item::Msg { topic, offset, seq });
                    self.held.entry(sub).or_default().push_back((topic, offset));
                }
                Action::Lagged { sub, count } => {
                    assert!(count > 0);
                    self.received
                        .entry(sub)
                        .or_default()
                        .push(Item::Lagged(count));
                }
                Action::Closed { sub, reason } => {
                    self.received
                        .entry(sub)
                        .or_default()
                        .push(Item::Closed(reason));
                }
                Action::Unblock { publisher } => self.unblocked.push(publisher),
            }
        }
    }

    /// `sub` releases its oldest held slot, if any.
    fn release_one(&mut self, topics: &mut Topics, sub: SubKey) -> bool {
        let Some((topic, offset)) = self.held.get_mut(&sub).and_then(|h| h.pop_front()) else {
            return false;
        };
        let actions = topics
            .release(sub, topic, offset)
            .expect("an honest release");
        self.apply(actions);
        true
    }

    fn release_all(&mut self, topics: &mut Topics, sub: SubKey) {
        while self.release_one(topics, sub) {}
    }

    fn items(&self, sub: SubKey) -> &[Item] {
        self.received.get(&sub).map_or(&[], Vec::as_slice)
    }

    fn seqs(&self, sub: SubKey) -> Vec<u64> {
        self.items(sub)
            .iter()
            .filter_map(|i| match i {
                Item::Msg { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    fn lagged(&self, sub: SubKey) -> u64 {
        self.items(sub)
            .iter()
            .map(|i| match i {
                Item::Lagged(n) => *n,
                _ => 0,
            })
            .sum()
    }
}

/// Reserve, "copy", publish; `None` if the publisher was blocked.
fn try_publish(
    topics: &mut Topics,
    net: &mut Net,
    now: Instant,
    publisher: PubKey,
    len: u32,
) -> Option<u64> {
    let (reserved, actions) = topics.reserve(now, publisher, len).expect("reserve");
    net.apply(actions);
    match reserved {
        Reserve::Slot(slot) => {
            net.apply(topics.publish(publisher, slot).expect("publish"));
            Some(slot.offset)
        }
        Reserve::Blocked => None,
    }
}

fn publish(topics: &mut Topics, net: &mut Net, now: Instant, publisher: PubKey, len: u32) {
    assert!(
        try_publish(topics, net, now, publisher, len).is_some(),
        "publisher blocked"
    );
}

fn add_pub(topics: &mut Topics, net: &mut Net, node: u32, name: &str, history: u32) -> PubKey {
    let (key, _, actions) = topics
        .add_publisher(node, name, &bytes(), history)
        .expect("publish");
    net.apply(actions);
    key
}

fn add_sub(
    topics: &mut Topics,
    net: &mut Net,
    node: u32,
    pattern: &str,
    options: SubOptions,
) -> SubKey {
    let (key, actions) = topics
        .subscribe(node, pattern, &bytes(), options)
        .expect("subscribe");
    net.apply(actions);
    key
}

// ===== one copy, counted holders =====

#[test]
fn one_slot_per_message_reused_only_when_every_holder_released() {
    let now = Instant::now();
    let mut topics = Topics::new(config());
    let mut net = Net::default();
    let subs: Vec<SubKey> = [NODE_A, NODE_B, NODE_C]
        .iter()
        .map(|&n| add_sub(&mut topics, &mut net, n, "ticks", drop_oldest(8)))
        .collect();
    let publisher = add_pub(&mut topics, &mut net, NODE_A, "ticks", 0);
    let id = topics.topic_id("ticks").unwrap();
    publish(&mut topics, &mut net, now, publisher, 1000);
    let offsets: BTreeSet<u64> = subs
        .iter()
        .map(|s| match net.items(*s) {
            [Item::Msg { offset, seq: 1, .. }] => *offset,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offsets.len(), 1, "every subscriber names the same slot");
    assert_eq!(topics.bytes_in_use(id), Some(1024));
    net.release_one(&mut topics, subs[0]);
    net.release_one(&mut topics, subs[1]);
    assert_eq!(topics.bytes_in_use(id), Some(1024), "one holder left");
    net.release_one(&mut topics, subs[2]);
    assert_eq!(topics.bytes_in_use(id), Some(0));
    let stats = topics.topic_stats(id).unwrap();
    assert_eq!(
        (
            stats.published,
            stats.delivered,
            stats.in_flight,
            stats.slots
        ),
        (1, 3, 0, 0)
    );
    // No subscriber: the slot is freed at once.
    let lonely = add_pub(&mut topics, &mut net, NODE_B, "nobody/listens", 0);
    let lonely_id = topics.topic_id("nobody/listens").unwrap();
    publish(&mut topics, &mut net, now, lonely, 64);
    assert_eq!(topics.bytes_in_use(lonely_id), Some(0));
}

#[test]
fn hostile_releases_are_the_liars_error_alone() {
    let now = Instant::now();
    let mut topics = Topics::new(TopicsConfig {
        window: 1,
        ..config()
    });
    let mut net = Net::default();
    let liar = add_sub(&mut topics, &mut net, NODE_A, "t", drop_oldest(8));
    let honest = add_sub(&mut topics, &mut net, NODE_B, "t", drop_oldest(8));
    let publisher = add_pub(&mut topics, &mut net, NODE_C, "t", 0);
    let id = topics.topic_id("t").unwrap();
    publish(&mut topics, &mut net, now, publisher, 10);
    publish(&mut topics, &mut net, now, publisher, 10);
    let [Item::Msg { offset: first, .. }] = net.items(liar) else {
        panic!("window of one")
    };
    let first = *first;
    let second = match net.items(honest) {
        [Item::Msg { .. }] => {
            // The honest one also has a window of one: its second message is pending.
            net.release_one(&mut topics, honest);
            match net.items(honest) {
                [_, Item::Msg { offset, .. }] => *offset,
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    };
    // The liar: a slot still pending for it (never delivered), one that names nothing, a
    // topic that does not exist, then a double release.
    assert_eq!(
        topics.release(liar, id, second),
        Err(TopicError::Release(SlotError::NotHeld { offset: second }))
    );
    assert_eq!(
        topics.release(liar, id, 4096),
        Err(TopicError::Release(SlotError::NoSlot { offset: 4096 }))
    );
    assert_eq!(
        topics.release(liar, 99, first),
        Err(TopicError::NoTopic(99))
    );
    net.release_one(&mut topics, liar);
    assert_eq!(
        topics.release(liar, id, first),
        Err(TopicError::Release(SlotError::NoSlot { offset: first })),
        "released twice (and freed by then)"
    );
    // Another node cannot release on its behalf: the key carries the node.
    let forged = SubKey {
        node: NODE_C,
        id: honest.id,
    };
    assert!(topics.release(forged, id, second).is_err());
    // The honest subscriber is unaffected.
    assert_eq!(net.seqs(honest), vec![1, 2]);
    net.release_all(&mut topics, honest);
    net.release_all(&mut topics, liar);
    assert_eq!(topics.bytes_in_use(id), Some(0));
}

// ===== DropOldest =====

#[test]
fn drop_oldest_counts_exactly_and_the_fast_lose_nothing() {
    let now = Instant::now();
    let mut topics = Topics::new(config()); // window 4
    let mut net = Net::default();
    let fast = add_sub(&mut topics, &mut net, NODE_A, "feed", drop_oldest(8));
    let slow = add_sub(&mut topics, &mut net, NODE_B, "feed", drop_oldest(8));
    let publisher = add_pub(&mut topics, &mut net, NODE_C, "feed", 0);
    let id = topics.topic_id("feed").unwrap();
    const N: u64 = 1000;
    for i in 0..N {
        publish(&mut topics, &mut net, now, publisher, 100);
        net.release_all(&mut topics, fast);
        // The slow one releases one message in seven.
        if i % 7 == 0 {
            net.release_one(&mut topics, slow);
        }
    }
    net.release_all(&mut topics, slow);
    assert_eq!(net.seqs(fast), (1..=N).collect::<Vec<_>>());
    assert_eq!(net.lagged(fast), 0);
    let received = net.seqs(slow).len() as u64;
    let lagged = net.lagged(slow);
    assert!(lagged > 0, "the slow subscriber must have lagged");
    assert_eq!(received + lagged, N, "received + lagged == published");
    // Each Lagged(n) stands exactly for the gap in sequence numbers that follows it.
    let mut expect_next = 1;
    let mut pending_lag = 0;
    for item in net.items(slow) {
        match *item {
            Item::Lagged(n) => pending_lag += n,
            Item::Msg { seq, .. } => {
                assert_eq!(seq, expect_next + pending_lag, "gap without its Lagged");
                pending_lag = 0;
                expect_next = seq + 1;
            }
            Item::Closed(_) => panic!("not closed"),
        }
    }
    let stats = topics.sub_stats(slow).unwrap();
    assert_eq!((stats.delivered, stats.lagged), (received, lagged));
    let t = topics.topic_stats(id).unwrap();
    assert_eq!(t.published, N);
    assert_eq!(t.delivered, N + received);
    assert_eq!(t.lagged, lagged);
    assert_eq!((t.in_flight, t.slots), (0, 0));
    assert_eq!(topics.bytes_in_use(id), Some(0));
}

#[test]
fn a_full_segment_sheds_drop_oldest_queues_before_blocking() {
    let now = Instant::now();
    // A segment of 16 slots of 1 KiB: window 4 + queue 64 could hold far more.
    let mut topics = Topics::new(TopicsConfig {
        segment_size: 16 << 10,
        min_block: 64,
        window: 4,
        max_history: 0,
    });
    let mut net = Net::default();
    let stuck = add_sub(&mut topics, &mut net, NODE_A, "big", drop_oldest(64));
    let publisher = add_pub(&mut topics, &mut net, NODE_B, "big", 0);
    for _ in 0..100 {
        publish(&mut topics, &mut net, now, publisher, 1000);
    }
    // 4 in flight; the queue was shed to make room; nothing silent.
    let stats = topics.sub_stats(stuck).unwrap();
    assert_eq!(stats.in_flight, 4);
    assert_eq!(
        u64::from(stats.in_flight) + stats.pending as u64 + stats.lagged,
        100
    );
    assert!(stats.pending <= 12);
    net.release_all(&mut topics, stuck);
    net.release_all(&mut topics, stuck);
    while net.release_one(&mut topics, stuck) {}
    assert_eq!(net.seqs(stuck).len() as u64 + net.lagged(stuck), 100);
}

#[test]
fn lag_is_reported_even_when_no_later_message_comes() {
    let now = Instant::now();
    // Room for 4 slots of 4 KiB.
    let mut topics = Topics::new(TopicsConfig {
        segment_size: 16 << 10,
        min_block: 64,
        window: 1,
        max_history: 0,
    });
    let mut net = Net::default();
    let stuck = add_sub(&mut topics, &mut net, NODE_A, "t", drop_oldest(1));
    // A Block subscriber that never releases: it holds every slot, so room runs out.
    let other = add_sub(
        &mut topics,
        &mut net,
        NODE_B,
        "t",
        block(8, Duration::from_secs(60)),
    );
    let publisher = add_pub(&mut topics, &mut net, NODE_C, "t", 0);
    let mut sent = 0;
    while try_publish(&mut topics, &mut net, now, publisher, 4000).is_some() {
        sent += 1;
        assert!(sent < 100, "the segment must fill up");
    }
    assert_eq!(sent, 4);
    // Making room shed the stuck one's whole queue, and it was told at once, although the
    // publisher now waits and no message follows the loss.
    let lagged = topics.sub_stats(stuck).unwrap().lagged;
    assert_eq!(lagged, 3);
    assert_eq!(
        net.items(stuck),
        &[
            Item::Msg {
                topic: 1,
                offset: 0,
                seq: 1
            },
            Item::Lagged(3)
        ]
    );
    assert_eq!(net.seqs(other), vec![1]);
    assert_eq!(topics.sub_stats(other).unwrap().pending, 3);
}

// ===== Block and untether =====

#[test]
fn block_holds_the_publisher_and_loses_nothing() {
    let now = Instant::now();
    let mut topics = Topics::new(TopicsConfig {
        window: 2,
        ..config()
    });
    let mut net = Net::default();
    let sub = add_sub(
        &mut topics,
        &mut net,
        NODE_A,
        "orders",
        block(3, Duration::from_secs(5)),
    );
    let publisher = add_pub(&mut topics, &mut net, NODE_B, "orders", 0);
    // Window 2 + queue 3: the sixth publish is refused.
    for _ in 0..5 {
        publish(&mut topics, &mut net, now, publisher, 10);
    }
    assert_eq!(try_publish(&mut topics, &mut net, now, publisher, 10), None);
    assert!(net.unblocked.is_empty());
    assert_eq!(
        topics.next_deadline(),
        Some(now + Duration::from_secs(5)),
        "the untether clock runs"
    );
    net.release_one(&mut topics, sub);
    assert_eq!(
        net.unblocked,
        vec![publisher],
        "room again: the publisher is woken"
    );
    assert_eq!(topics.next_deadline(), None, "the clock stopped");
    let mut sent = 5;
    let mut released = 1;
    while sent < 200 {
        if try_publish(&mut topics, &mut net, now, publisher, 10).is_some() {
            sent += 1;
        } else {
            net.release_one(&mut topics, sub);
            released += 1;
        }
    }
    net.release_all(&mut topics, sub);
    assert!(released > 10);
    assert_eq!(net.seqs(sub), (1..=200).collect::<Vec<_>>());
    assert_eq!(net.lagged(sub), 0);
    assert!(topics.tick(now + Duration::from_secs(3600)).is_empty());
}

#[test]
fn a_block_subscriber_past_its_untether_timeout_is_cut_loose() {
    let t0 = Instant::now();
    let untether = Duration::from_millis(500);
    let mut topics = Topics::new(TopicsConfig {
        window: 1,
        ..config()
    });
    let mut net = Net::default();
    let stuck = add_sub(&mut topics, &mut net, NODE_A, "t", block(1, untether));
    let fine = add_sub(&mut topics, &mut net, NODE_B, "t", drop_oldest(4));
    let publisher = add_pub(&mut topics, &mut net, NODE_C, "t", 0);
    let id = topics.topic_id("t").unwrap();
    publish(&mut topics, &mut net, t0, publisher, 10); // in flight
    publish(&mut topics, &mut net, t0, publisher, 10); // pending: full
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(try_publish(&mut topics, &mut net, t1, publisher, 10), None);
    assert_eq!(topics.next_deadline(), Some(t1 + untether));
    // A second attempt does not restart the clock.
    assert_eq!(
        try_publish(&mut topics, &mut net, t1 + untether / 2, publisher, 10),
        None
    );
    assert!(
        topics
            .tick(t1 + untether - Duration::from_millis(1))
            .is_empty()
    );
    let actions = topics.tick(t1 + untether);
    net.apply(actions);
    assert_eq!(
        net.items(stuck).last(),
        Some(&Item::Closed(CloseReason::Untethered))
    );
    assert_eq!(net.unblocked, vec![publisher]);
    assert_eq!(topics.sub_stats(stuck), None);
    assert_eq!(topics.next_deadline(), None);
    publish(&mut topics, &mut net, t1 + untether, publisher, 10);
    // The cut-loose subscriber still holds what it was delivered, until it releases it.
    assert_eq!(net.seqs(stuck), vec![1]);
    net.release_all(&mut topics, fine);
    assert_eq!(
        topics.bytes_in_use(id),
        Some(64),
        "slot 1 is still the stuck one's"
    );
    net.release_all(&mut topics, stuck);
    assert_eq!(topics.bytes_in_use(id), Some(0));
    assert_eq!(net.seqs(fine), vec![1, 2, 3]);
}

mod more;
