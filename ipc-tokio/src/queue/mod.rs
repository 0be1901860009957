//! Queues on the node side: [`Producer`], [`Consumer`] and [`Delivery`].
//!
//! A queue is declared once by name ([`Node::declare_queue`]) and kept by the engine: a
//! message a producer sent stays there until a consumer acknowledges it. Producers append;
//! consumers compete, each message going to one consumer at a time, in order apart from
//! redeliveries. The guarantee is at least once:
//!
//! - a [`Producer`]'s `send` (or `flush`) resolves when the engine has taken responsibility
//!   for the message: at once for an in-memory queue, once it is committed to disk (fsync)
//!   for a durable one (a publisher confirm). A send that did not resolve `Ok` may or may
//!   not have been kept;
//! - a consumer that dies (its process exits, crashes or is SIGKILLed), lets its lease run
//!   out, or nacks, has its deliveries returned to the head of the queue at once, marked
//!   [`Delivery::redelivered`]; after `max_deliveries` deliveries, or when rejected, a
//!   message goes to the queue's dead-letter queue.
//!
//! ```text
//!  producer ─DATA(producer id)─> engine: copy out of the tx arena into engine memory
//!     <── QUEUE_CONFIRM ──────────  (after the fsync'd commit for a durable queue)
//!                                   ──copy──> a consumer's rx arena ──QUEUE_DATA──> consumer
//!  consumer ──QUEUE_ACK/NACK/REJECT/EXTEND──> engine ──QUEUE_SETTLED──> consumer
//! ```
//!
//! ```
//! use ipc_tokio::{Engine, Node, QueueOptions};
//! use futures::{SinkExt, StreamExt};
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("shmlink-queue-doc-{}", std::process::id()));
//! # let socket = dir.join("engine.sock");
//! let engine = Engine::builder().socket(&socket).spawn()?;
//! let node = Node::connect(&socket, "worker").await?;
//! node.declare_queue("jobs", QueueOptions::default()).await?;
//! let mut producer = node.producer::<Bytes>("jobs").await?;
//! producer.send(Bytes::from_static(b"job 1")).await?; // confirmed by the engine
//! let mut consumer = node.consumer::<Bytes>("jobs").await?;
//! let delivery = consumer.next().await.expect("a delivery")?;
//! assert_eq!(&delivery[..], b"job 1");
//! delivery.ack().await?;
//! # drop((producer, consumer, node)); engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod consumer;
mod producer;

use std::sync::Arc;
use std::time::Duration;

use ipc_core::control::{ErrorCode, NodeFrame, QueueSpec};
use ipc_core::descriptor::{QueueDelivery, queue_outcome};
use ipc_core::{IdMap, RawDescriptor, validate_queue_deliver};
use thiserror::Error;

pub(crate) use consumer::ConsumerCore;
pub use consumer::{Consumer, Delivery, Settle};
pub(crate) use producer::ProducerCore;
pub use producer::{MAX_UNCONFIRMED, Producer};

use crate::error::CodecError;
use crate::message::{Bincode, Codec};
use crate::node::{Node, NodeShared, Reply, State};
use crate::session::Payload;

/// What a producer of a full queue gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WhenFull {
    /// Its `send` waits until consumers make room (back-pressure; the default).
    #[default]
    Wait,
    /// Its `send` fails with [`ProduceError::Full`].
    Refuse,
}

/// How a queue is declared ([`Node::declare_queue`]). Declaring an existing queue again with
/// the same options is a no-op; with other options it is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    /// Kept on disk by an engine with a data directory, surviving a crash of the engine:
    /// a confirmed message is on disk (default: in memory only).
    pub durable: bool,
    /// Most messages the queue holds, ready or delivered and not yet acknowledged (default:
    /// no limit but the engine's queue memory).
    pub max_length: Option<u64>,
    /// What producers get when the queue (or the engine's queue memory) is full.
    pub when_full: WhenFull,
    /// Deliveries after which a message that was never acknowledged goes to the dead-letter
    /// queue (default 20, at least 1).
    pub max_deliveries: u32,
    /// Where rejected messages and those delivered `max_deliveries` times go (declared with
    /// this queue if it does not exist); `None` drops them (default).
    pub dead_letter: Option<String>,
    /// The lease (visibility timeout) of its consumers unless they choose one: a delivery
    /// not settled within it returns to the queue (default: none, only the consumer's death
    /// returns it).
    pub lease: Option<Duration>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            durable: false,
            max_length: None,
            when_full: WhenFull::Wait,
            max_deliveries: 20,
            dead_letter: None,
            lease: None,
        }
    }
}

impl QueueOptions {
    /// The default options, durable.
    pub fn durable() -> Self {
        Self {
            durable: true,
            ..Self::default()
        }
    }

    fn spec(&self) -> QueueSpec {
        QueueSpec {
            durable: self.durable,
            max_length: self.max_length.unwrap_or(0),
            reject_when_full: self.when_full == WhenFull::Refuse,
            max_deliveries: self.max_deliveries.max(1),
            dead_letter: self.dead_letter.clone().unwrap_or_default(),
            lease_ms: self.lease.map_or(0, duration_ms),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How a consumer consumes ([`Node::consumer_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Deliveries it may hold unsettled at once (default 64, at least 1).
    pub prefetch: u32,
    /// Its lease: a delivery not settled (or extended) within it returns to the queue.
    /// `None` takes the queue's.
    pub lease: Option<Duration>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            prefetch: 64,
            lease: None,
        }
    }
}

/// Why a queue could not be declared, or a producer or consumer set up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueSetupError {
    /// No queue has that name: declare it first.
    #[error("no queue named {0:?}")]
    NoQueue(String),
    /// The queue exists with other options (or the options are not valid).
    #[error("queue declaration refused: {0}")]
    Mismatch(String),
    /// The queue carries another type (the message names both).
    #[error("schema mismatch on queue {queue:?}: {message}")]
    SchemaMismatch {
        /// The queue.
        queue: String,
        /// The engine's account, naming both types.
        message: String,
    },
    /// A durable queue on an engine without a data directory.
    #[error("{0}")]
    NotDurable(String),
    /// The engine refused for another reason.
    #[error("the engine refused: {0}")]
    Refused(String),
    /// The node lost its engine.
    #[error("the engine disconnected")]
    Disconnected,
}

/// Why a message was not confirmed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProduceError {
    /// The message is larger than this node can send.
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
    /// The queue was full and refuses when full: this many of the messages sent since the
    /// last flush were not kept.
    #[error("the queue is full: {0} messages refused")]
    Full(u64),
    /// The engine could not commit this many messages to disk: they were not kept.
    #[error("the engine's store failed: {0} messages not kept")]
    Store(u64),
    /// The node lost its engine before every message was confirmed: those may or may not
    /// have been kept.
    #[error("the engine disconnected before confirming")]
    Disconnected,
}

/// What a consumer's stream yields instead of a delivery.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeError {
    /// A message did not decode as the consumer's type: it was rejected (to the dead-letter
    /// queue); the stream goes on.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The node lost its engine; the stream ends after this. What it held unsettled goes
    /// back to the queue.
    #[error("the engine disconnected")]
    Disconnected,
}

/// Why a settlement ([`Delivery::ack`], `nack`, `reject`, `extend_lease`) did not take.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckError {
    /// The engine no longer holds this delivery for this consumer: its lease expired (it
    /// went back to the queue and may be delivered again), or the consumer was dropped.
    #[error("the delivery is no longer held: its lease expired or its consumer ended")]
    NotHeld,
    /// The engine could not commit the settlement to disk.
    #[error("the engine's store failed to commit the settlement")]
    Store,
    /// The node lost its engine (everything it held goes back to the queue).
    #[error("the engine disconnected")]
    Disconnected,
}

fn ack_error(outcome: u32) -> Result<(), AckError> {
    match outcome {
        queue_outcome::OK => Ok(()),
        queue_outcome::STORE_FAILED => Err(AckError::Store),
        _ => Err(AckError::NotHeld),
    }
}

/// A queue request waiting for its answer (kept by the driver's state).
#[derive(Debug)]
pub(crate) enum Pending {
    Declare,
    Produce(Arc<ProducerCore>),
    Consume(Arc<ConsumerCore>),
}

/// Queue state a node's driver keeps.
#[derive(Debug, Default)]
pub(crate) struct NodeQueues {
    pub(crate) pending: IdMap<u32, Pending>,
    producers: IdMap<u32, Arc<ProducerCore>>,
    consumers: IdMap<u32, Arc<ConsumerCore>>,
    /// Deliveries that raced ahead of their consumer's `QueueOk` (the ring is faster than
    /// the socket), by consumer id.
    early: IdMap<u32, Vec<RawDescriptor>>,
}

impl NodeQueues {
    /// The node lost its engine: every producer and consumer learns it.
    pub(crate) fn disconnect(&mut self) {
        for core in self.producers.values() {
            core.disconnect();
        }
        for core in self.consumers.values() {
            core.disconnect();
        }
        for pending in self.pending.values() {
            match pending {
                Pending::Produce(core) => core.disconnect(),
                Pending::Consume(core) => core.disconnect(),
                Pending::Declare => {}
            }
        }
        self.producers.clear();
        self.consumers.clear();
        self.pending.clear();
        self.early.clear();
    }

    pub(crate) fn remove_producer(&mut self, id: u32) {
        self.producers.remove(&id);
    }
}

/// A queue entry of the deliver ring (called by the driver, under the state lock). Returns
/// receive offsets to release (deliveries for a consumer that is gone).
pub(crate) fn on_entry(
    shared: &Arc<NodeShared>,
    state: &mut State,
    raw: RawDescriptor,
    release: &mut Vec<u64>,
) -> Result<(), String> {
    let rx = shared.block.layout().rx.bounds();
    let entry = validate_queue_deliver(&raw, &rx)
        .map_err(|e| format!("bad queue entry from the engine: {e}"))?;
    let queues = &mut state.queues;
    match entry {
        QueueDelivery::Data {
            consumer,
            offset,
            len,
            tag,
            count,
            redelivered,
        } => {
            let view = shared
                .block
                .rx_view(offset, len)
                .map_err(|e| format!("bad queue entry from the engine: {e}"))?;
            match queues.consumers.get(&consumer) {
                Some(core) => {
                    if !core.push(view, tag, count, redelivered) {
                        release.push(offset);
                    }
                }
                None => queues.early.entry(consumer).or_default().push(raw),
            }
        }
        QueueDelivery::Confirm {
            producer,
            count,
            outcome,
        } => {
            if let Some(core) = queues.producers.get(&producer) {
                core.confirm(count, outcome);
            }
        }
        QueueDelivery::Settled {
            consumer,
            tag,
            outcome,
        } => {
            if let Some(core) = queues.consumers.get(&consumer) {
                core.settled(tag, outcome);
            }
        }
        QueueDelivery::Ended { consumer } => {
            queues.consumers.remove(&consumer);
            for raw in queues.early.remove(&consumer).unwrap_or_default() {
                release.push(raw.offset);
            }
        }
    }
    Ok(())
}

/// A `QueueOk` from the engine (called by the driver): the request's producer or consumer
/// is registered before anyone can use it, with whatever raced ahead of it.
pub(crate) fn on_queue_ok(shared: &Arc<NodeShared>, req: u32, id: u32) {
    let mut release = Vec::new();
    let pending = {
        let mut state = shared.state();
        let pending = state.queues.pending.remove(&req);
        match &pending {
            Some(Pending::Produce(core)) => {
                core.set_id(id);
                state.queues.producers.insert(id, core.clone());
            }
            Some(Pending::Consume(core)) => {
                core.set_id(id);
                state.queues.consumers.insert(id, core.clone());
                for raw in state.queues.early.remove(&id).unwrap_or_default() {
                    match shared.block.rx_view(raw.offset, raw.len) {
                        Ok(view) => {
                            if !core.push(view, raw.aux, raw.segment, raw.flags != 0) {
                                release.push(raw.offset);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "a held queue delivery is out of bounds")
                        }
                    }
                }
            }
            Some(Pending::Declare) | None => {}
        }
        pending
    };
    for offset in release {
        shared.release(offset);
    }
    if shared.answer(req, Reply::Queue).is_err() {
        // The caller gave up: a producer or consumer nobody holds ends again.
        match pending {
            Some(Pending::Produce(core)) => producer::cancel(shared, &core),
            Some(Pending::Consume(core)) => consumer::cancel(shared, &core),
            Some(Pending::Declare) | None => {}
        }
    }
}

/// The error a queue request's reply means.
fn setup_error(queue: &str, reply: Reply) -> QueueSetupError {
    match reply {
        Reply::Error { code, message } => match ErrorCode::from_u16(code) {
            Some(ErrorCode::NoQueue) => QueueSetupError::NoQueue(queue.to_owned()),
            Some(ErrorCode::QueueMismatch) => QueueSetupError::Mismatch(message),
            Some(ErrorCode::SchemaMismatch) => QueueSetupError::SchemaMismatch {
                queue: queue.to_owned(),
                message,
            },
            Some(ErrorCode::NotDurable) => QueueSetupError::NotDurable(message),
            _ => QueueSetupError::Refused(message),
        },
        Reply::Limit { limit, max } => {
            QueueSetupError::Refused(format!("engine limit {limit} of {max} reached"))
        }
        other => QueueSetupError::Refused(format!("unexpected reply {other:?}")),
    }
}

// ===== impl Node =====

impl Node {
    /// Declares queue `name` with `options` (the same options again are a no-op).
    ///
    /// # Errors
    ///
    /// [`QueueSetupError::Mismatch`] if it exists with other options,
    /// [`QueueSetupError::NotDurable`] for a durable queue on an engine without a data
    /// directory, [`QueueSetupError::Disconnected`].
    pub async fn declare_queue(
        &self,
        name: &str,
        options: QueueOptions,
    ) -> Result<(), QueueSetupError> {
        let spec = options.spec();
        match self
            .queue_request(name, Pending::Declare, |req| NodeFrame::DeclareQueue {
                req,
                name: name.to_owned(),
                spec,
            })
            .await?
        {
            Reply::Queue => Ok(()),
            other => Err(setup_error(name, other)),
        }
    }

    /// A producer of the declared queue `queue`: a `Sink<T>` whose `send` resolves once
    /// the engine confirms the message. A typed queue's type is fixed by its first typed
    /// producer or consumer; another type is refused with
    /// [`QueueSetupError::SchemaMismatch`]. (Raw [`bytes::Bytes`] fit any queue.)
    ///
    /// # Errors
    ///
    /// [`QueueSetupError`].
    pub async fn producer<T: Payload<Bincode>>(
        &self,
        queue: &str,
    ) -> Result<Producer<T>, QueueSetupError> {
        self.producer_with_codec::<T, Bincode>(queue).await
    }

    /// As [`Node::producer`], with codec `C`.
    ///
    /// # Errors
    ///
    /// [`QueueSetupError`].
    pub async fn producer_with_codec<T: Payload<C>, C: Codec>(
        &self,
        queue: &str,
    ) -> Result<Producer<T, C>, QueueSetupError> {
        let core = Arc::new(ProducerCore::default());
        let ty = T::message_type();
        let pending = Pending::Produce(core.clone());
        match self
            .queue_request(queue, pending, |req| NodeFrame::Produce {
                req,
                queue: queue.to_owned(),
                ty,
            })
            .await?
        {
            Reply::Queue => Ok(Producer::new(self.handle().clone(), core, queue.to_owned())),
            other => Err(setup_error(queue, other)),
        }
    }

    /// A consumer of the declared queue `queue` with the default options: a `Stream` of
    /// [`Delivery`]s.
    ///
    /// # Errors
    ///
    /// [`QueueSetupError`].
    pub async fn consumer<T: Payload<Bincode>>(
        &self,
        queue: &str,
    ) -> Result<Consumer<T>, QueueSetupError> {
        self.consumer_with::<T, Bincode>(queue, ConsumerOptions::default())
            .await
    }

    /// A consumer of `queue` with `options` and codec `C`.
    ///
    /// # Errors
    ///
    /// [`QueueSetupError`].
    pub async fn consumer_with<T: Payload<C>, C: Codec>(
        &self,
        queue: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer<T, C>, QueueSetupError> {
        let core = Arc::new(ConsumerCore::default());
        let ty = T::message_type();
        let pending = Pending::Consume(core.clone());
        match self
            .queue_request(queue, pending, |req| NodeFrame::Consume {
                req,
                queue: queue.to_owned(),
                ty,
                prefetch: options.prefetch.max(1),
                lease_ms: options.lease.map_or(0, duration_ms),
            })
            .await?
        {
            Reply::Queue => Ok(Consumer::new(self.handle().clone(), core, queue.to_owned())),
            other => Err(setup_error(queue, other)),
        }
    }

    async fn queue_request(
        &self,
        queue: &str,
        pending: Pending,
        frame: impl FnOnce(u32) -> NodeFrame,
    ) -> Result<Reply, QueueSetupError> {
        if ipc_core::control::check_name(queue).is_err() {
            return Err(QueueSetupError::Refused(format!(
                "invalid queue name {queue:?}"
            )));
        }
        self.handle()
            .shared
            .request_queue(frame, pending)
            .await
            .map_err(|_| QueueSetupError::Disconnected)
    }
}

/// Pushes `kind` for `id` without waiting (a settlement or a cancel).
fn push(shared: &NodeShared, kind: u16, id: u32, aux: u64) {
    shared.submit_now(RawDescriptor::control(kind, id, aux));
}
