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

mod admission;
mod connection;

use admission::*;
use connection::*;

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
