//! The receiving half: `Stream<Item = Result<Bytes, SessionError>>`, zero-copy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use ipc_core::RxView;

use crate::error::SessionError;
use crate::node::NodeShared;
use crate::session::EndGuard;

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
        self.node.release(self.view.offset());
    }
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct SessionStream {
    guard: Arc<EndGuard>,
}

impl SessionStream {
    pub(crate) fn new(guard: Arc<EndGuard>) -> Self {
        Self { guard }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        &self.guard.core.peer
    }

    /// The next payload as the raw view (for typed decoding without a `Bytes`).
    pub(crate) fn poll_next_bytes(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, SessionError>>> {
        self.guard.core.poll_recv(cx).map(|item| {
            item.map(|result| {
                result.map(|view| {
                    Bytes::from_owner(Lease {
                        view,
                        node: self.guard.node.shared.clone(),
                    })
                })
            })
        })
    }
}

impl futures::Stream for SessionStream {
    type Item = Result<Bytes, SessionError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_bytes(cx)
    }
}
