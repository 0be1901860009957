//! The engine's side of one node's block: its rings, doorbells, receive allocator, and the
//! entries on their way into it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use ipc_core::{
    Block, BuddyAllocator, Consumer, Doorbell, IdMap, Producer, RawDescriptor, RingError, ShmRing,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::engine::command::{EndId, NodeId, Outbound};
use crate::engine::memory::Charge;

/// A message or control entry on its way into a session end, waiting for room in the
/// receiver's arena (or behind entries that do).
#[derive(Debug)]
pub(crate) enum Inbound {
    Data {
        src_node: NodeId,
        /// Where the payload is until it is copied.
        src: Source,
        src_end: EndId,
        /// Its window charge, returned to `src_end` when the receiver releases it.
        charge: u64,
        len: u32,
        /// 0 for a plain `DATA` entry; for a frame, the records the engine counted in it
        /// (each a message of `src_end`'s window).
        records: u32,
    },
    Control(RawDescriptor),
}

impl Inbound {
    pub(crate) fn is_data(&self) -> bool {
        matches!(self, Self::Data { .. })
    }
}

/// Where a payload waits to be copied.
#[derive(Debug)]
pub(crate) enum Source {
    /// In the sender's transmit arena, at `offset`.
    Block { block: Arc<Block>, offset: u64 },
    /// In engine memory: its sender is gone, and its block with it (`Router::bury`).
    Orphan(Box<[u8]>),
    /// In a write-sealed hand-off segment, handed to the receiver as it is (no copy).
    Segment(Box<Lent>),
}

/// One node's block as the engine drives it.
pub(crate) struct Link {
    pub(crate) name: String,
    pub(crate) block: Arc<Block>,
    /// The block's bytes in the memory budgets, given back when the link goes.
    _memory: Charge,
    pub(crate) submit: Consumer<ShmRing>,
    pub(crate) release: Consumer<ShmRing>,
    pub(crate) deliver: Producer<ShmRing>,
    bell_in: AsyncFd<Doorbell>,
    bell_waker: Waker,
    /// The node closed its end of `bell_in`: no longer watched (its socket tells the rest).
    bell_closed: bool,
    bell_out: Doorbell,
    /// The receive arena's allocator: engine memory, never the block (invariant 3).
    pub(crate) rx: BuddyAllocator<Vec<u8>>,
    /// Receive sub-blocks delivered and not yet released: the sender end to credit, and the
    /// window charge to return to it.
    pub(crate) rx_owner: IdMap<u64, (EndId, u64, u32)>,
    /// Entries per receiving end that wait for room; an end is in `blocked` exactly when its
    /// queue here is not empty, in the order the router retries them.
    pub(crate) waiting: IdMap<EndId, VecDeque<Inbound>>,
    pub(crate) blocked: VecDeque<EndId>,
    /// Entries for the deliver ring (it may be full).
    pub(crate) outbox: VecDeque<RawDescriptor>,
    /// The node is on the router's dirty list (its outbox has entries to push).
    pub(crate) dirty: bool,
    pub(crate) frames: mpsc::UnboundedSender<Outbound>,
    /// On the scheduler's active list.
    pub(crate) active: bool,
    /// When the router last found work in its rings.
    pub(crate) last_work: Instant,
    /// The receive arena's use last told to the node ([`Link::publish_rx`]).
    pub(crate) rx_published: u64,
    /// Hand-off segments lent to this node to fill, by id (see `engine/segments.rs`).
    pub(crate) lent: IdMap<u32, Lent>,
    /// Hand-off segments delivered to this node and not yet released, by id.
    pub(crate) held: IdMap<u32, Held>,
    /// The last segment id given out (ids of both tables share one space, never 0).
    pub(crate) last_segment: u32,
}

/// A hand-off segment lent to its sender, with its bytes in the sender's memory budget.
#[derive(Debug)]
pub(crate) struct Lent {
    pub(crate) segment: ipc_core::Segment,
    pub(crate) memory: Charge,
}

/// A hand-off segment delivered to its receiver: what its release gives back. The engine
/// keeps no descriptor of it (the receiver's mapping keeps the memory).
#[derive(Debug)]
pub(crate) struct Held {
    /// The sender's end, credited on release.
    pub(crate) src_end: EndId,
    /// Its window charge.
    pub(crate) charge: u64,
    /// Its bytes, still in the sender's memory budget until released.
    pub(crate) _memory: Charge,
}

impl Link {
    /// The next segment id of this node: never 0, never one still in use.
    pub(crate) fn next_segment(&mut self) -> u32 {
        loop {
            self.last_segment = self.last_segment.wrapping_add(1).max(1);
            let id = self.last_segment;
            if !self.lent.contains_key(&id) && !self.held.contains_key(&id) {
                return id;
            }
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .field("active", &self.active)
            .field("outbox", &self.outbox.len())
            .field("blocked", &self.blocked.len())
            .finish_non_exhaustive()
    }
}

/// The parts of a new link.
#[derive(Debug)]
pub(crate) struct LinkParts {
    pub(crate) name: String,
    pub(crate) block: Arc<Block>,
    pub(crate) memory: Charge,
    pub(crate) bell_in: AsyncFd<Doorbell>,
    pub(crate) bell_waker: Waker,
    pub(crate) bell_out: Doorbell,
    pub(crate) frames: mpsc::UnboundedSender<Outbound>,
}

impl Link {
    /// Tells the node how much of its receive arena is in use; returns the value told
    /// before and now (the engine keeps the sum over all nodes, `EngineStats::rx_in_use`).
    pub(crate) fn publish_rx(&mut self) -> (u64, u64) {
        let now = self.rx.in_use();
        self.block.publish_rx_in_use(now);
        (std::mem::replace(&mut self.rx_published, now), now)
    }

    /// A link for a block whose layout the node validated (and the engine created).
    pub(crate) fn new(parts: LinkParts) -> Result<Self, String> {
        let layout = *parts.block.layout();
        let tree = BuddyAllocator::<Vec<u8>>::tree_len(layout.rx.size, layout.rx.min_block)
            .map_err(|e| format!("cannot size the receive allocator: {e}"))?;
        let rx = BuddyAllocator::new(vec![0u8; tree], layout.rx.size, layout.rx.min_block)
            .map_err(|e| format!("cannot build the receive allocator: {e}"))?;
        Ok(Self {
            name: parts.name,
            submit: Consumer::new(parts.block.submit_ring()),
            release: Consumer::new(parts.block.release_ring()),
            deliver: Producer::new(parts.block.deliver_ring()),
            block: parts.block,
            _memory: parts.memory,
            bell_in: parts.bell_in,
            bell_waker: parts.bell_waker,
            bell_closed: false,
            bell_out: parts.bell_out,
            rx,
            rx_owner: IdMap::default(),
            waiting: IdMap::default(),
            blocked: VecDeque::new(),
            outbox: VecDeque::new(),
            dirty: false,
            frames: parts.frames,
            active: false,
            last_work: Instant::now(),
            rx_published: 0,
            lent: IdMap::default(),
            held: IdMap::default(),
            last_segment: 0,
        })
    }

    /// Rings the node (it sleeps on its deliver ring, or waits for room in a ring we consume).
    pub(crate) fn ring_out(&self) {
        if let Err(e) = self.bell_out.ring() {
            tracing::warn!(node = %self.name, error = %e, "doorbell write failed");
        }
    }

    /// Empties the engine's doorbell and registers the link's waker on it. True if it had
    /// rung (the node pushed meanwhile).
    fn poll_bell(&mut self) -> bool {
        if self.bell_closed {
            return false;
        }
        let mut cx = Context::from_waker(&self.bell_waker);
        let mut rang = false;
        // Ready means readiness to clear; a second poll registers the waker. Bounded: a
        // drained doorbell is not ready again until the node rings.
        for _ in 0..4 {
            match self.bell_in.poll_read_ready(&mut cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    match self.bell_in.get_ref().drain() {
                        Ok(n) => rang |= n > 0,
                        Err(_) => {
                            // Closed (it exited, or threw it away): a closed end stays
                            // readable, so stop watching it.
                            self.bell_closed = true;
                            return rang;
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(node = %self.name, error = %e, "doorbell poll failed");
                    self.bell_closed = true;
                    return true;
                }
            }
        }
        rang
    }

    /// Announces sleep on the rings the engine consumes and arms the doorbell. `Ok(false)`
    /// when work arrived meanwhile (the link stays active, its flags withdrawn).
    pub(crate) fn demote(&mut self) -> Result<bool, RingError> {
        if !self.submit.prepare_sleep()? {
            return Ok(false);
        }
        if !self.release.prepare_sleep()? {
            self.submit.woke();
            return Ok(false);
        }
        if self.poll_bell() {
            self.woke();
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws the sleep announcements (the link is active again) and empties its bell.
    pub(crate) fn activate(&mut self, now: Instant) {
        self.woke();
        self.poll_bell();
        self.last_work = now;
    }

    fn woke(&mut self) {
        self.submit.woke();
        self.release.woke();
        self.deliver.woke_space();
    }
}
