//! The communications engine: rendezvous, the data path, cleanup.
//!
//! [`Engine::builder`] configures one; [`EngineBuilder::spawn`] binds its socket and starts
//! its tasks on the current Tokio runtime:
//!
//! - the *listener* accepts connections and runs one *connection task* per node
//!   (credentials, hello, block and doorbells over `SCM_RIGHTS`, then control frames);
//! - the *router* owns every block and ring and moves every message: it is the only task
//!   that touches shared memory, so it needs no locks, and it never waits on a node
//!   (DESIGN.md invariant 4): a node that stops reading only fills its own queues.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ipc_tokio::Engine;
//! let engine = Engine::builder().socket("/tmp/shmlink-doc.sock").spawn()?;
//! // ... nodes connect to /tmp/shmlink-doc.sock ...
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod builder;
mod listener;
mod router;

pub use builder::{Engine, EngineBuilder, EngineStats, Policy, default_socket_path};
