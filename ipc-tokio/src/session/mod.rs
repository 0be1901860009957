//! Sessions: a channel between two nodes, as `Sink` and `Stream` handles.
//!
//! A [`Session`] sends with `futures::Sink<Bytes>` (or [`Loan`]s written in place) and
//! receives with `futures::Stream<Item = Result<Bytes, SessionError>>`. Received payloads are
//! zero-copy: the `Bytes` points into this node's receive arena and hands the sub-block back
//! to the engine when its last clone drops.
//!
//! Flow control is per session: each end may have `credits` messages in flight (set by the
//! engine); a credit comes back when the receiver releases a message. A receiver that stops
//! reading makes only this session's `poll_ready` pend.
//!
//! Ending: `poll_close` on the sink half-closes (the peer's stream ends after the data);
//! dropping both halves closes the session (the peer's stream ends, its sends fail with
//! [`SessionError::Closed`]). If the peer's process dies, this end sees
//! [`SessionError::Disconnected`].

mod core;
mod sink;
mod stream;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

pub(crate) use self::core::SessionCore;
pub use sink::{Loan, SessionSink};
pub use stream::SessionStream;

use crate::error::SessionError;
use crate::node::NodeHandle;

/// Closes the session end when the last half is dropped.
#[derive(Debug)]
pub(crate) struct EndGuard {
    pub(crate) node: Arc<NodeHandle>,
    pub(crate) core: Arc<SessionCore>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.node.shared.close_end(self.core.end);
    }
}

/// A session: both directions of a channel to one peer.
#[derive(Debug)]
pub struct Session {
    sink: SessionSink,
    stream: SessionStream,
}

impl Session {
    pub(crate) fn new(node: Arc<NodeHandle>, core: Arc<SessionCore>) -> Self {
        let guard = Arc::new(EndGuard { node, core });
        Self {
            sink: SessionSink::new(guard.clone()),
            stream: SessionStream::new(guard),
        }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        self.sink.peer()
    }

    /// Splits into a sending and a receiving half; the session closes when both are dropped.
    pub fn split(self) -> (SessionSink, SessionStream) {
        (self.sink, self.stream)
    }

    /// Pushes any pending payload; see [`SessionSink::flush`].
    ///
    /// # Errors
    ///
    /// The session's error if it is over.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        self.sink.flush().await
    }

    /// Half-closes; see [`SessionSink::close`].
    ///
    /// # Errors
    ///
    /// The session's error if a pending payload could not be sent.
    pub async fn close(&mut self) -> Result<(), SessionError> {
        self.sink.close().await
    }

    /// Borrows `len` bytes to write a payload in place; see [`SessionSink::loan`].
    ///
    /// # Errors
    ///
    /// As [`SessionSink::loan`].
    pub async fn loan(&self, len: usize) -> Result<Loan, SessionError> {
        self.sink.loan(len).await
    }

    /// Borrows the sending half.
    pub fn sink(&mut self) -> &mut SessionSink {
        &mut self.sink
    }

    /// Borrows the receiving half.
    pub fn stream(&mut self) -> &mut SessionStream {
        &mut self.stream
    }
}

impl futures::Stream for Session {
    type Item = Result<Bytes, SessionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<T: Into<sink::Outgoing>> futures::Sink<T> for Session {
    type Error = SessionError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink as futures::Sink<T>>::poll_ready(Pin::new(&mut self.sink), cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: T) -> Result<(), SessionError> {
        Pin::new(&mut self.sink).start_send(item)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink as futures::Sink<T>>::poll_flush(Pin::new(&mut self.sink), cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink as futures::Sink<T>>::poll_close(Pin::new(&mut self.sink), cx)
    }
}
