//! Configuration and the handle of a running engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipc_core::BlockConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::engine::listener::{self, Listening};
use crate::engine::router::{Command, Router};
use crate::error::SpawnError;

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
    pub(crate) credits: u32,
    pub(crate) policy: Policy,
    pub(crate) spin: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_sessions_per_node: usize,
    pub(crate) limits: Limits,
    /// Make the engine's process non-dumpable when it starts (`PR_SET_DUMPABLE` 0).
    pub(crate) non_dumpable: bool,
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

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EngineBuilder {
    config: Config,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                socket: default_socket_path(),
                block: BlockConfig::default(),
                credits: 256,
                policy: Policy::SameUid,
                spin: Duration::from_micros(50),
                handshake_timeout: Duration::from_secs(10),
                max_sessions_per_node: 16 * 1024,
                limits: Limits::default(),
                non_dumpable: false,
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

    /// Messages one session end may have in flight before its peer releases them (at least 1).
    pub fn credits(mut self, credits: u32) -> Self {
        self.config.credits = credits.max(1);
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

    /// Binds the socket and starts the engine on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`SpawnError::InUse`] when a live engine holds the socket, [`SpawnError::Config`] for a
    /// block configuration that cannot be laid out, [`SpawnError::Io`] when the socket cannot
    /// be created, [`SpawnError::NoRuntime`] outside a runtime.
    pub fn spawn(self) -> Result<Engine, SpawnError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        ipc_core::Layout::compute(&self.config.block)?;
        if self.config.non_dumpable {
            crate::node::set_non_dumpable().map_err(|source| SpawnError::Io {
                path: self.config.socket.display().to_string(),
                source,
            })?;
        }
        let config = Arc::new(self.config);
        let _guard = handle.enter();
        let listening = Listening::bind(&config)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(EngineStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let router = Router::new(config.clone(), command_rx, stats_tx.clone());
        let router = handle.spawn(router.run());
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
