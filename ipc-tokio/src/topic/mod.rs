//! Topics on the node side: [`Publisher`] and [`Subscription`].
//!
//! A topic has many publishers and many subscribers. The engine copies each published message
//! once, into the topic's broadcast segment: a memfd only the engine can write (sealed with
//! `F_SEAL_FUTURE_WRITE` before its fd leaves the engine), which each subscriber maps
//! read-only after checking its seals and size. Every subscriber gets a descriptor on its
//! deliver ring and reads the message in place: a zero-copy [`Bytes`] whose last clone hands
//! the slot back (a `TOPIC_RELEASE` entry on the release ring).
//!
//! Order is kept per publisher. A subscription whose reader falls behind never loses messages
//! silently: with [`Overflow::DropOldest`] (the default) its stream yields
//! [`SubscribeError::Lagged`] with the exact count and goes on; with [`Overflow::Block`] the
//! publishers wait for it (their `poll_ready` pends once their transmit arena is full of
//! messages the engine holds back), up to the untether timeout, after which the subscription
//! ends with [`SubscribeError::Untethered`].
//!
//! ```text
//!  publisher ─DATA(publisher id)─> engine ──copy once──> broadcast segment (read-only to nodes)
//!                                     └──TOPIC_DATA──> each subscriber's deliver ring
//!  subscriber drops its Bytes ──TOPIC_RELEASE──> engine: the slot is reused when all released
//! ```

mod publisher;
mod subscription;

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use ipc_core::broadcast::{BroadcastLease, ReadOnlySegment};
use ipc_core::control::{EngineFrame, ErrorCode, MessageType, NodeFrame};
use ipc_core::descriptor::{ArenaBounds, TopicDelivery, validate_topic_deliver};
use ipc_core::{IdMap, RawDescriptor};
use thiserror::Error;

pub use ipc_core::control::Overflow;
pub use publisher::Publisher;
pub use subscription::Subscription;

use crate::error::CodecError;
use crate::message::{Bincode, Codec};
use crate::node::{Node, NodeShared, Reply, State};
use crate::session::Payload;
use subscription::Event;
pub(crate) use subscription::SubCore;

/// The largest topic message at the engine's default settings: the default size of a
/// topic's broadcast segment ([`EngineBuilder::topic_segment_size`](crate::EngineBuilder::topic_segment_size)).
/// An engine set otherwise tells each publisher its own limit ([`Publisher::max_message`]).
pub const MAX_TOPIC_MESSAGE: u64 = 8 << 20;

/// Options of a subscription ([`Node::subscribe_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// What happens when this subscriber falls behind: [`Overflow::DropOldest`] (the
    /// default) or [`Overflow::Block`] with an untether timeout.
    pub overflow: Overflow,
    /// Messages the engine keeps queued for this subscriber beyond those it is reading
    /// (at least 1; default 64).
    pub queue: u32,
    /// How many of each matched topic's kept messages to replay on joining (the topic keeps
    /// as many as its publishers asked for with [`Node::publish_with_history`]).
    pub history: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        let wire = ipc_core::control::SubscribeOptions::default();
        Self {
            overflow: wire.overflow,
            queue: wire.queue,
            history: wire.history,
        }
    }
}

/// Why a publisher or subscription could not be set up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicSetupError {
    /// The topic name or pattern is not valid.
    #[error("invalid topic name or pattern {0:?}")]
    BadName(String),
    /// The topic carries another type (the message names both).
    #[error("schema mismatch on topic {topic:?}: {message}")]
    SchemaMismatch {
        /// The topic or pattern.
        topic: String,
        /// The engine's account, naming both types.
        message: String,
    },
    /// The engine refused for another reason.
    #[error("the engine refused: {0}")]
    Refused(String),
    /// The node lost its engine.
    #[error("the engine disconnected")]
    Disconnected,
}

/// Why a message could not be published.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The message is larger than a topic message can be.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// The message could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// `start_send` was called without `poll_ready`.
    #[error("start_send called without poll_ready")]
    NotReady,
    /// The loan was borrowed from another node's transmit arena (a loan is sent by a
    /// publisher or session of the node that lent it).
    #[error("a loan of another node cannot be published here")]
    ForeignLoan,
    /// The node lost its engine.
    #[error("the engine disconnected")]
    Disconnected,
}

/// What a subscription's stream yields instead of a message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// This many messages were dropped for this slow subscriber (`DropOldest`) just before
    /// the next one; the stream goes on.
    #[error("lagged behind: {0} messages dropped")]
    Lagged(u64),
    /// A `Block` subscription held its publishers back past its untether timeout and was
    /// cut loose; the stream ends after this (resubscribe, with history, to catch up).
    #[error("cut loose: the subscription held its publishers back past its untether timeout")]
    Untethered,
    /// A message did not decode as the subscription's type; the stream goes on.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The node lost its engine; the stream ends after this.
    #[error("the engine disconnected")]
    Disconnected,
}

/// Topic state a node's driver keeps.
#[derive(Debug, Default)]
pub(crate) struct NodeTopics {
    subs: IdMap<u32, SubSlot>,
    /// Mapped segments, by topic, with the number of this node's subscriptions attached.
    segments: IdMap<u32, (Arc<ReadOnlySegment>, u32)>,
    /// Topics each subscription is attached to.
    attached: IdMap<u32, Vec<u32>>,
    /// Entries that arrived before the `SubscribeOk` or `TopicAttach` they need (the ring
    /// is faster than the socket), in arrival order.
    held: VecDeque<RawDescriptor>,
}

#[derive(Debug)]
enum SubSlot {
    Open(Arc<SubCore>),
    /// Unsubscribed; waiting for the engine's last entry. Data still arriving is released.
    Closing,
}

impl NodeTopics {
    /// The node lost its engine: every subscription learns it.
    pub(crate) fn disconnect(&mut self) {
        for slot in self.subs.values() {
            if let SubSlot::Open(core) = slot {
                core.push(Event::Disconnected);
            }
        }
        self.subs.clear();
        self.held.clear();
        self.attached.clear();
        self.segments.clear();
    }

    fn detach_all(&mut self, sub: u32) {
        for topic in self.attached.remove(&sub).unwrap_or_default() {
            if let Some((_, count)) = self.segments.get_mut(&topic) {
                *count -= 1;
                if *count == 0 {
                    self.segments.remove(&topic);
                }
            }
        }
    }
}

enum Dispatch {
    Done,
    Held,
}

/// A topic entry of the deliver ring (called by the driver, under the state lock).
pub(crate) fn on_entry(
    shared: &Arc<NodeShared>,
    state: &mut State,
    raw: RawDescriptor,
) -> Result<(), String> {
    let topics = &mut state.topics;
    if topics.held.iter().any(|h| h.session == raw.session) {
        topics.held.push_back(raw);
        return Ok(());
    }
    if let Dispatch::Held = dispatch(shared, topics, raw)? {
        topics.held.push_back(raw);
    }
    Ok(())
}

/// Retries the held entries, in order.
fn replay(shared: &Arc<NodeShared>, state: &mut State) -> Result<(), String> {
    let held = std::mem::take(&mut state.topics.held);
    for raw in held {
        on_entry(shared, state, raw)?;
    }
    Ok(())
}

fn dispatch(
    shared: &Arc<NodeShared>,
    topics: &mut NodeTopics,
    raw: RawDescriptor,
) -> Result<Dispatch, String> {
    let Some(slot) = topics.subs.get(&raw.session) else {
        return Ok(Dispatch::Held);
    };
    if raw.kind == ipc_core::kind::TOPIC_DATA && !topics.segments.contains_key(&raw.segment) {
        return Ok(Dispatch::Held);
    }
    let delivery = validate_topic_deliver(&raw, |topic| {
        topics.segments.get(&topic).map(|(seg, _)| ArenaBounds {
            size: seg.size(),
            align: 1,
        })
    })
    .map_err(|e| format!("bad topic entry from the engine: {e}"))?;
    match delivery {
        TopicDelivery::Data {
            subscription,
            topic,
            offset,
            len,
            ..
        } => {
            let segment = &topics.segments[&topic].0;
            let view = segment
                .view(offset, len)
                .map_err(|e| format!("bad topic entry from the engine: {e}"))?;
            match slot {
                SubSlot::Open(core) => {
                    let weak: Weak<NodeShared> = Arc::downgrade(shared);
                    let lease = BroadcastLease::new(view, subscription, topic, move |entry| {
                        if let Some(shared) = weak.upgrade() {
                            shared.release_entry(entry);
                        }
                    });
                    core.push(Event::Data(Bytes::from_owner(lease)));
                }
                SubSlot::Closing => {
                    shared.release_entry(RawDescriptor::topic_release(subscription, topic, offset));
                }
            }
        }
        TopicDelivery::Lagged {
            subscription,
            count,
        } => {
            if let SubSlot::Open(core) = slot {
                core.push(Event::Lagged(count));
            }
            let _ = subscription;
        }
        TopicDelivery::Closed {
            subscription,
            reason,
        } => {
            if let Some(SubSlot::Open(core)) = topics.subs.remove(&subscription) {
                core.push(Event::Closed(reason));
            }
            topics.detach_all(subscription);
        }
    }
    Ok(Dispatch::Done)
}

/// A topic frame from the engine (called by the driver). An error ends the node: its
/// engine broke the protocol.
pub(crate) fn on_frame(
    shared: &Arc<NodeShared>,
    frame: EngineFrame,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<(), String> {
    match frame {
        EngineFrame::PublishOk {
            req,
            publisher,
            max_message,
            ..
        } => {
            if shared
                .answer(
                    req,
                    Reply::Published {
                        publisher,
                        max_message,
                    },
                )
                .is_err()
            {
                shared.send_oneway(|req| NodeFrame::Unpublish { req, publisher });
            }
        }
        EngineFrame::TopicDone { req } => {
            let _ = shared.answer(req, Reply::TopicDone);
        }
        EngineFrame::SubscribeOk { req, subscription } => {
            let core = Arc::new(SubCore::new());
            {
                let mut state = shared.state();
                if state.dead {
                    return Ok(());
                }
                state
                    .topics
                    .subs
                    .insert(subscription, SubSlot::Open(core.clone()));
                replay(shared, &mut state)?;
            }
            if shared
                .answer(req, Reply::Subscribed(subscription, core))
                .is_err()
            {
                unsubscribe(shared, subscription);
            }
        }
        EngineFrame::TopicAttach {
            subscription,
            topic,
            segment_size,
            ..
        } => {
            let fd = fds
                .into_iter()
                .next()
                .ok_or("a topic attach without its segment")?;
            let mut state = shared.state();
            if state.dead {
                return Ok(());
            }
            let topics = &mut state.topics;
            match topics.segments.get_mut(&topic) {
                Some((segment, count)) => {
                    if segment.size() != segment_size {
                        return Err(format!("topic {topic} attached again with another size"));
                    }
                    *count += 1;
                }
                None => {
                    let segment = ReadOnlySegment::open(fd, segment_size)
                        .map_err(|e| format!("topic {topic}'s segment refused: {e}"))?;
                    topics.segments.insert(topic, (segment, 1));
                }
            }
            topics.attached.entry(subscription).or_default().push(topic);
            replay(shared, &mut state)?;
        }
        other => return Err(format!("not a topic frame: {other:?}")),
    }
    Ok(())
}

/// Ends subscription `id` without waiting: queued messages are released, the engine is told.
pub(crate) fn unsubscribe(shared: &Arc<NodeShared>, id: u32) {
    let old = {
        let mut state = shared.state();
        if state.dead {
            return;
        }
        state.topics.subs.insert(id, SubSlot::Closing)
    };
    drop(old);
    shared.send_oneway(|req| NodeFrame::Unsubscribe {
        req,
        subscription: id,
    });
}

fn setup_error(topic: &str, reply: Reply) -> TopicSetupError {
    match reply {
        Reply::Error { code, message } => match ErrorCode::from_u16(code) {
            Some(ErrorCode::SchemaMismatch) => TopicSetupError::SchemaMismatch {
                topic: topic.to_owned(),
                message,
            },
            Some(ErrorCode::BadTopic) if message.starts_with("invalid") => {
                TopicSetupError::BadName(topic.to_owned())
            }
            _ => TopicSetupError::Refused(message),
        },
        Reply::Limit { limit, max } => {
            TopicSetupError::Refused(format!("engine limit {limit} of {max} reached"))
        }
        other => TopicSetupError::Refused(format!("unexpected reply {other:?}")),
    }
}

// ===== impl Node =====

impl Node {
    /// Publishes `T` on `topic` (created on first use): a [`Publisher`], a `Sink<T>`. The
    /// topic's type is fixed by its first typed publisher or subscriber; another type is
    /// refused with [`TopicSetupError::SchemaMismatch`], naming both.
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn publish<T: Payload<Bincode>>(
        &self,
        topic: &str,
    ) -> Result<Publisher<T>, TopicSetupError> {
        self.publish_with_history::<T, Bincode>(topic, 0).await
    }

    /// As [`Node::publish`], with codec `C`, asking the topic to keep its last `history`
    /// messages for late joiners (the topic keeps the most any publisher asked for, within
    /// the engine's limit).
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn publish_with_history<T: Payload<C>, C: Codec>(
        &self,
        topic: &str,
        history: u32,
    ) -> Result<Publisher<T, C>, TopicSetupError> {
        self.publish_core(topic, T::message_type(), history).await
    }

    /// Publishes on `topic` declaring its type as `ty`, each message given as its encoding
    /// (for code that forwards messages without decoding them, such as a bridge).
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn publish_as(
        &self,
        topic: &str,
        ty: MessageType,
        history: u32,
    ) -> Result<Publisher<Bytes>, TopicSetupError> {
        self.publish_core(topic, ty, history).await
    }

    async fn publish_core<T, C>(
        &self,
        topic: &str,
        ty: MessageType,
        history: u32,
    ) -> Result<Publisher<T, C>, TopicSetupError> {
        let shared = &self.handle().shared;
        let reply = shared
            .request(
                |req| NodeFrame::Publish {
                    req,
                    topic: topic.to_owned(),
                    ty,
                    history,
                },
                None,
            )
            .await
            .map_err(|_| TopicSetupError::Disconnected)?;
        match reply {
            Reply::Published {
                publisher,
                max_message,
            } => Ok(Publisher::new(
                self.handle().clone(),
                publisher,
                topic.to_owned(),
                max_message,
            )),
            other => Err(setup_error(topic, other)),
        }
    }

    /// Subscribes to `pattern` (a topic name, or `"prefix/**"` for every topic under a
    /// prefix) with the default options: `DropOldest`.
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn subscribe<T: Payload<Bincode>>(
        &self,
        pattern: &str,
    ) -> Result<Subscription<T>, TopicSetupError> {
        self.subscribe_with::<T, Bincode>(pattern, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `pattern` with `options` and codec `C`.
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn subscribe_with<T: Payload<C>, C: Codec>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription<T, C>, TopicSetupError> {
        self.subscribe_core(pattern, T::message_type(), options)
            .await
    }

    /// Subscribes to `pattern` declaring the type `ty`, each message yielded as its encoding
    /// (see [`Node::publish_as`]).
    ///
    /// # Errors
    ///
    /// [`TopicSetupError`].
    pub async fn subscribe_as(
        &self,
        pattern: &str,
        ty: MessageType,
        options: SubscribeOptions,
    ) -> Result<Subscription<Bytes>, TopicSetupError> {
        self.subscribe_core(pattern, ty, options).await
    }

    async fn subscribe_core<T, C>(
        &self,
        pattern: &str,
        ty: MessageType,
        options: SubscribeOptions,
    ) -> Result<Subscription<T, C>, TopicSetupError> {
        let shared = &self.handle().shared;
        let wire = ipc_core::control::SubscribeOptions {
            overflow: options.overflow,
            queue: options.queue.max(1),
            history: options.history,
        };
        let reply = shared
            .request(
                |req| NodeFrame::Subscribe {
                    req,
                    pattern: pattern.to_owned(),
                    ty,
                    options: wire,
                },
                None,
            )
            .await
            .map_err(|_| TopicSetupError::Disconnected)?;
        match reply {
            Reply::Subscribed(id, core) => Ok(Subscription::new(self.handle().clone(), id, core)),
            other => Err(setup_error(pattern, other)),
        }
    }
}
