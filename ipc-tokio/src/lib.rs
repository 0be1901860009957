//! The engine, nodes and sessions of shmlink, on Tokio.
//!
//! See the `shmlink` crate for the guided tour; this crate holds the implementation.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod control;
pub mod engine;
pub mod error;
pub mod message;
pub mod node;
pub mod queue;
pub mod service;
pub mod session;
mod spin;
pub mod topic;

pub use engine::{
    DEFAULT_ORPHAN_BUDGET, DEFAULT_QUEUE_MEMORY, DEFAULT_TOPIC_SEGMENT, DEFAULT_WINDOW_BYTES,
    DEFAULT_WINDOW_MESSAGES, Engine, EngineBuilder, EngineStats, MAX_TOPIC_SEGMENT,
    MIN_TOPIC_SEGMENT, Policy, STALLED_SESSIONS_AT_DEFAULTS, StoreError, default_socket_path,
};
pub use error::{
    CodecError, ConnectError, MessageType, NameError, OpenError, Schema, SessionError, SpawnError,
};
pub use ipc_core::control::Limit;
pub use node::{Listener, Node, NodeOptions, Window};
pub use queue::{
    AckError, ConsumeError, Consumer, ConsumerOptions, Delivery, ProduceError, Producer,
    QueueOptions, QueueSetupError, Settle, WhenFull,
};
pub use service::{CallError, Client, ServeConfig, Server};
pub use session::{
    DEFAULT_FRAME_SIZE, Loan, MAX_SESSION_PAYLOAD, Payload, Session, SessionSink, SessionStream,
};
pub use topic::{
    Overflow, PublishError, Publisher, SubscribeError, SubscribeOptions, Subscription,
    TopicSetupError,
};
