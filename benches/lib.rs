//! Shared helpers of the benchmarks: the record the comparison harness writes with `--json`
//! (`benches/compare/`) and the plot reads back (`benches/plot.rs`), and the paths both take
//! from the workspace root.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A transport the comparison measures.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Raw `Bytes` sessions through the engine.
    Shmlink,
    /// `#[derive(Message)]` structs: typed sessions and request/response.
    ShmlinkTyped,
    /// Tokio `UnixStream` with length-delimited frames.
    Uds,
    /// Tokio `TcpStream` on 127.0.0.1, same frames.
    Tcp,
    /// tarpc over a Unix socket.
    Tarpc,
    /// iceoryx2, waiting on an event listener.
    Iceoryx2Event,
    /// iceoryx2, busy-polling.
    Iceoryx2Poll,
    /// The floor: an ipc-core block's rings between two processes, no engine, spinning.
    RawRing,
    /// CloudWeGo's shmipc (shared-memory streams), length-prefixed frames.
    Shmipc,
    /// NATS JetStream, file storage, `sync_interval: always` (queue pattern only).
    Jetstream,
    /// redb, one durable transaction per enqueue and per ack (queue pattern only).
    RedbNaive,
    /// shmlink, an in-memory queue (queue pattern only; no disk, confirms at once).
    ShmlinkMemory,
}

/// Every transport, in the order of the report's columns.
pub const TRANSPORTS: [Transport; 9] = [
    Transport::Shmlink,
    Transport::ShmlinkTyped,
    Transport::Uds,
    Transport::Tcp,
    Transport::Tarpc,
    Transport::Iceoryx2Event,
    Transport::Iceoryx2Poll,
    Transport::RawRing,
    Transport::Shmipc,
];

/// The transports of the `queue` pattern, in the order of its report's columns.
pub const QUEUE_TRANSPORTS: [Transport; 4] = [
    Transport::Shmlink,
    Transport::Jetstream,
    Transport::RedbNaive,
    Transport::ShmlinkMemory,
];

impl Transport {
    /// The name on the command line, in the report and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shmlink => "shmlink",
            Self::ShmlinkTyped => "shmlink-typed",
            Self::Uds => "uds",
            Self::Tcp => "tcp",
            Self::Tarpc => "tarpc",
            Self::Iceoryx2Event => "iceoryx2-event",
            Self::Iceoryx2Poll => "iceoryx2-poll",
            Self::RawRing => "raw-ring",
            Self::Shmipc => "shmipc",
            Self::Jetstream => "jetstream",
            Self::RedbNaive => "redb-naive",
            Self::ShmlinkMemory => "shmlink-memory",
        }
    }

    /// Whether this transport measures `pattern` (the others are left out of its column).
    pub fn measures(self, pattern: Pattern) -> bool {
        match self {
            // Spinning, it has no wake-up to pay per message, and no requests.
            Self::RawRing => pattern == Pattern::Stream,
            // tarpc has no one-way call to flush one at a time.
            Self::Tarpc => pattern != Pattern::StreamFlush,
            Self::Shmipc => matches!(pattern, Pattern::Stream | Pattern::StreamFlush),
            Self::Jetstream | Self::RedbNaive | Self::ShmlinkMemory => pattern == Pattern::Queue,
            _ => true,
        }
    }

    /// The transport named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        TRANSPORTS
            .into_iter()
            .chain(QUEUE_TRANSPORTS)
            .find(|t| t.name() == s)
    }
}

/// A pattern of traffic.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// One request, one reply, sequential.
    Rtt,
    /// One-way messages as fast as the sender can push them.
    Stream,
    /// One-way messages, each sent and flushed on its own (one wake-up per message).
    #[serde(rename = "stream-flush")]
    StreamFlush,
    /// 64 requests in flight.
    Concurrent,
    /// The engine's CPU time with two connected nodes and no traffic.
    Idle,
    /// An active pair's round trip and the engine's CPU per message beside N idle nodes.
    #[serde(rename = "idle-nodes")]
    IdleNodes,
    /// One publisher, N subscriber processes: messages per second per subscriber.
    Fanout,
    /// Durable enqueue → consume → ack, 1 or 4 producers, one consumer (not in the default set).
    Queue,
}

/// Every pattern, in the order of `--patterns`' names.
pub const PATTERNS: [Pattern; 8] = [
    Pattern::Rtt,
    Pattern::Stream,
    Pattern::StreamFlush,
    Pattern::Concurrent,
    Pattern::Idle,
    Pattern::IdleNodes,
    Pattern::Fanout,
    Pattern::Queue,
];

impl Pattern {
    /// The name on the command line, in the report and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtt => "rtt",
            Self::Stream => "stream",
            Self::StreamFlush => "stream-flush",
            Self::Concurrent => "concurrent",
            Self::Idle => "idle",
            Self::IdleNodes => "idle-nodes",
            Self::Fanout => "fanout",
            Self::Queue => "queue",
        }
    }

    /// The pattern named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        PATTERNS.into_iter().find(|p| p.name() == s)
    }

    /// One-way messages, checked and counted by the receiver.
    pub fn is_stream(self) -> bool {
        matches!(self, Self::Stream | Self::StreamFlush)
    }
}

/// Where the processes of a measurement run.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Client (and engine) pinned to one CPU, server to another.
    Split,
    /// Left to the scheduler.
    Free,
}

impl Placement {
    /// The name on the command line, in the report and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Free => "free",
        }
    }

    /// The placement named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Split, Self::Free]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// One line of `compare --json`: the medians of one case.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    /// The transport.
    pub transport: Transport,
    /// The pattern.
    pub pattern: Pattern,
    /// The placement.
    pub placement: Placement,
    /// Payload bytes (none for `idle`).
    pub size: Option<u64>,
    /// `idle-nodes`: how many idle nodes were connected.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub idle_nodes: Option<u64>,
    /// `fanout`: how many subscriber processes received every message.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subscribers: Option<u64>,
    /// `queue`: how many producer processes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub producers: Option<u64>,
    /// Round trip, median, nanoseconds.
    pub p50_ns: Option<f64>,
    /// Round trip, 99th percentile, nanoseconds.
    pub p99_ns: Option<f64>,
    /// Messages (or requests) per second; `fanout`: per subscriber.
    pub msgs_per_s: Option<f64>,
    /// Payload bytes per second; `fanout`: per subscriber.
    pub bytes_per_s: Option<f64>,
    /// CPU seconds of every process of the transport per million one-way messages;
    /// `fanout`: per million published messages (the publisher, every subscriber and, for
    /// shmlink, the engine).
    pub cpu_s_per_million: Option<f64>,
    /// `fanout`, shmlink: the engine's CPU seconds (a process of its own) per million
    /// published messages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine_cpu_s_per_million: Option<f64>,
    /// `idle`: the engine's CPU seconds over the window.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_s: Option<f64>,
    /// `queue`: publisher confirms per second, all producers together.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confirms_per_s: Option<f64>,
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `path`, taken from the workspace root if relative (cargo runs benches and binaries in the
/// package's directory).
pub fn resolve(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace_root().join(p)
    }
}
