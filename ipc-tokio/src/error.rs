//! Errors of the engine, nodes and sessions: one enum per operation.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use ipc_core::BlockError;
use ipc_core::control::Limit;
pub use ipc_core::control::{MessageType, NameError, Schema};
use thiserror::Error;

use crate::message::{Codec, DecodeError, EncodeError, Message};

/// Why an engine could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// A live engine already listens on this socket path.
    #[error("an engine is already running on {path}")]
    InUse {
        /// The socket path.
        path: String,
    },
    /// The block configuration cannot be laid out.
    #[error(transparent)]
    Config(#[from] BlockError),
    /// The durable queue store in the data directory cannot be opened or recovered
    /// (unreadable, corrupted, of another version, or in use by another engine). Nothing
    /// was recovered; the engine did not start.
    #[error("cannot open the durable queue store: {0}")]
    Store(#[from] crate::engine::StoreError),
    /// Creating the socket, its directory or its lock failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The socket path is longer than a Unix socket address holds (`sun_path`: 107 bytes and
    /// a NUL); nothing was created.
    #[error(
        "the socket path {path} is {len} bytes long, more than the {max} a Unix socket address holds"
    )]
    PathTooLong {
        /// The socket path.
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The longest path allowed.
        max: usize,
    },
    /// The topic segment size is not a power of two between the bounds.
    #[error("a topic segment of {size} bytes: it must be a power of two from {min} to {max} bytes")]
    TopicSegment {
        /// The size asked for.
        size: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// One node's block is larger than the per-node memory budget, or that budget is larger
    /// than the engine-wide one: no node could ever connect.
    #[error(
        "a node's block of {block} bytes does not fit the per-node memory budget of {node_budget} bytes within the engine's {budget}"
    )]
    Budget {
        /// The block's size (rings and arenas).
        block: u64,
        /// The per-node budget.
        node_budget: u64,
        /// The engine-wide budget.
        budget: u64,
    },
    /// `spawn` was called outside a Tokio runtime.
    #[error("Engine::spawn must be called from within a Tokio runtime")]
    NoRuntime,
}

/// Why `Node::connect` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing accepts connections on the socket path: no such file, no engine listening on
    /// it any more (a stale socket), or no permission.
    #[error("cannot reach an engine on {}: {source}", path.display())]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The error of `connect`.
        #[source]
        source: io::Error,
    },
    /// The rendezvous did not complete within
    /// [`NodeOptions::connect_timeout`](crate::NodeOptions::connect_timeout): something
    /// accepted the connection but never answered like an engine.
    #[error("no answer from the engine on {} within {timeout:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The connection broke during the rendezvous.
    #[error("cannot reach the engine: {0}")]
    Io(#[from] io::Error),
    /// The engine refused the node (credentials, protocol version, resources).
    #[error("the engine refused the connection: {message}")]
    Refused {
        /// What the engine said.
        message: String,
    },
    /// The engine sent something this node does not understand.
    #[error("protocol error during rendezvous: {0}")]
    Protocol(String),
    /// The block handed over failed validation.
    #[error("the engine's block is invalid: {0}")]
    Block(#[from] BlockError),
    /// The node's name is empty, longer than 255 bytes or holds a control character; nothing
    /// was sent.
    #[error("invalid node name {name:?}: {reason}")]
    Name {
        /// The name refused.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// One of the engine's admission limits is reached (for example the connections or
    /// incomplete handshakes of this uid); retry when some leave.
    #[error("the engine's limit of {max} {limit} is reached")]
    LimitReached {
        /// Which limit.
        limit: Limit,
        /// Its configured value.
        max: u64,
    },
    /// A memory budget of the engine would be passed by this node's block
    /// ([`Limit::MemoryBudget`] for all nodes together, [`Limit::NodeMemoryBudget`] for one);
    /// retry when other nodes leave, or raise the budget.
    #[error("the engine's memory budget is reached: {max} {limit}")]
    Budget {
        /// Which budget.
        limit: Limit,
        /// Its configured value, in bytes.
        max: u64,
    },
}

/// Why `Node::open`, `Node::listen` (or their typed forms) failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Nobody serves that name.
    #[error("no node serves {service:?}")]
    NotServed {
        /// The service name.
        service: String,
    },
    /// The name is served already.
    #[error("{service:?} is already served")]
    AlreadyServed {
        /// The service name.
        service: String,
    },
    /// The two ends disagree on message types: both schemas, with each type's name and
    /// fingerprint. For a session opened with `open::<T>` both directions carry `T`; for a
    /// request/response client, `client.send` is the request and `client.recv` the response.
    #[error(
        "schema mismatch on {service:?}: this end sends {} and receives {}, but the serving end receives {} and sends {}",
        client.send, client.recv, server.recv, server.send
    )]
    SchemaMismatch {
        /// The service name.
        service: String,
        /// What this (opening) end sends and receives.
        client: Box<Schema>,
        /// What the serving end sends and receives.
        server: Box<Schema>,
    },
    /// The service name is empty, longer than 255 bytes or holds a control character;
    /// nothing was sent.
    #[error("invalid service name {name:?}: {reason}")]
    Name {
        /// The name refused.
        name: String,
        /// What is wrong with it.
        #[source]
        reason: NameError,
    },
    /// One of the engine's admission limits is reached (sessions per uid, per opener, queued
    /// at the listener, …); retry when some close.
    #[error("the engine's limit of {max} {limit} is reached")]
    LimitReached {
        /// Which limit.
        limit: Limit,
        /// Its configured value.
        max: u64,
    },
    /// The engine refused for another reason.
    #[error("the engine refused: {0}")]
    Refused(String),
    /// The connection to the engine is gone.
    #[error("disconnected from the engine")]
    Disconnected,
}

/// Errors on an open session.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer closed the session (or this end finished sending).
    #[error("the session is closed")]
    Closed,
    /// The peer's process or the engine went away; messages in flight may be lost.
    #[error("the peer or the engine disconnected")]
    Disconnected,
    /// The payload can never fit: it is larger than the arenas.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Bytes of the payload.
        len: u64,
        /// The largest payload a session carries.
        max: u64,
    },
    /// `start_send` was called without a successful `poll_ready`.
    #[error("start_send called without poll_ready")]
    NotReady,
    /// The [`Loan`](crate::Loan) was lent by another node's transmit arena: it can only be
    /// sent by a session (or publisher) of the node that lent it. Nothing was sent, and the
    /// loan went back to its own arena.
    #[error("a loan of another node cannot be sent on this session")]
    ForeignLoan,
    /// A typed message could not be encoded or decoded; the session goes on.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A received frame's records did not fit it: the peer rewrote its frame after the engine
    /// checked it. The rest of that frame is dropped; the session goes on.
    #[error("malformed frame from the peer: {0}")]
    MalformedFrame(ipc_core::frame::FrameError),
    /// A large payload's hand-off segment would pass one of the engine's memory budgets
    /// ([`Limit::MemoryBudget`] for all nodes, [`Limit::NodeMemoryBudget`] for this one).
    /// Nothing was sent; the session goes on, and the payload may fit once others are
    /// released.
    #[error("the engine's memory budget is reached: {max} {limit}")]
    Budget {
        /// Which budget.
        limit: Limit,
        /// Its configured value, in bytes.
        max: u64,
    },
    /// The engine could not lend a hand-off segment for a large payload (too many lent at
    /// once, or no memory for one). Nothing was sent; the session goes on.
    #[error("no hand-off segment for a large payload: {0}")]
    Segment(String),
}

/// Why a typed message could not be encoded or decoded: which type, which codec, and the
/// codec's own error, as fields.
///
/// A message too large for a session is never a `CodecError`: it is
/// [`SessionError::TooLarge`] (or [`CallError::TooLarge`](crate::CallError::TooLarge)) with
/// the limit that applies.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A message to send could not be encoded; nothing was sent.
    #[error("cannot encode a {type_name} with {codec}: {source}")]
    Encode {
        /// The message type's [`NAME`](crate::message::Message::NAME).
        type_name: &'static str,
        /// The codec's [`NAME`](crate::message::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: EncodeError,
    },
    /// A received payload could not be decoded; it was dropped.
    #[error("cannot decode a {type_name} with {codec}: {source}")]
    Decode {
        /// The message type's [`NAME`](crate::message::Message::NAME).
        type_name: &'static str,
        /// The codec's [`NAME`](crate::message::Codec::NAME).
        codec: &'static str,
        /// The codec's error.
        #[source]
        source: DecodeError,
    },
}

impl CodecError {
    /// An encoding error of a `T` with the codec `C`.
    pub(crate) fn encode<T: Message, C: Codec>(source: EncodeError) -> Self {
        Self::Encode {
            type_name: T::NAME,
            codec: C::NAME,
            source,
        }
    }

    /// A decoding error of a `T` with the codec `C`.
    pub(crate) fn decode<T: Message, C: Codec>(source: DecodeError) -> Self {
        Self::Decode {
            type_name: T::NAME,
            codec: C::NAME,
            source,
        }
    }
}

/// The error of encoding a `T` with `C`: a message longer than the codec accepts is
/// [`SessionError::TooLarge`] (the caller lowers `max` to the session's limit if smaller),
/// anything else a [`CodecError::Encode`].
pub(crate) fn encode_error<T: Message, C: Codec>(e: EncodeError) -> SessionError {
    match e {
        EncodeError::TooLarge { len, max } => SessionError::TooLarge {
            len: len as u64,
            max: max as u64,
        },
        other => SessionError::Codec(CodecError::encode::<T, C>(other)),
    }
}
