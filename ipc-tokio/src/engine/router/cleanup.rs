//! The router's cleanup: condemning a node that broke the protocol, burying doomed nodes
//! (their blocks, sessions and services; their peers told; their waiting payloads adopted
//! within the orphan budget), and closing single ends.

use ipc_core::control::{EngineFrame, ErrorCode};
use ipc_core::{Block, RawDescriptor, descriptor::close_reason, kind};

use super::{Doom, Router};
use crate::engine::command::{EndId, NodeId};
use crate::engine::link::{Inbound, Source};
use crate::engine::violation::Violation;

impl Router {
    /// Condemns a node for breaking the protocol: counted once, its first reason kept, and
    /// nothing it writes afterwards is acted on (it is buried at the end of the pass).
    pub(in crate::engine) fn doom(&mut self, node: NodeId, violation: Violation) {
        if self.is_doomed(node) {
            return;
        }
        self.stats.violations += 1;
        self.doomed.push((node, Doom::Violation(violation)));
    }

    pub(in crate::engine) fn is_doomed(&self, node: NodeId) -> bool {
        self.doomed.iter().any(|(id, _)| *id == node)
    }

    /// Closes every doomed node: its block, rings, doorbells, sessions and services go; its
    /// peers get `CLOSED(PEER_DISCONNECTED)`; senders into it get their loans back.
    pub(in crate::engine) fn bury(&mut self) {
        // In the order they were condemned (burying one can condemn another).
        while !self.doomed.is_empty() {
            let (id, doom) = self.doomed.remove(0);
            let Some(mut link) = self.links.remove(&id) else {
                continue;
            };
            let _span = tracing::info_span!("bury", node = id, name = %link.name).entered();
            self.stats.rx_in_use = self.stats.rx_in_use.saturating_sub(link.rx_published);
            let entry = self.registry.remove_node(id);
            let (pid, uid) = entry.as_ref().map_or((None, 0), |e| (e.pid, e.uid));
            let reason = match &doom {
                Doom::Left(reason) => {
                    tracing::info!(node = id, name = %link.name, ?pid, uid, %reason, "node left");
                    reason.clone()
                }
                Doom::Violation(v) => {
                    tracing::warn!(node = id, name = %link.name, ?pid, uid, kind = ?v.kind, detail = %v.detail, "closing node");
                    v.to_string()
                }
            };
            let _ = link.frames.send(
                EngineFrame::Error {
                    req: 0,
                    code: ErrorCode::BadFrame as u16,
                    message: format!("closed by the engine: {reason}"),
                }
                .into(),
            );
            if let Some(entry) = entry {
                for &end in &entry.ends {
                    self.close_end(end, close_reason::PEER_DISCONNECTED);
                }
            }
            // Loans other nodes sent into the dead node and that were never copied.
            for (_, queue) in link.waiting.drain() {
                for entry in queue {
                    self.stats.waiting = self
                        .stats
                        .waiting
                        .saturating_sub(usize::from(entry.is_data()));
                    self.discard(entry);
                }
            }
            self.topic_node_gone(id);
            self.queue_node_gone(id);
            self.adopt_orphans(id, &link.block);
            drop(link); // unmaps the block, closes the memfd and both doorbells
        }
    }

    /// Payloads the dead node `id` sent that still wait for room in other nodes: copied into
    /// engine memory, within the engine-wide orphan budget, so that its block and fds go now
    /// whatever its peers do. Past the budget, the rest of such a session's waiting data is
    /// dropped: its receiver then reads up to the gap and learns that the peer is gone
    /// (`Disconnected`, queued behind) — never a silent gap followed by more data.
    fn adopt_orphans(&mut self, id: NodeId, block: &Block) {
        let budget = self.config.orphan_budget;
        let mut orphaned = self.orphaned;
        let mut dropped = 0usize;
        for link in self.links.values_mut() {
            if link.blocked.is_empty() {
                continue;
            }
            for queue in link.waiting.values_mut() {
                let mut cut = false;
                queue.retain_mut(|entry| {
                    let Inbound::Data {
                        src_node, src, len, ..
                    } = entry
                    else {
                        return true;
                    };
                    if *src_node != id {
                        return true;
                    }
                    // A sealed segment needs nothing of the dead node: it goes on, unless
                    // data ahead of it on this end was dropped.
                    if matches!(src, Source::Segment(_)) {
                        dropped += usize::from(cut);
                        return !cut;
                    }
                    let Source::Block { offset, .. } = src else {
                        return true;
                    };
                    let len64 = u64::from(*len);
                    if !cut && orphaned.saturating_add(len64) <= budget {
                        match ipc_core::copy_out(block, *offset, *len) {
                            Ok(data) => {
                                *src = Source::Orphan(data.into_boxed_slice());
                                orphaned += len64;
                                return true;
                            }
                            Err(e) => {
                                tracing::warn!(node = id, error = %e, "cannot keep a payload of a node that left");
                            }
                        }
                    }
                    cut = true;
                    dropped += 1;
                    false
                });
            }
        }
        self.orphaned = orphaned;
        self.stats.waiting = self.stats.waiting.saturating_sub(dropped);
        if dropped > 0 {
            tracing::warn!(
                node = id,
                dropped,
                budget,
                "orphan budget exhausted: payloads of a node that left were dropped, their receivers see it disconnected"
            );
        }
    }

    /// Removes `end`; its peer learns why (after any data still queued for it).
    pub(in crate::engine) fn close_end(&mut self, end: EndId, reason: u64) {
        self.credits_due.remove(&end);
        if let Some(route) = self.registry.close_end(end) {
            self.inbound(
                route.node,
                route.end,
                Inbound::Control(RawDescriptor::control(kind::CLOSED, route.end, reason)),
            );
        }
    }
}
