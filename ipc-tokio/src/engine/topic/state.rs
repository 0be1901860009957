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

/// One topic as the inspector shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TopicView {
    /// The topic's id.
    pub(crate) id: TopicId,
    /// Its name.
    pub(crate) name: String,
    /// Its type, once a typed publisher or subscriber fixed it.
    pub(crate) ty: Option<MessageType>,
    /// Live publishers.
    pub(crate) publishers: usize,
    /// Subscriptions attached to it.
    pub(crate) subscribers: usize,
    /// Its counters (`slots` and `history` as of now).
    pub(crate) stats: TopicStats,
    /// Bytes of its segment in live slots (size classes).
    pub(crate) bytes_in_use: u64,
}

/// One subscription as the inspector shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubView {
    /// The subscription.
    pub(crate) key: SubKey,
    /// Its pattern, as written.
    pub(crate) pattern: String,
    /// Its options.
    pub(crate) options: SubOptions,
    /// The topics it is attached to.
    pub(crate) topics: Vec<TopicId>,
    /// Its counters.
    pub(crate) stats: SubStats,
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

mod datapath;
mod setup;
