//! The node's rings from the sessions' side: pushing submit and release entries (queued in
//! an overflow when a ring is full, pushed when the doorbell rings), loaning transmit-arena
//! memory, and the unflushed batches a full arena pushes.

use std::sync::{Mutex, TryLockError};
use std::task::{Context, Poll};

use ipc_core::{AllocError, RawDescriptor, TxBuf, kind};

use super::{LoanError, NodeShared, RingSide, SharedBatch};
use crate::error::SessionError;

impl NodeShared {
    /// Pushes `entry` on the submit ring, or registers `cx` to be woken when there is room.
    pub(crate) fn poll_submit(
        &self,
        entry: RawDescriptor,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        self.poll_submit_batch(&mut vec![entry], cx)
    }

    /// Pushes `batch` on the submit ring, removing what it pushed (one lock, one fence, at most
    /// one doorbell for all of it); registers `cx` to be woken when there is room for the rest.
    pub(crate) fn poll_submit_batch(
        &self,
        batch: &mut Vec<RawDescriptor>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        let mut side = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !side.overflow.is_empty() {
                // Closes queued by a Drop go first, to keep the order the node produced.
                Self::flush_overflow(&mut side);
            }
            if side.overflow.is_empty() {
                let Ok(pushed) = side.producer.push_batch(batch) else {
                    return Poll::Ready(Err(SessionError::Disconnected));
                };
                if pushed > 0 {
                    batch.drain(..pushed);
                    if side.producer.needs_wake() {
                        self.ring_engine();
                    }
                }
                if batch.is_empty() {
                    drop(side);
                    if !self.spin.is_zero() {
                        // An answer may follow: have the driver poll for it.
                        self.kick.notify_one();
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            self.ring_waiters.register(cx.waker());
            // Registered first: a driver that dies from now on wakes this task.
            if self.is_dead() {
                return Poll::Ready(Err(SessionError::Disconnected));
            }
            match side.producer.prepare_wait_space() {
                Ok(true) => return Poll::Pending,
                Ok(false) => continue,
                Err(_) => return Poll::Ready(Err(SessionError::Disconnected)),
            }
        }
    }

    /// A loan of `len` bytes of the transmit arena, or `Pending` (woken by a `TX_DONE`).
    ///
    /// No trap on unflushed data: when the arena is full, the batches other sinks of this node
    /// were fed and not told to flush are pushed to the engine first (their `TX_DONE`s free
    /// the room this loan waits for). The fast path, an allocation that succeeds, costs nothing
    /// more.
    pub(crate) fn poll_loan(
        &self,
        len: u32,
        cx: &mut Context<'_>,
    ) -> Poll<Result<TxBuf, LoanError>> {
        let mut registered = false;
        loop {
            if self.is_dead() {
                return Poll::Ready(Err(LoanError::Disconnected));
            }
            match self.tx.alloc(len) {
                Ok(buf) => return Poll::Ready(Ok(buf)),
                Err(AllocError::Full { .. }) if !registered => {
                    // Register, then retry once: a TX_DONE between the two wakes us.
                    self.tx_waiters.register(cx.waker());
                    registered = true;
                    self.push_unflushed();
                }
                Err(AllocError::Full { .. }) => return Poll::Pending,
                Err(_) => return Poll::Ready(Err(LoanError::TooLarge)),
            }
        }
    }

    /// Lists `batch` (the sink of session end `end`) as holding entries, once until the node
    /// next pushes or sweeps it. The caller has set its `listed` flag and released its lock.
    pub(crate) fn list_unflushed(&self, end: u32, batch: &SharedBatch) {
        self.unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(end, batch.clone());
    }

    /// Forgets the batch of session end `end` (its sink is gone).
    pub(crate) fn unlist(&self, end: u32) {
        self.unflushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&end);
    }

    /// The transmit arena is full: pushes every listed batch whose owner is not at work on it
    /// right now (one that is pushes it itself before it waits), in its own order and after
    /// everything queued before it, and empties the list of what it pushed or found empty.
    fn push_unflushed(&self) {
        let mut list = self.unflushed.lock().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return;
        }
        let mut pushed = false;
        list.retain(|_, batch| {
            let mut batch = match batch.try_lock() {
                Ok(batch) => batch,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                // Its sink is being polled: it pushes its batch before it waits.
                Err(TryLockError::WouldBlock) => return true,
            };
            // An open frame holds arena memory too: it goes now, with what it holds.
            batch.seal();
            if !batch.entries.is_empty() {
                let mut side = self.submit.lock().unwrap_or_else(|e| e.into_inner());
                let n = if side.overflow.is_empty() {
                    side.producer.push_batch(&batch.entries).unwrap_or(0)
                } else {
                    0
                };
                // What the ring has no room for waits in the overflow queue, which goes
                // before anything pushed later: the session's order holds.
                side.overflow.extend(batch.entries.drain(n..));
                batch.entries.clear();
                batch.bytes = 0;
                batch.messages = 0;
                if !side.overflow.is_empty() {
                    self.push_overflow(&mut side);
                } else if side.producer.needs_wake() {
                    self.ring_engine();
                }
                pushed = true;
            }
            batch.listed = false;
            false
        });
        drop(list);
        if pushed && !self.spin.is_zero() {
            self.kick.notify_one();
        }
    }

    /// Pushes `entry` without waiting: on a full ring it is queued and pushed as soon as the
    /// engine makes room (used from `Drop`, which cannot wait).
    pub(super) fn push_or_queue(&self, side: &Mutex<RingSide>, entry: RawDescriptor) {
        let mut side = side.lock().unwrap_or_else(|e| e.into_inner());
        if side.overflow.is_empty() && matches!(side.producer.push(entry), Ok(true)) {
            // The common case: room in the ring, nothing queued before it.
            if side.producer.needs_wake() {
                self.ring_engine();
            }
            return;
        }
        side.overflow.push_back(entry);
        self.push_overflow(&mut side);
    }

    /// Pushes what the queue holds; if some of it does not fit, arms the wait-for-space flag so
    /// the engine rings us when it frees slots (retrying if it freed some meanwhile: without
    /// that retry, or without re-arming after a partial flush, the rest would wait forever).
    fn push_overflow(&self, side: &mut RingSide) {
        loop {
            Self::flush_overflow(side);
            if side.overflow.is_empty() {
                break;
            }
            match side.producer.prepare_wait_space() {
                Ok(false) => continue,
                Ok(true) | Err(_) => break,
            }
        }
        if side.producer.needs_wake() {
            self.ring_engine();
        }
    }

    fn flush_overflow(side: &mut RingSide) {
        while let Some(&entry) = side.overflow.front() {
            match side.producer.push(entry) {
                Ok(true) => {
                    side.overflow.pop_front();
                }
                _ => break,
            }
        }
        if side.overflow.is_empty() {
            side.producer.woke_space();
        }
    }

    /// Pushes a release-ring entry without waiting (a topic slot's `TOPIC_RELEASE`).
    pub(crate) fn release_entry(&self, entry: RawDescriptor) {
        if !self.is_dead() {
            self.push_or_queue(&self.release, entry);
        }
    }

    /// Pushes a submit entry without waiting (from `Drop`); queued if the ring is full.
    pub(crate) fn submit_now(&self, entry: RawDescriptor) {
        if !self.is_dead() {
            self.push_or_queue(&self.submit, entry);
        }
    }

    /// Hands a receive sub-block back to the engine.
    pub(crate) fn release(&self, offset: u64) {
        self.push_or_queue(
            &self.release,
            RawDescriptor::offset_only(kind::RELEASE, offset),
        );
    }

    /// Hands a delivery's memory back to the engine: its receive sub-block, or its hand-off
    /// segment.
    pub(crate) fn release_view(&self, view: &ipc_core::RxView) {
        self.push_or_queue(&self.release, view.release_entry());
    }

    /// The node's doorbell rang: the engine may have made room in our rings.
    pub(crate) fn on_doorbell(&self) {
        for side in [&self.submit, &self.release] {
            let mut side = side.lock().unwrap_or_else(|e| e.into_inner());
            if !side.overflow.is_empty() {
                self.push_overflow(&mut side);
            }
        }
        self.ring_waiters.wake_all();
    }
}
