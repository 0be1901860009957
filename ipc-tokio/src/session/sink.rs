//! The sending half: `Sink<Bytes>` and `Sink<Loan>`.
//!
//! Like tokio-util's `PollSender`, the sink holds at most one item: `poll_ready` first pushes
//! any pending item, then reserves a credit; `start_send` stores the item; `poll_flush` pushes
//! it: into a loan (waiting for room in the transmit arena if needed), then onto the submit
//! ring (waiting for room there if needed), ringing the engine only if it sleeps.
//!
//! Dropping the sink half-closes the session (the peer's stream ends), as dropping Tokio's
//! `OwnedWriteHalf` shuts down writing.

use std::future::poll_fn;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use ipc_core::{AllocError, RawDescriptor, TxBuf, kind};

use crate::error::SessionError;
use crate::session::EndGuard;

/// A payload being written in place in this node's transmit arena. Send it with the sink
/// (`Sink<Loan>`); dropping it unsent returns the memory.
#[derive(Debug)]
pub struct Loan {
    buf: TxBuf,
}

impl Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Loan {
    /// Shortens the payload to `len` bytes (the memory stays allocated until sent).
    ///
    /// # Panics
    ///
    /// If `len` exceeds the loan's length.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
}

/// What the sink accepts: byte payloads and loans.
#[derive(Debug)]
pub enum Outgoing {
    /// Copied into a loan when flushed.
    Bytes(Bytes),
    /// Already written in place.
    Loan(Loan),
    /// On its way to the submit ring.
    #[doc(hidden)]
    Entry(RawDescriptor),
}

impl From<Bytes> for Outgoing {
    fn from(b: Bytes) -> Self {
        Self::Bytes(b)
    }
}

impl From<Vec<u8>> for Outgoing {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(Bytes::from(v))
    }
}

impl From<&'static [u8]> for Outgoing {
    fn from(v: &'static [u8]) -> Self {
        Self::Bytes(Bytes::from_static(v))
    }
}

impl From<Loan> for Outgoing {
    fn from(l: Loan) -> Self {
        Self::Loan(l)
    }
}

/// The sending half of a session.
#[derive(Debug)]
pub struct SessionSink {
    guard: Arc<EndGuard>,
    pending: Option<Outgoing>,
    reserved: bool,
    finished: bool,
}

impl SessionSink {
    pub(crate) fn new(guard: Arc<EndGuard>) -> Self {
        Self {
            guard,
            pending: None,
            reserved: false,
            finished: false,
        }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        &self.guard.core.peer
    }

    /// The largest payload this session carries.
    pub fn max_payload(&self) -> u64 {
        self.guard.node.shared.max_payload
    }

    fn too_large(&self, len: u64) -> SessionError {
        SessionError::TooLarge {
            len,
            max: self.max_payload(),
        }
    }

    /// Pushes any pending payload to the engine (what `SinkExt::flush` does; an inherent
    /// method because the sink accepts several item types).
    ///
    /// # Errors
    ///
    /// The session's error if it is over.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        poll_fn(|cx| self.poll_push(cx)).await
    }

    /// Flushes, then half-closes: the peer's stream ends after the last payload; this end can
    /// still receive. What `SinkExt::close` does.
    ///
    /// # Errors
    ///
    /// The session's error if a pending payload could not be sent.
    pub async fn close(&mut self) -> Result<(), SessionError> {
        poll_fn(|cx| self.poll_close_inner(cx)).await
    }

    /// Borrows `len` bytes of this node's transmit arena to write a payload in place; waits
    /// while the arena is full.
    ///
    /// # Errors
    ///
    /// [`SessionError::TooLarge`] at once if `len` can never fit; [`SessionError::Disconnected`]
    /// if the engine is gone.
    pub async fn loan(&self, len: usize) -> Result<Loan, SessionError> {
        poll_fn(|cx| self.poll_loan(len, cx)).await
    }

    fn poll_loan(&self, len: usize, cx: &mut Context<'_>) -> Poll<Result<Loan, SessionError>> {
        let shared = &self.guard.node.shared;
        let Ok(len32) = u32::try_from(len) else {
            return Poll::Ready(Err(self.too_large(len as u64)));
        };
        if u64::from(len32) > self.max_payload() {
            return Poll::Ready(Err(self.too_large(len as u64)));
        }
        let mut registered = false;
        loop {
            if shared.state().dead {
                return Poll::Ready(Err(SessionError::Disconnected));
            }
            match shared.tx.alloc(len32) {
                Ok(buf) => return Poll::Ready(Ok(Loan { buf })),
                Err(AllocError::Full { .. }) if !registered => {
                    // Register, then retry once: a TX_DONE between the two wakes us.
                    shared.tx_waiters.register(cx.waker());
                    registered = true;
                }
                Err(AllocError::Full { .. }) => return Poll::Pending,
                Err(_) => return Poll::Ready(Err(self.too_large(len as u64))),
            }
        }
    }

    /// Pushes the pending item through loan and ring.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        loop {
            let Some(item) = self.pending.take() else {
                return Poll::Ready(Ok(()));
            };
            if let Some(error) = self.guard.core.send_error() {
                return Poll::Ready(Err(error));
            }
            let end = self.guard.core.end;
            match item {
                Outgoing::Bytes(bytes) => match self.poll_loan(bytes.len(), cx) {
                    Poll::Ready(Ok(mut loan)) => {
                        loan.copy_from_slice(&bytes);
                        self.pending = Some(Outgoing::Loan(loan));
                    }
                    Poll::Ready(Err(e)) => {
                        self.guard.core.refund_credit();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {
                        self.pending = Some(Outgoing::Bytes(bytes));
                        return Poll::Pending;
                    }
                },
                Outgoing::Loan(loan) => {
                    let sent = loan.buf.submit();
                    self.pending = Some(Outgoing::Entry(RawDescriptor::data(
                        end,
                        sent.offset,
                        sent.len,
                    )));
                }
                Outgoing::Entry(entry) => match self.guard.node.shared.poll_submit(entry, cx) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        self.pending = Some(Outgoing::Entry(entry));
                        return Poll::Pending;
                    }
                },
            }
        }
    }

    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        ready!(self.poll_push(cx))?;
        if self.finished {
            return Poll::Ready(Err(SessionError::Closed));
        }
        if !self.reserved {
            ready!(self.guard.core.poll_credit(cx))?;
            self.reserved = true;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send_inner(&mut self, item: Outgoing) -> Result<(), SessionError> {
        if !self.reserved {
            return Err(SessionError::NotReady);
        }
        self.reserved = false;
        if let Outgoing::Bytes(b) = &item
            && b.len() as u64 > self.max_payload()
        {
            self.guard.core.refund_credit();
            return Err(self.too_large(b.len() as u64));
        }
        self.pending = Some(item);
        Ok(())
    }

    fn poll_close_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        ready!(self.poll_push(cx))?;
        if !self.finished {
            if self.reserved {
                self.guard.core.refund_credit();
                self.reserved = false;
            }
            let fin = RawDescriptor::control(kind::FIN, self.guard.core.end, 0);
            match self.guard.node.shared.poll_submit(fin, cx) {
                Poll::Ready(Ok(())) => self.finished = true,
                // The session is over already: closing it is done.
                Poll::Ready(Err(_)) => self.finished = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Into<Outgoing>> futures::Sink<T> for SessionSink {
    type Error = SessionError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), SessionError> {
        self.get_mut().start_send_inner(item.into())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_push(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_close_inner(cx)
    }
}

impl Drop for SessionSink {
    /// Dropping the sending half half-closes, like Tokio's `OwnedWriteHalf`: a payload still
    /// pending is pushed (without waiting) and the peer's stream ends after it.
    fn drop(&mut self) {
        if self.reserved {
            self.guard.core.refund_credit();
        }
        if self.finished || self.guard.core.send_error().is_some() {
            return;
        }
        let shared = &self.guard.node.shared;
        let end = self.guard.core.end;
        let entry = match self.pending.take() {
            Some(Outgoing::Entry(entry)) => Some(entry),
            Some(Outgoing::Loan(loan)) => {
                let sent = loan.buf.submit();
                Some(RawDescriptor::data(end, sent.offset, sent.len))
            }
            Some(Outgoing::Bytes(bytes)) => {
                match u32::try_from(bytes.len()).map(|len| shared.tx.alloc(len)) {
                    Ok(Ok(mut buf)) => {
                        buf.copy_from_slice(&bytes);
                        let sent = buf.submit();
                        Some(RawDescriptor::data(end, sent.offset, sent.len))
                    }
                    _ => {
                        tracing::warn!(
                            session = end,
                            "sink dropped with an unflushed payload and no room for it"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(entry) = entry {
            shared.submit_now(entry);
        }
        shared.submit_now(RawDescriptor::control(kind::FIN, end, 0));
    }
}
