//! The engine's builder and the handle of a running engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipc_core::BlockConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::engine::command::Command;
use crate::engine::config::{
    Config, DEFAULT_ORPHAN_BUDGET, DEFAULT_QUEUE_MEMORY, DEFAULT_TOPIC_SEGMENT,
    DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_MESSAGES, EngineStats, Limits, MAX_TOPIC_SEGMENT,
    MIN_PARTIAL_FRAME_BYTES, MIN_TOPIC_SEGMENT, Policy, default_socket_path,
};
use crate::engine::listener::{self, Listening};
use crate::engine::memory::{Memory, default_budget, default_node_budget};
use crate::engine::router::Router;
use crate::error::SpawnError;

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EngineBuilder {
    config: Config,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        let budget = default_budget();
        Self {
            config: Config {
                socket: default_socket_path(),
                block: BlockConfig::default(),
                credits: DEFAULT_WINDOW_MESSAGES,
                window_bytes: DEFAULT_WINDOW_BYTES,
                orphan_budget: DEFAULT_ORPHAN_BUDGET,
                queue_memory: DEFAULT_QUEUE_MEMORY,
                data_dir: None,
                policy: Policy::SameUid,
                spin: Duration::from_micros(50),
                handshake_timeout: Duration::from_secs(10),
                max_sessions_per_node: 16 * 1024,
                limits: Limits::default(),
                non_dumpable: false,
                topic_segment: DEFAULT_TOPIC_SEGMENT,
                metrics: false,
                memory_budget: budget,
                node_memory_budget: None,
                memory: Memory::new(0, 0),
            },
        }
    }
}

impl EngineBuilder {
    /// The Unix socket nodes connect to (default: [`default_socket_path`]).
    pub fn socket(mut self, path: impl AsRef<Path>) -> Self {
        self.config.socket = path.as_ref().to_owned();
        self
    }

    /// Ring capacities, arena sizes and the smallest size class of every node's block.
    pub fn block(mut self, config: BlockConfig) -> Self {
        self.config.block = config;
        self
    }

    /// Messages one session end may have in flight before its peer releases them (at least 1;
    /// default [`DEFAULT_WINDOW_MESSAGES`]).
    pub fn credits(mut self, credits: u32) -> Self {
        self.config.credits = credits.max(1);
        self
    }

    /// Bytes one session end may have in flight before its peer releases them (default
    /// [`DEFAULT_WINDOW_BYTES`]). Each message counts the size class it occupies in the
    /// arenas ([`ipc_core::window_charge`]); one message larger than the window may still go,
    /// alone. This bounds what a session whose receiver stops reading holds of both nodes'
    /// arenas; see the crate docs, "Isolation".
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.config.window_bytes = bytes.max(1);
        self
    }

    /// Engine memory for payloads whose sender exited (or was killed) before their receiver
    /// had room for them (default [`DEFAULT_ORPHAN_BUDGET`]). The engine copies such payloads
    /// out of the dead node's block, so the block and its fds are released at once whatever
    /// the receivers do; past this budget, the rest of such a session's data is dropped and
    /// its receiver sees `Disconnected` after the last payload it gets.
    pub fn orphan_budget(mut self, bytes: u64) -> Self {
        self.config.orphan_budget = bytes;
        self
    }

    /// Shared memory the engine may hold for all nodes together, in bytes: every node's block,
    /// every topic's segment and every large payload's hand-off segment count, touched or not (default: half of the host's memory,
    /// which leaves the other half for the processes' own heaps). A node whose block would
    /// pass it is refused at connect with [`ConnectError::Budget`](crate::ConnectError::Budget)
    /// naming [`Limit::MemoryBudget`](ipc_core::control::Limit::MemoryBudget); the engine and
    /// its nodes go on, and the node can connect once others have left. A topic whose
    /// segment would pass it gets no segment. See [`EngineStats::memory_used`].
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.config.memory_budget = bytes;
        self
    }

    /// Shared memory the engine may hold for one node, in bytes (default: a quarter of the
    /// engine-wide budget, so no single node takes the memory of all others, and at least
    /// one block): its block, and the hand-off segments of the large payloads it sends until
    /// their receivers release them ([`SessionError::Budget`](crate::SessionError::Budget)
    /// past it). A block larger than it is refused at spawn ([`SpawnError::Budget`]).
    pub fn node_memory_budget(mut self, bytes: u64) -> Self {
        self.config.node_memory_budget = Some(bytes);
        self
    }

    /// Records the engine's counts through the [`metrics`](https://docs.rs/metrics) facade,
    /// into whatever recorder the application installs (default off; `shmlinkd
    /// --metrics-addr` turns it on). A task of its own follows the published counts, at most
    /// five updates a second and never per message; off, the engine runs no such task, so
    /// after activity it goes back to no wake-ups at once.
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.metrics = on;
        self
    }

    /// Engine memory for the payloads of queued messages, all queues together (default
    /// [`DEFAULT_QUEUE_MEMORY`]). When it is full, producers of queues that wait
    /// ([`QueueOptions::when_full`](crate::QueueOptions)) are held back until consumers
    /// acknowledge, and those of queues that refuse get [`ProduceError::Full`](crate::ProduceError).
    /// A single message always fits an otherwise empty engine.
    pub fn queue_memory(mut self, bytes: u64) -> Self {
        self.config.queue_memory = bytes;
        self
    }

    /// The engine's data directory: durable queues are kept there (`queues.redb`, created
    /// if missing) and recovered from it at [`spawn`](Self::spawn), every message recovered
    /// counting as redelivered. Without one (the default) declaring a durable queue is an
    /// error. Two engines cannot share one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// Who may connect (default: the same user only).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// How long the engine keeps polling its rings after the last message before it parks
    /// (default 50 µs). While it polls, senders need no syscall to reach it; the polling
    /// yields to the runtime between looks, so an embedded engine never starves the host
    /// application. Zero parks at once. Idle is free either way.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.config.spin = spin;
        self
    }

    /// How long a new connection may take to complete its rendezvous (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// The most session ends one node may hold (default 16384).
    pub fn max_sessions_per_node(mut self, max: usize) -> Self {
        self.config.max_sessions_per_node = max.max(1);
        self
    }

    /// Open control connections one uid may hold, registered or not (default 512). One more
    /// is refused with [`Limit::ConnectionsPerUid`](ipc_core::control::Limit).
    pub fn max_connections_per_uid(mut self, max: usize) -> Self {
        self.config.limits.connections_per_uid = max.max(1);
        self
    }

    /// Connections of one uid that may be in their rendezvous at once (default 64); the
    /// handshake timeout still bounds each. One more is refused with
    /// [`Limit::HandshakesPerUid`](ipc_core::control::Limit).
    pub fn max_handshakes_per_uid(mut self, max: usize) -> Self {
        self.config.limits.handshakes_per_uid = max.max(1);
        self
    }

    /// Registered nodes of one uid (default 512).
    pub fn max_nodes_per_uid(mut self, max: usize) -> Self {
        self.config.limits.nodes_per_uid = max.max(1);
        self
    }

    /// Live session ends the nodes of one uid may hold (default 65,536).
    pub fn max_sessions_per_uid(mut self, max: usize) -> Self {
        self.config.limits.sessions_per_uid = max.max(1);
        self
    }

    /// Sessions one opener node may hold to one server node (default 1,024).
    pub fn max_sessions_per_opener(mut self, max: usize) -> Self {
        self.config.limits.sessions_per_opener = max.max(1);
        self
    }

    /// Sessions opened to one listener and not yet accepted (default 1,024).
    pub fn max_queued_sessions(mut self, max: usize) -> Self {
        self.config.limits.queued_sessions = max.max(1);
        self
    }

    /// Control requests one connection may have in flight (default 64); past it the engine
    /// reads no more from that connection until it has answered some.
    pub fn max_requests_per_connection(mut self, max: usize) -> Self {
        self.config.limits.requests_per_connection = max.max(1);
        self
    }

    /// Bytes of a partial control frame the engine buffers per connection (default 4 KiB,
    /// at least 1 KiB). A longer frame closes the connection with
    /// [`Limit::PartialFrameBytes`](ipc_core::control::Limit).
    pub fn max_partial_frame_bytes(mut self, max: usize) -> Self {
        self.config.limits.partial_frame_bytes =
            max.clamp(MIN_PARTIAL_FRAME_BYTES, ipc_core::control::MAX_FRAME + 4);
        self
    }

    /// Frames the engine queues for a node that does not read its control socket (default
    /// 16,384); one more closes that node.
    pub fn max_queued_frames(mut self, max: usize) -> Self {
        self.config.limits.queued_frames = max.max(1);
        self
    }

    /// Makes the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`) when the engine starts
    /// (default off for an embedded engine; `shmlinkd` turns it on). Then other processes
    /// of the same uid can no longer open its blocks through `/proc/<pid>/fd`, read its
    /// memory or ptrace it; it also disables core dumps of the whole process. A process
    /// running as root (or with `CAP_SYS_PTRACE`) still can.
    pub fn non_dumpable(mut self, yes: bool) -> Self {
        self.config.non_dumpable = yes;
        self
    }

    /// Size of each topic's broadcast segment (default [`DEFAULT_TOPIC_SEGMENT`], 8 MiB): the
    /// largest message a topic takes, and the memory its messages in flight, queued or kept
    /// as history share. A power of two from [`MIN_TOPIC_SEGMENT`] to [`MAX_TOPIC_SEGMENT`],
    /// checked by [`EngineBuilder::spawn`]. Each publisher learns it
    /// ([`Publisher::max_message`](crate::Publisher::max_message)) and refuses a larger
    /// message itself.
    pub fn topic_segment_size(mut self, bytes: u64) -> Self {
        self.config.topic_segment = bytes;
        self
    }

    /// Binds the socket and starts the engine on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SpawnError::InUse`] when a live engine holds the socket, [`SpawnError::Config`] for a
    /// block configuration that cannot be laid out, [`SpawnError::TopicSegment`] for a topic
    /// segment size that is not a power of two in range, [`SpawnError::PathTooLong`] for a socket
    /// path longer than a Unix socket address holds (checked before anything is created),
    /// [`SpawnError::Io`] when the socket cannot be created, [`SpawnError::NoRuntime`] outside
    /// a runtime. A failed spawn removes what it created (directories, lock file, socket).
    pub fn spawn(self) -> Result<Engine, SpawnError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        let block = ipc_core::Layout::compute(&self.config.block)?.total_size;
        let budget = self.config.memory_budget;
        let node_budget = self
            .config
            .node_memory_budget
            .unwrap_or_else(|| default_node_budget(budget).max(block).min(budget));
        if block > node_budget || node_budget > budget {
            return Err(SpawnError::Budget {
                block,
                node_budget,
                budget,
            });
        }
        let segment = self.config.topic_segment;
        if !segment.is_power_of_two() || !(MIN_TOPIC_SEGMENT..=MAX_TOPIC_SEGMENT).contains(&segment)
        {
            return Err(SpawnError::TopicSegment {
                size: segment,
                min: MIN_TOPIC_SEGMENT,
                max: MAX_TOPIC_SEGMENT,
            });
        }
        if self.config.non_dumpable {
            crate::node::set_non_dumpable().map_err(|source| SpawnError::Io {
                path: self.config.socket.display().to_string(),
                source,
            })?;
        }
        let mut config = self.config;
        config.memory = Memory::new(budget, node_budget);
        let config = Arc::new(config);
        let _guard = handle.enter();
        let listening = Listening::bind(&config)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(EngineStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        // The store is read here, once, before anything runs: a store that cannot be read is
        // a startup error, never an empty queue.
        let durable = match &config.data_dir {
            Some(dir) => Some(crate::engine::queue_router::Durable::open(dir)?),
            None => None,
        };
        let router = Router::new(config.clone(), command_rx, stats_tx.clone(), durable);
        let router = handle.spawn(router.run());
        if config.metrics {
            handle.spawn(super::metrics::run(stats.clone()));
        }
        let listener = handle.spawn(listener::run(
            listening,
            config.clone(),
            commands.clone(),
            stats_tx.clone(),
            stop_rx,
        ));
        tracing::info!(socket = %config.socket.display(), "engine listening");
        Ok(Engine {
            socket: config.socket.clone(),
            commands,
            stats,
            stop: Some(stop_tx),
            tasks: Some((listener, router)),
        })
    }
}

/// A running engine. Dropping it shuts it down in the background; [`Engine::shutdown`] waits.
#[derive(Debug)]
pub struct Engine {
    socket: PathBuf,
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Receiver<EngineStats>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Option<(JoinHandle<()>, JoinHandle<()>)>,
}

impl Engine {
    /// A builder with the defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The socket path nodes connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The registry's counts now.
    pub fn stats(&self) -> EngineStats {
        *self.stats.borrow()
    }

    /// Waits until `pred` holds for the registry's counts (for tests and tools).
    pub async fn wait_for_stats(&self, mut pred: impl FnMut(&EngineStats) -> bool) -> EngineStats {
        let mut rx = self.stats.clone();
        match rx.wait_for(|s| pred(s)).await {
            Ok(stats) => *stats,
            Err(_) => *self.stats.borrow(),
        }
    }

    /// A snapshot of the registry, as `shmlinkctl` sees it; `None` once the engine stopped.
    pub async fn inspect(&self) -> Option<super::inspect::Snapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.commands.send(Command::Inspect { reply }).ok()?;
        snapshot.await.ok().map(|s| *s)
    }

    /// Stops accepting, disconnects every node (each sees `Disconnected`), removes the socket
    /// file, and waits for the engine's tasks to finish.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some((listener, router)) = self.tasks.take() {
            let _ = router.await;
            let _ = listener.await;
        }
    }

    fn begin_shutdown(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}
