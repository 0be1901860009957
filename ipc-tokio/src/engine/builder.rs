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
    pub(crate) window_bytes: u64,
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
                window_bytes: 4 << 20,
                policy: Policy::SameUid,
                spin: Duration::from_micros(50),
                handshake_timeout: Duration::from_secs(10),
                max_sessions_per_node: 16 * 1024,
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

    /// Bytes one session end may have in flight before its peer releases them (default 4 MiB,
    /// at least 1): each message counts as the arena memory it takes
    /// ([`window_charge`](ipc_core::window_charge)). One message larger than the window may
    /// still go, alone.
    pub fn window_bytes(mut self, bytes: u64) -> Self {
        self.config.window_bytes = bytes.max(1);
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
        let config = Arc::new(self.config);
        let _guard = handle.enter();
        let listening = Listening::bind(&config)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(EngineStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let router = Router::new(config.clone(), command_rx, stats_tx);
        let router = handle.spawn(router.run());
        let listener = handle.spawn(listener::run(
            listening,
            config.clone(),
            commands.clone(),
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
