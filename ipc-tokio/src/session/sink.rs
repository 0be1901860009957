//! The sending half: `Sink<T>` for the session's payload type (and, on byte sessions,
//! `Sink<Loan>` and `Sink<Vec<u8>>`).
//!
//! Like tokio-util's `PollSender`, the sink holds at most one item: `poll_ready` first moves
//! any pending item on, then reserves one message of the session's window (a [`Permit`]);
//! `start_send` stores the item with it. Moving it on means measuring it, taking its bytes of
//! the window (waiting for the peer to release earlier messages if needed), encoding it
//! straight into a loan (waiting for room in the transmit arena if needed) and adding its
//! descriptor to a small batch; the permit is then consumed into the bytes in flight. The
//! batch goes onto the submit ring as one push (one lock, one fence, at most one doorbell)
//! when it is full (32 payloads, or 64 KiB: batched loans hold transmit-arena memory the
//! node's other sinks may need) or on `poll_flush`, as `FramedWrite` buffers until a flush:
//! `send` flushes every message, while a producer that `feed`s many and flushes once pays the
//! ring's costs once per batch. A sink never waits for its window or for arena room with a batch unsent.
//!
//! No trap on unflushed data: the batch is shared with the node (a [`Batch`] behind a lock the
//! sink alone takes while it works), and a loan fed to a byte sink joins it at once when its
//! window allows. An allocation of any sink or publisher of the node that finds the transmit
//! arena full pushes the batches of the others (`NodeShared::poll_loan`): a task that fed sink
//! A and then waits for room on sink B, without flushing A, gets A's memory back.
//!
//! Frames: a message small enough (at most a quarter of the frame size, 64 KiB by default,
//! see [`SessionSink::set_frame_size`]) that is moved on while no flush asks for it, after
//! another message since the last flush, is not given a loan of its own (the first message
//! after a flush goes alone, so a send-then-flush round trip never pays for a frame of one): it is encoded as a length-prefixed record into the sink's open
//! frame, one loan that takes consecutive small messages until it is full or the sink pushes
//! (see `ipc_core::frame`). The engine copies, delivers and releases the frame as one, and the
//! receiving stream yields each record again. Each record still takes one message of the
//! window, and its bytes (its length and prefix), and a sealed frame its rounding up to its
//! size class (see `Batch::seal`); a frame is sealed before anything waits, so
//! the sender never waits on its own unflushed frame. A message sent alone (`send`, or the one
//! a flush finds with no frame open) and every [`Loan`] keep a sub-block of their own.
//!
//! Dropping the sink half-closes the session (the peer's stream ends), as dropping Tokio's
//! `OwnedWriteHalf` shuts down writing.

use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use ipc_core::control::Limit;
use ipc_core::frame::RECORD_HEADER;
use ipc_core::{RawDescriptor, SegmentWriter, TxBuf, kind, window_charge};
use tokio::sync::oneshot;

use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::{Batch, LoanError, NodeShared, Reply, SharedBatch, lock_batch};
use crate::session::{Payload, Permit, TxHandle};

mod frame;

/// A payload being written in place: in this node's transmit arena, or, for a large one of
/// a session, in a hand-off segment of its own (see [`SessionSink::loan`]). Send it with the
/// sink of a byte session (`Sink<Loan>`) or, for an arena loan, a byte topic's publisher
/// (`Sink<Loan>` of [`Publisher`](crate::Publisher)); dropping it unsent returns the memory.
#[derive(Debug)]
pub struct Loan {
    buf: LoanBuf,
}

#[derive(Debug)]
enum LoanBuf {
    Arena(TxBuf),
    Segment(SegmentLoan),
}

/// A hand-off segment the engine lent this node for one payload, mapped for writing.
pub(crate) struct SegmentLoan {
    /// `None` once submitted (unmapped, so the engine can seal it).
    writer: Option<SegmentWriter>,
    id: u32,
    len: usize,
    node: Arc<NodeShared>,
}

impl fmt::Debug for SegmentLoan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLoan")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl SegmentLoan {
    /// Unmaps it and returns its `DATA` entry for session end `end`. Truncated to nothing, it
    /// is an empty payload of the arenas, and the segment goes back unused.
    fn submit(mut self, end: u32) -> RawDescriptor {
        if self.len == 0 {
            return RawDescriptor::data(end, 0, 0);
        }
        self.writer = None;
        RawDescriptor::segment_data(end, self.id, self.len as u32)
    }
}

/// Gives back the segment of an answer nobody will take (a loan given up, or asked again
/// for another length), if the answer came already; one still to come is given back by the
/// driver when it finds nobody waiting.
fn forget_segment(node: &NodeShared, mut answer: oneshot::Receiver<Reply>) {
    if let Ok(Reply::Segment { segment, .. }) = answer.try_recv() {
        node.release_entry(RawDescriptor::segment_release(segment));
    }
}

impl Drop for SegmentLoan {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            // Never sent: the segment goes back to the engine unused.
            self.node
                .release_entry(RawDescriptor::segment_release(self.id));
        }
    }
}

impl Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.buf {
            LoanBuf::Arena(buf) => buf,
            LoanBuf::Segment(s) => s.writer.as_ref().map_or(&[], |w| &w[..s.len]),
        }
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            LoanBuf::Arena(buf) => buf,
            LoanBuf::Segment(s) => s.writer.as_mut().map_or(&mut [], |w| &mut w[..s.len]),
        }
    }
}

impl Loan {
    pub(crate) fn new(buf: TxBuf) -> Self {
        Self {
            buf: LoanBuf::Arena(buf),
        }
    }

    /// The transmit-arena loan, or `None` for a hand-off segment (which only a session of
    /// its node can send).
    pub(crate) fn into_arena(self) -> Option<TxBuf> {
        match self.buf {
            LoanBuf::Arena(buf) => Some(buf),
            LoanBuf::Segment(_) => None,
        }
    }

    /// Gives the payload up for its `DATA` entry on session end `end`.
    pub(crate) fn submit(self, end: u32) -> RawDescriptor {
        match self.buf {
            LoanBuf::Arena(buf) => {
                let sent = buf.submit();
                RawDescriptor::data(end, sent.offset, sent.len)
            }
            LoanBuf::Segment(segment) => segment.submit(end),
        }
    }

    /// Whether this node's session may send it (a loan of its arena, or a segment lent to it).
    fn is_of(&self, node: &Arc<NodeShared>) -> bool {
        match &self.buf {
            LoanBuf::Arena(buf) => buf.is_from(&node.tx),
            LoanBuf::Segment(s) => Arc::ptr_eq(&s.node, node),
        }
    }

    /// Shortens the payload to `len` bytes (the memory stays allocated until sent).
    ///
    /// # Panics
    ///
    /// If `len` exceeds the loan's length.
    pub fn truncate(&mut self, len: usize) {
        match &mut self.buf {
            LoanBuf::Arena(buf) => buf.truncate(len),
            LoanBuf::Segment(s) => {
                assert!(len <= s.len, "truncate({len}) of a loan of {} bytes", s.len);
                s.len = len;
            }
        }
    }
}

/// Descriptors, or messages (a frame counts its records, the open frame included), a sink
/// gathers before it pushes them onto the submit ring.
const SUBMIT_BATCH: usize = 32;

/// Payload bytes a sink gathers before it pushes them (at most a 64th of the arena).
const BATCH_BYTES: u64 = 64 << 10;

/// The largest payload a session carries: a descriptor's length is a `u32`.
pub const MAX_SESSION_PAYLOAD: u64 = u32::MAX as u64;

/// The default frame size (see [`SessionSink::set_frame_size`]).
pub const DEFAULT_FRAME_SIZE: usize = 64 << 10;

/// Frames smaller than this are not worth their loan: messages then go alone.
const MIN_FRAME: usize = 256;

/// The one item a sink holds between `start_send` and its move into the batch (with the
/// permit `poll_ready` reserved for it).
enum Pending<T> {
    /// Not yet encoded (waiting for a loan).
    Item(T),
    /// Encoded in place, not yet submitted.
    Loan(Loan),
}

/// The sending half of a session carrying `T` (encoded with `C`).
pub struct SessionSink<T = Bytes, C = Bincode> {
    pub(crate) tx: TxHandle,
    pending: Option<(Pending<T>, Permit)>,
    /// Loans handed over (their descriptors), not yet on the submit ring; shared with the node,
    /// which pushes it when its transmit arena is full. Always pushed, even once the session
    /// is over: the engine frees each (`TX_DONE`) instead of delivering it.
    batch: SharedBatch,
    /// The batch reached its size when last added to: the next push sends it.
    batch_full: bool,
    /// The window share `poll_ready` reserved for the next `start_send`.
    reserved: Option<Permit>,
    /// The configured frame size (0: no frames).
    frame_size: usize,
    /// A message was moved on since the last flush: the next small one opens a frame. The
    /// first after a flush goes alone, so a send-and-flush pattern (a round trip) never pays
    /// for a frame of one record.
    fed: bool,
    /// A hand-off segment asked of the engine for a payload of this many bytes, and its
    /// answer to come.
    segment: Option<(u32, oneshot::Receiver<Reply>)>,
    _codec: PhantomData<fn() -> C>,
}

// The pending item is only ever moved, never pinned: the sink is Unpin whatever T is.
impl<T, C> Unpin for SessionSink<T, C> {}

impl<T, C> fmt::Debug for SessionSink<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSink")
            .field("session", &self.tx.guard.core.end)
            .field("pending", &self.pending.is_some())
            .field("batched", &lock_batch(&self.batch).entries.len())
            .field("reserved", &self.reserved.is_some())
            .field("finished", &self.tx.finished)
            .finish()
    }
}

impl<T: Payload<C>, C> SessionSink<T, C> {
    pub(crate) fn new(tx: TxHandle) -> Self {
        let end = tx.guard.core.end;
        let window = (
            tx.guard.core.clone(),
            tx.guard.node.shared.block.layout().tx.min_block,
        );
        Self {
            tx,
            pending: None,
            batch: SharedBatch::new(std::sync::Mutex::new(Batch {
                entries: Vec::with_capacity(SUBMIT_BATCH),
                end,
                window: Some(window),
                ..Batch::default()
            })),
            batch_full: false,
            reserved: None,
            frame_size: DEFAULT_FRAME_SIZE,
            fed: false,
            segment: None,
            _codec: PhantomData,
        }
    }

    /// The peer node's name.
    pub fn peer(&self) -> &str {
        &self.tx.guard.core.peer
    }

    /// The largest payload this session carries: 4 GiB - 1 bytes (a payload too large for
    /// the arenas travels in a hand-off segment of its own), within the node's memory budget
    /// ([`SessionError::Budget`] past it).
    pub fn max_payload(&self) -> u64 {
        MAX_SESSION_PAYLOAD
    }

    /// Resolves when the session is over; see [`SessionStream::closed`](crate::SessionStream::closed).
    pub async fn closed(&self) -> SessionError {
        poll_fn(|cx| self.tx.guard.core.poll_ended(cx)).await
    }

    fn too_large(&self, len: u64) -> SessionError {
        SessionError::TooLarge {
            len,
            max: self.max_payload(),
        }
    }

    /// A `TooLarge` from the codec (its own limit) carries the limit that applies: the lower of
    /// the codec's and this session's.
    fn session_limit(&self, e: SessionError) -> SessionError {
        match e {
            SessionError::TooLarge { len, max } => SessionError::TooLarge {
                len,
                max: max.min(self.max_payload()),
            },
            other => other,
        }
    }

    /// Pushes any pending payload to the engine (what `SinkExt::flush` does; an inherent
    /// method because a byte sink accepts several item types).
    ///
    /// # Errors
    ///
    /// The session's error if it is over.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        poll_fn(|cx| self.poll_push(cx, true)).await
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
    pub async fn loan(&mut self, len: usize) -> Result<Loan, SessionError> {
        poll_fn(|cx| self.poll_loan(len, cx)).await
    }

    /// A loan, or `Pending` (woken by a `TX_DONE`). Before it waits it pushes the batch: the
    /// loans batched hold arena memory that only the engine's `TX_DONE`s give back.
    fn poll_loan(&mut self, len: usize, cx: &mut Context<'_>) -> Poll<Result<Loan, SessionError>> {
        let loan = self.try_loan(len, cx);
        if loan.is_pending() {
            // A loan fed and not yet moved on holds memory too: batch it if its window allows
            // (if not, a CREDIT wakes this task to try again).
            if let Some((Pending::Loan(held), mut permit)) =
                self.pending.take_if(|(p, _)| matches!(p, Pending::Loan(_)))
            {
                match permit.poll_bytes(self.charge(held.len()), cx) {
                    Poll::Ready(Ok(())) => self.add_to_batch(held, permit),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => self.pending = Some((Pending::Loan(held), permit)),
                }
            }
            if let Poll::Ready(Err(e)) = self.poll_submit_batch(cx, true) {
                return Poll::Ready(Err(e));
            }
        }
        loan
    }

    /// Pushes the batch onto the submit ring (all of it, or `Pending` until there is room);
    /// whether it held anything (the node may have pushed it already). With `seal`, the open
    /// frame goes too (a flush, or before a wait); without, it stays open for more records.
    fn poll_submit_batch(
        &mut self,
        cx: &mut Context<'_>,
        seal: bool,
    ) -> Poll<Result<bool, SessionError>> {
        let mut batch = lock_batch(&self.batch);
        if seal {
            batch.seal();
        }
        if batch.entries.is_empty() {
            self.batch_full = false;
            return Poll::Ready(Ok(false));
        }
        ready!(
            self.tx
                .guard
                .node
                .shared
                .poll_submit_batch(&mut batch.entries, cx)
        )?;
        batch.bytes = 0;
        batch.messages = 0;
        self.batch_full = false;
        Poll::Ready(Ok(true))
    }

    /// `len` as a payload length, or `TooLarge` if no session of this node can carry it.
    fn check_len(&self, len: usize) -> Result<u32, SessionError> {
        match u32::try_from(len) {
            Ok(len32) if u64::from(len32) <= self.max_payload() => Ok(len32),
            _ => Err(self.too_large(len as u64)),
        }
    }

    fn try_loan(&mut self, len: usize, cx: &mut Context<'_>) -> Poll<Result<Loan, SessionError>> {
        let len32 = match self.check_len(len) {
            Ok(len32) => len32,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if u64::from(len32) > self.tx.guard.node.shared.handoff_at {
            return self.poll_segment(len32, cx);
        }
        match ready!(self.tx.guard.node.shared.poll_loan(len32, cx)) {
            Ok(buf) => Poll::Ready(Ok(Loan::new(buf))),
            Err(LoanError::Disconnected) => Poll::Ready(Err(SessionError::Disconnected)),
            Err(LoanError::TooLarge) => Poll::Ready(Err(self.too_large(len as u64))),
        }
    }

    /// A hand-off segment of `len` bytes from the engine (asked for once, then awaited).
    fn poll_segment(&mut self, len: u32, cx: &mut Context<'_>) -> Poll<Result<Loan, SessionError>> {
        let node = self.tx.guard.node.shared.clone();
        if self.segment.as_ref().is_none_or(|(asked, _)| *asked != len) {
            if let Some((_, stale)) = self.segment.take() {
                forget_segment(&node, stale);
            }
            let Some(answer) = node.request_segment(len) else {
                return Poll::Ready(Err(SessionError::Disconnected));
            };
            self.segment = Some((len, answer));
        }
        let (_, answer) = self.segment.as_mut().expect("asked above");
        let reply = ready!(Pin::new(answer).poll(cx));
        self.segment = None;
        Poll::Ready(match reply {
            Ok(Reply::Segment { segment, len, fd }) => {
                match SegmentWriter::open(fd, u64::from(len)) {
                    Ok(writer) => Ok(Loan {
                        buf: LoanBuf::Segment(SegmentLoan {
                            writer: Some(writer),
                            id: segment,
                            len: len as usize,
                            node,
                        }),
                    }),
                    Err(e) => {
                        // It goes back unused.
                        node.release_entry(RawDescriptor::segment_release(segment));
                        Err(SessionError::Segment(e.to_string()))
                    }
                }
            }
            Ok(Reply::Limit { limit, max }) => match Limit::from_u16(limit) {
                Some(limit) => Err(SessionError::Budget { limit, max }),
                None => Err(SessionError::Segment(format!(
                    "unknown engine limit {limit} of {max}"
                ))),
            },
            Ok(Reply::Error { message, .. }) => Err(SessionError::Segment(message)),
            Ok(_) => Err(SessionError::Segment(
                "unexpected reply from the engine".into(),
            )),
            Err(_) => Err(SessionError::Disconnected),
        })
    }

    /// Moves the pending item through encoding and loan into the batch; pushes the batch onto
    /// the submit ring when it is full, or when `flush` asks.
    fn poll_push(&mut self, cx: &mut Context<'_>, flush: bool) -> Poll<Result<(), SessionError>> {
        // An error leaves with the item: its permit drops, giving its window share back (the
        // session goes on).
        while let Some((pending, mut permit)) = self.pending.take() {
            let (charge, len) = match &pending {
                Pending::Item(item) => {
                    if let Some(error) = self.tx.guard.core.send_error() {
                        return Poll::Ready(Err(error));
                    }
                    // A payload that can never fit fails at once, before it waits for anything.
                    let len = match item
                        .encoded_len()
                        .map_err(|e| self.session_limit(e))
                        .and_then(|len| self.check_len(len))
                    {
                        Ok(len) => len,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let len = len as usize;
                    if self.framed(len, flush) {
                        // A record: its length and prefix, exactly.
                        ((len + RECORD_HEADER as usize) as u64, len)
                    } else {
                        (window_charge(len as u32, self.min_block()), len)
                    }
                }
                Pending::Loan(loan) => (self.charge(loan.len()), loan.len()),
            };
            // Its share of the window first: a session that waits for its peer holds no
            // transmit-arena memory for an item not yet encoded.
            match permit.poll_bytes(charge, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.pending = Some((pending, permit));
                    // The peer returns the window as it reads: what is batched must reach it
                    // before this waits.
                    if let Poll::Ready(Err(e)) = self.poll_submit_batch(cx, true) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
            match pending {
                Pending::Item(item) if self.framed(len, flush) => {
                    match self.poll_frame_room(len, cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pending = Some((Pending::Item(item), permit));
                            return Poll::Pending;
                        }
                    }
                    self.add_record(&item, len, permit)?;
                    self.fed = true;
                }
                Pending::Item(item) => match self.poll_loan(len, cx) {
                    Poll::Ready(Ok(mut loan)) => match item.encode_into(&mut loan) {
                        Ok(written) => {
                            loan.truncate(written);
                            self.pending = Some((Pending::Loan(loan), permit));
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    },
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending = Some((Pending::Item(item), permit));
                        return Poll::Pending;
                    }
                },
                Pending::Loan(loan) => {
                    self.add_to_batch(loan, permit);
                    self.fed = true;
                }
            }
        }
        if flush || self.batch_full {
            // Read before the push: a session already over then can deliver none of them. One
            // that ends after the push may have delivered them (its peer read them, then
            // closed), so it is no error for these; the next send learns of the end.
            let over = self.tx.guard.core.send_error();
            // Pushed either way (the engine frees what it cannot deliver).
            let pushed = ready!(self.poll_submit_batch(cx, flush))?;
            if flush {
                self.fed = false;
            }
            if pushed && let Some(error) = over {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        ready!(self.poll_push(cx, false))?;
        if self.tx.finished {
            return Poll::Ready(Err(SessionError::Closed));
        }
        if self.reserved.is_none() {
            match self.tx.guard.core.poll_permit(cx) {
                Poll::Ready(permit) => self.reserved = Some(permit?),
                Poll::Pending => {
                    // The peer returns the window as it reads: what is batched must reach it
                    // before this waits.
                    if let Poll::Ready(Err(e)) = self.poll_push(cx, true) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn start_send_inner(&mut self, item: Pending<T>) -> Result<(), SessionError> {
        if let Pending::Loan(loan) = &item
            && !loan.is_of(&self.tx.guard.node.shared)
        {
            // Its offset names bytes of another arena: submitted here, it would send this
            // node's bytes and free them twice. Dropped, it goes back to its own arena.
            return Err(SessionError::ForeignLoan);
        }
        let mut permit = self.reserved.take().ok_or(SessionError::NotReady)?;
        match item {
            // A loan holds arena memory: it joins the batch (which the node pushes if the
            // arena runs out) now, if its window allows without waiting.
            Pending::Loan(loan)
                if matches!(permit.try_bytes(self.charge(loan.len())), Ok(true)) =>
            {
                self.add_to_batch(loan, permit);
            }
            item => self.pending = Some((item, permit)),
        }
        Ok(())
    }

    fn poll_close_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        ready!(self.poll_push(cx, true))?;
        if !self.tx.finished {
            // No more sends: a reserved share of the window goes back.
            self.reserved = None;
            let fin = RawDescriptor::control(kind::FIN, self.tx.guard.core.end, 0);
            match self.tx.guard.node.shared.poll_submit(fin, cx) {
                // An error means the session is over already: closing it is done.
                Poll::Ready(_) => self.tx.finished = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: Payload<C>, C> futures::Sink<T> for SessionSink<T, C> {
    type Error = SessionError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), SessionError> {
        self.get_mut().start_send_inner(Pending::Item(item))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_push(cx, true)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_close_inner(cx)
    }
}

/// Byte sessions also take [`Loan`]s (written in place: no copy on the sending side).
impl<C> futures::Sink<Loan> for SessionSink<Bytes, C> {
    type Error = SessionError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Loan) -> Result<(), SessionError> {
        self.get_mut().start_send_inner(Pending::Loan(item))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_push(cx, true)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_close_inner(cx)
    }
}

impl<C> SessionSink<Bytes, C> {
    /// Feeds a payload of `len` bytes written in place by `write`, which returns how many of
    /// them it wrote (at most `len`): a small one straight into the sink's open frame, a large
    /// one into a loan of its own. Like `SinkExt::feed`, it does not flush. The in-place
    /// counterpart of feeding a [`Loan`], for payloads small enough to share a frame.
    ///
    /// # Errors
    ///
    /// [`SessionError::TooLarge`] at once if `len` can never fit; the session's error if it is
    /// over.
    ///
    /// # Panics
    ///
    /// If `write` returns more than `len`.
    pub async fn feed_in_place(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), SessionError> {
        self.feed_with(len, |buf| Ok(write(buf))).await
    }
}

/// Byte sessions also take `Vec<u8>`.
impl<C> futures::Sink<Vec<u8>> for SessionSink<Bytes, C> {
    type Error = SessionError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Vec<u8>) -> Result<(), SessionError> {
        self.get_mut()
            .start_send_inner(Pending::Item(Bytes::from(item)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_push(cx, true)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        self.get_mut().poll_close_inner(cx)
    }
}

impl<T, C> Drop for SessionSink<T, C> {
    /// Dropping the sending half half-closes, like Tokio's `OwnedWriteHalf`: payloads already
    /// in loans are pushed (without waiting) and the peer's stream ends after them. An item not
    /// yet encoded, or a loan fed whose share of the window has not come back yet, is dropped
    /// with a warning (call `flush` or `close` to be sure).
    fn drop(&mut self) {
        let end = self.tx.guard.core.end;
        let over = self.tx.finished || self.tx.guard.core.send_error().is_some();
        // A permit dropped unused gives its window share back.
        match self.pending.take() {
            // A loan fed goes if its window allows it now (a Drop cannot wait).
            Some((Pending::Loan(loan), mut permit)) if !over => {
                if matches!(permit.try_bytes(self.charge(loan.len())), Ok(true)) {
                    self.add_to_batch(loan, permit);
                } else {
                    tracing::warn!(
                        session = end,
                        "sink dropped with a payload its window had no room for; it is not sent"
                    );
                }
            }
            Some((Pending::Item(_), _)) if !over => {
                tracing::warn!(
                    session = end,
                    "sink dropped with an unflushed payload; it is not sent"
                );
            }
            // A loan not handed over frees itself as it drops.
            _ => {}
        }
        // Loans handed over go to the engine whatever happened, to be delivered or freed.
        let shared = &self.tx.guard.node.shared;
        if let Some((_, answer)) = self.segment.take() {
            forget_segment(shared, answer);
        }
        let (entries, listed) = {
            let mut batch = lock_batch(&self.batch);
            batch.seal();
            batch.bytes = 0;
            batch.messages = 0;
            (
                std::mem::take(&mut batch.entries),
                std::mem::take(&mut batch.listed),
            )
        };
        for entry in entries {
            shared.submit_now(entry);
        }
        if listed {
            shared.unlist(end);
        }
        // Then `self.tx` drops: a FIN or the end's CLOSE follows the batch (see `TxHandle`).
    }
}
