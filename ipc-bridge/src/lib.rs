//! shmlink's bridge: engines on different hosts, over [Zenoh](https://zenoh.io).
//!
//! A [`Bridge`] is a node of its local engine and a member of a Zenoh session. Nothing
//! crosses unless its [`BridgeConfig`] names it: a service one bridge exports and another
//! imports is served on the importing host by the bridge, which tunnels each session to the
//! exporting bridge and from there to the real server; a topic one exports and another
//! imports is republished on the importing host. Local nodes' code does not change:
//! `client("quotes")` reaches the remote server when none is local.
//!
//! ```
//! use ipc_bridge::{Bridge, BridgeConfig};
//! use shmlink::Engine;
//!
//! // Zenoh needs a multi-thread runtime.
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 1)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = std::env::temp_dir().join(format!("ipc-bridge-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let socket = dir.join("engine.sock");
//! let engine = Engine::builder().socket(&socket).spawn()?;
//!
//! // On the host that serves "quotes": a Zenoh peer listening on a port of its own.
//! let mut zenoh = zenoh::Config::default();
//! zenoh.insert_json5("listen/endpoints", r#"["tcp/127.0.0.1:0"]"#)?;
//! zenoh.insert_json5("scouting/multicast/enabled", "false")?;
//! let config = BridgeConfig::new(zenoh).export_service("quotes");
//! let bridge = Bridge::start(&socket, config).await?;
//! # bridge.shutdown().await;
//! # engine.shutdown().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # How calls and sessions cross
//!
//! A tower client is a session whose envelopes carry call ids, so tunnelling the session
//! carries request/response with many calls in flight and out-of-order replies, and
//! streams too, with one mechanism. Each tunnelled session has its own credit window
//! ([`BridgeConfig::window`]): a slow receiver stalls only its own session, and Zenoh
//! (reliable, `CongestionControl::Block`) never drops a message. When the other bridge goes
//! (its liveliness token goes with its Zenoh session or its link), the tunnelled sessions end:
//! a local client's pending calls fail with `CallError::Disconnected`.
//!
//! # Security
//!
//! The Zenoh configuration decides who may join: TLS with mutual authentication
//! (`transport/link/tls`) or user/password (`transport/auth/usrpwd`); see the repository's
//! docs/ARCHITECTURE.md, "Bridge". Local access control is unchanged: a remote peer reaches
//! only what its peer bridge exports.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod bridge;
mod config;
mod service;
mod topic;
mod tunnel;
mod wire;

pub use bridge::{Bridge, ImportState};
pub use config::{
    BridgeConfig, BridgeError, DEFAULT_NAMESPACE, DEFAULT_UNTETHER_MS, DEFAULT_WINDOW,
};
pub use wire::WireError;
