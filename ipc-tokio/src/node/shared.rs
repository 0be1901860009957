//! State a node's driver shares with its sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use ipc_core::control::{EngineFrame, ErrorCode, Limit, NodeFrame, Schema};
use ipc_core::{
    Block, Doorbell, IdMap, Producer, RawDescriptor, RxView, ShmRing, TxArena, TxBuf, kind,
};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::OpenError;
use crate::session::SessionCore;

mod rings;

/// The answer to a control request.
#[derive(Debug)]
pub(crate) enum Reply {
    Session(Arc<SessionCore>),
    Served(u32),
    Unserved,
    /// The serving end's schema differs from the one sent.
    Mismatch(Schema),
    Error {
        code: u16,
        message: String,
    },
    /// An admission limit refused the request.
    Limit {
        limit: u16,
        max: u64,
    },
    /// A `Publish` succeeded.
    Published {
        publisher: u32,
        max_message: u64,
    },
    /// A `Subscribe` succeeded: its id and inbox.
    Subscribed(u32, Arc<crate::topic::SubCore>),
    /// An `Unpublish` or `Unsubscribe` succeeded.
    TopicDone,
    /// A `DeclareQueue`, `Produce` or `Consume` succeeded (the driver registered its id).
    Queue,
    /// A hand-off segment lent for one large payload: its id, size and memfd.
    Segment {
        segment: u32,
        len: u32,
        fd: std::os::fd::OwnedFd,
    },
}

impl Reply {
    /// The error a reply other than success means; `schema` is what the request declared.
    pub(crate) fn into_error(self, service: &str, schema: Schema) -> OpenError {
        let (code, message) = match self {
            Reply::Error { code, message } => (code, message),
            Reply::Limit { limit, max } => {
                return match Limit::from_u16(limit) {
                    Some(limit) => OpenError::LimitReached { limit, max },
                    None => OpenError::Refused(format!("unknown engine limit {limit} of {max}")),
                };
            }
            Reply::Mismatch(server) => {
                return OpenError::SchemaMismatch {
                    service: service.to_owned(),
                    client: Box::new(schema),
                    server: Box::new(server),
                };
            }
            _ => return OpenError::Refused("unexpected reply from the engine".into()),
        };
        match ErrorCode::from_u16(code) {
            Some(ErrorCode::NotServed) => OpenError::NotServed {
                service: service.to_owned(),
            },
            Some(ErrorCode::AlreadyServed) => OpenError::AlreadyServed {
                service: service.to_owned(),
            },
            _ => OpenError::Refused(message),
        }
    }
}

/// The size past which a node's session payloads travel in hand-off segments: the arenas'
/// largest payload. Only a payload no arena holds is handed off: within the arenas a copy
/// through their warm pages wins, measured (`benches/handoff.rs` and the large round trips of
/// `benches/compare`, docs/ARCHITECTURE.md, "Large payloads: sealed hand-off against copy"):
/// a sealed segment is never reused, so the sender writes new pages every time, and a 16 MiB
/// round trip took 60 ms handed off against 7.9 ms through 32 MiB arenas.
pub(crate) fn handoff_at(arena_max: u64) -> u64 {
    arena_max
}

/// A delivery for a session end this node does not know yet (its `OpenOk` or `Accept` is
/// still on the socket while the ring raced ahead).
#[derive(Debug)]
pub(crate) enum Early {
    /// A payload, or a frame of records (`true`).
    Data(RxView, bool),
    Fin,
    Closed(u64),
}

/// Where one of this node's session ends stands: the one home of its node-side state.
#[derive(Debug)]
pub(crate) enum EndSlot {
    /// Deliveries that raced ahead of the end's `OpenOk` or `Accept`, kept for it.
    Early(Vec<Early>),
    /// Open: deliveries go to its state.
    Open(Arc<SessionCore>),
    /// This node closed it and waits for the engine's `CLOSE_ACK`; data still arriving is
    /// released at once.
    Closing,
}

/// Wakers waiting for one condition; woken all at once.
#[derive(Debug, Default)]
pub(crate) struct WaitList(Mutex<Vec<Waker>>);

impl WaitList {
    pub(crate) fn register(&self, waker: &Waker) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    pub(crate) fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A sink's batch: the descriptors of loans handed to the sink (fed) and not yet pushed on
/// the submit ring. Shared with the node so that an allocation that finds the transmit arena
/// full can push it ([`NodeShared::poll_loan`]): a task that fed one sink and then waits for
/// arena room on another would otherwise wait for memory that only its own unflushed batch
/// holds, and that no `TX_DONE` ever frees.
///
/// Lock order: a batch before the submit ring's side; the node's list of unflushed batches
/// only ever `try_lock`s a batch (a batch whose owner is at work is left to it).
///
/// A batch may also hold an open frame (see [`ipc_core::frame`]): a loan the sink packs small
/// messages into. It comes after every entry already batched and before any added later;
/// [`Batch::seal`] closes it into an entry, as every push does first.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Descriptors in the order the sink produced them.
    pub(crate) entries: Vec<RawDescriptor>,
    /// Payload bytes in `entries`.
    pub(crate) bytes: u64,
    /// Messages in `entries` (a frame counts its records).
    pub(crate) messages: usize,
    /// In the node's list of batches that may hold entries (`NodeShared::unflushed`).
    pub(crate) listed: bool,
    /// The frame being filled, if any.
    pub(crate) frame: Option<OpenFrame>,
    /// The session end this batch's entries belong to.
    pub(crate) end: u32,
    /// That end's window, charged a sealed frame's rounding up to its size class; and the
    /// arena's smallest class.
    pub(crate) window: Option<(Arc<SessionCore>, u64)>,
}

/// A frame being filled: a loan of the transmit arena holding `records` records in its first
/// `used` bytes.
#[derive(Debug)]
pub(crate) struct OpenFrame {
    pub(crate) buf: TxBuf,
    pub(crate) used: usize,
    pub(crate) records: u32,
}

impl Batch {
    /// Closes the open frame, if any: its `FRAME` descriptor joins the entries (a frame that
    /// got no record frees its loan).
    pub(crate) fn seal(&mut self) {
        let Some(OpenFrame {
            mut buf,
            used,
            records,
        }) = self.frame.take()
        else {
            return;
        };
        if records == 0 {
            return;
        }
        buf.truncate(used);
        let sent = buf.submit();
        // Its records took their exact bytes of the window; the frame occupies its size class.
        if let Some((core, min_block)) = &self.window {
            let class = ipc_core::window_charge(sent.len, *min_block);
            core.charge_rounding(class.saturating_sub(u64::from(sent.len)));
        }
        self.entries.push(RawDescriptor::frame(
            self.end,
            sent.offset,
            sent.len,
            records,
        ));
        self.bytes += u64::from(sent.len);
        self.messages += records as usize;
    }
}

/// A sink's [`Batch`], as the sink and its node share it.
pub(crate) type SharedBatch = Arc<Mutex<Batch>>;

/// Locks a batch (a poisoned one is still consistent: every change is one push or drain).
pub(crate) fn lock_batch(batch: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    batch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a loan of the transmit arena failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoanError {
    /// The node is disconnected from its engine.
    Disconnected,
    /// The arena can never hold that many bytes.
    TooLarge,
}

#[derive(Debug)]
struct RingSide {
    producer: Producer<ShmRing>,
    /// Entries that found the ring full (releases and closes, which cannot wait in a Drop).
    overflow: VecDeque<RawDescriptor>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Every session end the node knows of, by id.
    pub(crate) ends: IdMap<u32, EndSlot>,
    requests: IdMap<u32, oneshot::Sender<Reply>>,
    /// Accept queues of `Serve` requests not yet answered, by request id: the driver moves
    /// one to `listeners` when its `ServeOk` arrives, before it can handle any `Accept`.
    serving: IdMap<u32, mpsc::UnboundedSender<Arc<SessionCore>>>,
    listeners: IdMap<u32, mpsc::UnboundedSender<Arc<SessionCore>>>,
    next_req: u32,
    pub(crate) dead: bool,
    /// Subscriptions and mapped topic segments.
    pub(crate) topics: crate::topic::NodeTopics,
    /// Producers, consumers and queue requests in flight.
    pub(crate) queues: crate::queue::NodeQueues,
    /// Sealed memfds of hand-off segments announced by `SegmentDelivery` whose `DATA` entry
    /// the driver has not read yet, by id, with their size.
    pub(crate) arrived: IdMap<u32, (std::os::fd::OwnedFd, u32)>,
}

/// Everything a node's driver and its sessions share.
#[derive(Debug)]
pub(crate) struct NodeShared {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) credits: u32,
    pub(crate) window_bytes: u64,
    /// The largest payload of the transmit arena (topics and queues carry no more).
    pub(crate) max_payload: u64,
    /// Session payloads of more than this many bytes (the arenas' largest) travel in a
    /// hand-off segment of their own (see `ipc_core::segment`).
    pub(crate) handoff_at: u64,
    pub(crate) block: Arc<Block>,
    pub(crate) tx: TxArena,
    submit: Mutex<RingSide>,
    release: Mutex<RingSide>,
    engine_bell: Doorbell,
    out: mpsc::UnboundedSender<Vec<u8>>,
    state: Mutex<State>,
    /// Senders waiting for room in the transmit arena (woken on `TX_DONE`).
    pub(crate) tx_waiters: WaitList,
    /// Sinks' batches that gained entries since the node last looked (by session end): what a
    /// full transmit arena pushes for them ([`NodeShared::poll_loan`]).
    unflushed: Mutex<HashMap<u32, SharedBatch>>,
    /// Senders waiting for room in the submit ring (woken on the node's doorbell).
    pub(crate) ring_waiters: WaitList,
    /// How long the driver polls after activity before it parks.
    pub(crate) spin: Duration,
    /// A send happened: the driver (if parked) starts polling for what comes back.
    pub(crate) kick: Notify,
    /// `State::dead`, readable without the lock (set before the waiters are woken).
    dead: AtomicBool,
    /// Test-only fault: the driver panics on the next frame it reads from the engine.
    #[cfg(feature = "fault-injection")]
    pub(crate) panic_on_frame: std::sync::atomic::AtomicBool,
}

impl NodeShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        id: u32,
        credits: u32,
        window_bytes: u64,
        block: Arc<Block>,
        tx: TxArena,
        submit: Producer<ShmRing>,
        release: Producer<ShmRing>,
        engine_bell: Doorbell,
        out: mpsc::UnboundedSender<Vec<u8>>,
        spin: Duration,
    ) -> Self {
        Self {
            name,
            id,
            credits,
            window_bytes,
            max_payload: block.layout().max_payload(),
            handoff_at: handoff_at(block.layout().max_payload()),
            block,
            tx,
            submit: Mutex::new(RingSide {
                producer: submit,
                overflow: VecDeque::new(),
            }),
            release: Mutex::new(RingSide {
                producer: release,
                overflow: VecDeque::new(),
            }),
            engine_bell,
            out,
            state: Mutex::new(State::default()),
            tx_waiters: WaitList::default(),
            unflushed: Mutex::new(HashMap::new()),
            ring_waiters: WaitList::default(),
            spin,
            kick: Notify::new(),
            dead: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            panic_on_frame: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection to the engine is gone (see [`NodeShared::mark_dead`]).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Rings the engine (it sleeps with entries waiting, or waits for room in our deliver ring).
    pub(crate) fn ring_engine(&self) {
        if let Err(e) = self.engine_bell.ring() {
            tracing::warn!(error = %e, "cannot ring the engine's doorbell");
        }
    }

    /// Sends a control request and waits for its reply. For a `Serve`, `accept` is the queue
    /// its sessions go to, registered by the driver together with the `ServeOk`.
    pub(crate) async fn request(
        &self,
        frame: impl FnOnce(u32) -> NodeFrame,
        accept: Option<mpsc::UnboundedSender<Arc<SessionCore>>>,
    ) -> Result<Reply, OpenError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            if state.dead {
                return Err(OpenError::Disconnected);
            }
            state.next_req = state.next_req.wrapping_add(1).max(1);
            let req = state.next_req;
            state.requests.insert(req, tx);
            if let Some(accept) = accept {
                state.serving.insert(req, accept);
            }
            if self.out.send(frame(req).encode()).is_err() {
                return Err(OpenError::Disconnected);
            }
        }
        rx.await.map_err(|_| OpenError::Disconnected)
    }

    /// Sends a queue request and waits for its reply; `pending` is what the driver registers
    /// when the `QueueOk` arrives (under the same lock as the request id, so no reply can
    /// find it missing).
    pub(crate) async fn request_queue(
        &self,
        frame: impl FnOnce(u32) -> NodeFrame,
        pending: crate::queue::Pending,
    ) -> Result<Reply, OpenError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            if state.dead {
                return Err(OpenError::Disconnected);
            }
            state.next_req = state.next_req.wrapping_add(1).max(1);
            let req = state.next_req;
            state.requests.insert(req, tx);
            state.queues.pending.insert(req, pending);
            if self.out.send(frame(req).encode()).is_err() {
                return Err(OpenError::Disconnected);
            }
        }
        rx.await.map_err(|_| OpenError::Disconnected)
    }

    /// Asks the engine for a hand-off segment of `len` bytes; the receiver resolves with its
    /// answer (`Reply::Segment`, or why not), or closes when the node is gone.
    pub(crate) fn request_segment(&self, len: u32) -> Option<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        if state.dead {
            return None;
        }
        state.next_req = state.next_req.wrapping_add(1).max(1);
        let req = state.next_req;
        state.requests.insert(req, tx);
        if self
            .out
            .send(NodeFrame::Segment { req, len }.encode())
            .is_err()
        {
            state.requests.remove(&req);
            return None;
        }
        Some(rx)
    }

    /// Completes the request `req` (called by the driver).
    pub(crate) fn answer(&self, req: u32, reply: Reply) -> Result<(), Reply> {
        let waiter = {
            let mut state = self.state();
            let accept = state.serving.remove(&req);
            if let (Reply::Served(id), Some(accept)) = (&reply, accept) {
                state.listeners.insert(*id, accept);
            }
            state.requests.remove(&req)
        };
        match waiter {
            Some(tx) => tx.send(reply),
            None => Err(reply),
        }
    }

    pub(crate) fn listener(&self, id: u32) -> Option<mpsc::UnboundedSender<Arc<SessionCore>>> {
        self.state().listeners.get(&id).cloned()
    }

    /// Stops serving `id` without waiting: the `Unserve` is queued on the control channel
    /// at once, so every later request of this node reaches the engine after it.
    pub(crate) fn remove_listener(&self, id: u32) {
        drop(self.unserve(id));
    }

    /// Stops serving `id`: queues the `Unserve` now and returns the receiver of its answer
    /// (`UnserveOk`, or a closed channel once the node is gone); `None` if `id` was not
    /// served any more (or the node is gone), so there is nothing to wait for.
    pub(crate) fn unserve(&self, id: u32) -> Option<oneshot::Receiver<Reply>> {
        let mut state = self.state();
        if state.listeners.remove(&id).is_none() || state.dead {
            return None;
        }
        state.next_req = state.next_req.wrapping_add(1).max(1);
        let req = state.next_req;
        let (tx, rx) = oneshot::channel();
        state.requests.insert(req, tx);
        if self
            .out
            .send(NodeFrame::Unserve { req, service: id }.encode())
            .is_err()
        {
            state.requests.remove(&req);
            return None;
        }
        Some(rx)
    }

    /// Sends a request whose answer nobody waits for (from `Drop`).
    pub(crate) fn send_oneway(&self, frame: impl FnOnce(u32) -> NodeFrame) {
        let mut state = self.state();
        if state.dead {
            return;
        }
        state.next_req = state.next_req.wrapping_add(1).max(1);
        let req = state.next_req;
        let _ = self.out.send(frame(req).encode());
    }

    /// A new session end the engine announced, registered with anything that raced ahead.
    fn adopt(&self, end: u32, peer: String) -> Arc<SessionCore> {
        let core = Arc::new(SessionCore::new(end, peer, self.credits, self.window_bytes));
        let mut state = self.state();
        if state.dead {
            core.disconnect();
            return core;
        }
        if let Some(EndSlot::Early(early)) = state.ends.insert(end, EndSlot::Open(core.clone())) {
            for e in early {
                match e {
                    Early::Data(view, frame) => core.push_data(view, frame),
                    Early::Fin => core.peer_fin(),
                    Early::Closed(reason) => core.peer_closed(reason),
                }
            }
        }
        core
    }

    /// Closes this node's end `end`: unread deliveries are released and the engine is told.
    pub(crate) fn close_end(&self, end: u32) {
        let slot = {
            let mut state = self.state();
            if state.dead {
                return;
            }
            state.ends.insert(end, EndSlot::Closing)
        };
        match slot {
            Some(EndSlot::Open(core)) => {
                for view in core.take_unread() {
                    self.release_view(&view);
                }
            }
            Some(EndSlot::Early(early)) => {
                for e in early {
                    if let Early::Data(view, _) = e {
                        self.release_view(&view);
                    }
                }
            }
            Some(EndSlot::Closing) | None => {}
        }
        self.push_or_queue(&self.submit, RawDescriptor::control(kind::CLOSE, end, 0));
    }

    /// The connection to the engine is gone (the driver ended, whatever the reason): every
    /// session, request and listener fails, and every task waiting on this node wakes.
    pub(crate) fn mark_dead(&self, reason: &str) {
        let (ends, requests, listeners) = {
            let mut state = self.state();
            if state.dead {
                return;
            }
            state.dead = true;
            self.dead.store(true, Ordering::Release);
            state.serving.clear();
            state.topics.disconnect();
            state.queues.disconnect();
            (
                std::mem::take(&mut state.ends),
                std::mem::take(&mut state.requests),
                std::mem::take(&mut state.listeners),
            )
        };
        tracing::debug!(node = %self.name, %reason, "disconnected from the engine");
        for slot in ends.values() {
            if let EndSlot::Open(core) = slot {
                core.disconnect();
            }
        }
        drop(requests);
        drop(listeners);
        self.tx_waiters.wake_all();
        self.ring_waiters.wake_all();
    }

    /// Handles a frame from the engine (called by the driver).
    pub(crate) fn on_frame(
        self: &Arc<Self>,
        frame: EngineFrame,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), String> {
        match frame {
            EngineFrame::ServeOk { req, service } => {
                let _ = self.answer(req, Reply::Served(service));
            }
            EngineFrame::UnserveOk { req } => {
                let _ = self.answer(req, Reply::Unserved);
            }
            EngineFrame::OpenOk { req, session, peer } => {
                let core = self.adopt(session, peer);
                if self.answer(req, Reply::Session(core)).is_err() {
                    // The caller gave up (its future was dropped): close the end again.
                    self.close_end(session);
                }
            }
            EngineFrame::Accept {
                service,
                session,
                peer,
            } => {
                let core = self.adopt(session, peer);
                let delivered = self
                    .listener(service)
                    .is_some_and(|tx| tx.send(core).is_ok());
                if !delivered {
                    self.close_end(session);
                }
            }
            EngineFrame::SchemaMismatch { req, server } => {
                let _ = self.answer(req, Reply::Mismatch(server));
            }
            EngineFrame::Error {
                req: 0, message, ..
            } => {
                tracing::warn!(node = %self.name, %message, "the engine reported an error");
            }
            EngineFrame::Error { req, code, message } => {
                self.state().queues.pending.remove(&req);
                let _ = self.answer(req, Reply::Error { code, message });
            }
            EngineFrame::Limit { req: 0, limit, max } => {
                tracing::warn!(node = %self.name, limit, max, "the engine reported a limit");
            }
            EngineFrame::Limit { req, limit, max } => {
                let _ = self.answer(req, Reply::Limit { limit, max });
            }
            EngineFrame::Welcome { .. } => {
                tracing::warn!(node = %self.name, "unexpected second welcome; ignored");
            }
            topic @ (EngineFrame::PublishOk { .. }
            | EngineFrame::TopicDone { .. }
            | EngineFrame::SubscribeOk { .. }
            | EngineFrame::TopicAttach { .. }) => {
                return crate::topic::on_frame(self, topic, fds);
            }
            EngineFrame::QueueOk { req, id } => crate::queue::on_queue_ok(self, req, id),
            EngineFrame::SegmentOk { req, segment, len } => {
                let Some(fd) = fds.into_iter().next() else {
                    return Err("a SegmentOk without its memfd".into());
                };
                if self
                    .answer(req, Reply::Segment { segment, len, fd })
                    .is_err()
                {
                    // Its sender gave up: the segment goes back unused.
                    self.release_entry(RawDescriptor::segment_release(segment));
                }
            }
            EngineFrame::SegmentDelivery { segment, len } => {
                let Some(fd) = fds.into_iter().next() else {
                    return Err("a SegmentDelivery without its memfd".into());
                };
                self.state().arrived.insert(segment, (fd, len));
            }
            other @ EngineFrame::InspectChunk { .. } => {
                tracing::warn!(node = %self.name, frame = ?other, "unexpected inspector frame; ignored");
            }
        }
        Ok(())
    }
}
