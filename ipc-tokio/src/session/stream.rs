//! The receiving half: `Stream<Item = Result<T, SessionError>>`, read in place.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use ipc_core::RxView;
use ipc_core::frame::Records;

use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::NodeShared;
use crate::session::{Payload, RxHandle};

/// Keeps a received payload's sub-block until the last `Bytes` clone drops, then releases it.
struct Lease {
    view: RxView,
    node: Arc<NodeShared>,
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.view.as_ref()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.node.release_view(&self.view);
    }
}

/// The receiving half of a session carrying `T` (decoded with `C`).
///
/// For byte sessions each item is a zero-copy `Bytes` into this node's receive arena; typed
/// items are decoded straight from it, and the sub-block is released right after.
///
/// A frame (several small messages the peer's sink packed into one sub-block) is split here:
/// each record is its own item, a `Bytes` slice of the frame, whose sub-block is released when
/// the last slice drops.
pub struct SessionStream<T = Bytes, C = Bincode> {
    rx: RxHandle,
    /// The frame being read, and where its next record starts.
    frame: Option<(Bytes, usize)>,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T, C> fmt::Debug for SessionStream<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStream")
            .field("session", &self.rx.guard.core.end)
            .finish()
    }
}

impl<T: Payload<C>, C> SessionStream<T, C> {
    pub(crate) fn new(rx: RxHandle) -> Self {
        Self {
            rx,
            frame: None,
            _types: PhantomData,
        }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        &self.rx.guard.core.peer
    }

    /// Resolves when the session is over: [`SessionError::Closed`] when the peer closed it,
    /// [`SessionError::Disconnected`] when the peer's process or the engine went away. Unlike
    /// the stream, which ends at the peer's half-close, this waits for the whole session.
    pub async fn closed(&self) -> SessionError {
        std::future::poll_fn(|cx| self.rx.guard.core.poll_ended(cx)).await
    }

    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, SessionError>>> {
        loop {
            if let Some(record) = self.next_record() {
                return Poll::Ready(Some(record));
            }
            let received = match std::task::ready!(self.rx.guard.core.poll_recv(cx)) {
                Some(Ok(received)) => received,
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            };
            let bytes = Bytes::from_owner(Lease {
                view: received.view,
                node: self.rx.guard.node.shared.clone(),
            });
            if !received.frame {
                return Poll::Ready(Some(Ok(bytes)));
            }
            self.frame = Some((bytes, 0));
        }
    }

    /// The next record of the frame being read, checked against the frame's end. A record
    /// that does not fit (the engine checked the frame, so only a sender that rewrote it after
    /// the check can cause this) ends the frame with [`SessionError::MalformedFrame`].
    fn next_record(&mut self) -> Option<Result<Bytes, SessionError>> {
        let (frame, at) = self.frame.as_mut()?;
        let mut records = Records::resume(frame, *at);
        let next = records.next();
        *at = records.position();
        match next {
            Some(Ok(range)) => Some(Ok(frame.slice(range))),
            Some(Err(e)) => {
                self.frame = None;
                Some(Err(SessionError::MalformedFrame(e)))
            }
            None => {
                // Dropping the frame's own handle: the last record slice releases it.
                self.frame = None;
                None
            }
        }
    }
}

impl<T: Payload<C>, C> futures::Stream for SessionStream<T, C> {
    type Item = Result<T, SessionError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_bytes(cx)
            .map(|item| item.map(|result| result.and_then(T::decode)))
    }
}
