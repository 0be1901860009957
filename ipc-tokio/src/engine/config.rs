//! The engine's settings and the counts it publishes: the ground floor every other engine
//! module builds on (it imports none of them).

use std::path::PathBuf;
use std::time::Duration;

use ipc_core::BlockConfig;

/// Who may connect: checked against the peer's credentials (`SO_PEERCRED`) before the engine
/// creates any shared memory for it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Only processes running as the engine's own user.
    #[default]
    SameUid,
    /// Only processes running as one of these users.
    AllowUids(Vec<u32>),
}

impl Policy {
    pub(crate) fn allows(&self, uid: u32) -> bool {
        match self {
            Self::SameUid => uid == rustix::process::getuid().as_raw(),
            Self::AllowUids(uids) => uids.contains(&uid),
        }
    }
}

/// The engine's settings, shared by its tasks.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) socket: PathBuf,
    pub(crate) block: BlockConfig,
    /// A session end's window: messages in flight ...
    pub(crate) credits: u32,
    /// ... and bytes in flight (each message charged its size class, see
    /// [`ipc_core::window_charge`]).
    pub(crate) window_bytes: u64,
    /// Engine memory for payloads whose sender left before they could be delivered.
    pub(crate) orphan_budget: u64,
    pub(crate) policy: Policy,
    pub(crate) spin: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_sessions_per_node: usize,
}

/// The default socket path: `$XDG_RUNTIME_DIR/shmlink/engine.sock`, or
/// `/tmp/shmlink-<uid>/engine.sock` when `XDG_RUNTIME_DIR` is not set.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("shmlink").join("engine.sock"),
        _ => PathBuf::from(format!(
            "/tmp/shmlink-{}",
            rustix::process::getuid().as_raw()
        ))
        .join("engine.sock"),
    }
}

/// Counts from the engine's registry, updated as they change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Registered nodes (each holds one block).
    pub nodes: usize,
    /// Live session ends.
    pub session_ends: usize,
    /// Served names.
    pub services: usize,
    /// Messages copied since start.
    pub messages: u64,
    /// Nodes closed for breaking the protocol since start.
    pub violations: u64,
    /// Nodes the router polls on every pass (they rang, or were busy within the spin time);
    /// the others cost nothing until they ring (invariant 8).
    pub active_nodes: usize,
    /// Messages accepted from senders and not yet copied to their receivers (they wait for
    /// room in a receive arena).
    pub waiting: usize,
}

/// Default window of a session end in messages ([`EngineBuilder::credits`](crate::EngineBuilder::credits)).
pub const DEFAULT_WINDOW_MESSAGES: u32 = 256;

/// Default window of a session end in bytes ([`EngineBuilder::window_bytes`](crate::EngineBuilder::window_bytes)):
/// 4 MiB, an eighth of the default 32 MiB arenas.
pub const DEFAULT_WINDOW_BYTES: u64 = 4 << 20;

/// How many sessions of one node may stall at once (their receivers stop reading), at the
/// default block and window sizes, while the node's other sessions keep a quarter of its
/// arenas (8 MiB of 32 MiB, room for the largest default window twice over): six windows
/// of 4 MiB. Beyond that, new loans and deliveries wait for room (back-pressure), nothing is
/// lost, and everything resumes as soon as a stalled receiver reads or its session closes.
pub const STALLED_SESSIONS_AT_DEFAULTS: usize = 6;

/// Default engine memory for payloads whose sender left before their receiver had room
/// ([`EngineBuilder::orphan_budget`](crate::EngineBuilder::orphan_budget)): 64 MiB.
pub const DEFAULT_ORPHAN_BUDGET: u64 = 64 << 20;
