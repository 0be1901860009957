//! The engine's settings and the counts it publishes: the ground floor every other engine
//! module builds on (it imports none of them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipc_core::BlockConfig;

use crate::engine::memory::Memory;

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
    /// Engine memory for the payloads of queued messages, all queues together.
    pub(crate) queue_memory: u64,
    /// Where durable queues live (`queues.redb`); `None`: no durable queues.
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) policy: Policy,
    pub(crate) spin: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_sessions_per_node: usize,
    pub(crate) limits: Limits,
    /// Make the engine's process non-dumpable when it starts (`PR_SET_DUMPABLE` 0).
    pub(crate) non_dumpable: bool,
    /// Size of each topic's broadcast segment: the largest topic message.
    pub(crate) topic_segment: u64,
    /// Record the counts through the `metrics` facade (see [`EngineBuilder::metrics`](crate::EngineBuilder::metrics)).
    pub(crate) metrics: bool,
    /// Shared memory the engine may hold for all nodes together, in bytes.
    pub(crate) memory_budget: u64,
    /// ... and for one node (`None`: a quarter of the engine's, at least one block).
    pub(crate) node_memory_budget: Option<u64>,
    /// The accounting against both, made anew by each spawn.
    pub(crate) memory: Arc<Memory>,
}

/// Admission and flood limits. Each refusal names its limit
/// ([`ipc_core::control::Limit`]). The defaults suit a desktop session (tens of nodes) and a
/// busy server (hundreds of nodes, thousands of sessions) alike: they sit far above what
/// legitimate nodes of one user use, and far below what exhausts the engine's memory or its
/// file descriptors (each registered node holds 4 of the engine's descriptors).
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Open control connections of one uid, registered or not (default 512: ~2,000 engine
    /// descriptors at most, under a server's usual `RLIMIT_NOFILE`).
    pub(crate) connections_per_uid: usize,
    /// Connections of one uid between accept and `Ready` (default 64: a rendezvous takes
    /// milliseconds, so only a burst of starts reaches it; half-open connections cannot
    /// hold more than 64 descriptors, each for at most the handshake timeout).
    pub(crate) handshakes_per_uid: usize,
    /// Registered nodes of one uid (default 512).
    pub(crate) nodes_per_uid: usize,
    /// Live session ends held by the nodes of one uid (default 65,536).
    pub(crate) sessions_per_uid: usize,
    /// Sessions one opener node may hold to one server node (default 1,024), so that one
    /// client cannot take every slot of a server.
    pub(crate) sessions_per_opener: usize,
    /// Sessions opened to one listener and not yet accepted by it (default 1,024).
    pub(crate) queued_sessions: usize,
    /// Control requests (serve, unserve, open) of one connection in flight to the router
    /// (default 64): past it the engine stops reading that socket until answers go out.
    pub(crate) requests_per_connection: usize,
    /// Bytes of one partial control frame buffered per connection (default 4 KiB; the
    /// largest frame a node sends is under 800 bytes, so this never refuses a valid one).
    pub(crate) partial_frame_bytes: usize,
    /// Frames queued for a node that does not read its control socket (default 16,384,
    /// a few MiB): past it the engine closes that node.
    pub(crate) queued_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_uid: 512,
            handshakes_per_uid: 64,
            nodes_per_uid: 512,
            sessions_per_uid: 64 * 1024,
            sessions_per_opener: 1024,
            queued_sessions: 1024,
            requests_per_connection: 64,
            partial_frame_bytes: 4096,
            queued_frames: 16 * 1024,
        }
    }
}

/// The smallest partial-frame bound: above the largest frame a node sends (a `Serve` or
/// `Open` with three 255-byte names is 797 bytes).
pub(crate) const MIN_PARTIAL_FRAME_BYTES: usize = 1024;

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
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Frames copied since start: sub-blocks carrying several small messages of a session
    /// (each of which `messages` counts), copied, delivered and released as one.
    pub frames: u64,
    /// Bytes in use in every node's receive arena together (delivered, not yet released).
    pub rx_in_use: u64,
    /// Nodes closed for breaking the protocol since start.
    pub violations: u64,
    /// Failed `accept` calls since start (for example with the descriptor limit reached);
    /// each failure backs the listener off, so this grows slowly whatever the load.
    pub accept_failures: u64,
    /// Connections refused by an admission limit since start (connections or handshakes
    /// per uid).
    pub refused_connections: u64,
    /// Open control connections, registered or still in their rendezvous.
    pub connections: usize,
    /// Connections still in their rendezvous (accepted, not yet `Ready`).
    pub handshakes: usize,
    /// Nodes the router polls on every pass (they rang, or were busy within the spin time);
    /// the others cost nothing until they ring (invariant 8).
    pub active_nodes: usize,
    /// Messages accepted from senders and not yet copied to their receivers (they wait for
    /// room in a receive arena).
    pub waiting: usize,
    /// Live topics.
    pub topics: usize,
    /// Topic broadcast segments alive (one per topic).
    pub topic_segments: usize,
    /// Messages published on topics since start (each copied once).
    pub topic_published: u64,
    /// Topic deliveries since start, summed over subscribers.
    pub topic_delivered: u64,
    /// Topic messages lost to `DropOldest` since start, summed over subscribers (each
    /// reported to its subscriber as `Lagged`).
    pub topic_lagged: u64,
    /// Declared queues.
    pub queues: usize,
    /// Bytes of queued payloads the engine keeps (ready and delivered, not yet acknowledged).
    pub queue_bytes: u64,
    /// Messages producers sent to queues that the engine took responsibility for (confirmed,
    /// for a durable queue after their commit).
    pub queue_confirmed: u64,
    /// Queue deliveries since start (redeliveries included).
    pub queue_delivered: u64,
    /// Queue deliveries acknowledged, nacked or rejected since start.
    pub queue_settled: u64,
    /// Queue deliveries whose lease expired since start.
    pub queue_expired: u64,
    /// Queued messages ready for delivery, all queues together.
    pub queue_ready: usize,
    /// Queue deliveries not yet settled (acknowledged, nacked, rejected, or returned), all
    /// queues together.
    pub queue_unacked: usize,
    /// Messages that entered a queue since start: from producers, and dead letters.
    pub queue_enqueued: u64,
    /// Queue deliveries of a message delivered before (or recovered from the store) since
    /// start.
    pub queue_redelivered: u64,
    /// Queue deliveries acknowledged since start.
    pub queue_acked: u64,
    /// Queued messages that went to a dead-letter queue (or were dropped for having none)
    /// since start.
    pub queue_dead_lettered: u64,
    /// Bytes of shared memory the engine holds for nodes now: their blocks, the topics'
    /// segments and the hand-off segments of large payloads
    /// ([`EngineBuilder::memory_budget`](crate::EngineBuilder::memory_budget)).
    pub memory_used: u64,
    /// The engine-wide memory budget, in bytes.
    pub memory_budget: u64,
    /// Hand-off segments alive: lent to their senders, on their way, or held by their
    /// receivers (one per large payload; each goes when its receiver drops the payload).
    pub segments: u64,
}

/// Default engine memory for queued payloads ([`EngineBuilder::queue_memory`](crate::EngineBuilder::queue_memory)): 256 MiB.
pub const DEFAULT_QUEUE_MEMORY: u64 = 256 << 20;

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

/// Default size of a topic's broadcast segment, and so the largest topic message
/// ([`EngineBuilder::topic_segment_size`](crate::EngineBuilder::topic_segment_size)): 8 MiB.
pub const DEFAULT_TOPIC_SEGMENT: u64 = 8 << 20;

/// The smallest topic segment: one page.
pub const MIN_TOPIC_SEGMENT: u64 = 4 << 10;

/// The largest topic segment: 256 MiB. The engine keeps each topic's allocator tree in its
/// own memory (two bytes per 64-byte class of the segment: 8 MiB at this size), and the
/// segment is mapped by the engine and every subscriber.
pub const MAX_TOPIC_SEGMENT: u64 = 256 << 20;

/// Default engine memory for payloads whose sender left before their receiver had room
/// ([`EngineBuilder::orphan_budget`](crate::EngineBuilder::orphan_budget)): 64 MiB.
pub const DEFAULT_ORPHAN_BUDGET: u64 = 64 << 20;
