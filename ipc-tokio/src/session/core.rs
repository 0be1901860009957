//! The state of one session end, shared by its halves and the node's driver.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use ipc_core::RxView;
use ipc_core::descriptor::close_reason;

use crate::error::SessionError;

#[derive(Debug, Default)]
struct State {
    rx: VecDeque<RxView>,
    rx_waker: Option<Waker>,
    credits: u32,
    tx_waker: Option<Waker>,
    peer_fin: bool,
    /// Set when the session is over: `Closed` (the peer closed) or `Disconnected`.
    ended: Option<SessionError>,
    /// The stream reported `Disconnected` once already.
    reported: bool,
    /// Tasks waiting for the session to end ([`SessionCore::poll_ended`]).
    end_wakers: Vec<Waker>,
}

/// One session end.
#[derive(Debug)]
pub(crate) struct SessionCore {
    pub(crate) end: u32,
    pub(crate) peer: String,
    state: Mutex<State>,
}

impl SessionCore {
    pub(crate) fn new(end: u32, peer: String, credits: u32) -> Self {
        Self {
            end,
            peer,
            state: Mutex::new(State {
                credits,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_rx(state: &mut State) {
        if let Some(w) = state.rx_waker.take() {
            w.wake();
        }
    }

    fn wake_tx(state: &mut State) {
        if let Some(w) = state.tx_waker.take() {
            w.wake();
        }
    }

    pub(crate) fn push_data(&self, view: RxView) {
        let mut state = self.state();
        state.rx.push_back(view);
        Self::wake_rx(&mut state);
    }

    pub(crate) fn peer_fin(&self) {
        let mut state = self.state();
        state.peer_fin = true;
        Self::wake_rx(&mut state);
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

    fn end(&self, error: SessionError) {
        let mut state = self.state();
        if state.ended.is_none() {
            state.ended = Some(error);
        }
        Self::wake_rx(&mut state);
        Self::wake_tx(&mut state);
        for waker in state.end_wakers.drain(..) {
            waker.wake();
        }
    }

    /// Ready with the reason once the session is over (the peer closed, or a process died).
    pub(crate) fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<SessionError> {
        let mut state = self.state();
        if let Some(error) = &state.ended {
            return Poll::Ready(error.clone());
        }
        if !state.end_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.end_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(crate) fn add_credits(&self, count: u32) {
        let mut state = self.state();
        state.credits = state.credits.saturating_add(count);
        Self::wake_tx(&mut state);
    }

    /// Takes one credit, or registers to be woken when one comes back.
    pub(crate) fn poll_credit(&self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut state = self.state();
        if let Some(error) = &state.ended {
            return Poll::Ready(Err(error.clone()));
        }
        if state.credits > 0 {
            state.credits -= 1;
            return Poll::Ready(Ok(()));
        }
        state.tx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Gives back a credit taken for a message that was not sent.
    pub(crate) fn refund_credit(&self) {
        self.state().credits += 1;
    }

    /// The error sends get now, if the session is over.
    pub(crate) fn send_error(&self) -> Option<SessionError> {
        self.state().ended.clone()
    }

    /// The next received payload; `None` at the end; `Disconnected` once if the peer died.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<RxView, SessionError>>> {
        let mut state = self.state();
        if let Some(view) = state.rx.pop_front() {
            return Poll::Ready(Some(Ok(view)));
        }
        match &state.ended {
            Some(SessionError::Disconnected) if !state.reported => {
                state.reported = true;
                return Poll::Ready(Some(Err(SessionError::Disconnected)));
            }
            Some(_) => return Poll::Ready(None),
            None => {}
        }
        if state.peer_fin {
            return Poll::Ready(None);
        }
        state.rx_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Unread payloads (to release when the end closes).
    pub(crate) fn take_unread(&self) -> Vec<RxView> {
        self.state().rx.drain(..).collect()
    }
}
