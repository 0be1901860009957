//! The inspector: a versioned, serialisable snapshot of the engine's registry, and the client
//! that asks a running engine for one.
//!
//! A client connects to the engine's socket and sends [`NodeFrame::Inspect`] instead of
//! `Hello`: the engine checks its credentials exactly as a node's (the same policy, the same
//! per-uid limits), creates no block and registers nothing. The router builds a [`Snapshot`]
//! from its registry and links; the connection task serialises it
//! as JSON, off the router, and sends it in [`EngineFrame::InspectChunk`]s (each under
//! `MAX_FRAME`, at most [`MAX_INSPECT`] bytes in all), then closes the connection.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshot = ipc_tokio::engine::inspect::inspect(ipc_tokio::engine::default_socket_path()).await?;
//! for node in &snapshot.nodes {
//!     println!("{} {} (pid {:?})", node.id, node.name, node.pid);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipc_core::control::{self, EngineFrame, MAX_INSPECT, NodeFrame};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::control::{FrameBuf, write_frame};
use crate::engine::config::EngineStats;

mod serve;

pub(crate) use serve::chunk_frames;

/// The snapshot format's version: a client refuses a snapshot of a newer version. Fields
/// are only ever added within one version (a client ignores fields it does not know).
pub const SNAPSHOT_VERSION: u32 = 1;

/// The engine's state at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] of the engine that made it.
    pub version: u32,
    /// The engine itself.
    pub engine: EngineInfo,
    /// Registered nodes, by id.
    pub nodes: Vec<NodeInfo>,
    /// Served names, by name.
    pub services: Vec<ServiceInfo>,
    /// Sessions, by their first end's id.
    pub sessions: Vec<SessionInfo>,
    /// Topics, by name.
    #[serde(default)]
    pub topics: Vec<TopicInfo>,
    /// Topic subscriptions, by node and id.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Queues, by name.
    #[serde(default)]
    pub queues: Vec<QueueInfo>,
    /// Queue consumers, by id.
    #[serde(default)]
    pub consumers: Vec<ConsumerInfo>,
    /// The engine's counters.
    pub counters: Counters,
}

/// The engine: version, uptime, policy and configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine's crate version.
    pub version: String,
    /// The engine's process id.
    pub pid: u32,
    /// Milliseconds since the engine started.
    pub uptime_ms: u64,
    /// Who may connect (`same-uid`, or `uids:1000,1001`).
    pub policy: String,
    /// The socket path.
    pub socket: String,
    /// A session end's window in messages.
    pub window_messages: u32,
    /// A session end's window in bytes.
    pub window_bytes: u64,
    /// Engine memory for payloads of nodes that left.
    pub orphan_budget: u64,
    /// Of which in use now.
    pub orphaned_bytes: u64,
    /// Each node's receive arena in bytes.
    pub rx_arena_bytes: u64,
    /// Each node's transmit arena in bytes.
    pub tx_arena_bytes: u64,
    /// Session ends one node may hold.
    pub max_sessions_per_node: u64,
    /// The admission and flood limits, by name.
    pub limits: BTreeMap<String, u64>,
    /// Each topic's broadcast segment in bytes (the largest topic message).
    #[serde(default)]
    pub topic_segment_bytes: u64,
    /// The directory of the durable queues' store; `None`: the engine has none (only
    /// in-memory queues).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Engine memory for queued payloads, all queues together.
    #[serde(default)]
    pub queue_memory_budget: u64,
    /// Of which in use now.
    #[serde(default)]
    pub queue_memory_in_use: u64,
}

/// One registered node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: u32,
    /// Its name (from its `Hello`).
    pub name: String,
    /// Its process id (`SO_PEERCRED`).
    pub pid: Option<i32>,
    /// Its user id.
    pub uid: u32,
    /// Bytes of its receive arena in use (the engine's own allocator).
    pub rx_in_use: u64,
    /// Its receive arena's size.
    pub rx_size: u64,
    /// The router polls it on every pass (it had work lately).
    pub active: bool,
    /// Session ends it holds.
    pub sessions: u64,
    /// Names it serves.
    pub services: u64,
}

/// One served name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The service's id.
    pub id: u32,
    /// The name.
    pub name: String,
    /// The serving node's id.
    pub node: u32,
    /// The serving node's name.
    pub node_name: String,
    /// The type the server end sends.
    pub send_type: String,
    /// The type the server end receives.
    pub recv_type: String,
}

/// One session: its two ends (the second absent once that side closed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The end with the lower id.
    pub a: EndInfo,
    /// The other end, while it exists.
    pub b: Option<EndInfo>,
}

/// One end of a session: what it sent and what is in flight from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndInfo {
    /// The end's id.
    pub end: u32,
    /// Its node's id.
    pub node: u32,
    /// Its node's name.
    pub node_name: String,
    /// Messages sent on this end since the session opened.
    pub sent_messages: u64,
    /// Their payload bytes.
    pub sent_bytes: u64,
    /// Messages sent and not yet released by the receiver (the window is
    /// [`EngineInfo::window_messages`]).
    pub in_flight: u32,
    /// Their window charges (the window is [`EngineInfo::window_bytes`]).
    pub in_flight_bytes: u64,
    /// Entries for this end waiting for room in its node's receive arena.
    pub waiting: u64,
    /// This end half-closed (no more data from it).
    pub fin: bool,
}

/// One topic: who publishes and subscribes, what was published and delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic's id (the segment field of its descriptors).
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its message type, once a typed publisher or subscriber fixed it.
    pub message_type: Option<String>,
    /// Live publishers.
    pub publishers: u64,
    /// Subscriptions attached to it (exact and prefix).
    pub subscribers: u64,
    /// Messages published (each copied once into the segment).
    pub published: u64,
    /// Deliveries, summed over subscribers.
    pub delivered: u64,
    /// Messages lost to `DropOldest`, summed over subscribers (each reported as `Lagged`).
    pub lagged: u64,
    /// Deliveries not yet released, summed over subscribers.
    pub in_flight: u64,
    /// Live slots of its segment: queued, in flight or kept as history.
    pub slots: u64,
    /// Messages kept as history for late joiners.
    pub history: u64,
    /// Bytes of its segment in live slots (size classes).
    pub segment_in_use: u64,
}

/// One subscription: its pattern and policy, and what it received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// The subscription's id.
    pub id: u32,
    /// Its node's id.
    pub node: u32,
    /// Its node's name.
    pub node_name: String,
    /// The topic or prefix pattern it subscribed to.
    pub pattern: String,
    /// `drop-oldest`, or `block` (with [`SubscriptionInfo::untether_ms`]).
    pub policy: String,
    /// With `block`: how long it may hold publishers back before it is cut loose.
    pub untether_ms: Option<u64>,
    /// Messages the engine queues for it behind its window.
    pub queue: u32,
    /// The ids of the topics it receives.
    pub topics: Vec<u32>,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to `DropOldest` (reported as `Lagged`).
    pub lagged: u64,
    /// Deliveries not yet released.
    pub in_flight: u32,
    /// Messages queued behind its window.
    pub pending: u64,
}

/// One queue: its settings, what it holds, and what went through it since the engine
/// started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Kept on disk, surviving the engine's restart.
    pub durable: bool,
    /// Its message type, once a typed producer or consumer fixed it.
    pub message_type: Option<String>,
    /// Messages it holds: ready plus unacked (what its max length counts).
    pub depth: u64,
    /// Messages waiting for a consumer.
    pub ready: u64,
    /// Messages delivered and not yet settled (in flight to consumers).
    pub unacked: u64,
    /// Payload bytes it holds (of the engine's queue memory).
    pub bytes: u64,
    /// Live producers.
    pub producers: u64,
    /// Live consumers.
    pub consumers: u64,
    /// Most messages it holds; 0: no limit but the engine's queue memory.
    pub max_length: u64,
    /// When full, producers get an error instead of waiting.
    pub reject_when_full: bool,
    /// Deliveries after which a message goes to the dead-letter queue.
    pub max_deliveries: u32,
    /// The dead-letter queue; `None`: rejected messages are dropped.
    pub dead_letter: Option<String>,
    /// Its consumers' default lease in milliseconds; `None`: no lease.
    pub lease_ms: Option<u64>,
    /// Messages that entered it: from producers, and dead letters from other queues
    /// (messages recovered from the store at start are not counted).
    pub enqueued: u64,
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Of which deliveries of a message delivered before (or recovered from the store).
    pub redelivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
    /// Messages that left for the dead-letter queue (rejected, or delivered
    /// `max_deliveries` times), or were dropped for having none.
    pub dead_lettered: u64,
}

/// One queue consumer: its window, and what it received and acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// The consumer's id.
    pub id: u32,
    /// Its node's id.
    pub node: u32,
    /// Its node's name.
    pub node_name: String,
    /// The queue it consumes.
    pub queue: String,
    /// Deliveries it may hold unsettled at once.
    pub prefetch: u32,
    /// Its lease in milliseconds; `None`: no lease.
    pub lease_ms: Option<u64>,
    /// Deliveries it holds unsettled.
    pub unacked: u64,
    /// Deliveries to it.
    pub delivered: u64,
    /// Of which it acknowledged.
    pub acked: u64,
    /// Skipped until its node's receive arena has room.
    pub stalled: bool,
}

/// The engine's counters ([`EngineStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Registered nodes.
    pub nodes: u64,
    /// Live session ends.
    pub session_ends: u64,
    /// Served names.
    pub services: u64,
    /// Messages copied since start.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Bytes in use in every node's receive arena together.
    pub rx_in_use: u64,
    /// Nodes closed for breaking the protocol.
    pub violations: u64,
    /// Failed `accept` calls.
    pub accept_failures: u64,
    /// Connections refused by an admission limit.
    pub refused_connections: u64,
    /// Open control connections.
    pub connections: u64,
    /// Connections still in their rendezvous.
    pub handshakes: u64,
    /// Nodes the router polls on every pass.
    pub active_nodes: u64,
    /// Messages waiting for room in a receive arena.
    pub waiting: u64,
    /// Live topics.
    #[serde(default)]
    pub topics: u64,
    /// Topic broadcast segments alive.
    #[serde(default)]
    pub topic_segments: u64,
    /// Messages published on topics.
    #[serde(default)]
    pub topic_published: u64,
    /// Topic deliveries, summed over subscribers.
    #[serde(default)]
    pub topic_delivered: u64,
    /// Topic messages lost to `DropOldest`, summed over subscribers.
    #[serde(default)]
    pub topic_lagged: u64,
    /// Declared queues.
    #[serde(default)]
    pub queues: u64,
    /// Queued messages ready for delivery, all queues together.
    #[serde(default)]
    pub queue_ready: u64,
    /// Queue deliveries not yet settled, all queues together.
    #[serde(default)]
    pub queue_unacked: u64,
    /// Bytes of queued payloads the engine keeps.
    #[serde(default)]
    pub queue_bytes: u64,
    /// Messages that entered a queue (from producers, and dead letters).
    #[serde(default)]
    pub queue_enqueued: u64,
    /// Messages producers sent that the engine took responsibility for (confirmed).
    #[serde(default)]
    pub queue_confirmed: u64,
    /// Queue deliveries, redeliveries included.
    #[serde(default)]
    pub queue_delivered: u64,
    /// Of which redeliveries.
    #[serde(default)]
    pub queue_redelivered: u64,
    /// Queue deliveries acknowledged.
    #[serde(default)]
    pub queue_acked: u64,
    /// Queue deliveries settled (acknowledged, nacked or rejected).
    #[serde(default)]
    pub queue_settled: u64,
    /// Queued messages dead-lettered.
    #[serde(default)]
    pub queue_dead_lettered: u64,
    /// Queue deliveries whose lease ran out.
    #[serde(default)]
    pub queue_expired: u64,
    /// Shared memory the engine holds for nodes (blocks and topic segments), in bytes.
    #[serde(default)]
    pub memory_used: u64,
    /// The engine-wide memory budget, in bytes.
    #[serde(default)]
    pub memory_budget: u64,
    /// Hand-off segments alive.
    #[serde(default)]
    pub segments: u64,
}

impl From<&EngineStats> for Counters {
    fn from(s: &EngineStats) -> Self {
        let n = |v: usize| v as u64;
        Self {
            nodes: n(s.nodes),
            session_ends: n(s.session_ends),
            services: n(s.services),
            messages: s.messages,
            bytes: s.bytes,
            rx_in_use: s.rx_in_use,
            violations: s.violations,
            accept_failures: s.accept_failures,
            refused_connections: s.refused_connections,
            connections: n(s.connections),
            handshakes: n(s.handshakes),
            active_nodes: n(s.active_nodes),
            waiting: n(s.waiting),
            topics: n(s.topics),
            topic_segments: n(s.topic_segments),
            topic_published: s.topic_published,
            topic_delivered: s.topic_delivered,
            topic_lagged: s.topic_lagged,
            queues: n(s.queues),
            queue_ready: n(s.queue_ready),
            queue_unacked: n(s.queue_unacked),
            queue_bytes: s.queue_bytes,
            queue_enqueued: s.queue_enqueued,
            queue_confirmed: s.queue_confirmed,
            queue_delivered: s.queue_delivered,
            queue_redelivered: s.queue_redelivered,
            queue_acked: s.queue_acked,
            queue_settled: s.queue_settled,
            queue_dead_lettered: s.queue_dead_lettered,
            queue_expired: s.queue_expired,
            memory_used: s.memory_used,
            memory_budget: s.memory_budget,
            segments: s.segments,
        }
    }
}

// ===== the client side =====

/// Why a snapshot could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// Nothing accepts connections on the socket path (no engine, a stale socket, or no
    /// permission on the path).
    #[error("cannot reach an engine on {}: {source}", path.display())]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The error of `connect`.
        #[source]
        source: io::Error,
    },
    /// The engine refused the request (its policy, or an admission limit).
    #[error("the engine refused the inspection: {message}")]
    Refused {
        /// What the engine said.
        message: String,
    },
    /// The engine did not answer in time.
    #[error("no answer from the engine within {0:?}")]
    Timeout(Duration),
    /// Reading or writing the socket failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The engine's answer is not a valid frame sequence.
    #[error("bad answer from the engine: {0}")]
    Protocol(String),
    /// The answer is larger than [`MAX_INSPECT`].
    #[error("the snapshot exceeds {MAX_INSPECT} bytes")]
    TooLarge,
    /// The snapshot's bytes are not a valid snapshot.
    #[error("cannot decode the snapshot: {0}")]
    Decode(String),
    /// The snapshot is of a version newer than this client reads.
    #[error("snapshot version {found} is newer than this client's {SNAPSHOT_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
}

/// How long [`inspect`] waits for the whole answer.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the engine on `path` for a snapshot.
///
/// # Errors
///
/// [`InspectError::Unreachable`] when no engine listens, [`InspectError::Refused`] when it
/// refuses this user, the others when its answer is not a valid snapshot.
pub async fn inspect(path: impl AsRef<Path>) -> Result<Snapshot, InspectError> {
    let path = path.as_ref();
    match tokio::time::timeout(INSPECT_TIMEOUT, inspect_inner(path)).await {
        Ok(result) => result,
        Err(_) => Err(InspectError::Timeout(INSPECT_TIMEOUT)),
    }
}

async fn inspect_inner(path: &Path) -> Result<Snapshot, InspectError> {
    let mut stream =
        UnixStream::connect(path)
            .await
            .map_err(|source| InspectError::Unreachable {
                path: path.to_owned(),
                source,
            })?;
    // An engine that refuses us answers and closes before reading: read its answer anyway.
    let sent = write_frame(&mut stream, &NodeFrame::Inspect { req: 1 }.encode()).await;
    let mut frames = FrameBuf::default();
    let mut json = Vec::new();
    loop {
        let frame = match frames.next(&mut stream, control::decode_engine_frame).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                sent?;
                return Err(InspectError::Protocol(
                    "the engine closed the connection before the snapshot ended".into(),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(InspectError::Protocol(e.to_string()));
            }
            Err(e) => return Err(sent.err().unwrap_or(e).into()),
        };
        match frame {
            EngineFrame::InspectChunk {
                req: 1,
                last,
                bytes,
            } => {
                if json.len() + bytes.len() > MAX_INSPECT {
                    return Err(InspectError::TooLarge);
                }
                json.extend_from_slice(&bytes);
                if last {
                    return decode_snapshot(&json);
                }
            }
            EngineFrame::Error { message, .. } => return Err(InspectError::Refused { message }),
            EngineFrame::Limit { limit, max, .. } => {
                let what = ipc_core::control::Limit::from_u16(limit)
                    .map_or_else(|| format!("limit {limit}"), |l| l.to_string());
                return Err(InspectError::Refused {
                    message: format!("{what} reached (at most {max})"),
                });
            }
            other => {
                return Err(InspectError::Protocol(format!(
                    "unexpected frame {other:?}"
                )));
            }
        }
    }
}

/// Decodes a snapshot's bytes (JSON), whatever they hold: never panics.
///
/// # Errors
///
/// [`InspectError::Decode`] for bytes that are not a snapshot, [`InspectError::Version`] for
/// a snapshot newer than this client.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, InspectError> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_slice(bytes).map_err(|e| InspectError::Decode(e.to_string()))?;
    if v.version > SNAPSHOT_VERSION {
        return Err(InspectError::Version { found: v.version });
    }
    serde_json::from_slice(bytes).map_err(|e| InspectError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_never_decodes_as_a_snapshot() {
        for bytes in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"{\"version\":1}",
            b"{\"version\":99,\"engine\":{}}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            assert!(decode_snapshot(bytes).is_err(), "{bytes:?}");
        }
        assert!(matches!(
            decode_snapshot(b"{\"version\":99}"),
            Err(InspectError::Version { found: 99 })
        ));
    }
}
