//! Errors of the engine, nodes and sessions: one enum per operation.

use std::io;

use ipc_core::BlockError;
use ipc_core::control::Limit;
use thiserror::Error;

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
    /// Creating the socket, its directory or its lock failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `spawn` was called outside a Tokio runtime.
    #[error("Engine::spawn must be called from within a Tokio runtime")]
    NoRuntime,
}

/// Why `Node::connect` failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket could not be reached or the connection broke.
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
    /// The node's name is empty or longer than 255 bytes.
    #[error("invalid node name: must be 1..=255 bytes")]
    Name,
    /// One of the engine's admission limits is reached (for example the connections or
    /// incomplete handshakes of this uid); retry when some leave.
    #[error("the engine's limit of {max} {limit} is reached")]
    LimitReached {
        /// Which limit.
        limit: Limit,
        /// Its configured value.
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
    /// The two ends disagree on message types; the message names both sides.
    #[error("schema mismatch: {0}")]
    SchemaMismatch(String),
    /// The name is empty or longer than 255 bytes.
    #[error("invalid service name: must be 1..=255 bytes")]
    Name,
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
    /// A typed message could not be encoded or decoded; the session goes on.
    #[error("codec error: {0}")]
    Codec(String),
}
