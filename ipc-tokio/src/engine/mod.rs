//! The communications engine: rendezvous, the data path, cleanup.
//!
//! [`Engine::builder`] configures one; [`EngineBuilder::spawn`] binds its socket and starts
//! its tasks on the current Tokio runtime:
//!
//! - the *listener* accepts connections and runs one *connection task* per node
//!   (credentials, hello, block and doorbells over `SCM_RIGHTS`, then control frames);
//! - the *router* owns every block and ring and moves every message: it is the only task
//!   that touches shared memory, so it needs no locks, and it never waits on a node
//!   (docs/ARCHITECTURE.md, invariant 4): a node that stops reading only fills its own queues.
//!
//! ```
//! use ipc_tokio::{Engine, Node};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("shmlink-engine-doc-{}", std::process::id()));
//! let socket = dir.join("engine.sock");
//! let engine = Engine::builder().socket(&socket).spawn()?;
//! let node = Node::connect(&socket, "worker").await?; // any process of the same user
//! assert_eq!(engine.wait_for_stats(|s| s.nodes == 1).await.nodes, 1);
//! drop(node);
//! engine.shutdown().await; // every node still connected sees `Disconnected`
//! # Ok(())
//! # }
//! ```

mod builder;
mod command;
mod config;
mod datapath;
pub mod inspect;
mod link;
mod listener;
mod memory;
mod metrics;
mod queue;
mod queue_router;
mod registry;
mod router;
mod scheduler;
mod segments;
mod violation;
// Topics are built as plain data first; the router wires them in a later step.
#[allow(dead_code, unused_imports)]
mod topic;
mod topic_router;

pub use builder::{Engine, EngineBuilder};
pub use config::{
    DEFAULT_ORPHAN_BUDGET, DEFAULT_QUEUE_MEMORY, DEFAULT_TOPIC_SEGMENT, DEFAULT_WINDOW_BYTES,
    DEFAULT_WINDOW_MESSAGES, EngineStats, MAX_TOPIC_SEGMENT, MIN_TOPIC_SEGMENT, Policy,
    STALLED_SESSIONS_AT_DEFAULTS, default_socket_path,
};
pub use queue::store::StoreError;
