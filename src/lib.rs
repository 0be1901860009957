//! shmlink: fast, safe messaging between processes on one host through shared memory,
//! native to Tokio.
//!
//! A communications [`Engine`] (embedded in any application, or the `shmlinkd` daemon)
//! registers each process as a [`Node`], gives it its own sealed shared-memory block, copies
//! each message once into the receiver's block and signals it. Request/response plugs into
//! `tower`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use shmlink::{Engine, Message, Node};
//! use tower::ServiceExt;
//!
//! #[derive(Message, Serialize, Deserialize, Debug)]
//! struct GetQuote {
//!     sku: String,
//! }
//!
//! #[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
//! struct Quote {
//!     sku: String,
//!     cents: u64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = std::env::temp_dir().join(format!("shmlink-doc-{}", std::process::id()));
//! let socket = dir.join("engine.sock");
//! let engine = Engine::builder().socket(&socket).spawn()?;
//!
//! // In the serving process: any tower::Service<GetQuote, Response = Quote>.
//! let billing = Node::connect(&socket, "billing").await?;
//! let quotes = tower::service_fn(|req: GetQuote| async move {
//!     Ok::<_, std::convert::Infallible>(Quote { cents: 1999, sku: req.sku })
//! });
//! let server = billing.serve("quotes", quotes).await?;
//!
//! // In a client process: a tower::Service too, many requests in flight on one session.
//! let web = Node::connect(&socket, "web").await?;
//! let client = web.client::<GetQuote, Quote>("quotes").await?;
//! let quote = client.oneshot(GetQuote { sku: "A-42".into() }).await?;
//! assert_eq!(quote, Quote { sku: "A-42".into(), cents: 1999 });
//! # server.shutdown().await;
//! # engine.shutdown().await;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```
//!
//! Streams are sessions: [`Node::open`] and [`Node::listen`] give [`Session`]s that are a
//! `futures::Sink<T>` and a `futures::Stream<Item = Result<T, SessionError>>`, where `T` is
//! a [`Message`] (encoded straight into shared memory, decoded in place) or raw
//! [`bytes::Bytes`](https://docs.rs/bytes) (received zero-copy; large payloads can be
//! written in place with [`Session::loan`]).
//!
//! # What this crate exports
//!
//! Everything a program needs to embed an engine, connect nodes and exchange messages, by name:
//! the engine ([`Engine`], [`EngineBuilder`], [`BlockConfig`], [`Policy`], [`EngineStats`]),
//! nodes and sessions ([`Node`], [`NodeOptions`], [`Listener`], [`Session`], [`SessionSink`],
//! [`SessionStream`], [`Loan`], [`Payload`], [`MessageType`]), request/response ([`Client`],
//! [`ResponseFuture`], [`Server`], [`ServeConfig`]), typed messages ([`Message`] and its derive,
//! the [`message`] module with its codecs), and one error enum per operation ([`SpawnError`],
//! [`ConnectError`], [`OpenError`], [`SessionError`], [`CallError`], [`BlockError`]). The
//! crate exports no module named `core`, so `use shmlink::*;` leaves `core::` meaning the
//! language's core library:
//!
//! ```
//! use shmlink::*;
//!
//! assert_eq!(core::mem::size_of::<u8>(), 1);
//! let _config: BlockConfig = BlockConfig::default();
//! ```
//!
//! # Crates
//!
//! - `ipc-core`: blocks, the buddy allocator, rings, descriptors, doorbells, control frames.
//!   All `unsafe` code of the project lives there. It is the wire protocol's implementation,
//!   not an API: this crate re-exports only the few of its types that appear in its own
//!   signatures.
//! - `ipc-tokio`: the engine, nodes, sessions, codecs, the tower client and server.
//! - `ipc-macros`: `#[derive(Message)]`.
//!
//! How it fits together (the engine's tasks, the block layout, the invariants and the tests
//! that guard them) is told in the repository's `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![doc(test(attr(deny(warnings))))]

pub use ipc_core::{BlockConfig, BlockError, window_charge};
pub use ipc_macros::Message;
/// The inspector: snapshots of a running engine (what `shmlinkctl` shows).
pub use ipc_tokio::engine::inspect;
pub use ipc_tokio::message::{self, Bincode, Codec, DecodeError, EncodeError, Message};
pub use ipc_tokio::service::ResponseFuture;
pub use ipc_tokio::{
    AckError, ConsumeError, Consumer, ConsumerOptions, DEFAULT_QUEUE_MEMORY, Delivery,
    ProduceError, Producer, QueueOptions, QueueSetupError, Settle, WhenFull,
};
pub use ipc_tokio::{
    CallError, Client, CodecError, ConnectError, Engine, EngineBuilder, EngineStats, Limit,
    Listener, Loan, MessageType, NameError, Node, NodeOptions, OpenError, Payload, Policy, Schema,
    ServeConfig, Server, Session, SessionError, SessionSink, SessionStream, SpawnError, Window,
    default_socket_path,
};
pub use ipc_tokio::{
    DEFAULT_TOPIC_SEGMENT, DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES, MAX_SESSION_PAYLOAD,
    MAX_TOPIC_SEGMENT, MIN_TOPIC_SEGMENT, STALLED_SESSIONS_AT_DEFAULTS,
};
pub use ipc_tokio::{
    Overflow, PublishError, Publisher, SubscribeError, SubscribeOptions, Subscription,
    TopicSetupError,
};

/// The bridge to engines on other hosts, over Zenoh (the `bridge` feature): the
/// `ipc-bridge` crate.
#[cfg(feature = "bridge")]
pub use ipc_bridge as bridge;

#[doc(hidden)]
pub mod __private;

/// The README's Rust blocks, compiled and run as doc tests (`cargo test --doc -p shmlink`), so
/// the README can never drift from the API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
