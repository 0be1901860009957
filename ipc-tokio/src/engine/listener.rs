//! The listening socket, and one connection task per node: rendezvous, then control frames.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ipc_core::control::{self, EngineFrame, ErrorCode, FrameError, NodeFrame};
use ipc_core::{Block, Doorbell};
use rustix::fs::FlockOperation;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::{FrameBuf, send_with_fds, write_frame};
use crate::engine::builder::Config;
use crate::engine::router::{Command, Handover, Registration};
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
    pub(crate) fn bind(config: &Config) -> Result<Self, SpawnError> {
        let path = config.socket.clone();
        let io_err = |source: io::Error| SpawnError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io_err)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err)?;
            }
            check_directory(dir).map_err(io_err)?;
        }
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        // Never through a symlink someone planted, and only a lock file of our own.
        let lock = rustix::fs::open(
            &lock_path,
            rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::RDWR
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_err(e.into()))?;
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
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        Ok(Self {
            listener,
            path,
            lock_path,
            _lock: lock,
        })
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

/// Accepts connections until told to stop.
pub(crate) async fn run(
    listening: Listening,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
    mut stop: oneshot::Receiver<()>,
) {
    let next_node = Arc::new(AtomicU32::new(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listening.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let node = next_node.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(stream, node, config.clone(), commands.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: keep serving the nodes we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                }
            },
        }
    }
    drop(listening);
}

fn error_frame(req: u32, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    EngineFrame::Error {
        req,
        code: code as u16,
        message: message.into(),
    }
    .encode()
}

fn frame_error_code(e: &io::Error) -> ErrorCode {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<FrameError>())
    {
        Some(FrameError::Version { .. }) => ErrorCode::Version,
        _ => ErrorCode::BadFrame,
    }
}

/// One node's connection, from accept to close.
async fn connection(
    mut stream: UnixStream,
    node: u32,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
) {
    match rendezvous(&mut stream, node, &config).await {
        Ok((frames, handover)) => {
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
            let (reason, violation) = serve(stream, node, frames, out_rx, &commands).await;
            tracing::debug!(node, %name, %reason, "node connection closed");
            let _ = commands.send(Command::Gone {
                node,
                reason,
                violation,
            });
        }
        Err(reason) => {
            tracing::info!(node, %reason, "rendezvous failed");
        }
    }
}

/// Credentials, hello, block and doorbells, ready. Errors are reported to the peer (when it
/// can be told) and returned as a reason for the log.
async fn rendezvous(
    stream: &mut UnixStream,
    node: u32,
    config: &Config,
) -> Result<(FrameBuf, Handover), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED: {e}"))?;
    if !config.policy.allows(cred.uid()) {
        let _ = write_frame(
            stream,
            &error_frame(
                0,
                ErrorCode::Denied,
                format!("uid {} is not allowed", cred.uid()),
            ),
        )
        .await;
        return Err(format!("uid {} refused by policy", cred.uid()));
    }
    let mut frames = FrameBuf::default();
    let hello = tokio::time::timeout(
        config.handshake_timeout,
        frames.next(stream, control::decode_node_frame),
    )
    .await;
    let name = match hello {
        Err(_) => return Err("no hello before the handshake timeout".into()),
        Ok(Ok(Some(NodeFrame::Hello { name }))) => name,
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
            let _ = write_frame(stream, &error_frame(0, frame_error_code(&e), e.to_string())).await;
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
            let _ = write_frame(stream, &error_frame(0, frame_error_code(&e), e.to_string())).await;
            return Err(format!("bad ready: {e}"));
        }
    }
    Ok((
        frames,
        Handover {
            name,
            pid: cred.pid(),
            block: Arc::new(block),
            engine_bell,
            node_bell,
        },
    ))
}

/// Forwards the node's control frames to the router and the router's frames to the node,
/// until either side closes. Returns why.
async fn serve(
    stream: UnixStream,
    node: u32,
    mut frames: FrameBuf,
    mut out: mpsc::UnboundedReceiver<EngineFrame>,
    commands: &mpsc::UnboundedSender<Command>,
) -> (String, bool) {
    let (mut rd, mut wr) = stream.into_split();
    loop {
        tokio::select! {
            frame = frames.next(&mut rd, control::decode_node_frame) => {
                let command = match frame {
                    Ok(Some(NodeFrame::Serve { req, service, schema })) => Command::Serve { node, req, service, schema },
                    Ok(Some(NodeFrame::Unserve { req, service })) => Command::Unserve { node, req, service },
                    Ok(Some(NodeFrame::Open { req, service, schema })) => Command::Open { node, req, service, schema },
                    Ok(Some(other)) => {
                        let _ = write_frame(&mut wr, &error_frame(0, ErrorCode::BadFrame, "unexpected frame after rendezvous")).await;
                        return (format!("protocol violation: unexpected {other:?}"), true);
                    }
                    Ok(None) => return ("closed by the node".into(), false),
                    Err(e) => {
                        let _ = write_frame(&mut wr, &error_frame(0, frame_error_code(&e), e.to_string())).await;
                        let violation = e.kind() == std::io::ErrorKind::InvalidData;
                        return (format!("protocol violation: {e}"), violation);
                    }
                };
                if commands.send(command).is_err() {
                    return ("engine shutting down".into(), false);
                }
            }
            frame = out.recv() => match frame {
                Some(frame) => {
                    if let Err(e) = write_frame(&mut wr, &frame.encode()).await {
                        return (format!("write failed: {e}"), false);
                    }
                }
                // The router dropped this node (a violation, or shutdown): close the socket.
                None => return ("closed by the engine".into(), false),
            },
        }
    }
}
