//! The node's driver: the one task that reads the deliver ring and the control socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ipc_core::control::{self, EngineFrame};
use ipc_core::descriptor::close_reason;
use ipc_core::{
    Consumer, Delivery, Doorbell, RawDescriptor, RxView, SealedView, ShmRing, validate_deliver,
};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::control::{EngineFrames, write_shared};
use crate::node::shared::{Early, EndSlot, NodeShared};

const BATCH: usize = 64;

/// Lives on the driver task's stack: however the driver ends (its loop ends, it panics, or
/// the runtime drops it), the node is marked dead as this drops, which fails every session,
/// request and listener of the node and wakes every task waiting on it.
struct DeathGuard {
    shared: Option<Arc<NodeShared>>,
}

impl DeathGuard {
    /// The driver ends normally, for `reason`.
    fn end(mut self, reason: &str) {
        if let Some(shared) = self.shared.take() {
            shared.mark_dead(reason);
        }
    }
}

impl Drop for DeathGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let reason = if std::thread::panicking() {
                "the node's driver panicked"
            } else {
                "the node's driver was dropped"
            };
            shared.mark_dead(reason);
        }
    }
}

/// Reads the deliver ring and the socket until the node is dropped or the engine goes.
#[must_use = "the driver does nothing unless run"]
pub(crate) struct Driver {
    shared: Arc<NodeShared>,
    stream: UnixStream,
    frames: EngineFrames,
    bell: AsyncFd<Doorbell>,
    out: mpsc::UnboundedReceiver<Vec<u8>>,
    stop: oneshot::Receiver<()>,
    deliver: Consumer<ShmRing>,
    scratch: Vec<RawDescriptor>,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<NodeShared>,
        stream: UnixStream,
        frames: EngineFrames,
        bell: AsyncFd<Doorbell>,
        out: mpsc::UnboundedReceiver<Vec<u8>>,
        stop: oneshot::Receiver<()>,
    ) -> Self {
        let deliver = Consumer::new(shared.block.deliver_ring());
        Self {
            shared,
            stream,
            frames,
            bell,
            out,
            stop,
            deliver,
            scratch: vec![RawDescriptor::default(); BATCH],
        }
    }

    pub(crate) async fn run(self) {
        let Self {
            shared,
            stream,
            mut frames,
            bell,
            mut out,
            mut stop,
            mut deliver,
            mut scratch,
        } = self;
        let death = DeathGuard {
            shared: Some(shared.clone()),
        };
        // Shared references: unlike owned halves, dropping them does not shut the socket down
        // (an end of stream the engine would see before this node has let go of its block).
        // Frames are read with `recvmsg`, keeping the descriptors a `TopicAttach` carries.
        let sock = &stream;
        // Control frames go out on their own future, polled beside everything else: a write
        // that waits for the engine to read never stops this node reading what the engine
        // writes (thousands of requests in flight at once filled both sockets' buffers and
        // wedged both sides when a write was awaited in the loop).
        let mut writer = Box::pin(async {
            loop {
                match out.recv().await {
                    Some(bytes) => {
                        if let Err(e) = write_shared(sock, &bytes).await {
                            break format!("control socket: {e}");
                        }
                    }
                    None => break "node state dropped".to_owned(),
                }
            }
        });
        let mut stalled = VecDeque::new();
        let mut busy_passes = 0u32;
        let mut last_work = Instant::now();
        let mut spins = 0u32;
        let mut wakes = 0u32;
        let reason = loop {
            match drain(&shared, &mut deliver, &mut scratch, &mut stalled) {
                Err(reason) => break reason,
                Ok(0) => busy_passes = 0,
                Ok(_) => {
                    last_work = Instant::now();
                    busy_passes += 1;
                    if busy_passes.is_multiple_of(16) {
                        tokio::task::yield_now().await;
                    }
                    continue;
                }
            }
            // Nothing delivered. Within the spin budget, poll again after letting the
            // runtime run its other tasks (the application's, which may answer or send).
            if last_work.elapsed() < shared.spin {
                spins = spins.wrapping_add(1);
                crate::spin::pause(spins).await;
                continue;
            }
            // Entries waiting for a segment's memfd wait for the control socket, not the
            // ring: the ring has more, and its doorbell would not ring for them.
            if stalled.is_empty() {
                match deliver.prepare_sleep() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => break format!("deliver ring: {e}"),
                }
            }
            let woke = tokio::select! {
                _ = &mut stop => break "node dropped".to_owned(),
                () = shared.kick.notified() => {
                    last_work = Instant::now();
                    Ok(())
                }
                guard = bell.readable() => match guard {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        // An error is the engine's end closed: the engine let go of this
                        // node. (A closed end stays readable, and readiness costs no
                        // cooperative budget: ignoring it would spin here forever without
                        // ever handing the thread back to the runtime.)
                        bell.get_ref()
                            .drain()
                            .map(|_| shared.on_doorbell())
                            .map_err(|e| format!("doorbell: {e}"))
                    }
                    Err(e) => Err(format!("doorbell: {e}")),
                },
                frame = frames.next(sock) => match frame {
                    Ok(Some((EngineFrame::Error { req: 0, message, .. }, _))) => Err(format!("closed by the engine: {message}")),
                    Ok(Some((EngineFrame::Limit { req: 0, limit, max }, _))) => Err(format!(
                        "closed by the engine: limit {} of {max} reached",
                        control::Limit::from_u16(limit).map_or("unknown", control::Limit::name)
                    )),
                    Ok(Some((frame, fds))) => {
                        #[cfg(feature = "fault-injection")]
                        if shared.panic_on_frame.load(std::sync::atomic::Ordering::Relaxed) {
                            panic!("fault injection: the node's driver panics");
                        }
                        shared.on_frame(frame, fds)
                    }
                    Ok(None) => Err("the engine closed the connection".to_owned()),
                    Err(e) => Err(format!("control socket: {e}")),
                },
                reason = &mut writer => Err(reason),
            };
            deliver.woke();
            wakes = wakes.wrapping_add(1);
            if wakes.is_multiple_of(64) {
                // Some wake-ups (a kick, a readiness) cost no cooperative budget: never run
                // the thread unboundedly without letting the runtime poll its drivers.
                tokio::task::yield_now().await;
            }
            if let Err(reason) = woke {
                // Deliveries already in the ring were sent before the engine let go of us:
                // hand them to their sessions before failing everything else.
                let _ = drain(&shared, &mut deliver, &mut scratch, &mut stalled);
                break reason;
            }
        };
        death.end(&reason);
        // Unmap first (when no handle of the node is left), then close the socket: once the
        // engine sees this node gone, its block is no longer mapped here.
        drop((deliver, bell, scratch, shared, writer, frames));
        drop(stream);
    }
}

/// A payload (or a frame, `frame`) for session end `session`: to its reader, to the end's
/// early deliveries, or back to the engine if this node is closing the end.
fn received(
    ends: &mut ipc_core::IdMap<u32, EndSlot>,
    to_release: &mut Vec<RawDescriptor>,
    session: u32,
    view: ipc_core::RxView,
    frame: bool,
) {
    match ends
        .entry(session)
        .or_insert_with(|| EndSlot::Early(Vec::new()))
    {
        EndSlot::Open(core) => core.push_data(view, frame),
        EndSlot::Closing => to_release.push(view.release_entry()),
        EndSlot::Early(early) => early.push(Early::Data(view, frame)),
    }
}

/// What a pass of [`drain`] collects to do after it lets go of the node's state.
struct After {
    /// The arenas' bounds (receive, transmit), read once per pass.
    bounds: (ipc_core::ArenaBounds, ipc_core::ArenaBounds),
    to_release: Vec<RawDescriptor>,
    tx_freed: bool,
}

/// Pops and dispatches one batch from the deliver ring; returns how many entries moved on.
///
/// A `DATA` entry naming a hand-off segment needs the segment's memfd, which the engine sends
/// on the control socket just before it: if it has not been read yet, that entry and every
/// one after it wait in `stalled` (in order) until it has, and no more are popped meanwhile.
fn drain(
    shared: &Arc<NodeShared>,
    deliver: &mut Consumer<ShmRing>,
    scratch: &mut [RawDescriptor],
    stalled: &mut VecDeque<RawDescriptor>,
) -> Result<usize, String> {
    let layout = shared.block.layout();
    let mut after = After {
        bounds: (layout.rx.bounds(), layout.tx.bounds()),
        to_release: Vec::new(),
        tx_freed: false,
    };
    let mut moved = 0;
    {
        let mut state = shared.state();
        while let Some(raw) = stalled.front() {
            if !dispatch(shared, &mut state, raw, &mut after)? {
                break;
            }
            stalled.pop_front();
            moved += 1;
        }
        if stalled.is_empty() {
            let n = deliver
                .pop_batch(scratch)
                .map_err(|e| format!("deliver ring: {e}"))?;
            for (i, raw) in scratch[..n].iter().enumerate() {
                if !dispatch(shared, &mut state, raw, &mut after)? {
                    stalled.extend(&scratch[i..n]);
                    break;
                }
                moved += 1;
            }
        }
    }
    for entry in after.to_release {
        shared.release_entry(entry);
    }
    if after.tx_freed {
        shared.tx_waiters.wake_all();
    }
    if moved > 0 && deliver.needs_space_wake() {
        shared.ring_engine();
    }
    Ok(moved)
}

/// Hands one deliver-ring entry to its session, topic or queue; `false` if it names a
/// hand-off segment whose memfd has not arrived yet (nothing was done).
fn dispatch(
    shared: &Arc<NodeShared>,
    state: &mut crate::node::shared::State,
    raw: &RawDescriptor,
    after: &mut After,
) -> Result<bool, String> {
    if ipc_core::kind::is_topic(raw.kind) {
        crate::topic::on_entry(shared, state, *raw)?;
        return Ok(true);
    }
    if ipc_core::kind::is_queue(raw.kind) {
        let mut offsets = Vec::new();
        crate::queue::on_entry(shared, state, *raw, &mut offsets)?;
        after.to_release.extend(
            offsets
                .into_iter()
                .map(|offset| RawDescriptor::offset_only(ipc_core::kind::RELEASE, offset)),
        );
        return Ok(true);
    }
    let (rx, tx) = &after.bounds;
    let delivery =
        validate_deliver(raw, rx, tx).map_err(|e| format!("bad entry from the engine: {e}"))?;
    match delivery {
        Delivery::Segment {
            session,
            segment,
            len,
        } => {
            let Some((fd, size)) = state.arrived.remove(&segment) else {
                return Ok(false);
            };
            let view = SealedView::open(fd, u64::from(size))
                .map_err(|e| format!("bad segment {segment} from the engine: {e}"))?;
            let view = RxView::sealed(view, segment, len)
                .map_err(|e| format!("bad entry from the engine: {e}"))?;
            received(&mut state.ends, &mut after.to_release, session, view, false);
        }
        delivery @ (Delivery::Data {
            session,
            offset,
            len,
        }
        | Delivery::Frame {
            session,
            offset,
            len,
            ..
        }) => {
            let view = shared
                .block
                .rx_view(offset, len)
                .map_err(|e| format!("bad entry from the engine: {e}"))?;
            let frame = matches!(delivery, Delivery::Frame { .. });
            received(&mut state.ends, &mut after.to_release, session, view, frame);
        }
        Delivery::Fin { session } => {
            match state
                .ends
                .entry(session)
                .or_insert_with(|| EndSlot::Early(Vec::new()))
            {
                EndSlot::Open(core) => core.peer_fin(),
                EndSlot::Closing => {}
                EndSlot::Early(early) => early.push(Early::Fin),
            }
        }
        Delivery::Closed { session, reason } if reason == close_reason::CLOSE_ACK => {
            if matches!(state.ends.get(&session), Some(EndSlot::Closing)) {
                state.ends.remove(&session);
            }
        }
        Delivery::Closed { session, reason } => {
            match state
                .ends
                .entry(session)
                .or_insert_with(|| EndSlot::Early(Vec::new()))
            {
                EndSlot::Open(core) => core.peer_closed(reason),
                EndSlot::Closing => {}
                EndSlot::Early(early) => early.push(Early::Closed(reason)),
            }
        }
        Delivery::TxDone { offset } => {
            if let Err(e) = shared.tx.complete(offset) {
                tracing::warn!(node = %shared.name, error = %e, "engine completed a loan that is not in flight");
            }
            after.tx_freed = true;
        }
        Delivery::Credit {
            session,
            count,
            bytes,
        } => {
            if let Some(EndSlot::Open(core)) = state.ends.get(&session) {
                core.credit(count, bytes);
            }
        }
    }
    Ok(true)
}
