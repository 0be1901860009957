//! [`Producer`]: a `Sink` of a queue's messages whose flush resolves at the engine's confirm.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use ipc_core::descriptor::queue_outcome;
use ipc_core::{AllocError, RawDescriptor, TxBuf, kind};

use super::{ProduceError, push};
use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::{NodeHandle, NodeShared, WaitList};
use crate::session::Payload;

/// Messages a producer may have sent and not yet had confirmed: bounds what the engine
/// holds back for it when its queue is full, and what its flush waits for.
pub const MAX_UNCONFIRMED: u64 = 1024;

#[derive(Debug, Default)]
struct Counts {
    /// Sent, not yet answered.
    outstanding: u64,
    /// Refused because the queue was full, since the last flush.
    full: u64,
    /// Not committed by the store, since the last flush.
    store: u64,
    dead: bool,
}

/// A producer's state, shared with the node's driver (which counts confirms).
#[derive(Debug, Default)]
pub(crate) struct ProducerCore {
    id: AtomicU32,
    counts: Mutex<Counts>,
    waiters: WaitList,
}

impl ProducerCore {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_id(&self, id: u32) {
        self.id.store(id, Ordering::Release);
    }

    fn id(&self) -> u32 {
        self.id.load(Ordering::Acquire)
    }

    /// `count` messages were answered with `outcome`.
    pub(crate) fn confirm(&self, count: u64, outcome: u32) {
        {
            let mut counts = self.lock();
            counts.outstanding = counts.outstanding.saturating_sub(count);
            match outcome {
                queue_outcome::OK => {}
                queue_outcome::STORE_FAILED => counts.store += count,
                _ => counts.full += count,
            }
        }
        self.waiters.wake_all();
    }

    pub(crate) fn disconnect(&self) {
        self.lock().dead = true;
        self.waiters.wake_all();
    }
}

/// Ends a producer the engine set up for a request nobody waits for any more.
pub(crate) fn cancel(shared: &NodeShared, core: &ProducerCore) {
    shared.state().queues.remove_producer(core.id());
    push(shared, kind::QUEUE_CANCEL, core.id(), 0);
}

/// Where the message being sent stands.
enum Stage<T> {
    /// Not yet encoded (waiting for a loan of the transmit arena).
    Item(T),
    /// Encoded into the transmit arena; its entry waits for room in the submit ring.
    Entry(RawDescriptor),
}

/// A producer of a queue: a `Sink<T>` (`send`, `feed`, `flush` from `SinkExt`).
///
/// A message is encoded into this node's transmit arena and named on its submit ring; the
/// engine copies it into its own memory and confirms it (for a durable queue, after the
/// commit that put it on disk). `send` and `flush` resolve when every message sent so far
/// is confirmed, with [`ProduceError::Full`] or [`ProduceError::Store`] if some were refused;
/// `poll_ready` pends while [`MAX_UNCONFIRMED`] messages wait for their confirm, which is how
/// a full queue that waits holds its producers back. Dropping the producer ends it after the
/// messages already sent.
pub struct Producer<T, C = Bincode> {
    node: Arc<NodeHandle>,
    core: Arc<ProducerCore>,
    queue: String,
    stage: Option<Stage<T>>,
    _codec: PhantomData<fn() -> C>,
}

// The pending item is only ever moved, never pinned.
impl<T, C> Unpin for Producer<T, C> {}

impl<T, C> fmt::Debug for Producer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("id", &self.core.id())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<T, C> Producer<T, C> {
    pub(crate) fn new(node: Arc<NodeHandle>, core: Arc<ProducerCore>, queue: String) -> Self {
        Self {
            node,
            core,
            queue,
            stage: None,
            _codec: PhantomData,
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Messages sent and not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        self.core.lock().outstanding
    }

    /// The largest message this producer can send.
    pub fn max_message(&self) -> u64 {
        self.node.shared.max_payload
    }
}

fn codec_error(e: SessionError) -> ProduceError {
    match e {
        SessionError::Codec(c) => ProduceError::Codec(c),
        SessionError::TooLarge { len, max } => ProduceError::TooLarge { len, max },
        _ => ProduceError::Disconnected,
    }
}

impl<T: Payload<C>, C> Producer<T, C> {
    /// A loan of `len` bytes, or `Pending` (woken by a `TX_DONE`).
    fn poll_loan(&self, len: usize, cx: &mut Context<'_>) -> Poll<Result<TxBuf, ProduceError>> {
        let shared = &self.node.shared;
        let max = self.max_message();
        let too_large = || ProduceError::TooLarge {
            len: len as u64,
            max,
        };
        let len32 = match u32::try_from(len) {
            Ok(l) if u64::from(l) <= max => l,
            _ => return Poll::Ready(Err(too_large())),
        };
        let mut registered = false;
        loop {
            if shared.is_dead() {
                return Poll::Ready(Err(ProduceError::Disconnected));
            }
            match shared.tx.alloc(len32) {
                Ok(buf) => return Poll::Ready(Ok(buf)),
                Err(AllocError::Full { .. }) if !registered => {
                    shared.tx_waiters.register(cx.waker());
                    registered = true;
                }
                Err(AllocError::Full { .. }) => return Poll::Pending,
                Err(_) => return Poll::Ready(Err(too_large())),
            }
        }
    }

    /// Moves the staged message through its loan onto the submit ring.
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        loop {
            match self.stage.take() {
                None => return Poll::Ready(Ok(())),
                Some(Stage::Item(item)) => {
                    let len = item.encoded_len().map_err(codec_error)?;
                    let mut buf = match self.poll_loan(len, cx) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => {
                            self.stage = Some(Stage::Item(item));
                            return Poll::Pending;
                        }
                    };
                    let written = item.encode_into(&mut buf).map_err(codec_error)?;
                    buf.truncate(written);
                    let sent = buf.submit();
                    // Counted before the entry can reach the engine, so its confirm never
                    // arrives first.
                    self.core.lock().outstanding += 1;
                    self.stage = Some(Stage::Entry(RawDescriptor::data(
                        self.core.id(),
                        sent.offset,
                        sent.len,
                    )));
                }
                Some(Stage::Entry(entry)) => match self.node.shared.poll_submit(entry, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(ProduceError::Disconnected)),
                    Poll::Pending => {
                        self.stage = Some(Stage::Entry(entry));
                        return Poll::Pending;
                    }
                },
            }
        }
    }

    /// Waits until fewer than `limit` messages are unconfirmed; reports refusals.
    fn poll_confirms(&self, limit: u64, cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        let mut registered = false;
        loop {
            {
                let mut counts = self.core.lock();
                if counts.full > 0 {
                    return Poll::Ready(Err(ProduceError::Full(std::mem::take(&mut counts.full))));
                }
                if counts.store > 0 {
                    let n = std::mem::take(&mut counts.store);
                    return Poll::Ready(Err(ProduceError::Store(n)));
                }
                if counts.outstanding < limit {
                    return Poll::Ready(Ok(()));
                }
                if counts.dead || self.node.shared.is_dead() {
                    return Poll::Ready(Err(ProduceError::Disconnected));
                }
            }
            if registered {
                return Poll::Pending;
            }
            // Register, then look again: a confirm between the two wakes us.
            self.core.waiters.register(cx.waker());
            registered = true;
        }
    }
}

impl<T: Payload<C>, C> futures::Sink<T> for Producer<T, C> {
    type Error = ProduceError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_stage(cx))?;
        this.poll_confirms(MAX_UNCONFIRMED, cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), ProduceError> {
        let this = self.get_mut();
        if this.stage.is_some() {
            return Err(ProduceError::NotReady);
        }
        this.stage = Some(Stage::Item(item));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_stage(cx))?;
        this.poll_confirms(1, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        self.poll_flush(cx)
    }
}

impl<T, C> Drop for Producer<T, C> {
    fn drop(&mut self) {
        let shared = &self.node.shared;
        if let Some(Stage::Entry(entry)) = self.stage.take() {
            // Encoded already: goes without waiting.
            shared.submit_now(entry);
        }
        cancel(shared, &self.core);
    }
}
