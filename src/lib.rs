//! shmlink: fast, safe messaging between processes on one host through shared memory.
#![forbid(unsafe_code)]

pub use ipc_core as core;
pub use ipc_core::BlockConfig;
pub use ipc_macros::Message;
pub use ipc_tokio::message::{self, Bincode, Codec, DecodeError, EncodeError, Message};
pub use ipc_tokio::{
    CallError, Client, ConnectError, Engine, EngineBuilder, EngineStats, Listener, Loan, Node,
    OpenError, Payload, Policy, ServeConfig, Server, Session, SessionError, SessionSink,
    SessionStream, SpawnError, default_socket_path,
};

#[doc(hidden)]
pub mod __private;
