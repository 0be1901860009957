//! Topic state machine tests, continued: history, patterns, types, order, death, a model.

use super::*;

// ===== history, patterns, types =====

#[test]
fn history_is_replayed_to_late_joiners() {
    let now = Instant::now();
    let mut topics = Topics::new(config());
    let mut net = Net::default();
    let publisher = add_pub(&mut topics, &mut net, NODE_A, "config", 3);
    let id = topics.topic_id("config").unwrap();
    for _ in 0..5 {
        publish(&mut topics, &mut net, now, publisher, 100);
    }
    assert_eq!(topics.topic_stats(id).unwrap().history, 3);
    assert_eq!(
        topics.bytes_in_use(id),
        Some(3 * 128),
        "only the last 3 are kept"
    );
    let two = add_sub(
        &mut topics,
        &mut net,
        NODE_B,
        "config",
        SubOptions {
            history: 2,
            ..drop_oldest(8)
        },
    );
    let all = add_sub(
        &mut topics,
        &mut net,
        NODE_C,
        "config",
        SubOptions {
            history: 100,
            ..drop_oldest(8)
        },
    );
    let none = add_sub(&mut topics, &mut net, NODE_C, "config", drop_oldest(8));
    assert_eq!(net.seqs(two), vec![4, 5]);
    assert_eq!(net.seqs(all), vec![3, 4, 5]);
    assert!(net.seqs(none).is_empty());
    publish(&mut topics, &mut net, now, publisher, 100);
    assert_eq!(net.seqs(two), vec![4, 5, 6]);
    assert_eq!(net.seqs(none), vec![6]);
    for s in [two, all, none] {
        net.release_all(&mut topics, s);
    }
    assert_eq!(
        topics.bytes_in_use(id),
        Some(3 * 128),
        "history still holds 4, 5, 6"
    );
    // Everyone leaves: history goes with the topic.
    net.apply(topics.node_gone(NODE_A));
    net.apply(topics.node_gone(NODE_B));
    net.apply(topics.node_gone(NODE_C));
    assert_eq!(topics.topic_count(), 0);
    assert!(net.segments.is_empty());
}

#[test]
fn history_beyond_window_and_queue_is_lag_not_silence() {
    let now = Instant::now();
    let mut topics = Topics::new(TopicsConfig {
        window: 2,
        ..config()
    });
    let mut net = Net::default();
    let publisher = add_pub(&mut topics, &mut net, NODE_A, "t", 10);
    for _ in 0..10 {
        publish(&mut topics, &mut net, now, publisher, 8);
    }
    // Asks for 10, has room for 2 in flight + 3 queued.
    let sub = add_sub(
        &mut topics,
        &mut net,
        NODE_B,
        "t",
        SubOptions {
            history: 10,
            ..drop_oldest(3)
        },
    );
    net.release_all(&mut topics, sub);
    assert_eq!(
        net.items(sub)
            .iter()
            .map(|i| match i {
                Item::Msg { seq, .. } => *seq as i64,
                Item::Lagged(n) => -(*n as i64),
                Item::Closed(_) => 0,
            })
            .collect::<Vec<_>>(),
        vec![1, 2, -5, 8, 9, 10],
        "two delivered at once, five lost and said so, then the last three"
    );
}

#[test]
fn prefix_subscriptions_see_exactly_the_topics_under_them() {
    let now = Instant::now();
    let mut topics = Topics::new(config());
    let mut net = Net::default();
    let sensors = add_sub(&mut topics, &mut net, NODE_A, "sensors/**", drop_oldest(8));
    let everything = add_sub(&mut topics, &mut net, NODE_B, "**", drop_oldest(8));
    let pubs: Vec<PubKey> = [
        "sensors/temp",
        "sensors/temp/room-1",
        "sensors",
        "sensorsx/a",
        "b",
    ]
    .iter()
    .map(|name| add_pub(&mut topics, &mut net, NODE_C, name, 0))
    .collect();
    let late = add_sub(
        &mut topics,
        &mut net,
        NODE_C,
        "sensors/temp/**",
        drop_oldest(8),
    );
    for p in &pubs {
        publish(&mut topics, &mut net, now, *p, 8);
    }
    for s in [sensors, everything, late] {
        net.release_all(&mut topics, s);
    }
    let topics_of = |net: &Net, sub| -> BTreeSet<String> {
        net.items(sub)
            .iter()
            .filter_map(|i| match i {
                Item::Msg { topic, .. } => Some(*topic),
                _ => None,
            })
            .map(|t| {
                [
                    "sensors/temp",
                    "sensors/temp/room-1",
                    "sensors",
                    "sensorsx/a",
                    "b",
                ][t as usize - 1]
                    .to_owned()
            })
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        topics_of(&net, sensors),
        set(&["sensors/temp", "sensors/temp/room-1"])
    );
    assert_eq!(topics_of(&net, everything).len(), 5);
    assert_eq!(topics_of(&net, late), set(&["sensors/temp/room-1"]));
    // Attached exactly where it matches, and nowhere else.
    let attached_to = |sub| net.attached.iter().filter(|(s, _)| *s == sub).count();
    assert_eq!(
        (
            attached_to(sensors),
            attached_to(everything),
            attached_to(late)
        ),
        (2, 5, 1)
    );
}

#[test]
fn schema_fingerprints_are_checked() {
    let mut topics = Topics::new(config());
    let mut net = Net::default();
    let tick = typed("Tick", 1);
    let quote = typed("Quote", 2);
    let (_, _, actions) = topics.add_publisher(NODE_A, "m", &tick, 0).unwrap();
    net.apply(actions);
    let err = topics
        .subscribe(NODE_B, "m", &quote, SubOptions::default())
        .unwrap_err();
    assert_eq!(
        err,
        TopicError::SchemaMismatch {
            topic: "m".into(),
            topic_type: tick.clone(),
            requested: quote.clone()
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("Tick") && message.contains("Quote"),
        "{message}"
    );
    assert!(matches!(
        topics.add_publisher(NODE_B, "m", &quote, 0),
        Err(TopicError::SchemaMismatch { .. })
    ));
    assert!(matches!(
        topics.add_publisher(NODE_B, "m", &bytes(), 0),
        Err(TopicError::SchemaMismatch { .. })
    ));
    // Raw bytes may read any topic; the same type is welcome.
    assert!(
        topics
            .subscribe(NODE_B, "m", &bytes(), SubOptions::default())
            .is_ok()
    );
    assert!(
        topics
            .subscribe(NODE_B, "m", &tick, SubOptions::default())
            .is_ok()
    );
    // A typed subscriber fixes a new topic's type for publishers to come.
    let (_, actions) = topics
        .subscribe(NODE_C, "q", &quote, SubOptions::default())
        .unwrap();
    net.apply(actions);
    assert!(topics.add_publisher(NODE_A, "q", &tick, 0).is_err());
    assert!(topics.add_publisher(NODE_A, "q", &quote, 0).is_ok());
    // A typed prefix subscription is told about, and not attached to, topics of another type.
    let (prefix, actions) = topics
        .subscribe(NODE_C, "**", &tick, SubOptions::default())
        .unwrap();
    net.apply(actions);
    let m = topics.topic_id("m").unwrap();
    let q = topics.topic_id("q").unwrap();
    assert!(net.attached.contains(&(prefix, m)));
    assert!(!net.attached.contains(&(prefix, q)));
    assert_eq!(net.mismatches, vec![(prefix, q)]);
    // A publisher whose type differs from a prefix subscriber's does not change it.
    let (_, _, actions) = topics.add_publisher(NODE_A, "n", &quote, 0).unwrap();
    net.apply(actions);
    let n = topics.topic_id("n").unwrap();
    assert_eq!(net.mismatches, vec![(prefix, q), (prefix, n)]);
    // Bad names are refused.
    assert!(matches!(
        topics.add_publisher(NODE_A, "a/**", &bytes(), 0),
        Err(TopicError::BadName(_))
    ));
    assert!(matches!(
        topics.subscribe(NODE_A, "a/*/b", &bytes(), SubOptions::default()),
        Err(TopicError::BadName(_))
    ));
}

// ===== order, death =====

#[test]
fn order_is_kept_per_publisher() {
    let now = Instant::now();
    let mut topics = Topics::new(config());
    let mut net = Net::default();
    let sub = add_sub(&mut topics, &mut net, NODE_A, "t", drop_oldest(64));
    let p1 = add_pub(&mut topics, &mut net, NODE_B, "t", 0);
    let p2 = add_pub(&mut topics, &mut net, NODE_C, "t", 0);
    let mut by_seq = BTreeMap::new();
    for i in 0..300u64 {
        let (p, tag) = if i % 3 == 0 { (p2, 2) } else { (p1, 1) };
        publish(&mut topics, &mut net, now, p, 16);
        by_seq.insert(i + 1, tag);
        net.release_all(&mut topics, sub);
    }
    let seqs = net.seqs(sub);
    assert_eq!(seqs.len(), 300);
    for tag in [1, 2] {
        let mine: Vec<u64> = seqs.iter().copied().filter(|s| by_seq[s] == tag).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "publisher {tag} reordered"
        );
    }
}

#[test]
fn a_dead_node_frees_every_slot_it_held_and_never_holds_a_publisher_back() {
    let now = Instant::now();
    let mut topics = Topics::new(TopicsConfig {
        window: 2,
        ..config()
    });
    let mut net = Net::default();
    let doomed_block = add_sub(
        &mut topics,
        &mut net,
        NODE_A,
        "t",
        block(2, Duration::from_secs(60)),
    );
    let doomed_prefix = add_sub(&mut topics, &mut net, NODE_A, "**", drop_oldest(2));
    let survivor = add_sub(&mut topics, &mut net, NODE_B, "t", drop_oldest(64));
    let publisher = add_pub(&mut topics, &mut net, NODE_C, "t", 0);
    let doomed_pub = add_pub(&mut topics, &mut net, NODE_A, "t", 0);
    let id = topics.topic_id("t").unwrap();
    for _ in 0..4 {
        publish(&mut topics, &mut net, now, publisher, 500);
    }
    assert_eq!(
        try_publish(&mut topics, &mut net, now, publisher, 500),
        None
    );
    assert!(topics.sub_stats(doomed_block).unwrap().in_flight == 2);
    // Node A dies: SIGKILL, its socket closes.
    let actions = topics.node_gone(NODE_A);
    assert!(
        actions.iter().all(|a| match a {
            Action::Closed { sub, .. } => sub.node != NODE_A,
            Action::Deliver { sub, .. } => sub.node != NODE_A,
            _ => true,
        }),
        "{actions:?}"
    );
    net.apply(actions);
    assert!(net.unblocked.contains(&publisher), "the publisher goes on");
    assert!(!net.unblocked.contains(&doomed_pub));
    assert_eq!(topics.sub_stats(doomed_block), None);
    assert_eq!(topics.sub_stats(doomed_prefix), None);
    assert!(matches!(
        topics.reserve(now, doomed_pub, 1),
        Err(TopicError::NoPublisher(_))
    ));
    publish(&mut topics, &mut net, now, publisher, 500);
    net.release_all(&mut topics, survivor);
    assert_eq!(net.seqs(survivor), vec![1, 2, 3, 4, 5]);
    assert_eq!(topics.bytes_in_use(id), Some(0), "back to baseline");
    assert_eq!(topics.topic_stats(id).unwrap().in_flight, 0);
    // The last ones go: the topic and its segment are removed.
    net.apply(topics.node_gone(NODE_B));
    net.apply(topics.node_gone(NODE_C));
    assert_eq!(topics.topic_count(), 0);
    assert!(net.segments.is_empty());
}

#[test]
fn unsubscribe_drops_the_queue_and_keeps_what_was_delivered_until_released() {
    let now = Instant::now();
    let mut topics = Topics::new(TopicsConfig {
        window: 1,
        ..config()
    });
    let mut net = Net::default();
    let sub = add_sub(&mut topics, &mut net, NODE_A, "t", drop_oldest(8));
    let publisher = add_pub(&mut topics, &mut net, NODE_B, "t", 0);
    let id = topics.topic_id("t").unwrap();
    for _ in 0..3 {
        publish(&mut topics, &mut net, now, publisher, 64);
    }
    assert_eq!(topics.bytes_in_use(id), Some(3 * 64));
    net.apply(topics.unsubscribe(sub).unwrap());
    assert_eq!(
        net.items(sub).last(),
        Some(&Item::Closed(CloseReason::Unsubscribed))
    );
    assert_eq!(
        topics.bytes_in_use(id),
        Some(64),
        "the delivered one is still held"
    );
    assert_eq!(
        topics.unsubscribe(sub),
        Err(TopicError::NoSubscription(sub))
    );
    net.release_all(&mut topics, sub);
    assert_eq!(topics.bytes_in_use(id), Some(0));
    net.apply(topics.remove_publisher(publisher).unwrap());
    assert_eq!(topics.topic_count(), 0);
}

#[test]
fn actions_become_descriptors_the_node_validates() {
    use ipc_core::descriptor::topic_close_reason;
    use ipc_core::{ArenaBounds, TopicDelivery, validate_topic_deliver};
    let sub = SubKey { node: 4, id: 9 };
    let bounds = |topic: u32| {
        (topic == 2).then_some(ArenaBounds {
            size: 1 << 16,
            align: 64,
        })
    };
    let cases = [
        (
            Action::Deliver {
                sub,
                topic: 2,
                offset: 128,
                len: 5,
                seq: 11,
            },
            TopicDelivery::Data {
                subscription: 9,
                topic: 2,
                offset: 128,
                len: 5,
                seq: 11,
            },
        ),
        (
            Action::Lagged { sub, count: 3 },
            TopicDelivery::Lagged {
                subscription: 9,
                count: 3,
            },
        ),
        (
            Action::Closed {
                sub,
                reason: CloseReason::Untethered,
            },
            TopicDelivery::Closed {
                subscription: 9,
                reason: topic_close_reason::UNTETHERED,
            },
        ),
    ];
    for (action, want) in cases {
        let (node, raw) = action.descriptor().expect("a ring entry");
        assert_eq!(node, 4);
        assert_eq!(validate_topic_deliver(&raw, bounds), Ok(want));
    }
    assert_eq!(
        Action::Unblock {
            publisher: PubKey { node: 1, id: 1 }
        }
        .descriptor(),
        None
    );
    let wire = ipc_core::control::SubscribeOptions {
        overflow: ipc_core::control::Overflow::Block { untether_ms: 250 },
        queue: 7,
        history: 2,
    };
    assert_eq!(
        SubOptions::from(wire),
        block(7, Duration::from_millis(250)).with_history(2)
    );
}

impl SubOptions {
    fn with_history(self, history: u32) -> Self {
        Self { history, ..self }
    }
}

// ===== a model =====

#[derive(Clone, Debug)]
enum Op {
    Publish {
        publisher: usize,
        len: u32,
    },
    Release {
        sub: usize,
    },
    Subscribe {
        node: u32,
        prefix: bool,
        queue: u32,
        history: u32,
    },
    Kill {
        node: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0u32..3000).prop_map(|(publisher, len)| Op::Publish { publisher, len }),
        4 => (0usize..8).prop_map(|sub| Op::Release { sub }),
        1 => (10u32..14, any::<bool>(), 1u32..6, 0u32..4)
            .prop_map(|(node, prefix, queue, history)| Op::Subscribe { node, prefix, queue, history }),
        1 => (10u32..14).prop_map(|node| Op::Kill { node }),
    ]
}

/// A subscription of the model: its key, the topics it sees, the published count of each at
/// its joining, and how many history messages it was replayed.
type Joined = (SubKey, BTreeSet<TopicId>, BTreeMap<TopicId, u64>, u64);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Random publishers, DropOldest subscribers joining, releasing and dying: every live
    /// subscriber's received + lagged equals what was published since it joined (plus its
    /// history replay), in order; memory returns to zero when everyone is gone.
    #[test]
    fn drop_oldest_never_loses_count(ops in proptest::collection::vec(op(), 1..300)) {
        let now = Instant::now();
        let mut topics = Topics::new(TopicsConfig {
            segment_size: 1 << 15,
            min_block: 64,
            window: 3,
            max_history: 4,
        });
        let mut net = Net::default();
        let names = ["a/x", "a/y", "b"];
        let pubs: Vec<PubKey> = names
            .iter()
            .enumerate()
            .map(|(i, n)| add_pub(&mut topics, &mut net, 1 + i as u32, n, 2))
            .collect();
        let mut subs: Vec<Joined> = Vec::new();
        let mut published: BTreeMap<TopicId, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Publish { publisher, len } => {
                    let p = pubs[publisher];
                    let id = topics.topic_id(names[publisher]).unwrap();
                    if try_publish(&mut topics, &mut net, now, p, len).is_some() {
                        *published.entry(id).or_default() += 1;
                    } else {
                        // Blocked only when the segment is full of in-flight slots.
                        prop_assert!(topics.bytes_in_use(id).unwrap() > 0);
                    }
                }
                Op::Release { sub } => {
                    if let Some((key, ..)) = subs.get(sub) {
                        net.release_one(&mut topics, *key);
                    }
                }
                Op::Subscribe { node, prefix, queue, history } => {
                    let pattern = if prefix { "a/**" } else { "b" };
                    // What the topics keep now (history may have been shed under memory
                    // pressure: it is kept as room allows, up to its depth).
                    let ids: Vec<TopicId> = names.iter().filter_map(|n| topics.topic_id(n)).collect();
                    let kept: BTreeMap<TopicId, u64> = ids
                        .into_iter()
                        .map(|t| (t, topics.topic_stats(t).unwrap().history as u64))
                        .collect();
                    let key = add_sub(&mut topics, &mut net, node, pattern, SubOptions {
                        policy: Policy::DropOldest, queue, history,
                    });
                    let seen: BTreeSet<TopicId> = net.attached.iter()
                        .filter(|(s, _)| *s == key).map(|(_, t)| *t).collect();
                    let at_join = seen.iter().map(|t| (*t, published.get(t).copied().unwrap_or(0))).collect();
                    let replay: u64 = seen.iter()
                        .map(|t| kept.get(t).copied().unwrap_or(0).min(u64::from(history)))
                        .sum();
                    subs.push((key, seen, at_join, replay));
                }
                Op::Kill { node } => {
                    net.apply(topics.node_gone(node));
                    subs.retain(|(k, ..)| k.node != node);
                    net.held.retain(|k, _| k.node != node);
                }
            }
        }
        for (key, seen, at_join, replay) in &subs {
            net.release_all(&mut topics, *key);
            let since: u64 = seen.iter().map(|t| published.get(t).copied().unwrap_or(0) - at_join[t]).sum();
            let received = net.seqs(*key).len() as u64;
            prop_assert_eq!(received + net.lagged(*key), since + replay, "sub {:?}", key);
            let stats = topics.sub_stats(*key).unwrap();
            prop_assert_eq!((stats.delivered, stats.lagged), (received, net.lagged(*key)));
            // In order per topic.
            for t in seen {
                let mine: Vec<u64> = net.items(*key).iter().filter_map(|i| match i {
                    Item::Msg { topic, seq, .. } if topic == t => Some(*seq),
                    _ => None,
                }).collect();
                prop_assert!(mine.windows(2).all(|w| w[0] < w[1]));
            }
        }
        for node in 1..14 {
            net.apply(topics.node_gone(node));
        }
        prop_assert_eq!(topics.topic_count(), 0);
        prop_assert!(net.segments.is_empty());
    }
}
