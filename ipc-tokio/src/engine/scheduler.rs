//! Which nodes the router visits: the ones with work (docs/ARCHITECTURE.md, invariant 8).
//!
//! A node is *active* while it keeps the engine busy: the router polls its rings on every
//! pass. After `spin` without work it is *demoted*: the router announces sleep on its rings
//! (the waiting-flag protocol of `ipc_core::ring`, so its next push rings the engine's
//! doorbell) and arms its doorbell with a waker of its own. That waker, called by Tokio's
//! I/O driver when the doorbell becomes readable, puts the node's id on the *rung* list and
//! wakes the router, which activates it again. So a pass costs the active nodes only, and a
//! thousand idle nodes cost nothing until one of them rings: no task per node, and no poll
//! of every doorbell when the router parks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

use crate::engine::command::NodeId;

/// Nodes whose doorbell rang while they were demoted, and the router's waker.
#[derive(Debug, Default)]
struct Rung {
    ids: Mutex<Vec<NodeId>>,
    /// `ids` is not empty (checked without the lock on every pass).
    pending: AtomicBool,
    router: AtomicWaker,
}

/// The waker armed on one node's doorbell.
#[derive(Debug)]
struct BellWaker {
    node: NodeId,
    rung: Arc<Rung>,
}

impl Wake for BellWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rung
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.node);
        // SYNC: publishes the push above; pairs with the Acquire swap in `Scheduler::take_rung`.
        self.rung.pending.store(true, Ordering::Release);
        self.rung.router.wake();
    }
}

/// The active list and the rung list.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    rung: Arc<Rung>,
    /// Nodes the router polls on every pass (each once; `Link::active` mirrors membership).
    pub(crate) active: Vec<NodeId>,
}

impl Scheduler {
    /// The waker to arm on `node`'s doorbell.
    pub(crate) fn bell_waker(&self, node: NodeId) -> Waker {
        Waker::from(Arc::new(BellWaker {
            node,
            rung: self.rung.clone(),
        }))
    }

    /// Moves the ids of nodes that rang into `out` (possibly with duplicates, or ids of
    /// nodes already gone: the caller checks).
    pub(crate) fn take_rung(&self, out: &mut Vec<NodeId>) {
        // SYNC: pairs with the Release store in `BellWaker::wake_by_ref`.
        if self.rung.pending.swap(false, Ordering::Acquire) {
            out.append(&mut self.rung.ids.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Ready once a demoted node rang; registers the router's waker first, so a ring that
    /// lands between the check and the park still wakes it.
    pub(crate) fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.rung.router.register(cx.waker());
        if self.rung.pending.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bell_waker_queues_its_node_and_wakes_the_router() {
        let sched = Scheduler::default();
        let waker = sched.bell_waker(7);
        let mut out = Vec::new();
        sched.take_rung(&mut out);
        assert!(out.is_empty());
        let noop = futures::task::noop_waker();
        let mut cx = Context::from_waker(&noop);
        assert!(sched.poll_rung(&mut cx).is_pending());
        waker.wake_by_ref();
        sched.bell_waker(9).wake();
        assert!(sched.poll_rung(&mut cx).is_ready());
        sched.take_rung(&mut out);
        assert_eq!(out, [7, 9]);
        assert!(sched.poll_rung(&mut cx).is_pending());
    }
}
