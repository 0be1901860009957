//! The listening socket, and one connection task per node: rendezvous, then control frames.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipc_core::control::{self, EngineFrame, ErrorCode, FrameError, Limit, NodeFrame};
use ipc_core::{Block, Doorbell};
use rustix::fs::FlockOperation;
use tokio::net::unix::{OwnedWriteHalf, UCred};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::{FrameBuf, PartialFrameTooLarge, send_with_fds, write_frame};
use crate::engine::command::{Command, Handover, Outbound, Registration};
use crate::engine::config::{Config, EngineStats, Limits};
use crate::error::SpawnError;

/// A bound socket and the lock that proves this engine owns the path.
#[derive(Debug)]
pub(crate) struct Listening {
    listener: UnixListener,
    path: PathBuf,
    lock_path: PathBuf,
    _lock: OwnedFd,
}

impl Listening {
    /// Takes `<socket>.lock` with `flock` (never blocking): holding it proves no live engine
    /// uses the path, so a socket file found there is stale and may be replaced. A live
    /// engine's socket is never stolen.
    ///
    /// The socket path's length is checked before anything is touched; if a later step fails,
    /// what this call created (directories, the lock file, the socket) is removed again.
    pub(crate) fn bind(config: &Config) -> Result<Self, SpawnError> {
        let path = config.socket.clone();
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SpawnError::PathTooLong {
                path: path.display().to_string(),
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        let io_err = |source: io::Error| SpawnError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut created = Created::default();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                // The directories `create_dir_all` will make, outermost last (a path that
                // ends in `..` names a directory made or found elsewhere: never removed).
                created.dirs = dir
                    .ancestors()
                    .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                    .filter(|d| d.file_name().is_some())
                    .map(PathBuf::from)
                    .collect();
                std::fs::create_dir_all(dir).map_err(io_err)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err)?;
            }
            check_directory(dir).map_err(io_err)?;
        }
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        // Never through a symlink someone planted, and only a lock file of our own. Created
        // exclusively first, so a failure removes only a lock file this call made.
        let flags =
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW;
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        let lock = match rustix::fs::open(
            &lock_path,
            flags | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::EXCL,
            mode,
        ) {
            Ok(lock) => {
                created.lock = Some(lock_path.clone());
                lock
            }
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::open(&lock_path, flags, mode).map_err(|e| io_err(e.into()))?
            }
            Err(e) => return Err(io_err(e.into())),
        };
        let owner = rustix::fs::fstat(&lock)
            .map_err(|e| io_err(e.into()))?
            .st_uid;
        if owner != rustix::process::getuid().as_raw() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the lock file {} belongs to uid {owner}",
                    lock_path.display()
                ),
            )));
        }
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(SpawnError::InUse {
                    path: path.display().to_string(),
                });
            }
            Err(e) => return Err(io_err(e.into())),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "replaced a stale socket left by a dead engine")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io_err)?;
        created.socket = Some(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        created.keep();
        Ok(Self {
            listener,
            path,
            lock_path,
            _lock: lock,
        })
    }
}

/// The longest socket path a Unix socket address holds: `sun_path` is 108 bytes on Linux,
/// and the path needs its terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// What [`Listening::bind`] created so far: removed again on drop unless kept (a failed spawn
/// leaves nothing behind).
#[derive(Debug, Default)]
struct Created {
    /// Directories made, innermost first.
    dirs: Vec<PathBuf>,
    lock: Option<PathBuf>,
    socket: Option<PathBuf>,
}

impl Created {
    /// Success: everything stays. (Clears the lists: assigning a new value would drop, and
    /// so remove, the old one.)
    fn keep(&mut self) {
        self.dirs.clear();
        self.lock = None;
        self.socket = None;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        if let Some(lock) = &self.lock {
            let _ = std::fs::remove_file(lock);
        }
        // `remove_dir` only removes an empty directory: never anything someone else put there.
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Refuses a socket directory that someone else could use to replace our socket: it must
/// belong to us (or root), and if others may write to it, it must be sticky (like /tmp, where
/// they cannot remove or rename our files).
fn check_directory(dir: &std::path::Path) -> io::Result<()> {
    let stat = rustix::fs::stat(dir)?;
    let uid = rustix::process::getuid().as_raw();
    let mode = stat.st_mode;
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if stat.st_uid != uid && stat.st_uid != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the socket directory {} belongs to uid {}, not to us (uid {uid})",
                dir.display(),
                stat.st_uid
            ),
        ));
    }
    if others_write && !sticky {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the socket directory {} is writable by others (mode {:o}) and not sticky",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Still holding the lock: nobody else can have bound this path meanwhile.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

// ===== admission =====

/// Connections and incomplete handshakes per uid, shared by the accept loop and the
/// connection tasks. Only the accept loop adds; a [`Slot`] gives its count back on drop.
/// The totals are published in [`EngineStats`].
#[derive(Debug)]
struct UidCounts {
    per_uid: Mutex<HashMap<u32, Counts>>,
    stats: watch::Sender<EngineStats>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Connection,
    Handshake,
}

/// One connection (or one handshake in progress) of one uid, counted while this lives.
#[derive(Debug)]
struct Slot {
    counts: Arc<UidCounts>,
    uid: u32,
    kind: SlotKind,
}

impl UidCounts {
    /// Takes a connection slot and a handshake slot for `uid`, or names the limit reached.
    fn admit(self: &Arc<Self>, uid: u32, limits: &Limits) -> Result<(Slot, Slot), (Limit, u64)> {
        let mut map = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        let counts = map.entry(uid).or_default();
        if counts.connections >= limits.connections_per_uid {
            return Err((Limit::ConnectionsPerUid, limits.connections_per_uid as u64));
        }
        if counts.handshakes >= limits.handshakes_per_uid {
            return Err((Limit::HandshakesPerUid, limits.handshakes_per_uid as u64));
        }
        counts.connections += 1;
        counts.handshakes += 1;
        self.stats.send_modify(|s| {
            s.connections += 1;
            s.handshakes += 1;
        });
        let slot = |kind| Slot {
            counts: self.clone(),
            uid,
            kind,
        };
        Ok((slot(SlotKind::Connection), slot(SlotKind::Handshake)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .per_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = map.get_mut(&self.uid) {
            match self.kind {
                SlotKind::Connection => counts.connections = counts.connections.saturating_sub(1),
                SlotKind::Handshake => counts.handshakes = counts.handshakes.saturating_sub(1),
            }
            self.counts.stats.send_modify(|s| match self.kind {
                SlotKind::Connection => s.connections = s.connections.saturating_sub(1),
                SlotKind::Handshake => s.handshakes = s.handshakes.saturating_sub(1),
            });
            if counts.connections == 0 && counts.handshakes == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

// ===== accept =====

/// The accept loop's pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS…): doubles from
/// [`Backoff::MIN`] to [`Backoff::MAX`] while failures repeat, and resets on success. The
/// listening socket stays readable while connections wait in its backlog, so without a
/// pause a full descriptor table would spin the loop at full speed.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    /// When the last failure was logged, and how many failed since.
    logged: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(100);
    /// At most one log line per this interval, whatever the number of failures.
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            delay: Self::MIN,
            logged: None,
            unlogged: 0,
        }
    }

    fn success(&mut self) {
        self.delay = Self::MIN;
    }

    /// Records a failure, logs it if the interval has passed, and returns the pause.
    fn failure(&mut self, error: &io::Error) -> Duration {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY)
        {
            tracing::warn!(
                error = %error,
                failures = self.unlogged,
                backoff = ?self.delay,
                "accept failed; existing nodes are still served, new connections wait"
            );
            self.logged = Some(now);
            self.unlogged = 0;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }
}

/// Accepts connections until told to stop.
pub(crate) async fn run(
    listening: Listening,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
    stats: watch::Sender<EngineStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let next_node = Arc::new(AtomicU32::new(1));
    let counts = Arc::new(UidCounts {
        per_uid: Mutex::default(),
        stats: stats.clone(),
    });
    let mut backoff = Backoff::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listening.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.success();
                    let node = next_node.fetch_add(1, Ordering::Relaxed);
                    match admit(&stream, &config, &counts) {
                        Ok(admitted) => {
                            // The connection's span: its node id and credentials, and its
                            // name once the hello tells it (node registration and its life).
                            let span = tracing::info_span!(
                                "connection",
                                node,
                                uid = admitted.cred.uid(),
                                pid = ?admitted.cred.pid(),
                                name = tracing::field::Empty,
                            );
                            tokio::spawn(tracing::Instrument::instrument(
                                connection(stream, node, config.clone(), commands.clone(), admitted),
                                span,
                            ));
                        }
                        Err(Refused::Limit) => stats.send_modify(|s| s.refused_connections += 1),
                        Err(Refused::Other) => {}
                    }
                }
                Err(e) => {
                    stats.send_modify(|s| s.accept_failures += 1);
                    let pause = backoff.failure(&e);
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            },
        }
    }
    drop(listening);
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A per-uid limit is reached (counted in `EngineStats::refused_connections`).
    Limit,
    /// The policy, or the credentials could not be read.
    Other,
}

/// A connection admitted by the policy and the per-uid limits.
#[derive(Debug)]
struct Admitted {
    cred: UCred,
    connection: Slot,
    handshake: Slot,
}

/// Checks a new connection's credentials against the policy and the per-uid limits, in the
/// accept loop itself (no task, no buffer for a refused one). A refusal is told to the peer
/// without waiting (a fresh socket's buffer always takes one small frame) and the
/// connection is closed by dropping it.
fn admit(
    stream: &UnixStream,
    config: &Config,
    counts: &Arc<UidCounts>,
) -> Result<Admitted, Refused> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::info!(error = %e, "SO_PEERCRED failed; connection dropped");
            return Err(Refused::Other);
        }
    };
    if !config.policy.allows(cred.uid()) {
        let _ = stream.try_write(&error_frame(
            0,
            ErrorCode::Denied,
            format!("uid {} is not allowed", cred.uid()),
        ));
        tracing::info!(uid = cred.uid(), pid = ?cred.pid(), "connection refused by policy");
        return Err(Refused::Other);
    }
    match counts.admit(cred.uid(), &config.limits) {
        Ok((connection, handshake)) => Ok(Admitted {
            cred,
            connection,
            handshake,
        }),
        Err((limit, max)) => {
            let _ = stream.try_write(
                &EngineFrame::Limit {
                    req: 0,
                    limit: limit as u16,
                    max,
                }
                .encode(),
            );
            tracing::debug!(uid = cred.uid(), pid = ?cred.pid(), %limit, max, "connection refused by a limit");
            Err(Refused::Limit)
        }
    }
}

fn error_frame(req: u32, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    EngineFrame::Error {
        req,
        code: code as u16,
        message: message.into(),
    }
    .encode()
}

/// The frame that tells a node why its frame was refused: a [`Limit`] for a frame longer
/// than the engine buffers, an error code otherwise.
fn frame_error_frame(e: &io::Error) -> Vec<u8> {
    let inner = e.get_ref();
    if let Some(too_large) = inner.and_then(|i| i.downcast_ref::<PartialFrameTooLarge>()) {
        return EngineFrame::Limit {
            req: 0,
            limit: Limit::PartialFrameBytes as u16,
            max: too_large.max as u64,
        }
        .encode();
    }
    let code = match inner.and_then(|i| i.downcast_ref::<FrameError>()) {
        Some(FrameError::Version { .. }) => ErrorCode::Version,
        _ => ErrorCode::BadFrame,
    };
    error_frame(0, code, e.to_string())
}

/// One node's connection, from accept to close.
async fn connection(
    mut stream: UnixStream,
    node: u32,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
    admitted: Admitted,
) {
    // The slots are given back only once the socket is closed: the counts never run
    // behind the descriptors they stand for.
    let Admitted {
        cred,
        connection: slot,
        handshake,
    } = admitted;
    let (frames, handover) = match rendezvous(&mut stream, node, &config, &cred).await {
        Ok(Arrival::Node(frames, handover)) => (frames, handover),
        Ok(Arrival::Inspect { req }) => {
            answer_inspect(&mut stream, req, &config, &commands, &cred).await;
            drop(stream);
            drop(handshake);
            drop(slot);
            return;
        }
        Err(reason) => {
            tracing::info!(node, %reason, "rendezvous failed");
            drop(stream);
            drop(handshake);
            drop(slot);
            return;
        }
    };
    drop(handshake);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let name = handover.name.clone();
    let registration = Registration {
        node,
        frames: out_tx,
        handover,
    };
    if commands
        .send(Command::Register(Box::new(registration)))
        .is_err()
    {
        return;
    }
    tracing::debug!(node, %name, "node registered");
    let ended = serve(stream, node, frames, out_rx, &commands, &config.limits).await;
    if let Ended::NotReading { .. } = ended {
        tracing::warn!(node, %name, reason = %ended, "closing node");
    } else {
        tracing::debug!(node, %name, reason = %ended, "node connection closed");
    }
    let _ = commands.send(Command::Gone {
        node,
        violation: ended.is_violation(),
        reason: ended.to_string(),
    });
    drop(slot);
}

/// What a connection turned out to be after its first frame.
#[derive(Debug)]
enum Arrival {
    /// A node, ready.
    Node(FrameBuf, Handover),
    /// An inspector: it gets one snapshot, then the connection closes.
    Inspect { req: u32 },
}

/// Answers an inspector: the router builds the snapshot, this task serialises and writes
/// it (bounded by the handshake timeout: a client that does not read only holds its own
/// connection slot).
async fn answer_inspect(
    stream: &mut UnixStream,
    req: u32,
    config: &Config,
    commands: &mpsc::UnboundedSender<Command>,
    cred: &UCred,
) {
    let (reply, snapshot) = oneshot::channel();
    if commands.send(Command::Inspect { reply }).is_err() {
        return;
    }
    let Ok(snapshot) = snapshot.await else {
        return;
    };
    let Some(frames) = crate::engine::inspect::chunk_frames(req, &snapshot) else {
        let _ = write_frame(
            stream,
            &error_frame(req, ErrorCode::Resources, "the snapshot is too large"),
        )
        .await;
        return;
    };
    let write_all = async {
        for frame in &frames {
            write_frame(stream, frame).await?;
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(config.handshake_timeout, write_all).await {
        Ok(Ok(())) => tracing::debug!(uid = cred.uid(), frames = frames.len(), "snapshot sent"),
        Ok(Err(e)) => tracing::debug!(error = %e, "inspector left early"),
        Err(_) => tracing::debug!("inspector did not read its snapshot in time"),
    }
}

/// Hello, block and doorbells, ready (credentials were checked at accept); or an inspector's
/// request. Errors are reported to the peer (when it can be told) and returned as a reason
/// for the log.
async fn rendezvous(
    stream: &mut UnixStream,
    node: u32,
    config: &Config,
    cred: &UCred,
) -> Result<Arrival, String> {
    let mut frames = FrameBuf::with_limit(config.limits.partial_frame_bytes);
    let hello = tokio::time::timeout(
        config.handshake_timeout,
        frames.next(stream, control::decode_node_frame),
    )
    .await;
    let name = match hello {
        Err(_) => return Err("no hello before the handshake timeout".into()),
        Ok(Ok(Some(NodeFrame::Hello { name }))) => {
            tracing::Span::current().record("name", name.as_str());
            name
        }
        Ok(Ok(Some(NodeFrame::Inspect { req }))) => return Ok(Arrival::Inspect { req }),
        Ok(Ok(Some(other))) => {
            let _ = write_frame(
                stream,
                &error_frame(0, ErrorCode::BadFrame, "expected Hello"),
            )
            .await;
            return Err(format!("expected Hello, got {other:?}"));
        }
        Ok(Ok(None)) => return Err("closed before hello".into()),
        Ok(Err(e)) => {
            let _ = stream.try_write(&frame_error_frame(&e));
            return Err(format!("bad hello: {e}"));
        }
    };
    #[allow(clippy::type_complexity)]
    let setup = || -> Result<(Block, (Doorbell, Doorbell), (Doorbell, Doorbell)), String> {
        let block = Block::create(&config.block, &format!("shmlink-node-{node}"))
            .map_err(|e| e.to_string())?;
        // Each doorbell is a socket pair: the node gets its own end of each (one to ring the
        // engine, one to wait on), the engine keeps the other ends.
        let (engine_wait, node_ring) = Doorbell::pair().map_err(|e| e.to_string())?;
        let (engine_ring, node_wait) = Doorbell::pair().map_err(|e| e.to_string())?;
        Ok((block, (engine_wait, node_ring), (engine_ring, node_wait)))
    };
    let (block, (engine_bell, node_ring), (node_bell, node_wait)) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            let _ = write_frame(stream, &error_frame(0, ErrorCode::Resources, e.clone())).await;
            return Err(format!("cannot create the block: {e}"));
        }
    };
    let welcome = EngineFrame::Welcome {
        node,
        credits: config.credits,
        window_bytes: config.window_bytes,
    }
    .encode();
    send_with_fds(
        stream,
        &welcome,
        &[block.fd(), node_ring.as_fd(), node_wait.as_fd()],
    )
    .await
    .map_err(|e| format!("sending the block: {e}"))?;
    let ready = tokio::time::timeout(
        config.handshake_timeout,
        frames.next(stream, control::decode_node_frame),
    )
    .await;
    match ready {
        Ok(Ok(Some(NodeFrame::Ready))) => {}
        Err(_) => return Err("no ready before the handshake timeout".into()),
        Ok(Ok(None)) => return Err("closed before ready (the node refused the block?)".into()),
        Ok(Ok(Some(other))) => {
            let _ = write_frame(
                stream,
                &error_frame(0, ErrorCode::BadFrame, "expected Ready"),
            )
            .await;
            return Err(format!("expected Ready, got {other:?}"));
        }
        Ok(Err(e)) => {
            let _ = stream.try_write(&frame_error_frame(&e));
            return Err(format!("bad ready: {e}"));
        }
    }
    Ok(Arrival::Node(
        frames,
        Handover {
            name,
            pid: cred.pid(),
            uid: cred.uid(),
            block: Arc::new(block),
            engine_bell,
            node_bell,
        },
    ))
}

/// Why a registered node's connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// The node closed its socket.
    #[error("closed by the node")]
    ByNode,
    /// The router let go of the node (a violation, or shutdown).
    #[error("closed by the engine")]
    ByEngine,
    /// The router is gone.
    #[error("engine shutting down")]
    Shutdown,
    /// The node sent a frame that is not valid after rendezvous.
    #[error("protocol violation: unexpected {0}")]
    Unexpected(&'static str),
    /// The node's bytes are not a valid frame (or one longer than the engine buffers), or
    /// reading them failed.
    #[error("protocol violation: {0}")]
    BadFrame(io::Error),
    /// Reading or writing the socket failed.
    #[error("control socket: {0}")]
    Io(io::Error),
    /// The node leaves its control socket unread while frames for it pile up.
    #[error("it does not read its control socket ({queued} frames wait, limit {max})")]
    NotReading {
        /// Frames waiting.
        queued: usize,
        /// The limit.
        max: usize,
    },
}

impl Ended {
    /// Whether the node broke the protocol (counted in `EngineStats::violations`).
    fn is_violation(&self) -> bool {
        match self {
            Self::Unexpected(_) => true,
            Self::BadFrame(e) => e.kind() == io::ErrorKind::InvalidData,
            _ => false,
        }
    }
}

/// Whether `frame` answers a request (and so ends one in flight).
fn is_answer(frame: &EngineFrame) -> bool {
    match frame {
        EngineFrame::ServeOk { req, .. }
        | EngineFrame::UnserveOk { req }
        | EngineFrame::OpenOk { req, .. }
        | EngineFrame::Error { req, .. }
        | EngineFrame::Limit { req, .. }
        | EngineFrame::SchemaMismatch { req, .. }
        | EngineFrame::PublishOk { req, .. }
        | EngineFrame::TopicDone { req }
        | EngineFrame::SubscribeOk { req, .. } => *req != 0,
        EngineFrame::Welcome { .. }
        | EngineFrame::Accept { .. }
        | EngineFrame::TopicAttach { .. }
        | EngineFrame::InspectChunk { .. } => false,
    }
}

/// Frames on their way to the node, written as its socket takes them: the connection never
/// waits on a node that does not read (the engine never blocks on a node), and the queue is
/// bounded.
#[derive(Debug, Default)]
struct Outgoing {
    /// Encoded frames, each with the descriptor that rides with its first byte.
    frames: VecDeque<(Vec<u8>, Option<OwnedFd>)>,
    /// Bytes of the front frame already written.
    written: usize,
}

impl Outgoing {
    /// Writes what the socket takes now. `Ok` when it would block or all is written.
    fn flush(&mut self, wr: &OwnedWriteHalf) -> io::Result<()> {
        while let Some((front, fd)) = self.frames.front_mut() {
            let sent = match fd.take() {
                // The descriptor goes with the frame's first bytes, in one `sendmsg`; the
                // kernel holds its own reference from then on.
                Some(owned) => match send_fd(wr, &front[self.written..], owned.as_fd()) {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        *fd = Some(owned);
                        Err(e)
                    }
                },
                None => wr.try_write(&front[self.written..]),
            };
            match sent {
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.frames.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Writes the start of `bytes` with `fd` attached (`SCM_RIGHTS`), without waiting.
fn send_fd(wr: &OwnedWriteHalf, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let sock: &UnixStream = wr.as_ref();
    sock.try_io(tokio::io::Interest::WRITABLE, || {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor"));
        }
        let iov = [std::io::IoSlice::new(bytes)];
        Ok(rustix::net::sendmsg(
            sock.as_fd(),
            &iov,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    })
}

/// Forwards the node's control frames to the router and the router's frames to the node,
/// until either side closes. Returns why.
///
/// Bounded per connection: at most `requests_per_connection` requests in flight to the
/// router (past it this socket is not read until answers come back), at most
/// `partial_frame_bytes` of an unfinished frame buffered, and at most `queued_frames`
/// frames waiting for the node to read (past it the node is closed: it does not read).
async fn serve(
    stream: UnixStream,
    node: u32,
    mut frames: FrameBuf,
    mut out: mpsc::UnboundedReceiver<Outbound>,
    commands: &mpsc::UnboundedSender<Command>,
    limits: &Limits,
) -> Ended {
    let (mut rd, wr) = stream.into_split();
    let mut outgoing = Outgoing::default();
    let mut in_flight = 0usize;
    loop {
        tokio::select! {
            frame = frames.next(&mut rd, control::decode_node_frame), if in_flight < limits.requests_per_connection => {
                let command = match frame {
                    Ok(Some(NodeFrame::Serve { req, service, schema })) => Command::Serve { node, req, service, schema },
                    Ok(Some(NodeFrame::Unserve { req, service })) => Command::Unserve { node, req, service },
                    Ok(Some(NodeFrame::Open { req, service, schema })) => Command::Open { node, req, service, schema },
                    Ok(Some(NodeFrame::Publish { req, topic, ty, history })) => Command::Publish { node, req, topic, ty, history },
                    Ok(Some(NodeFrame::Unpublish { req, publisher })) => Command::Unpublish { node, req, publisher },
                    Ok(Some(NodeFrame::Subscribe { req, pattern, ty, options })) => Command::Subscribe { node, req, pattern, ty, options },
                    Ok(Some(NodeFrame::Unsubscribe { req, subscription })) => Command::Unsubscribe { node, req, subscription },
                    Ok(Some(other)) => {
                        let _ = wr.try_write(&error_frame(0, ErrorCode::BadFrame, "unexpected frame after rendezvous"));
                        break Ended::Unexpected(match other {
                            NodeFrame::Hello { .. } => "Hello",
                            NodeFrame::Inspect { .. } => "Inspect",
                            _ => "Ready",
                        });
                    }
                    Ok(None) => break Ended::ByNode,
                    Err(e) => {
                        let _ = outgoing.flush(&wr);
                        let _ = wr.try_write(&frame_error_frame(&e));
                        break Ended::BadFrame(e);
                    }
                };
                if commands.send(command).is_err() {
                    break Ended::Shutdown;
                }
                in_flight += 1;
            }
            frame = out.recv() => match frame {
                Some(Outbound { frame, fd }) => {
                    if is_answer(&frame) {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    if outgoing.frames.len() >= limits.queued_frames {
                        break Ended::NotReading {
                            queued: outgoing.frames.len() + 1,
                            max: limits.queued_frames,
                        };
                    }
                    outgoing.frames.push_back((frame.encode(), fd));
                    if let Err(e) = outgoing.flush(&wr) {
                        break Ended::Io(e);
                    }
                }
                // The router dropped this node (a violation, or shutdown): what it said
                // last goes out if the socket takes it now, then the socket closes.
                None => {
                    let _ = outgoing.flush(&wr);
                    break Ended::ByEngine;
                }
            },
            ready = wr.writable(), if !outgoing.frames.is_empty() => {
                if let Err(e) = ready.and_then(|()| outgoing.flush(&wr)) {
                    break Ended::Io(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_logs_once_per_interval_and_resets() {
        let mut backoff = Backoff::new();
        let e = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.failure(&e)).collect();
        assert_eq!(pauses[0], Backoff::MIN);
        assert_eq!(pauses[1], Backoff::MIN * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().expect("pauses"), Backoff::MAX);
        // The first failure was logged; the eleven since wait for the next interval.
        assert_eq!(backoff.unlogged, 11);
        backoff.success();
        assert_eq!(backoff.failure(&e), Backoff::MIN);
    }

    #[test]
    fn slots_count_per_uid_refuse_past_the_limits_and_give_back_on_drop() {
        let (stats, rx) = watch::channel(EngineStats::default());
        let counts = Arc::new(UidCounts {
            per_uid: Mutex::default(),
            stats,
        });
        let limits = Limits {
            connections_per_uid: 3,
            handshakes_per_uid: 2,
            ..Limits::default()
        };
        let (c1, h1) = counts.admit(7, &limits).expect("first");
        let (c2, h2) = counts.admit(7, &limits).expect("second");
        assert_eq!(
            counts.admit(7, &limits).err(),
            Some((Limit::HandshakesPerUid, 2))
        );
        // Another uid has its own counts.
        let other = counts.admit(8, &limits).expect("another uid");
        assert_eq!((rx.borrow().connections, rx.borrow().handshakes), (3, 3));
        drop((h1, h2));
        let third = counts
            .admit(7, &limits)
            .expect("a handshake slot is free again");
        assert_eq!(
            counts.admit(7, &limits).err(),
            Some((Limit::ConnectionsPerUid, 3))
        );
        drop((c1, c2, third, other));
        assert_eq!((rx.borrow().connections, rx.borrow().handshakes), (0, 0));
        assert!(counts.per_uid.lock().expect("lock").is_empty());
    }
}
