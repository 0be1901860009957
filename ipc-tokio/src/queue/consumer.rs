//! [`Consumer`]: a `Stream` of a queue's [`Delivery`]s, each settled once.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use ipc_core::{RxView, kind};
use tokio::sync::oneshot;

use super::{AckError, ConsumeError, ack_error, push};
use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::{NodeHandle, NodeShared};
use crate::session::Payload;

/// A delivery the driver received and the stream has not yielded yet.
#[derive(Debug)]
struct Incoming {
    view: RxView,
    tag: u64,
    count: u32,
    redelivered: bool,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Incoming>,
    waker: Option<Waker>,
    /// Dropped by its owner: no more settlements are sent (the engine returns everything).
    cancelled: bool,
    /// The node lost its engine.
    dead: bool,
    reported: bool,
    /// Settlements waiting for the engine's answer, by tag.
    waiters: HashMap<u64, oneshot::Sender<u32>>,
}

/// A consumer's state, shared by its stream, its deliveries and the node's driver.
#[derive(Debug, Default)]
pub(crate) struct ConsumerCore {
    id: AtomicU32,
    inner: Mutex<Inner>,
}

impl ConsumerCore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_id(&self, id: u32) {
        self.id.store(id, Ordering::Release);
    }

    fn id(&self) -> u32 {
        self.id.load(Ordering::Acquire)
    }

    /// A delivery arrived. False: the consumer is gone (release it; the engine requeues).
    pub(crate) fn push(&self, view: RxView, tag: u64, count: u32, redelivered: bool) -> bool {
        let mut inner = self.lock();
        if inner.cancelled || inner.dead {
            return false;
        }
        inner.queue.push_back(Incoming {
            view,
            tag,
            count,
            redelivered,
        });
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
        true
    }

    /// The engine answered a settlement of `tag`.
    pub(crate) fn settled(&self, tag: u64, outcome: u32) {
        if let Some(tx) = self.lock().waiters.remove(&tag) {
            let _ = tx.send(outcome);
        }
    }

    pub(crate) fn disconnect(&self) {
        let mut inner = self.lock();
        inner.dead = true;
        inner.waiters.clear();
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Sends a settlement of `tag` (pushed now, under the lock that a cancel takes too, so
    /// it never follows its consumer's cancel on the ring); `wait` registers for the answer.
    fn settle(
        &self,
        shared: &NodeShared,
        tag: u64,
        kind: u16,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<u32>>, AckError> {
        let mut inner = self.lock();
        if inner.dead || shared.is_dead() {
            return Err(AckError::Disconnected);
        }
        if inner.cancelled {
            return Err(AckError::NotHeld);
        }
        let rx = wait.then(|| {
            let (tx, rx) = oneshot::channel();
            inner.waiters.insert(tag, tx);
            rx
        });
        push(shared, kind, self.id(), tag);
        Ok(rx)
    }
}

/// Ends a consumer: the engine returns what it held to the queue and answers `QUEUE_ENDED`.
pub(crate) fn cancel(shared: &NodeShared, core: &ConsumerCore) {
    let unread = {
        let mut inner = core.lock();
        if inner.cancelled {
            return;
        }
        inner.cancelled = true;
        inner.waiters.clear();
        if !inner.dead {
            push(shared, kind::QUEUE_CANCEL, core.id(), 0);
        }
        std::mem::take(&mut inner.queue)
    };
    for incoming in unread {
        shared.release(incoming.view.offset());
    }
}

/// Keeps a delivery's receive sub-block until the last `Bytes` clone drops.
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

/// A consumer of a queue: a `Stream` of [`Delivery`]s (`StreamExt::next`).
///
/// It holds at most its prefetch of unsettled deliveries; the engine sends more as they are
/// settled. Dropping it ends it: every delivery it still holds unsettled goes back to the
/// head of the queue (settling one afterwards gives [`AckError::NotHeld`]).
pub struct Consumer<T = Bytes, C = Bincode> {
    node: Arc<NodeHandle>,
    core: Arc<ConsumerCore>,
    queue: String,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T, C> fmt::Debug for Consumer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.core.id())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<T, C> Consumer<T, C> {
    pub(crate) fn new(node: Arc<NodeHandle>, core: Arc<ConsumerCore>, queue: String) -> Self {
        Self {
            node,
            core,
            queue,
            _types: PhantomData,
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

impl<T: Payload<C>, C> futures::Stream for Consumer<T, C> {
    type Item = Result<Delivery<T>, ConsumeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let incoming = {
            let mut inner = this.core.lock();
            match inner.queue.pop_front() {
                Some(incoming) => incoming,
                None if inner.dead && !inner.reported => {
                    inner.reported = true;
                    return Poll::Ready(Some(Err(ConsumeError::Disconnected)));
                }
                None if inner.dead || inner.cancelled => return Poll::Ready(None),
                None => {
                    inner.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        let shared = &this.node.shared;
        let bytes = Bytes::from_owner(Lease {
            view: incoming.view,
            node: shared.clone(),
        });
        match T::decode(bytes) {
            Ok(message) => Poll::Ready(Some(Ok(Delivery {
                message,
                tag: incoming.tag,
                count: incoming.count,
                redelivered: incoming.redelivered,
                core: this.core.clone(),
                node: this.node.clone(),
                settled: false,
            }))),
            Err(e) => {
                // It can never be read as `T`: to the dead-letter queue, not round and round.
                let _ = this
                    .core
                    .settle(shared, incoming.tag, kind::QUEUE_REJECT, false);
                let e = match e {
                    SessionError::Codec(c) => ConsumeError::Codec(c),
                    _ => ConsumeError::Disconnected,
                };
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl<T, C> Drop for Consumer<T, C> {
    fn drop(&mut self) {
        cancel(&self.node.shared, &self.core);
    }
}

/// One message from a queue, held by this consumer until it is settled: [`ack`](Self::ack)
/// (done), [`nack`](Self::nack) (back to the queue's head), [`reject`](Self::reject) (to the
/// dead-letter queue). Dropping it unsettled nacks it. It derefs to the message.
pub struct Delivery<T> {
    message: T,
    tag: u64,
    count: u32,
    redelivered: bool,
    core: Arc<ConsumerCore>,
    node: Arc<NodeHandle>,
    settled: bool,
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("tag", &self.tag)
            .field("count", &self.count)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl<T> Deref for Delivery<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.message
    }
}

impl<T> Delivery<T> {
    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Whether it was delivered before (to this or another consumer, or before the engine
    /// restarted): its work may have been done already.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times it has been delivered, this time included.
    pub fn delivery_count(&self) -> u32 {
        self.count
    }

    /// Acknowledges it: the queue forgets it (for a durable queue, once on disk). The entry
    /// goes to the engine now; the returned [`Settle`] resolves with the engine's answer and
    /// may be dropped to not wait for it.
    pub fn ack(self) -> Settle {
        self.settle(kind::QUEUE_ACK)
    }

    /// Gives it back to the head of the queue (it counts as a delivery).
    pub fn nack(self) -> Settle {
        self.settle(kind::QUEUE_NACK)
    }

    /// Sends it to the queue's dead-letter queue (or drops it, if the queue has none).
    pub fn reject(self) -> Settle {
        self.settle(kind::QUEUE_REJECT)
    }

    /// Renews its lease: it stays with this consumer for another lease from now.
    ///
    /// # Errors
    ///
    /// [`AckError::NotHeld`] if the lease had expired already (it went back to the queue).
    pub async fn extend_lease(&self) -> Result<(), AckError> {
        let rx = self
            .core
            .settle(&self.node.shared, self.tag, kind::QUEUE_EXTEND, true)?;
        Settle {
            rx: rx.map(Ok).unwrap_or(Err(AckError::NotHeld)),
        }
        .await
    }

    fn settle(mut self, kind: u16) -> Settle {
        self.settled = true;
        let rx = self.core.settle(&self.node.shared, self.tag, kind, true);
        Settle {
            rx: rx.and_then(|rx| rx.ok_or(AckError::NotHeld)),
        }
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self
                .core
                .settle(&self.node.shared, self.tag, kind::QUEUE_NACK, false);
        }
    }
}

/// The engine's answer to a settlement: `Ok` once it took (for a durable queue, once the
/// change is on disk). Dropping it does not undo the settlement, which is already sent.
#[derive(Debug)]
pub struct Settle {
    rx: Result<oneshot::Receiver<u32>, AckError>,
}

impl Future for Settle {
    type Output = Result<(), AckError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().rx {
            Err(e) => Poll::Ready(Err(*e)),
            Ok(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.map_err(|_| AckError::Disconnected).and_then(ack_error)),
        }
    }
}
