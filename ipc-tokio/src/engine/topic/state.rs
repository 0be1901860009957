//! The topic state machine: events in, actions out, no I/O.
//!
//! # Flow of one message
//!
//! ```text
//!  publisher DATA ──> reserve(pub, len) ──Slot──> (router copies once into the slot)
//!                        │                          └──> publish(pub, slot) ──> per subscriber:
//!                        └─Blocked: the router parks        in_flight < window ? Deliver
//!                          the entry; an Unblock                        : queue (pending)
//!                          action says when to retry       queue full ? DropOldest: drop the
//!                                                                       oldest, lag += 1
//!                                                                       Block: (refused at
//!                                                                       reserve, see below)
//!  subscriber RELEASE ──> release(sub, slot) ──> in_flight -= 1, pending moves up (a
//!                          Lagged(n) goes out first if any were dropped), publishers wake
//! ```
//!
//! # Block and the untether timeout
//!
//! A `Block` subscription whose queue is full makes [`Topics::reserve`] answer
//! [`Reserve::Blocked`]: the publisher waits. The subscription's untether clock starts the
//! first time it holds a publisher back and stops when its queue has room again. When the
//! clock reaches the subscription's untether timeout ([`Topics::tick`]), the subscription is
//! **cut loose**: its pending messages are dropped, it is closed with
//! [`CloseReason::Untethered`], and the publishers are woken. It is not demoted to
//! `Lagged`, because a subscriber chose `Block` to see every message: going on with a hole
//! in the stream would break the promise it relied on while looking like success, whereas a
//! closed subscription with a clear error cannot be missed, frees its queue at once, and the
//! subscriber can resubscribe (with history, to catch up) if it wants the rest.
//!
//! # What a slow DropOldest subscriber can still hold
//!
//! Its window of delivered, unreleased slots (the node owns those bytes until it drops
//! them) and its queue. When the segment has no room for a new message, the engine first
//! evicts history, then the oldest pending messages of `DropOldest` subscriptions (counted as
//! lag); only slots delivered and not yet released, and `Block` queues, can then make a
//! publisher wait.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ipc_core::broadcast::{Slot, SlotError, Slots};
use ipc_core::control::{self, MessageType, valid_topic_name};
use ipc_core::descriptor::{kind, topic_close_reason};
use ipc_core::{AllocError, RawDescriptor};
use thiserror::Error;

use super::pattern::Pattern;

/// A topic's id, engine-wide (the `segment` field of its descriptors).
pub(crate) type TopicId = u32;

/// A subscription: the node it belongs to and its id (engine-wide unique, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SubKey {
    /// The subscribing node.
    pub(crate) node: u32,
    /// The subscription id.
    pub(crate) id: u32,
}

/// A publisher: the node it belongs to and its id (engine-wide unique, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PubKey {
    /// The publishing node.
    pub(crate) node: u32,
    /// The publisher id.
    pub(crate) id: u32,
}

/// Who holds a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Holder {
    /// A subscription it was queued for or delivered to.
    Sub(SubKey),
    /// The topic's history.
    History,
}

/// A subscription's overflow policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Drop the oldest pending message and report `Lagged(n)`.
    DropOldest,
    /// Hold publishers back, at most `untether`; then cut the subscription loose.
    Block {
        /// The untether timeout.
        untether: Duration,
    },
}

/// A subscription's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubOptions {
    /// The overflow policy.
    pub(crate) policy: Policy,
    /// Pending messages kept behind the window (at least 1).
    pub(crate) queue: u32,
    /// Kept messages of each matched topic to replay on joining.
    pub(crate) history: u32,
}

impl Default for SubOptions {
    fn default() -> Self {
        Self {
            policy: Policy::DropOldest,
            queue: 64,
            history: 0,
        }
    }
}

impl From<control::SubscribeOptions> for SubOptions {
    /// The options as a `Subscribe` frame carries them (already range-checked by the decoder).
    fn from(wire: control::SubscribeOptions) -> Self {
        Self {
            policy: match wire.overflow {
                control::Overflow::DropOldest => Policy::DropOldest,
                control::Overflow::Block { untether_ms } => Policy::Block {
                    untether: Duration::from_millis(untether_ms),
                },
            },
            queue: wire.queue.max(1),
            history: wire.history,
        }
    }
}

/// Engine-wide topic settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TopicsConfig {
    /// Size of each topic's broadcast segment (a power of two).
    pub(crate) segment_size: u64,
    /// Its minimum slot (a power of two, at least 64).
    pub(crate) min_block: u64,
    /// Slots a subscription may hold delivered and not yet released.
    pub(crate) window: u32,
    /// The most history a topic keeps, whatever publishers ask for.
    pub(crate) max_history: u32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            segment_size: 8 << 20,
            min_block: 64,
            window: 64,
            max_history: 1024,
        }
    }
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The node unsubscribed.
    Unsubscribed,
    /// A `Block` subscription stayed full past its untether timeout.
    Untethered,
}

/// What the router must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Create the topic's broadcast segment (before any `Attach` of it).
    CreateSegment {
        /// The new topic.
        topic: TopicId,
        /// Its name.
        name: String,
        /// The segment's size.
        size: u64,
    },
    /// Drop the topic's segment: nobody publishes, subscribes or holds a slot of it.
    RemoveSegment {
        /// The topic.
        topic: TopicId,
    },
    /// Send `TopicAttach` (with the segment's fd) to the subscription's node.
    Attach {
        /// The subscription.
        sub: SubKey,
        /// The topic it now receives.
        topic: TopicId,
    },
    /// A topic the subscription's pattern matches has another type: it is not attached, and
    /// the subscriber's stream reports it.
    Mismatch {
        /// The subscription.
        sub: SubKey,
        /// The topic.
        topic: TopicId,
        /// The topic's type.
        topic_type: MessageType,
        /// The subscription's type.
        wanted: MessageType,
    },
    /// Push `TOPIC_DATA` on the subscription's node's deliver ring.
    Deliver {
        /// The subscription.
        sub: SubKey,
        /// The topic.
        topic: TopicId,
        /// The slot's offset in the topic's segment.
        offset: u64,
        /// Message length.
        len: u32,
        /// The topic's sequence number.
        seq: u64,
    },
    /// Push `TOPIC_LAGGED`: `count` messages were lost just before the next delivery.
    Lagged {
        /// The subscription.
        sub: SubKey,
        /// How many.
        count: u64,
    },
    /// Push `TOPIC_CLOSED`: the subscription is over.
    Closed {
        /// The subscription.
        sub: SubKey,
        /// Why.
        reason: CloseReason,
    },
    /// A publisher that was told [`Reserve::Blocked`] may try again.
    Unblock {
        /// The publisher.
        publisher: PubKey,
    },
}

impl Action {
    /// The deliver-ring entry this action becomes, and the node whose ring takes it (for
    /// `Deliver`, `Lagged` and `Closed`; the other actions travel elsewhere).
    pub(crate) fn descriptor(&self) -> Option<(u32, RawDescriptor)> {
        match *self {
            Self::Deliver {
                sub,
                topic,
                offset,
                len,
                seq,
            } => Some((
                sub.node,
                RawDescriptor::topic_data(sub.id, topic, offset, len, seq),
            )),
            Self::Lagged { sub, count } => Some((
                sub.node,
                RawDescriptor::control(kind::TOPIC_LAGGED, sub.id, count),
            )),
            Self::Closed { sub, reason } => {
                let reason = match reason {
                    CloseReason::Unsubscribed => topic_close_reason::UNSUBSCRIBED,
                    CloseReason::Untethered => topic_close_reason::UNTETHERED,
                };
                Some((
                    sub.node,
                    RawDescriptor::control(kind::TOPIC_CLOSED, sub.id, reason),
                ))
            }
            _ => None,
        }
    }
}

/// The answer to [`Topics::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Copy the message into this slot, then call [`Topics::publish`].
    Slot(Slot),
    /// Not now: park the message; an [`Action::Unblock`] for this publisher says when to
    /// try again.
    Blocked,
}

/// Why a request or event was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum TopicError {
    /// The topic name or pattern is not valid.
    #[error("invalid topic name or pattern {0:?}")]
    BadName(String),
    /// The declared type differs from the topic's.
    #[error("topic {topic:?} carries {topic_type}, not {requested}")]
    SchemaMismatch {
        /// The topic.
        topic: String,
        /// Its type.
        topic_type: MessageType,
        /// The type asked for.
        requested: MessageType,
    },
    /// No publisher with that id belongs to the node.
    #[error("no publisher {0:?}")]
    NoPublisher(PubKey),
    /// No subscription with that id belongs to the node.
    #[error("no subscription {0:?}")]
    NoSubscription(SubKey),
    /// A message can never fit the topic's segment.
    #[error("a message of {len} bytes can never fit a topic segment of {capacity} bytes")]
    TooLarge {
        /// Its length.
        len: u32,
        /// The segment's size.
        capacity: u64,
    },
    /// A release naming a topic that does not exist (a violation of the node).
    #[error("release names topic {0}, which does not exist")]
    NoTopic(TopicId),
    /// A release of a slot the subscription does not hold (a violation of that node only).
    #[error("release refused: {0}")]
    Release(#[from] SlotError),
}

/// A topic's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TopicStats {
    /// Messages published.
    pub(crate) published: u64,
    /// Deliveries made, summed over subscribers.
    pub(crate) delivered: u64,
    /// Messages lost to `DropOldest`, summed over subscribers.
    pub(crate) lagged: u64,
    /// Slots delivered and not yet released, summed over subscribers.
    pub(crate) in_flight: u64,
    /// Live slots (pending, in flight or in history).
    pub(crate) slots: usize,
    /// Messages kept as history.
    pub(crate) history: usize,
}

/// A subscription's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubStats {
    /// Messages delivered.
    pub(crate) delivered: u64,
    /// Messages lost to the overflow policy (all reported, or about to be, as `Lagged`).
    pub(crate) lagged: u64,
    /// Slots delivered and not yet released.
    pub(crate) in_flight: u32,
    /// Messages queued behind the window.
    pub(crate) pending: usize,
}

#[derive(Clone, Copy, Debug)]
struct Msg {
    topic: TopicId,
    offset: u64,
    len: u32,
    seq: u64,
}

#[derive(Debug)]
struct Topic {
    name: String,
    ty: Option<MessageType>,
    slots: Slots<Holder>,
    history_depth: u32,
    history: VecDeque<Msg>,
    subscribers: BTreeSet<SubKey>,
    publishers: BTreeSet<PubKey>,
    /// Publishers told `Blocked` on this topic.
    blocked: BTreeSet<PubKey>,
    /// Subscriptions (live or closed) that still hold slots delivered to them.
    holders: BTreeSet<SubKey>,
    seq: u64,
    stats: TopicStats,
}

#[derive(Debug)]
struct Subscriber {
    pattern: Pattern,
    ty: MessageType,
    options: SubOptions,
    topics: BTreeSet<TopicId>,
    in_flight: u32,
    pending: VecDeque<Msg>,
    /// Lost since the last delivery; reported before the next.
    unreported_lag: u64,
    /// When this `Block` subscription first held a publisher back with a full queue.
    full_since: Option<Instant>,
    stats: SubStats,
}

/// All topics, publishers and subscriptions of the engine.
#[derive(Debug)]
pub(crate) struct Topics {
    config: TopicsConfig,
    topics: BTreeMap<TopicId, Topic>,
    by_name: HashMap<String, TopicId>,
    subs: BTreeMap<SubKey, Subscriber>,
    pubs: BTreeMap<PubKey, TopicId>,
    next_topic: TopicId,
    next_id: u32,
}

// ===== impl Topics: setup =====

impl Topics {
    /// No topics yet.
    pub(crate) fn new(config: TopicsConfig) -> Self {
        Self {
            config,
            topics: BTreeMap::new(),
            by_name: HashMap::new(),
            subs: BTreeMap::new(),
            pubs: BTreeMap::new(),
            next_topic: 1,
            next_id: 1,
        }
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The topic named `name`, created (with its `CreateSegment` and the attachment of every
    /// matching prefix subscription) if it does not exist.
    fn topic_for(
        &mut self,
        name: &str,
        ty: Option<&MessageType>,
        actions: &mut Vec<Action>,
    ) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.next_topic;
        self.next_topic += 1;
        let slots = Slots::new(self.config.segment_size, self.config.min_block)
            .expect("the engine validated its topic configuration");
        self.topics.insert(
            id,
            Topic {
                name: name.to_owned(),
                ty: ty.cloned(),
                slots,
                history_depth: 0,
                history: VecDeque::new(),
                subscribers: BTreeSet::new(),
                publishers: BTreeSet::new(),
                blocked: BTreeSet::new(),
                holders: BTreeSet::new(),
                seq: 0,
                stats: TopicStats::default(),
            },
        );
        self.by_name.insert(name.to_owned(), id);
        actions.push(Action::CreateSegment {
            topic: id,
            name: name.to_owned(),
            size: self.config.segment_size,
        });
        let matching: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| s.pattern.matches(name))
            .map(|(k, _)| *k)
            .collect();
        for sub in matching {
            self.attach(sub, id, actions);
        }
        id
    }

    /// Attaches `sub` to `topic` if the types agree; replays history.
    fn attach(&mut self, key: SubKey, id: TopicId, actions: &mut Vec<Action>) {
        let sub = self.subs.get_mut(&key).expect("attach a live subscription");
        let topic = self.topics.get_mut(&id).expect("attach to a live topic");
        if sub.ty != MessageType::bytes() {
            match &topic.ty {
                None => topic.ty = Some(sub.ty.clone()),
                Some(ty) if *ty == sub.ty => {}
                Some(ty) => {
                    actions.push(Action::Mismatch {
                        sub: key,
                        topic: id,
                        topic_type: ty.clone(),
                        wanted: sub.ty.clone(),
                    });
                    return;
                }
            }
        }
        sub.topics.insert(id);
        topic.subscribers.insert(key);
        topic.holders.insert(key);
        actions.push(Action::Attach {
            sub: key,
            topic: id,
        });
        // History: the last `history` kept messages, oldest first, before anything new.
        let skip = topic
            .history
            .len()
            .saturating_sub(sub.options.history as usize);
        let replay: Vec<Msg> = topic.history.iter().skip(skip).copied().collect();
        for msg in replay {
            topic
                .slots
                .hold(msg.offset, Holder::Sub(key))
                .expect("a history slot is live and new to a new subscription");
            sub.pending.push_back(msg);
        }
        let start = actions.len();
        Self::pump(&self.config, key, sub, actions);
        // More history than the window and queue take: a DropOldest subscription loses the
        // oldest of it, counted (a Block one holds publishers back until it has read it).
        while sub.options.policy == Policy::DropOldest
            && sub.pending.len() > sub.options.queue as usize
        {
            let oldest = sub.pending.pop_front().expect("longer than its queue");
            Self::drop_pending(topic, key, sub, oldest);
        }
        Self::count_deliveries(&mut self.topics, &actions[start..]);
    }

    /// Registers a publisher of `name` with type `ty`, asking the topic to keep `history`
    /// messages.
    ///
    /// # Errors
    ///
    /// [`TopicError::BadName`], [`TopicError::SchemaMismatch`].
    pub(crate) fn add_publisher(
        &mut self,
        node: u32,
        name: &str,
        ty: &MessageType,
        history: u32,
    ) -> Result<(PubKey, TopicId, Vec<Action>), TopicError> {
        if !valid_topic_name(name) {
            return Err(TopicError::BadName(name.to_owned()));
        }
        if let Some(topic) = self.by_name.get(name).and_then(|id| self.topics.get(id))
            && let Some(existing) = &topic.ty
            && existing != ty
        {
            return Err(TopicError::SchemaMismatch {
                topic: name.to_owned(),
                topic_type: existing.clone(),
                requested: ty.clone(),
            });
        }
        let mut actions = Vec::new();
        let id = self.topic_for(name, Some(ty), &mut actions);
        let key = PubKey {
            node,
            id: self.fresh_id(),
        };
        let max_history = self.config.max_history;
        let topic = self.topics.get_mut(&id).expect("just made");
        topic.ty.get_or_insert_with(|| ty.clone());
        topic.history_depth = topic.history_depth.max(history.min(max_history));
        topic.publishers.insert(key);
        self.pubs.insert(key, id);
        Ok((key, id, actions))
    }

    /// Removes a publisher.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`] when the node has no such publisher.
    pub(crate) fn remove_publisher(&mut self, key: PubKey) -> Result<Vec<Action>, TopicError> {
        let id = self.pubs.remove(&key).ok_or(TopicError::NoPublisher(key))?;
        let mut actions = Vec::new();
        if let Some(topic) = self.topics.get_mut(&id) {
            topic.publishers.remove(&key);
            topic.blocked.remove(&key);
        }
        self.collect(id, &mut actions);
        Ok(actions)
    }

    /// Subscribes `node` to `pattern`: attaches every existing topic it matches (and creates
    /// the topic an exact pattern names, so that its type and segment exist from now on).
    ///
    /// # Errors
    ///
    /// [`TopicError::BadName`]; for an exact pattern, [`TopicError::SchemaMismatch`].
    pub(crate) fn subscribe(
        &mut self,
        node: u32,
        pattern: &str,
        ty: &MessageType,
        options: SubOptions,
    ) -> Result<(SubKey, Vec<Action>), TopicError> {
        let parsed = Pattern::parse(pattern).ok_or_else(|| TopicError::BadName(pattern.into()))?;
        if let Some(name) = parsed.exact()
            && *ty != MessageType::bytes()
            && let Some(topic) = self.by_name.get(name).and_then(|id| self.topics.get(id))
            && let Some(existing) = &topic.ty
            && existing != ty
        {
            return Err(TopicError::SchemaMismatch {
                topic: name.to_owned(),
                topic_type: existing.clone(),
                requested: ty.clone(),
            });
        }
        let key = SubKey {
            node,
            id: self.fresh_id(),
        };
        let options = SubOptions {
            queue: options.queue.max(1),
            ..options
        };
        self.subs.insert(
            key,
            Subscriber {
                pattern: parsed.clone(),
                ty: ty.clone(),
                options,
                topics: BTreeSet::new(),
                in_flight: 0,
                pending: VecDeque::new(),
                unreported_lag: 0,
                full_since: None,
                stats: SubStats::default(),
            },
        );
        let mut actions = Vec::new();
        if let Some(name) = parsed.exact() {
            let existed = self.by_name.contains_key(name);
            let typed = (*ty != MessageType::bytes()).then_some(ty);
            let id = self.topic_for(name, typed, &mut actions);
            if existed {
                self.attach(key, id, &mut actions);
            }
            // A new topic attached its matching subscriptions, this one included.
        } else {
            let matching: Vec<TopicId> = self
                .topics
                .iter()
                .filter(|(_, t)| parsed.matches(&t.name))
                .map(|(id, _)| *id)
                .collect();
            for id in matching {
                self.attach(key, id, &mut actions);
            }
        }
        Ok((key, actions))
    }

    /// Ends a subscription: its pending messages are dropped, slots it was delivered stay
    /// held until the node releases them (or goes away).
    ///
    /// # Errors
    ///
    /// [`TopicError::NoSubscription`] when the node has no such subscription.
    pub(crate) fn unsubscribe(&mut self, key: SubKey) -> Result<Vec<Action>, TopicError> {
        let mut actions = Vec::new();
        self.close(key, CloseReason::Unsubscribed, &mut actions)?;
        Ok(actions)
    }

    fn close(
        &mut self,
        key: SubKey,
        reason: CloseReason,
        actions: &mut Vec<Action>,
    ) -> Result<(), TopicError> {
        let sub = self
            .subs
            .remove(&key)
            .ok_or(TopicError::NoSubscription(key))?;
        for msg in &sub.pending {
            let topic = self
                .topics
                .get_mut(&msg.topic)
                .expect("pending of a live topic");
            topic
                .slots
                .release(Holder::Sub(key), msg.offset)
                .expect("a pending message is held by its subscription");
        }
        actions.push(Action::Closed { sub: key, reason });
        for id in &sub.topics {
            let topic = self.topics.get_mut(id).expect("attached to a live topic");
            topic.subscribers.remove(&key);
            if topic.slots.held_by(Holder::Sub(key)) == 0 {
                topic.holders.remove(&key);
            }
            Self::wake(topic, actions);
        }
        for id in sub.topics {
            self.collect(id, actions);
        }
        Ok(())
    }

    /// A node went away: every publisher and subscription it had is removed, every slot it
    /// held released, every publisher it held back woken.
    pub(crate) fn node_gone(&mut self, node: u32) -> Vec<Action> {
        let mut actions = Vec::new();
        let pubs: Vec<PubKey> = self
            .pubs
            .keys()
            .filter(|k| k.node == node)
            .copied()
            .collect();
        for key in pubs {
            actions.extend(self.remove_publisher(key).expect("listed above"));
        }
        let subs: Vec<SubKey> = self
            .subs
            .keys()
            .filter(|k| k.node == node)
            .copied()
            .collect();
        for key in subs {
            self.close(key, CloseReason::Unsubscribed, &mut actions)
                .expect("listed above");
        }
        // Slots delivered to its subscriptions (live until now, or closed before) go back.
        let ids: Vec<TopicId> = self.topics.keys().copied().collect();
        for id in ids {
            let Some(topic) = self.topics.get_mut(&id) else {
                continue; // collected by an earlier step
            };
            let gone: Vec<SubKey> = topic
                .holders
                .iter()
                .filter(|k| k.node == node)
                .copied()
                .collect();
            if gone.is_empty() {
                continue;
            }
            for key in gone {
                topic.holders.remove(&key);
                let held = topic.slots.held_by(Holder::Sub(key)) as u64;
                topic.stats.in_flight = topic.stats.in_flight.saturating_sub(held);
                topic.slots.release_all(Holder::Sub(key));
            }
            Self::wake(topic, &mut actions);
            self.collect(id, &mut actions);
        }
        // Nothing goes to the dead node itself.
        actions.retain(|a| match a {
            Action::Closed { sub, .. } => sub.node != node,
            Action::Unblock { publisher } => publisher.node != node,
            _ => true,
        });
        actions
    }

    /// Removes a topic nobody uses any more.
    fn collect(&mut self, id: TopicId, actions: &mut Vec<Action>) {
        let Some(topic) = self.topics.get_mut(&id) else {
            return;
        };
        if !topic.publishers.is_empty() || !topic.subscribers.is_empty() {
            return;
        }
        // Nobody can join to read the history any more... until someone does: history
        // lives while the topic has a publisher or a subscriber.
        while let Some(msg) = topic.history.pop_front() {
            let _ = topic.slots.release(Holder::History, msg.offset);
        }
        if !topic.holders.is_empty() {
            return;
        }
        debug_assert_eq!(topic.slots.stats().live, 0, "no holder, no live slot");
        let name = topic.name.clone();
        self.topics.remove(&id);
        self.by_name.remove(&name);
        actions.push(Action::RemoveSegment { topic: id });
    }
}

// ===== impl Topics: the data path =====

impl Topics {
    /// A publisher wants to send `len` bytes: a slot to copy them into, or `Blocked`; and
    /// the actions of making room (a `Lagged` for a subscription whose whole queue was shed).
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`], or [`TopicError::TooLarge`] for a message that can never
    /// fit the segment.
    pub(crate) fn reserve(
        &mut self,
        now: Instant,
        key: PubKey,
        len: u32,
    ) -> Result<(Reserve, Vec<Action>), TopicError> {
        let id = *self.pubs.get(&key).ok_or(TopicError::NoPublisher(key))?;
        let topic = self.topics.get_mut(&id).expect("a publisher's topic lives");
        // A full Block subscription holds every publisher of the topic back; its untether
        // clock starts now if it was not running.
        let mut blocked = false;
        for sub_key in &topic.subscribers {
            let sub = self.subs.get_mut(sub_key).expect("subscribers are live");
            if matches!(sub.options.policy, Policy::Block { .. })
                && sub.pending.len() >= sub.options.queue as usize
            {
                sub.full_since.get_or_insert(now);
                blocked = true;
            }
        }
        let mut actions = Vec::new();
        if blocked {
            topic.blocked.insert(key);
            return Ok((Reserve::Blocked, actions));
        }
        loop {
            match topic.slots.alloc(len) {
                Ok(slot) => return Ok((Reserve::Slot(slot), actions)),
                Err(AllocError::TooLarge { capacity, .. }) => {
                    return Err(TopicError::TooLarge { len, capacity });
                }
                Err(AllocError::Full { .. }) | Err(_) => {
                    if !Self::shed_one(id, topic, &mut self.subs, &mut actions) {
                        topic.blocked.insert(key);
                        return Ok((Reserve::Blocked, actions));
                    }
                }
            }
        }
    }

    /// Frees one message's hold to make room: the oldest history entry, else the oldest
    /// pending message of a `DropOldest` subscription (counted as its lag). False if there
    /// is nothing to shed.
    fn shed_one(
        id: TopicId,
        topic: &mut Topic,
        subs: &mut BTreeMap<SubKey, Subscriber>,
        actions: &mut Vec<Action>,
    ) -> bool {
        if let Some(msg) = topic.history.pop_front() {
            let _ = topic.slots.release(Holder::History, msg.offset);
            return true;
        }
        // A prefix subscription's queue may hold other topics' messages first: look for the
        // oldest message of this topic in each queue.
        let victim = topic
            .subscribers
            .iter()
            .filter(|k| subs[*k].options.policy == Policy::DropOldest)
            .filter_map(|k| {
                let (at, msg) = subs[k]
                    .pending
                    .iter()
                    .enumerate()
                    .find(|(_, m)| m.topic == id)?;
                Some((msg.seq, at, *k))
            })
            .min();
        let Some((_, at, key)) = victim else {
            return false;
        };
        let sub = subs.get_mut(&key).expect("found above");
        let msg = sub.pending.remove(at).expect("found above");
        Self::drop_pending(topic, key, sub, msg);
        Self::flush_lag(key, sub, actions);
        true
    }

    /// A subscription with lag to report and nothing queued to report it before says so now:
    /// no later message may be coming (the publisher may be waiting for room), and a loss is
    /// never left unsaid.
    fn flush_lag(key: SubKey, sub: &mut Subscriber, actions: &mut Vec<Action>) {
        if sub.pending.is_empty() && sub.unreported_lag > 0 {
            actions.push(Action::Lagged {
                sub: key,
                count: std::mem::take(&mut sub.unreported_lag),
            });
        }
    }

    /// Drops `msg` (already taken out of `sub`'s queue; `topic` is its topic) and counts it.
    fn drop_pending(topic: &mut Topic, key: SubKey, sub: &mut Subscriber, msg: Msg) {
        let _ = topic.slots.release(Holder::Sub(key), msg.offset);
        sub.unreported_lag += 1;
        sub.stats.lagged += 1;
        topic.stats.lagged += 1;
    }

    /// The router copied the message into `slot`: hand it to every subscriber of the topic
    /// and to the history.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`].
    ///
    /// # Panics
    ///
    /// If `slot` did not come from [`Self::reserve`] for this publisher's topic (a router bug).
    pub(crate) fn publish(&mut self, key: PubKey, slot: Slot) -> Result<Vec<Action>, TopicError> {
        let id = *self.pubs.get(&key).ok_or(TopicError::NoPublisher(key))?;
        let mut actions = Vec::new();
        let topic = self.topics.get_mut(&id).expect("a publisher's topic lives");
        topic.seq += 1;
        topic.stats.published += 1;
        let msg = Msg {
            topic: id,
            offset: slot.offset,
            len: slot.len,
            seq: topic.seq,
        };
        let subscribers: Vec<SubKey> = topic.subscribers.iter().copied().collect();
        for sub_key in subscribers {
            let sub = self.subs.get_mut(&sub_key).expect("subscribers are live");
            let topic = self.topics.get_mut(&id).expect("live topic");
            topic
                .slots
                .hold(slot.offset, Holder::Sub(sub_key))
                .expect("a fresh slot is held once per subscriber");
            if sub.pending.len() >= sub.options.queue as usize
                && sub.options.policy == Policy::DropOldest
            {
                // The oldest pending message, perhaps of another topic (prefix subscription).
                let oldest = sub.pending.pop_front().expect("a full queue");
                let its_topic = self.topics.get_mut(&oldest.topic).expect("live topic");
                Self::drop_pending(its_topic, sub_key, sub, oldest);
                Self::wake(its_topic, &mut actions);
            }
            // A full Block queue refused `reserve`; a message already copied is never dropped.
            sub.pending.push_back(msg);
            let start = actions.len();
            Self::pump(&self.config, sub_key, sub, &mut actions);
            Self::count_deliveries(&mut self.topics, &actions[start..]);
        }
        let topic = self.topics.get_mut(&id).expect("live topic");
        if topic.history_depth > 0 {
            topic
                .slots
                .hold(slot.offset, Holder::History)
                .expect("a fresh slot");
            topic.history.push_back(msg);
            if topic.history.len() > topic.history_depth as usize {
                let old = topic.history.pop_front().expect("longer than its depth");
                let _ = topic.slots.release(Holder::History, old.offset);
            }
        }
        topic.slots.commit(slot.offset).expect("an open slot");
        Ok(actions)
    }

    /// Moves pending messages into the window, each preceded by the lag it follows.
    fn pump(config: &TopicsConfig, key: SubKey, sub: &mut Subscriber, actions: &mut Vec<Action>) {
        while sub.in_flight < config.window {
            let Some(msg) = sub.pending.pop_front() else {
                break;
            };
            if sub.unreported_lag > 0 {
                actions.push(Action::Lagged {
                    sub: key,
                    count: std::mem::take(&mut sub.unreported_lag),
                });
            }
            sub.in_flight += 1;
            sub.stats.delivered += 1;
            actions.push(Action::Deliver {
                sub: key,
                topic: msg.topic,
                offset: msg.offset,
                len: msg.len,
                seq: msg.seq,
            });
        }
        if sub.pending.len() < sub.options.queue as usize {
            sub.full_since = None;
        }
    }

    /// Counts `Deliver` actions into their topics' counters.
    fn count_deliveries(topics: &mut BTreeMap<TopicId, Topic>, actions: &[Action]) {
        for action in actions {
            if let Action::Deliver { topic, .. } = action
                && let Some(t) = topics.get_mut(topic)
            {
                t.stats.delivered += 1;
                t.stats.in_flight += 1;
            }
        }
    }

    /// Subscription `key` is done with slot `offset` of topic `topic`.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoTopic`] or [`TopicError::Release`]: a violation by that subscriber's
    /// node alone (the router closes it); nothing changed.
    pub(crate) fn release(
        &mut self,
        key: SubKey,
        topic_id: TopicId,
        offset: u64,
    ) -> Result<Vec<Action>, TopicError> {
        let topic = self
            .topics
            .get_mut(&topic_id)
            .ok_or(TopicError::NoTopic(topic_id))?;
        // A pending (queued, not delivered) slot is held too, but was never delivered: the
        // node cannot know its offset honestly, so releasing it is a violation.
        if let Some(sub) = self.subs.get(&key)
            && sub
                .pending
                .iter()
                .any(|m| m.topic == topic_id && m.offset == offset)
        {
            return Err(TopicError::Release(SlotError::NotHeld { offset }));
        }
        topic.slots.release(Holder::Sub(key), offset)?;
        topic.stats.in_flight = topic.stats.in_flight.saturating_sub(1);
        let mut actions = Vec::new();
        match self.subs.get_mut(&key) {
            Some(sub) => {
                sub.in_flight -= 1;
                let start = actions.len();
                Self::pump(&self.config, key, sub, &mut actions);
                Self::count_deliveries(&mut self.topics, &actions[start..]);
                // Room in its queue may let publishers of any of its topics go on.
                for id in &sub.topics {
                    if let Some(t) = self.topics.get_mut(id) {
                        Self::wake(t, &mut actions);
                    }
                }
            }
            None => {
                // A closed subscription returning what it was delivered.
                if topic.slots.held_by(Holder::Sub(key)) == 0 {
                    topic.holders.remove(&key);
                }
            }
        }
        let topic = self.topics.get_mut(&topic_id).expect("checked above");
        Self::wake(topic, &mut actions);
        self.collect(topic_id, &mut actions);
        Ok(actions)
    }

    /// Wakes every publisher blocked on `topic` (they retry `reserve`, which may block them
    /// again: simple, and never loses a wake-up).
    fn wake(topic: &mut Topic, actions: &mut Vec<Action>) {
        for publisher in std::mem::take(&mut topic.blocked) {
            actions.push(Action::Unblock { publisher });
        }
    }

    /// Time passed: cuts loose every `Block` subscription that has held publishers back for
    /// its untether timeout.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Action> {
        let expired: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| match (s.options.policy, s.full_since) {
                (Policy::Block { untether }, Some(since)) => now.duration_since(since) >= untether,
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        let mut actions = Vec::new();
        for key in expired {
            self.close(key, CloseReason::Untethered, &mut actions)
                .expect("listed above");
        }
        actions
    }

    /// When [`Self::tick`] must next run, if any untether clock is running.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|s| match (s.options.policy, s.full_since) {
                (Policy::Block { untether }, Some(since)) => Some(since + untether),
                _ => None,
            })
            .min()
    }

    // ===== inspection =====

    /// A topic's counters.
    pub(crate) fn topic_stats(&mut self, id: TopicId) -> Option<TopicStats> {
        let topic = self.topics.get_mut(&id)?;
        let slots = topic.slots.stats();
        Some(TopicStats {
            slots: slots.live,
            history: topic.history.len(),
            ..topic.stats
        })
    }

    /// A subscription's counters.
    pub(crate) fn sub_stats(&self, key: SubKey) -> Option<SubStats> {
        let sub = self.subs.get(&key)?;
        Some(SubStats {
            in_flight: sub.in_flight,
            pending: sub.pending.len(),
            ..sub.stats
        })
    }

    /// The topic publisher `key` publishes on.
    pub(crate) fn topic_of(&self, key: PubKey) -> Option<TopicId> {
        self.pubs.get(&key).copied()
    }

    /// A topic's name and type (none until a typed publisher or subscriber fixed it).
    pub(crate) fn topic_info(&self, id: TopicId) -> Option<(&str, Option<&MessageType>)> {
        let topic = self.topics.get(&id)?;
        Some((&topic.name, topic.ty.as_ref()))
    }

    /// The topic named `name`.
    pub(crate) fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Number of topics alive.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Bytes of segment in live slots of topic `id`.
    pub(crate) fn bytes_in_use(&mut self, id: TopicId) -> Option<u64> {
        Some(self.topics.get_mut(&id)?.slots.stats().arena.in_use)
    }
}
