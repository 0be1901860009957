//! Memory budgets: the shared memory the engine creates, counted against an engine-wide
//! budget and a per-node one.
//!
//! Every block the engine creates for a node, and every topic segment, takes a [`Charge`]
//! before the memfd exists; the charge gives its bytes back when it is dropped, with the
//! block's link or the topic's segment. A memfd's pages count against the host's memory as
//! soon as anyone touches them (a node can `fallocate` its own block), so the budget counts
//! the bytes the engine hands out, touched or not: the host's shared memory held for nodes
//! never exceeds it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipc_core::control::Limit;

/// The engine's memory accounting, shared by the listener (blocks) and the router (topic
/// segments).
#[derive(Debug)]
pub(crate) struct Memory {
    used: AtomicU64,
    max: u64,
    per_node: u64,
    /// Bytes charged to each node (its block and the hand-off segments it asked for), and
    /// its hand-off segments alive.
    nodes: Mutex<HashMap<u32, (u64, u64)>>,
    /// Hand-off segments alive (lent, on their way, or held by their receivers).
    segments: AtomicU64,
}

impl Memory {
    pub(crate) fn new(max: u64, per_node: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
            per_node,
            nodes: Mutex::default(),
            segments: AtomicU64::new(0),
        })
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The engine-wide budget.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Takes `bytes` for node `node`'s memory: refused, naming the budget, past the per-node
    /// or the engine-wide budget.
    pub(crate) fn charge_node(
        self: &Arc<Self>,
        node: u32,
        bytes: u64,
    ) -> Result<Charge, (Limit, u64)> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let (held, _) = nodes.get(&node).copied().unwrap_or_default();
        if held.saturating_add(bytes) > self.per_node {
            return Err((Limit::NodeMemoryBudget, self.per_node));
        }
        let mut charge = self.charge(bytes)?;
        nodes.entry(node).or_default().0 += bytes;
        charge.node = Some(node);
        Ok(charge)
    }

    /// Takes `bytes` for a hand-off segment of node `node` (counted in
    /// [`Memory::segments`] until it drops): refused past `per_node` segments of that node
    /// alive or `engine` in all, or as [`Memory::charge_node`].
    pub(crate) fn charge_segment(
        self: &Arc<Self>,
        node: u32,
        bytes: u64,
        per_node: u64,
        engine: u64,
    ) -> Result<Charge, SegmentRefusal> {
        {
            let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let (_, alive) = nodes.get(&node).copied().unwrap_or_default();
            if alive >= per_node {
                return Err(SegmentRefusal::TooMany {
                    max: per_node,
                    engine: false,
                });
            }
        }
        if self.segments.load(Ordering::Relaxed) >= engine {
            return Err(SegmentRefusal::TooMany {
                max: engine,
                engine: true,
            });
        }
        let mut charge = self
            .charge_node(node, bytes)
            .map_err(|(limit, max)| SegmentRefusal::Budget(limit, max))?;
        charge.segment = true;
        self.segments.fetch_add(1, Ordering::Relaxed);
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.entry(node).or_default().1 += 1;
        Ok(charge)
    }

    /// Hand-off segments alive now.
    pub(crate) fn segments(&self) -> u64 {
        self.segments.load(Ordering::Relaxed)
    }

    /// Bytes charged to node `node` now.
    #[cfg(test)]
    pub(crate) fn node_used(&self, node: u32) -> u64 {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.get(&node).copied().unwrap_or_default().0
    }

    /// Takes `bytes` of the engine-wide budget: refused past it.
    pub(crate) fn charge(self: &Arc<Self>, bytes: u64) -> Result<Charge, (Limit, u64)> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .map_err(|_| (Limit::MemoryBudget, self.max))?;
        Ok(Charge {
            memory: self.clone(),
            bytes,
            node: None,
            segment: false,
        })
    }
}

/// Why a hand-off segment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentRefusal {
    /// A memory budget (which, and its value).
    Budget(Limit, u64),
    /// Too many segments alive: of the node, or (`engine`) of the whole engine.
    TooMany { max: u64, engine: bool },
}

/// Bytes taken from the budget, given back on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    memory: Arc<Memory>,
    bytes: u64,
    /// The node it is charged to, if any (topic segments are the engine's).
    node: Option<u32>,
    /// A hand-off segment's.
    segment: bool,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(node) = self.node {
            let mut nodes = self.memory.nodes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((held, alive)) = nodes.get_mut(&node) {
                *held = held.saturating_sub(self.bytes);
                if self.segment {
                    *alive = alive.saturating_sub(1);
                }
                if *held == 0 && *alive == 0 {
                    nodes.remove(&node);
                }
            }
        }
        if self.segment {
            self.memory.segments.fetch_sub(1, Ordering::Relaxed);
        }
        self.memory.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The host's physical memory, from `/proc/meminfo`; `None` when it cannot be read.
pub(crate) fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The default engine-wide budget: half of the host's memory (4 GiB when it cannot be read),
/// so nodes can never push the host into swapping or the OOM killer through the engine,
/// and the other half stays for the processes' own heaps.
pub(crate) fn default_budget() -> u64 {
    host_memory().map_or(4 << 30, |total| total / 2)
}

/// The default per-node budget: a quarter of the engine-wide one, so no single node can take
/// the memory of all others.
pub(crate) fn default_node_budget(engine: u64) -> u64 {
    engine / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_each_budget_and_given_back_on_drop() {
        let memory = Memory::new(100, 60);
        let a = memory.charge_node(1, 50).expect("within both");
        assert_eq!(
            memory.charge_node(1, 11).unwrap_err(),
            (Limit::NodeMemoryBudget, 60)
        );
        let a2 = memory.charge_node(1, 10).expect("the node's last 10");
        assert_eq!(memory.node_used(1), 60);
        let b = memory.charge(40).expect("exactly the rest");
        assert_eq!(memory.used(), 100);
        assert_eq!(memory.charge(1).unwrap_err(), (Limit::MemoryBudget, 100));
        assert_eq!(
            memory.charge_node(2, 1).unwrap_err(),
            (Limit::MemoryBudget, 100)
        );
        drop(a);
        assert_eq!((memory.used(), memory.node_used(1)), (50, 10));
        let c = memory.charge_node(2, 50).expect("room again");
        drop(b);
        drop(a2);
        assert_eq!((memory.used(), memory.node_used(1)), (50, 0));
        drop(c);
        assert_eq!((memory.used(), memory.node_used(2)), (0, 0));
    }

    #[test]
    fn segments_are_counted_per_node_and_in_all() {
        let memory = Memory::new(1 << 20, 1 << 20);
        let a: Vec<_> = (0..2)
            .map(|_| memory.charge_segment(1, 10, 2, 3).expect("two for node 1"))
            .collect();
        assert_eq!(
            memory.charge_segment(1, 10, 2, 3).unwrap_err(),
            SegmentRefusal::TooMany {
                max: 2,
                engine: false
            }
        );
        let b = memory
            .charge_segment(2, 10, 2, 3)
            .expect("the engine's third");
        assert_eq!(
            memory.charge_segment(3, 10, 2, 3).unwrap_err(),
            SegmentRefusal::TooMany {
                max: 3,
                engine: true
            }
        );
        assert_eq!(memory.segments(), 3);
        drop(a);
        assert_eq!(memory.segments(), 1);
        let _c = memory.charge_segment(1, 10, 2, 3).expect("room again");
        drop(b);
        assert_eq!((memory.segments(), memory.used()), (1, 10));
    }

    #[test]
    fn the_default_budget_is_half_the_host() {
        let host = host_memory().expect("/proc/meminfo on Linux");
        assert_eq!(default_budget(), host / 2);
        assert_eq!(default_node_budget(default_budget()), host / 8);
    }
}
