//! Doorbells: one connected socket pair per direction per node.
//!
//! The model is mio's waker: `ring` makes the other end readable, `drain` empties this end.
//! ipc-tokio wraps an end in `AsyncFd` to sleep on it. A doorbell carries no data: after a
//! wake-up the consumer looks at its rings, so a spurious or flooded doorbell costs a
//! wake-up and nothing else.
//!
//! Why a socket pair and not an eventfd: an eventfd handed to a node over `SCM_RIGHTS` shares
//! one open file description with the engine, and with it the `O_NONBLOCK` flag. A hostile
//! node could clear that flag and fill the counter, and the engine's next `write` would block
//! (docs/ARCHITECTURE.md, invariant 4). With a socket pair each side owns its own socket, and
//! every call here passes `MSG_DONTWAIT`, so no flag anyone else can change decides whether we
//! block.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// One end of a doorbell: ring it to wake the other end, drain it after waking.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A connected pair: ringing one wakes whoever waits on the other.
    ///
    /// # Errors
    ///
    /// The error of `socketpair(2)`.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Wraps an end received from the other side. Every call passes `MSG_DONTWAIT`, so its
    /// blocking flag does not matter.
    ///
    /// # Errors
    ///
    /// None today (the signature leaves room for validating the descriptor).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self { fd })
    }

    /// Rings: wakes whoever sleeps on the other end. Never blocks.
    ///
    /// # Errors
    ///
    /// The error of `send(2)`, except `EAGAIN` (the other end has unread rings: it is rung
    /// already). A closed other end is `BrokenPipe`.
    pub fn ring(&self) -> io::Result<()> {
        match rustix::net::send(&self.fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Empties this end; returns how many rings it held (0 if none). Never blocks.
    ///
    /// # Errors
    ///
    /// The error of `recv(2)`, except `EAGAIN` (nothing pending); `BrokenPipe` once the other
    /// end is closed (this end then stays readable forever: stop waiting on it).
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 256];
        let mut rings = 0u64;
        loop {
            match rustix::net::recv(&self.fd, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the other end of the doorbell is closed",
                    ));
                }
                Ok((n, _)) => {
                    rings += n as u64;
                    if n < buf.len() {
                        return Ok(rings);
                    }
                }
                Err(Errno::AGAIN) => return Ok(rings),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Duplicates the fd.
    ///
    /// # Errors
    ///
    /// The error of `fcntl(F_DUPFD_CLOEXEC)`.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(feature = "tokio")]
impl Doorbell {
    /// Registers the doorbell with the current Tokio runtime's reactor (read interest), so
    /// a task can sleep until it rings.
    ///
    /// # Errors
    ///
    /// The registration error (for example, outside a runtime with I/O enabled).
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Doorbell>> {
        // SAFETY: `register_with_interest` requires that `as_raw_fd()` names a valid open fd
        // that stays open and refers to the same file while registered. A Doorbell owns its
        // OwnedFd, never replaces or closes it before being dropped, and AsyncFd owns the
        // Doorbell, deregistering before it drops it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // socketpair is a syscall Miri cannot run
    fn ring_and_drain() {
        let (a, b) = Doorbell::pair().unwrap();
        assert_eq!(b.drain().unwrap(), 0);
        a.ring().unwrap();
        a.ring().unwrap();
        assert_eq!(b.drain().unwrap(), 2);
        assert_eq!(b.drain().unwrap(), 0);
        b.ring().unwrap();
        assert_eq!(a.drain().unwrap(), 1);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // socketpair is a syscall Miri cannot run
    fn the_peers_blocking_flag_cannot_block_us() {
        let (engine, node) = Doorbell::pair().unwrap();
        // The node makes its own end blocking and never drains it: our rings still return.
        let flags = rustix::fs::fcntl_getfl(&node).unwrap();
        rustix::fs::fcntl_setfl(&node, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
        let flags = rustix::fs::fcntl_getfl(&engine).unwrap();
        rustix::fs::fcntl_setfl(&engine, flags - rustix::fs::OFlags::NONBLOCK).unwrap();
        for _ in 0..1_000_000 {
            engine.ring().unwrap();
        }
        assert!(node.drain().unwrap() > 0);
        // A drain with nothing pending returns at once even on a blocking socket.
        assert_eq!(engine.drain().unwrap(), 0);
        drop(node);
        assert!(
            engine.ring().is_err(),
            "a closed peer is an error, not a hang"
        );
        assert_eq!(
            engine.drain().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe,
            "a closed peer is reported, so nobody keeps waking on the readable end"
        );
    }
}
