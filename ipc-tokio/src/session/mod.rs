//! Sessions: a channel between two nodes, as `Sink` and `Stream` handles.
//!
//! A [`Session<T>`](Session) sends with `futures::Sink<T>` and receives with
//! `futures::Stream<Item = Result<T, SessionError>>`. `T` is [`Bytes`] for raw sessions
//! (which also take [`Loan`]s written in place) or any [`Message`](crate::message::Message),
//! encoded straight into shared memory by a codec (bincode by default). Received bytes are
//! zero-copy: the `Bytes` points into this node's receive arena and hands the sub-block back
//! to the engine when its last clone drops; typed messages are decoded from it in place.
//!
//! Flow control is per session: each end has a window of messages *and* bytes in flight (set
//! by the engine: `credits` messages, `window_bytes` bytes, each message counting as the
//! arena memory it takes); both come back when the receiver releases a message. One message
//! larger than the window may still go, alone. A receiver that stops reading makes only this
//! session's sends pend.
//!
//! Ending: `poll_close` on the sink half-closes (the peer's stream ends after the data);
//! dropping both halves closes the session (the peer's stream ends, its sends fail with
//! [`SessionError::Closed`]). If the peer's process dies, this end sees
//! [`SessionError::Disconnected`].
//!
//! A send that completes has reached the engine while the session was open: the peer reads
//! it unless the peer closes (drops) its end first, as a socket's reader may close with
//! data unread. A send made once this end knows the session is over fails; a send whose
//! batch was pushed just before the peer's close is not reported as failed, since the peer
//! may well have read it, and the next send learns of the end.

mod core;
mod payload;
mod sink;
mod stream;

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;

pub(crate) use self::core::{Permit, SessionCore};
pub use payload::Payload;
pub use sink::{DEFAULT_FRAME_SIZE, Loan, MAX_SESSION_PAYLOAD, SessionSink};
pub use stream::SessionStream;

use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::NodeHandle;

/// One session end as its halves hold it. Which halves are still alive, and whether they
/// were split apart, decides what a half's drop tells the engine: the last half closes the
/// end (`CLOSE`); the sending half of a split session dropped before the receiving one
/// half-closes it (`FIN`); an unsplit session's halves go together, so they never send a
/// `FIN` first (the peer would see the end of its stream, send, and succeed, before it learns
/// of the close).
#[derive(Debug)]
pub(crate) struct EndGuard {
    pub(crate) node: Arc<NodeHandle>,
    pub(crate) core: Arc<SessionCore>,
    halves: Mutex<Halves>,
}

#[derive(Debug)]
struct Halves {
    tx: bool,
    rx: bool,
    split: bool,
}

/// What a half's drop must send.
#[derive(Debug, PartialEq, Eq)]
enum Leave {
    /// The other half lives on and only this direction ends: `FIN` (from the sending half).
    HalfClose,
    /// The other half lives on: nothing yet.
    Stay,
    /// The last half: `CLOSE`.
    Close,
}

impl EndGuard {
    fn halves(&self) -> std::sync::MutexGuard<'_, Halves> {
        self.halves.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leave(&self, tx: bool) -> Leave {
        self.halves().leave(tx)
    }
}

impl Halves {
    /// The sending (`tx`) or receiving half drops: what it must send.
    fn leave(&mut self, tx: bool) -> Leave {
        if tx {
            self.tx = false;
        } else {
            self.rx = false;
        }
        match (self.tx || self.rx, tx && self.split) {
            (false, _) => Leave::Close,
            (true, true) => Leave::HalfClose,
            (true, false) => Leave::Stay,
        }
    }
}

/// The sending half's hold on its end. Dropped: a `FIN` if the receiving half was split
/// off and lives on (unless the sink finished or the session is over), a `CLOSE` if it
/// was the last half.
#[derive(Debug)]
pub(crate) struct TxHandle {
    pub(crate) guard: Arc<EndGuard>,
    /// A `FIN` went out already (`poll_close`).
    pub(crate) finished: bool,
}

impl Drop for TxHandle {
    fn drop(&mut self) {
        let guard = &self.guard;
        match guard.leave(true) {
            Leave::Close => guard.node.shared.close_end(guard.core.end),
            Leave::HalfClose if !self.finished && guard.core.send_error().is_none() => {
                let fin = ipc_core::RawDescriptor::control(ipc_core::kind::FIN, guard.core.end, 0);
                guard.node.shared.submit_now(fin);
            }
            Leave::HalfClose | Leave::Stay => {}
        }
    }
}

/// The receiving half's hold on its end. Dropped: a `CLOSE` if it was the last half.
#[derive(Debug)]
pub(crate) struct RxHandle {
    pub(crate) guard: Arc<EndGuard>,
}

impl Drop for RxHandle {
    fn drop(&mut self) {
        if self.guard.leave(false) == Leave::Close {
            self.guard.node.shared.close_end(self.guard.core.end);
        }
    }
}

/// A session: both directions of a channel to one peer, carrying `T` encoded with `C`.
pub struct Session<T = Bytes, C = Bincode> {
    stream: SessionStream<T, C>,
    sink: SessionSink<T, C>,
}

impl<T, C> fmt::Debug for Session<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sink", &self.sink)
            .field("stream", &self.stream)
            .finish()
    }
}

impl<T: Payload<C>, C> Session<T, C> {
    pub(crate) fn new(node: Arc<NodeHandle>, core: Arc<SessionCore>) -> Self {
        let guard = Arc::new(EndGuard {
            node,
            core,
            halves: Mutex::new(Halves {
                tx: true,
                rx: true,
                split: false,
            }),
        });
        Self {
            sink: SessionSink::new(TxHandle {
                guard: guard.clone(),
                finished: false,
            }),
            stream: SessionStream::new(RxHandle { guard }),
        }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        self.sink.peer()
    }

    /// Splits into a sending and a receiving half; the session closes when both are dropped.
    pub fn split(self) -> (SessionSink<T, C>, SessionStream<T, C>) {
        self.sink.tx.guard.halves().split = true;
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
    pub async fn loan(&mut self, len: usize) -> Result<Loan, SessionError> {
        self.sink.loan(len).await
    }

    /// The largest payload this session carries.
    pub fn max_payload(&self) -> u64 {
        self.sink.max_payload()
    }

    /// Borrows the sending half.
    pub fn sink(&mut self) -> &mut SessionSink<T, C> {
        &mut self.sink
    }

    /// Borrows the receiving half.
    pub fn stream(&mut self) -> &mut SessionStream<T, C> {
        &mut self.stream
    }
}

impl<T: Payload<C>, C> futures::Stream for Session<T, C> {
    type Item = Result<T, SessionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<T, C, I> futures::Sink<I> for Session<T, C>
where
    T: Payload<C>,
    SessionSink<T, C>: futures::Sink<I, Error = SessionError>,
{
    type Error = SessionError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink<T, C> as futures::Sink<I>>::poll_ready(Pin::new(&mut self.sink), cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: I) -> Result<(), SessionError> {
        Pin::new(&mut self.sink).start_send(item)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink<T, C> as futures::Sink<I>>::poll_flush(Pin::new(&mut self.sink), cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        <SessionSink<T, C> as futures::Sink<I>>::poll_close(Pin::new(&mut self.sink), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{Halves, Leave};

    fn halves(split: bool) -> Halves {
        Halves {
            tx: true,
            rx: true,
            split,
        }
    }

    #[test]
    fn an_unsplit_session_closes_once_whatever_drops_first() {
        for tx_first in [true, false] {
            let mut h = halves(false);
            assert_eq!(h.leave(tx_first), Leave::Stay);
            assert_eq!(h.leave(!tx_first), Leave::Close);
        }
    }

    #[test]
    fn a_split_sink_dropped_first_half_closes() {
        let mut h = halves(true);
        assert_eq!(h.leave(true), Leave::HalfClose);
        assert_eq!(h.leave(false), Leave::Close);
        let mut h = halves(true);
        assert_eq!(h.leave(false), Leave::Stay);
        assert_eq!(h.leave(true), Leave::Close);
    }
}
