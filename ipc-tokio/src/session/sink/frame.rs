//! Frames and batches: packing small messages as records of the open frame, taking their
//! window share, and adding loans to the batch the next push sends.

use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use ipc_core::frame::{RECORD_HEADER, reserve_record, set_record_len};
use ipc_core::window_charge;

use super::{BATCH_BYTES, Loan, MIN_FRAME, SUBMIT_BATCH, SessionSink};
use crate::error::SessionError;
use crate::node::{Batch, OpenFrame, lock_batch};
use crate::session::{Payload, Permit};

impl<T: Payload<C>, C> SessionSink<T, C> {
    /// Whether a message of `len` bytes goes into a frame: frames are on, it is small enough,
    /// and a frame is open, or one is worth opening: no flush asks for this message and
    /// another was fed since the last flush (the first after a flush goes alone, as does one
    /// a flush finds with no frame open).
    pub(super) fn framed(&self, len: usize, flush: bool) -> bool {
        let cap = self.frame_size();
        cap > 0
            && len.saturating_add(RECORD_HEADER as usize) <= cap / 4
            && ((!flush && self.fed) || lock_batch(&self.batch).frame.is_some())
    }

    /// Ready once the open frame has room for a record of `len` bytes: a full frame is sealed
    /// (joining the batch) and a new one loaned (`Pending` while the arena is full).
    pub(super) fn poll_frame_room(
        &mut self,
        len: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        let need = len + RECORD_HEADER as usize;
        let cap = self.batch_cap();
        let max_records = (self.tx.guard.core.window().0 / 4).max(1);
        {
            let mut batch = lock_batch(&self.batch);
            if let Some(frame) = &batch.frame
                && frame.buf.len() - frame.used >= need
                && frame.records < max_records
            {
                return Poll::Ready(Ok(()));
            }
            batch.seal();
            self.batch_full = is_full(&batch, cap);
        }
        let loan = ready!(self.poll_loan(self.frame_size().max(need), cx))?;
        // A frame is at most a 64th of the arena: never a hand-off segment.
        let Some(buf) = loan.into_arena() else {
            return Poll::Ready(Err(SessionError::Segment(
                "a frame cannot live in a hand-off segment".into(),
            )));
        };
        let end = self.tx.guard.core.end;
        let first = {
            let mut batch = lock_batch(&self.batch);
            // poll_loan may have pushed the batch (sealing nothing: the frame was sealed above).
            batch.seal();
            batch.frame = Some(OpenFrame {
                buf,
                used: 0,
                records: 0,
            });
            !std::mem::replace(&mut batch.listed, true)
        };
        if first {
            // Listed: from now on a full arena seals and pushes the frame.
            self.tx.guard.node.shared.list_unflushed(end, &self.batch);
        }
        Poll::Ready(Ok(()))
    }

    /// Encodes `item` as a record of the open frame (which has room for it); its permit's
    /// message and the record's bytes go in flight with the frame.
    pub(super) fn add_record(
        &mut self,
        item: &T,
        len: usize,
        permit: Permit,
    ) -> Result<(), SessionError> {
        self.add_record_with(len, permit, |buf| item.encode_into(buf))
    }

    /// Feeds a message of at most `len` bytes that `write` encodes in place (returning the
    /// bytes it wrote): into the open frame if it is small, else into a loan of its own. Like
    /// `SinkExt::feed`, it is not flushed; what was fed before goes first.
    pub(crate) async fn feed_with(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<usize, SessionError>,
    ) -> Result<(), SessionError> {
        let len32 = self.check_len(len)?;
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        let mut permit = self.reserved.take().ok_or(SessionError::NotReady)?;
        if !self.framed(len, false) {
            let mut loan = self.loan(len).await?;
            let written = write(&mut loan)?;
            loan.truncate(written);
            let charge = window_charge(len32, self.min_block());
            poll_fn(|cx| self.poll_bytes_or_push(&mut permit, charge, cx)).await?;
            self.add_to_batch(loan, permit);
            self.fed = true;
            return Ok(());
        }
        let charge = (len + RECORD_HEADER as usize) as u64;
        poll_fn(|cx| self.poll_bytes_or_push(&mut permit, charge, cx)).await?;
        poll_fn(|cx| self.poll_frame_room(len, cx)).await?;
        self.add_record_with(len, permit, write)?;
        self.fed = true;
        if self.batch_full {
            poll_fn(|cx| self.poll_submit_batch(cx, false)).await?;
        }
        Ok(())
    }

    /// Takes `charge` bytes of the window for `permit`; before it waits, pushes the batch
    /// (sealing the open frame): the peer returns the window only for what it received.
    fn poll_bytes_or_push(
        &mut self,
        permit: &mut Permit,
        charge: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        match permit.poll_bytes(charge, cx) {
            Poll::Pending => {
                if let Poll::Ready(Err(e)) = self.poll_submit_batch(cx, true) {
                    return Poll::Ready(Err(e));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    /// Writes a record of at most `len` bytes with `write` into the open frame (which has room
    /// for it); the permit's message and the record's bytes go in flight with the frame.
    fn add_record_with(
        &mut self,
        len: usize,
        permit: Permit,
        write: impl FnOnce(&mut [u8]) -> Result<usize, SessionError>,
    ) -> Result<(), SessionError> {
        let mut batch = lock_batch(&self.batch);
        let frame = batch
            .frame
            .as_mut()
            .expect("poll_frame_room opened a frame");
        let range =
            reserve_record(&mut frame.buf, frame.used, len).expect("poll_frame_room made room");
        // An error leaves the frame as it was: the record is not counted, and the permit drops,
        // giving its window share back.
        let written = write(&mut frame.buf[range.clone()])?;
        assert!(written <= len, "a record wrote more than it reserved");
        let written32 = u32::try_from(written).expect("no longer than reserved");
        set_record_len(&mut frame.buf, range.start, written32);
        frame.used = range.start + written;
        frame.records += 1;
        permit.consume(u64::from(written32) + u64::from(RECORD_HEADER));
        // A batch goes when it holds 32 messages, whether in frames or alone (the open frame
        // included): at most that many wait unpushed behind a sink that only feeds.
        let unpushed = frame.records as usize;
        if batch.messages + unpushed >= SUBMIT_BATCH {
            batch.seal();
            self.batch_full = true;
        }
        Ok(())
    }
}

impl<T, C> SessionSink<T, C> {
    /// Sets the size of the frames this sink packs small messages into (0 turns frames off:
    /// every message then takes a sub-block of its own). The size in effect is at most a 64th
    /// of the node's transmit arena and a quarter of the session's window in bytes; a message
    /// goes into a frame when it takes at most a quarter of that. A frame also holds at most
    /// a quarter of the window's messages: a receiver that keeps one record keeps its whole
    /// frame, and so that much of the window, until it drops it. Takes effect from the next
    /// frame.
    pub fn set_frame_size(&mut self, bytes: usize) {
        self.frame_size = bytes;
    }

    /// The size of the frames this sink packs small messages into, in effect (0: none).
    pub fn frame_size(&self) -> usize {
        let shared = &self.tx.guard.node.shared;
        let cap = (self.frame_size as u64)
            .min(shared.tx.capacity() / 64)
            .min(self.tx.guard.core.window().1 / 4);
        match usize::try_from(cap) {
            Ok(cap) if cap >= MIN_FRAME => cap,
            _ => 0,
        }
    }

    pub(super) fn min_block(&self) -> u64 {
        self.tx.guard.node.shared.block.layout().tx.min_block
    }

    /// The window share of a payload of `len` bytes (loans are never longer than a `u32`).
    pub(super) fn charge(&self, len: usize) -> u64 {
        window_charge(u32::try_from(len).unwrap_or(u32::MAX), self.min_block())
    }

    /// Hands `loan` over: its descriptor joins the batch (after the open frame, sealed
    /// first), and its permit the bytes in flight.
    pub(super) fn add_to_batch(&mut self, loan: Loan, permit: Permit) {
        let end = self.tx.guard.core.end;
        let entry = loan.submit(end);
        permit.consume(window_charge(entry.len, self.min_block()));
        let cap = self.batch_cap();
        let first = {
            let mut batch = lock_batch(&self.batch);
            batch.seal();
            batch.entries.push(entry);
            batch.bytes += u64::from(entry.len);
            batch.messages += 1;
            self.batch_full = is_full(&batch, cap);
            !std::mem::replace(&mut batch.listed, true)
        };
        if first {
            // Listed before this poll returns: from now on a full arena pushes it.
            self.tx.guard.node.shared.list_unflushed(end, &self.batch);
        }
    }

    /// Payload bytes a batch gathers before it is pushed.
    fn batch_cap(&self) -> u64 {
        BATCH_BYTES.min(self.tx.guard.node.shared.tx.capacity() / 64)
    }
}

/// Whether `batch` reached its size (`cap` bytes, or its count of entries): the next push
/// sends it.
fn is_full(batch: &Batch, cap: u64) -> bool {
    batch.entries.len() >= SUBMIT_BATCH || batch.messages >= SUBMIT_BATCH || batch.bytes >= cap
}
