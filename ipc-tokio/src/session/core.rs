//! The state of one session end, shared by its halves and the node's driver.
//!
//! The receiving side (unread deliveries, the peer's half-close) and the sending side (the
//! window) live apart, each behind its own lock; how the session ended is set once and read
//! by both.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use ipc_core::RxView;
use ipc_core::descriptor::close_reason;

use crate::error::SessionError;
use crate::node::WaitList;

/// A delivery not yet read: one payload, or a frame of several (see [`ipc_core::frame`]).
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) view: RxView,
    pub(crate) frame: bool,
}

/// What the receiving half reads.
#[derive(Debug, Default)]
struct RxState {
    queue: VecDeque<Received>,
    waker: Option<Waker>,
    peer_fin: bool,
    /// The stream reported `Disconnected` once already.
    reported: bool,
}

/// The sending half's window: messages and bytes taken (reserved by a [`Permit`] or in
/// flight until the engine's `CREDIT` gives them back).
#[derive(Debug)]
struct TxState {
    credits: u32,
    window_bytes: u64,
    msgs: u32,
    bytes: u64,
    waker: Option<Waker>,
}

/// One session end.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) end: u32,
    pub(crate) peer: String,
    rx: Mutex<RxState>,
    tx: Mutex<TxState>,
    /// Set once when the session is over: `Closed` (the peer closed) or `Disconnected`.
    ended: OnceLock<SessionError>,
    /// Tasks waiting for the session to end ([`SessionCore::poll_ended`]).
    end_waiters: WaitList,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionCore {
    pub(crate) fn new(end: u32, peer: String, credits: u32, window_bytes: u64) -> Self {
        Self {
            end,
            peer,
            rx: Mutex::default(),
            tx: Mutex::new(TxState {
                credits,
                window_bytes,
                msgs: 0,
                bytes: 0,
                waker: None,
            }),
            ended: OnceLock::new(),
            end_waiters: WaitList::default(),
        }
    }

    fn wake(waker: &mut Option<Waker>) {
        if let Some(w) = waker.take() {
            w.wake();
        }
    }

    pub(crate) fn push_data(&self, view: RxView, frame: bool) {
        let mut rx = lock(&self.rx);
        rx.queue.push_back(Received { view, frame });
        Self::wake(&mut rx.waker);
    }

    pub(crate) fn peer_fin(&self) {
        let mut rx = lock(&self.rx);
        rx.peer_fin = true;
        Self::wake(&mut rx.waker);
    }

    pub(crate) fn peer_closed(&self, reason: u64) {
        let error = if reason == close_reason::PEER_CLOSED {
            SessionError::Closed
        } else {
            SessionError::Disconnected
        };
        self.end(error);
    }

    pub(crate) fn disconnect(&self) {
        self.end(SessionError::Disconnected);
    }

    /// Marks the session over (the first reason stays) and wakes every waiter. Set before
    /// the wakers are taken, under the same locks the pollers check it with: a poller either
    /// sees it or is woken.
    fn end(&self, error: SessionError) {
        let _ = self.ended.set(error);
        Self::wake(&mut lock(&self.rx).waker);
        Self::wake(&mut lock(&self.tx).waker);
        self.end_waiters.wake_all();
    }

    /// Ready with the reason once the session is over (the peer closed, or a process died).
    pub(crate) fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<SessionError> {
        if let Some(error) = self.ended.get() {
            return Poll::Ready(error.clone());
        }
        self.end_waiters.register(cx.waker());
        match self.ended.get() {
            Some(error) => Poll::Ready(error.clone()),
            None => Poll::Pending,
        }
    }

    /// The window's size: messages and bytes.
    pub(crate) fn window(&self) -> (u32, u64) {
        let tx = lock(&self.tx);
        (tx.credits, tx.window_bytes)
    }

    /// A sealed frame takes `bytes` more of the window than its records did (its rounding up
    /// to its size class); taken at once, even beyond the window: later sends then wait.
    pub(crate) fn charge_rounding(&self, bytes: u64) {
        lock(&self.tx).bytes += bytes;
    }

    /// The engine gave back `count` messages and `bytes` of the window.
    pub(crate) fn credit(&self, count: u32, bytes: u64) {
        let mut tx = lock(&self.tx);
        tx.msgs = tx.msgs.saturating_sub(count);
        tx.bytes = tx.bytes.saturating_sub(bytes);
        Self::wake(&mut tx.waker);
    }

    /// Reserves one message of the window, or registers to be woken when one comes back.
    pub(crate) fn poll_permit(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, SessionError>> {
        let mut tx = lock(&self.tx);
        if let Some(error) = self.ended.get() {
            return Poll::Ready(Err(error.clone()));
        }
        if tx.msgs < tx.credits {
            tx.msgs += 1;
            return Poll::Ready(Ok(Permit {
                core: self.clone(),
                msgs: 1,
                bytes: 0,
            }));
        }
        tx.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The error sends get now, if the session is over.
    pub(crate) fn send_error(&self) -> Option<SessionError> {
        self.ended.get().cloned()
    }

    /// The next received payload or frame; `None` at the end; `Disconnected` once if the peer
    /// died.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Received, SessionError>>> {
        let mut rx = lock(&self.rx);
        if let Some(view) = rx.queue.pop_front() {
            return Poll::Ready(Some(Ok(view)));
        }
        match self.ended.get() {
            Some(SessionError::Disconnected) if !rx.reported => {
                rx.reported = true;
                return Poll::Ready(Some(Err(SessionError::Disconnected)));
            }
            Some(_) => return Poll::Ready(None),
            None => {}
        }
        if rx.peer_fin {
            return Poll::Ready(None);
        }
        rx.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Unread payloads (to release when the end closes).
    pub(crate) fn take_unread(&self) -> Vec<RxView> {
        lock(&self.rx).queue.drain(..).map(|r| r.view).collect()
    }
}

/// A share of a session end's window: one message, and (once the payload's length is known)
/// its bytes. Dropped, it gives them back; [`Permit::consume`] hands them to the entry pushed
/// on the submit ring instead, until the engine's `CREDIT` returns them.
#[derive(Debug)]
pub(crate) struct Permit {
    core: Arc<SessionCore>,
    msgs: u32,
    bytes: u64,
}

impl Permit {
    /// Takes `charge` bytes of the window for this permit's message (it holds none yet), or
    /// registers to be woken when a `CREDIT` returns enough. A message may take the window
    /// beyond its size only when nothing else holds any of it: it then goes alone.
    pub(crate) fn poll_bytes(
        &mut self,
        charge: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        match self.try_bytes(charge) {
            Ok(true) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
            Ok(false) => {
                let mut tx = lock(&self.core.tx);
                tx.waker = Some(cx.waker().clone());
                drop(tx);
                // A CREDIT between the try and the registration would have found no waker.
                match self.try_bytes(charge) {
                    Ok(true) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(e)),
                    Ok(false) => Poll::Pending,
                }
            }
        }
    }

    /// As [`Permit::poll_bytes`], without waiting: whether the bytes were taken.
    pub(crate) fn try_bytes(&mut self, charge: u64) -> Result<bool, SessionError> {
        if self.bytes >= charge {
            return Ok(true);
        }
        let mut tx = lock(&self.core.tx);
        if let Some(error) = self.core.ended.get() {
            return Err(error.clone());
        }
        let more = charge - self.bytes;
        let others = tx.bytes - self.bytes;
        if others == 0 || tx.bytes + more <= tx.window_bytes {
            tx.bytes += more;
            self.bytes = charge;
            return Ok(true);
        }
        Ok(false)
    }

    /// The message's entry goes on the submit ring: its message and `charge` bytes stay taken
    /// until the engine credits them back; bytes taken beyond `charge` return now.
    pub(crate) fn consume(mut self, charge: u64) {
        let mut tx = lock(&self.core.tx);
        let spare = self.bytes.saturating_sub(charge);
        let extra = charge.saturating_sub(self.bytes);
        tx.bytes = tx.bytes.saturating_sub(spare) + extra;
        self.msgs = 0;
        self.bytes = 0;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.msgs == 0 && self.bytes == 0 {
            return;
        }
        let mut tx = lock(&self.core.tx);
        tx.msgs = tx.msgs.saturating_sub(self.msgs);
        tx.bytes = tx.bytes.saturating_sub(self.bytes);
        SessionCore::wake(&mut tx.waker);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn core(credits: u32, window: u64) -> Arc<SessionCore> {
        Arc::new(SessionCore::new(1, "peer".into(), credits, window))
    }

    fn permit(core: &Arc<SessionCore>, cx: &mut Context<'_>) -> Permit {
        match core.poll_permit(cx) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    #[test]
    fn messages_and_bytes_both_bound_the_window() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let core = core(3, 1000);
        // Two messages of 400 bytes fit; a third of 400 does not (1200 > 1000)...
        for _ in 0..2 {
            let mut p = permit(&core, &mut cx);
            assert!(p.poll_bytes(400, &mut cx).is_ready());
            p.consume(400);
        }
        let mut third = permit(&core, &mut cx);
        assert!(third.poll_bytes(400, &mut cx).is_pending());
        // ...but one of 200 does; then no message is left.
        assert!(third.poll_bytes(200, &mut cx).is_ready());
        third.consume(200);
        assert!(core.poll_permit(&mut cx).is_pending());
        // A credit of one message and 400 bytes wakes the waiting sender.
        let before = count.0.load(Ordering::SeqCst);
        core.credit(1, 400);
        assert!(count.0.load(Ordering::SeqCst) > before);
        let mut p = permit(&core, &mut cx);
        assert!(p.poll_bytes(400, &mut cx).is_ready());
    }

    #[test]
    fn a_message_beyond_the_window_goes_alone() {
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let core = core(8, 1000);
        let mut small = permit(&core, &mut cx);
        assert!(small.poll_bytes(100, &mut cx).is_ready());
        small.consume(100);
        let mut big = permit(&core, &mut cx);
        assert!(big.poll_bytes(5000, &mut cx).is_pending());
        core.credit(1, 100);
        assert!(big.poll_bytes(5000, &mut cx).is_ready());
        big.consume(5000);
        let mut after = permit(&core, &mut cx);
        assert!(after.poll_bytes(1, &mut cx).is_pending());
    }

    #[test]
    fn a_dropped_permit_gives_back_and_a_consumed_one_keeps() {
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let core = core(1, 1000);
        let mut p = permit(&core, &mut cx);
        assert!(p.poll_bytes(1000, &mut cx).is_ready());
        drop(p);
        // Both the message and the bytes came back.
        let mut p = permit(&core, &mut cx);
        assert!(p.poll_bytes(1000, &mut cx).is_ready());
        // Consumed with a smaller charge (the payload shrank): the rest comes back now.
        p.consume(600);
        core.credit(1, 0);
        let mut q = permit(&core, &mut cx);
        assert!(q.poll_bytes(400, &mut cx).is_ready());
        assert!(q.poll_bytes(401, &mut cx).is_pending());
    }

    #[test]
    fn the_end_of_the_session_fails_every_waiter() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let core = core(1, 1000);
        let mut p = permit(&core, &mut cx);
        assert!(core.poll_permit(&mut cx).is_pending());
        core.disconnect();
        assert!(count.0.load(Ordering::SeqCst) > 0);
        assert!(matches!(
            core.poll_permit(&mut cx),
            Poll::Ready(Err(SessionError::Disconnected))
        ));
        assert_eq!(
            p.poll_bytes(10, &mut cx),
            Poll::Ready(Err(SessionError::Disconnected))
        );
        assert_eq!(
            core.poll_ended(&mut cx),
            Poll::Ready(SessionError::Disconnected)
        );
    }
}
