//! Doorbells: non-blocking eventfds, one per direction per node.
//!
//! The model is mio's eventfd waker: `ring` adds one to the counter (a full counter already
//! means "rung", so `EAGAIN` is success), `drain` reads and resets it. ipc-tokio wraps the fd
//! in `AsyncFd` to sleep on it. A doorbell carries no data: after a wake-up the consumer looks
//! at its rings, so a spurious or flooded doorbell costs a wake-up and nothing else.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;
use rustix::io::Errno;

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new doorbell (close-on-exec, non-blocking).
    ///
    /// # Errors
    ///
    /// The error of `eventfd(2)`.
    pub fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Wraps a doorbell received from the other side and makes sure it is non-blocking.
    ///
    /// # Errors
    ///
    /// The error of `fcntl(2)` when the flags cannot be set.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Rings: wakes whoever sleeps on the other end.
    ///
    /// # Errors
    ///
    /// The error of `write(2)`, except `EAGAIN` (the counter is full: it is rung already).
    pub fn ring(&self) -> io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resets the counter; returns how many rings it held (0 if none).
    ///
    /// # Errors
    ///
    /// The error of `read(2)`, except `EAGAIN` (nothing pending).
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("doorbell read {n} bytes, not 8: not an eventfd"),
            )),
            Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Duplicates the fd (to hand the other end over).
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
    #[cfg_attr(miri, ignore)] // eventfd is a syscall Miri cannot run
    fn ring_and_drain() {
        let bell = Doorbell::new().unwrap();
        assert_eq!(bell.drain().unwrap(), 0);
        bell.ring().unwrap();
        bell.ring().unwrap();
        assert_eq!(bell.drain().unwrap(), 2);
        assert_eq!(bell.drain().unwrap(), 0);
        let other = Doorbell::from_fd(bell.try_clone_fd().unwrap()).unwrap();
        other.ring().unwrap();
        assert_eq!(bell.drain().unwrap(), 1);
    }
}
