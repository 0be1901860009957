//! The router's data path: rings in, copies, deliveries, windows, rings out.
//!
//! Isolation (issue 9, docs/ARCHITECTURE.md "Isolation"): entries wait per receiving
//! *session end*, never per node. An entry whose payload does not fit the receiver's arena
//! now waits in its end's queue, and only entries behind it on the same end wait with it;
//! the ends with waiting entries are retried in turn whenever the receiver releases memory.
//! With every session's window bounded in messages and bytes, a stalled session holds at
//! most its window of the sender's and the receiver's arenas.

use std::collections::VecDeque;
use std::time::Instant;

use ipc_core::descriptor::close_reason;
use ipc_core::{
    AllocError, RawDescriptor, Submission, kind, validate_release, validate_submit, window_charge,
};

use crate::engine::command::{EndId, NodeId};
use crate::engine::link::{Inbound, Source};
use crate::engine::router::{BATCH, Router};
use crate::engine::violation::{Violation, ViolationKind};

impl Router {
    /// Drains one node's release ring. Returns whether anything was popped.
    pub(super) fn drain_release(&mut self, id: NodeId, now: Instant) -> bool {
        if self.is_doomed(id) {
            return false;
        }
        let Some(link) = self.links.get_mut(&id) else {
            return false;
        };
        let bounds = link.block.layout().rx.bounds();
        let n = match link.release.pop_batch(&mut self.scratch) {
            Ok(n) => n,
            Err(e) => {
                return self.violation(id, ViolationKind::RingIndex, format!("release ring: {e}"));
            }
        };
        if n == 0 {
            return false;
        }
        link.last_work = now;
        for i in 0..n {
            let raw = self.scratch[i];
            if kind::is_topic(raw.kind) {
                if let Err(v) = self.topic_release(id, &raw) {
                    self.doom(id, v);
                    return true;
                }
                continue;
            }
            if raw.segment != 0 && raw.kind == kind::RELEASE {
                if let Err(v) = self.release_segment(id, &raw) {
                    self.doom(id, v);
                    return true;
                }
                continue;
            }
            let link = self.links.get_mut(&id).expect("checked above");
            let offset = match validate_release(&raw, &bounds) {
                Ok(offset) => offset,
                Err(e) => {
                    return self.violation(
                        id,
                        ViolationKind::Descriptor,
                        format!("release entry: {e}"),
                    );
                }
            };
            if let Err(e) = link.rx.free(offset) {
                return self.violation(
                    id,
                    ViolationKind::Release,
                    format!("release of a sub-block it does not hold: {e}"),
                );
            }
            if let Some((sender, charge, messages)) = link.rx_owner.remove(&offset) {
                let due = self.credits_due.entry(sender).or_default();
                due.0 += messages;
                due.1 += charge;
            }
        }
        let link = self.links.get_mut(&id).expect("checked above");
        let (before, now) = link.publish_rx();
        self.stats.rx_in_use = (self.stats.rx_in_use + now).saturating_sub(before);
        if link.release.needs_space_wake() {
            link.ring_out();
        }
        if !link.blocked.is_empty() {
            self.released.push(id);
        }
        self.queue_node_released(id);
        true
    }

    fn violation(&mut self, id: NodeId, kind: ViolationKind, detail: String) -> bool {
        self.doom(id, Violation::new(kind, detail));
        true
    }

    /// Drains one node's submit ring. Returns whether anything was popped.
    pub(super) fn drain_submit(&mut self, id: NodeId, now: Instant) -> bool {
        if self.is_doomed(id) {
            return false;
        }
        let Some(link) = self.links.get_mut(&id) else {
            return false;
        };
        let bounds = link.block.layout().tx.bounds();
        let n = match link.submit.pop_batch(&mut self.scratch) {
            Ok(n) => n,
            Err(e) => {
                return self.violation(id, ViolationKind::RingIndex, format!("submit ring: {e}"));
            }
        };
        if n == 0 {
            return false;
        }
        link.last_work = now;
        if link.submit.needs_space_wake() {
            link.ring_out();
        }
        for i in 0..n {
            let raw = self.scratch[i];
            if kind::is_queue(raw.kind) {
                if let Err(violation) = self.queue_entry(id, &raw) {
                    self.doom(id, violation);
                    return true;
                }
                continue;
            }
            let result = validate_submit(&raw, &bounds)
                .map_err(|e| {
                    Violation::new(ViolationKind::Descriptor, format!("submit entry: {e}"))
                })
                .and_then(|submission| self.submission(id, submission));
            if let Err(violation) = result {
                self.doom(id, violation);
                return true;
            }
        }
        true
    }

    fn submission(&mut self, node: NodeId, submission: Submission) -> Result<(), Violation> {
        match submission {
            Submission::Data {
                session,
                offset,
                len,
            } if self.is_publisher(session) => self.topic_data(node, session, offset, len)?,
            Submission::Data {
                session,
                offset,
                len,
            } if self.is_producer(session) => self.queue_data(node, session, offset, len)?,
            Submission::Data {
                session,
                offset,
                len,
            } => {
                let charge = window_charge(len, self.links[&node].block.layout().tx.min_block);
                self.send_data(node, session, offset, len, charge, 0)?;
            }
            Submission::Segment { session, .. }
                if self.is_publisher(session) || self.is_producer(session) =>
            {
                return Err(Violation::new(
                    ViolationKind::Payload,
                    format!("segment on {session}: topics and queues carry no segments"),
                ));
            }
            Submission::Segment {
                session,
                segment,
                len,
            } => self.send_segment(node, session, segment, len)?,
            Submission::Frame { session, .. } if self.is_publisher(session) => {
                return Err(Violation::new(
                    ViolationKind::Frame,
                    format!("frame on publisher {session}: topics carry no frames"),
                ));
            }
            Submission::Frame {
                session,
                offset,
                len,
                records,
            } => {
                // The record count is read from the frame once, here, into engine memory, and
                // only that count is used (each record is a message of the window).
                let block = &self.links[&node].block;
                let records = ipc_core::scan_frame(block, offset, len, u64::from(records))
                    .map_err(|e| {
                        Violation::new(
                            ViolationKind::Frame,
                            format!("frame at {offset} of {len} bytes: {e}"),
                        )
                    })?;
                let charge = window_charge(len, block.layout().tx.min_block);
                self.send_data(node, session, offset, len, charge, records)?;
            }
            Submission::Fin { session } => {
                if let Some(route) = self.registry.fin(node, session)? {
                    let fin = RawDescriptor::control(kind::FIN, route.end, 0);
                    self.inbound(route.node, route.end, Inbound::Control(fin));
                }
            }
            Submission::Close { session } => {
                self.registry.check_owner(node, session)?;
                self.close_end(session, close_reason::PEER_CLOSED);
                // The closer learns, after anything still queued for the end, that nothing
                // more will come for it.
                let ack = RawDescriptor::control(kind::CLOSED, session, close_reason::CLOSE_ACK);
                self.inbound(node, session, Inbound::Control(ack));
            }
        }
        Ok(())
    }

    /// A payload (`records` 0) or a frame of `records` records, checked against `session`'s
    /// window and routed to its peer.
    fn send_data(
        &mut self,
        node: NodeId,
        session: EndId,
        offset: u64,
        len: u32,
        charge: u64,
        records: u32,
    ) -> Result<(), Violation> {
        match self.registry.send(node, session, charge, len, records)? {
            Some(route) => {
                let src = Source::Block {
                    block: self.links[&node].block.clone(),
                    offset,
                };
                self.inbound(
                    route.node,
                    route.end,
                    Inbound::Data {
                        src_node: node,
                        src,
                        src_end: session,
                        charge,
                        len,
                        records,
                    },
                );
            }
            // The peer is gone; the node has been told (CLOSED). Free the loan.
            None => self.tx_done(node, len, offset),
        }
        Ok(())
    }

    /// Frees a loan of `node`'s transmit arena (`TX_DONE`); empty payloads hold none.
    pub(super) fn tx_done(&mut self, node: NodeId, len: u32, offset: u64) {
        if len > 0 {
            self.push_out(node, RawDescriptor::offset_only(kind::TX_DONE, offset));
        }
    }

    /// Queues `entry` for `dst`'s deliver ring.
    pub(super) fn push_out(&mut self, dst: NodeId, entry: RawDescriptor) {
        if let Some(link) = self.links.get_mut(&dst) {
            link.outbox.push_back(entry);
            if !link.dirty {
                link.dirty = true;
                self.dirty.push(dst);
            }
        }
    }

    /// An entry for session end `end` of node `dst`: delivered at once unless entries of the
    /// same end wait ahead of it, or its payload does not fit now.
    pub(super) fn inbound(&mut self, dst: NodeId, end: EndId, entry: Inbound) {
        let Some(link) = self.links.get_mut(&dst) else {
            // The receiver is gone: its sender's loan comes back.
            self.discard(entry);
            return;
        };
        if let Some(queue) = link.waiting.get_mut(&end) {
            self.stats.waiting += usize::from(entry.is_data());
            queue.push_back(entry);
            return;
        }
        if let Err(entry) = self.deliver(dst, end, entry) {
            self.stats.waiting += usize::from(entry.is_data());
            let link = self.links.get_mut(&dst).expect("checked");
            link.waiting.insert(end, VecDeque::from([entry]));
            link.blocked.push_back(end);
        }
    }

    /// Delivers one entry into `dst`: copies data into its receive arena. Gives the entry back
    /// when the arena has no room now.
    fn deliver(&mut self, dst: NodeId, end: EndId, entry: Inbound) -> Result<(), Inbound> {
        // A sealed segment needs no room: it is handed over as it is.
        let entry = match entry {
            Inbound::Data {
                src: Source::Segment(lent),
                src_end,
                charge,
                len,
                ..
            } => {
                self.deliver_segment(dst, end, *lent, src_end, charge, len);
                return Ok(());
            }
            other => other,
        };
        // Borrowed, not taken apart: the entry goes back whole if the receiver has no room.
        let (src_node, src, src_end, charge, len, records) = match &entry {
            Inbound::Control(raw) => {
                self.push_out(dst, *raw);
                return Ok(());
            }
            Inbound::Data {
                src_node,
                src,
                src_end,
                charge,
                len,
                records,
            } => (*src_node, src, *src_end, *charge, *len, *records),
        };
        let link = self.links.get_mut(&dst).expect("caller checked");
        let allocation = match link.rx.alloc(u64::from(len)) {
            Ok(a) => a,
            Err(AllocError::Full { .. }) => return Err(entry),
            Err(e) => {
                // The sender's node checks sizes against the arenas before sending.
                self.doom(
                    src_node,
                    Violation::new(
                        ViolationKind::Payload,
                        format!("payload of {len} bytes cannot fit any receive arena: {e}"),
                    ),
                );
                return Ok(());
            }
        };
        let copied = match src {
            Source::Block { block, offset } => {
                ipc_core::copy_payload(block, *offset, &link.block, allocation.offset, len)
            }
            Source::Orphan(data) => ipc_core::copy_in(&link.block, allocation.offset, data),
            Source::Segment(_) => unreachable!("segments are handed over above"),
        };
        if let Err(e) = copied {
            let _ = link.rx.free(allocation.offset);
            self.doom(
                src_node,
                Violation::new(
                    ViolationKind::Payload,
                    format!("payload outside its arena: {e}"),
                ),
            );
            return Ok(());
        }
        link.rx_owner
            .insert(allocation.offset, (src_end, charge, records.max(1)));
        let (before, now) = link.publish_rx();
        self.stats.rx_in_use = (self.stats.rx_in_use + now).saturating_sub(before);
        let out = match records {
            0 => RawDescriptor::data(end, allocation.offset, len),
            k => RawDescriptor::frame(end, allocation.offset, len, k),
        };
        self.push_out(dst, out);
        self.stats.messages += u64::from(records.max(1));
        self.stats.frames += u64::from(records > 0);
        self.stats.bytes += u64::from(len);
        match entry {
            Inbound::Data {
                src: Source::Block { offset, .. },
                ..
            } => self.tx_done(src_node, len, offset),
            Inbound::Data {
                src: Source::Orphan(data),
                ..
            } => self.orphaned = self.orphaned.saturating_sub(data.len() as u64),
            Inbound::Data {
                src: Source::Segment(_),
                ..
            }
            | Inbound::Control(_) => {}
        }
        Ok(())
    }

    /// Drops an entry that will never be delivered, giving back what it holds: the sender's
    /// loan, or the engine memory of an orphan.
    pub(super) fn discard(&mut self, entry: Inbound) {
        match entry {
            Inbound::Data {
                src_node,
                src: Source::Block { offset, .. },
                len,
                ..
            } => self.tx_done(src_node, len, offset),
            Inbound::Data {
                src: Source::Orphan(data),
                ..
            } => self.orphaned = self.orphaned.saturating_sub(data.len() as u64),
            // Its memfd closes and its bytes go back to the budget as it drops.
            Inbound::Data {
                src: Source::Segment(_),
                ..
            }
            | Inbound::Control(_) => {}
        }
    }

    /// Retries the waiting ends of nodes that released memory, each in turn: an end whose
    /// head does not fit never holds back another end's entries. Returns whether any moved.
    pub(super) fn pump_released(&mut self) -> bool {
        let mut moved = false;
        while let Some(id) = self.released.pop() {
            moved |= self.pump(id);
        }
        moved
    }

    fn pump(&mut self, id: NodeId) -> bool {
        let mut moved = false;
        let rounds = self.links.get(&id).map_or(0, |l| l.blocked.len());
        for _ in 0..rounds {
            let Some(link) = self.links.get_mut(&id) else {
                break;
            };
            let Some(end) = link.blocked.pop_front() else {
                break;
            };
            let mut queue = link.waiting.remove(&end).unwrap_or_default();
            while let Some(entry) = queue.pop_front() {
                let data = usize::from(entry.is_data());
                match self.deliver(id, end, entry) {
                    Ok(()) => {
                        moved = true;
                        self.stats.waiting = self.stats.waiting.saturating_sub(data);
                    }
                    Err(entry) => {
                        queue.push_front(entry);
                        break;
                    }
                }
            }
            if !queue.is_empty()
                && let Some(link) = self.links.get_mut(&id)
            {
                link.waiting.insert(end, queue);
                link.blocked.push_back(end);
            }
        }
        moved
    }

    /// Returns the windows released this pass to their senders (one `CREDIT` per end).
    pub(super) fn flush_credits(&mut self) {
        // Taken out and put back: its capacity is reused, no allocation per pass.
        let mut due = std::mem::take(&mut self.credits_due);
        for (end, (messages, bytes)) in due.drain() {
            if let Some(node) = self.registry.refund(end, messages, bytes) {
                self.push_out(node, RawDescriptor::credit(end, u64::from(messages), bytes));
            }
        }
        self.credits_due = due;
    }

    /// Pushes what the dirty nodes' deliver rings take. Nodes whose ring is full stay dirty.
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.retain(|&id| self.flush_outbox(id));
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    /// Pushes as much of `id`'s outbox as its deliver ring takes, and rings it if it sleeps.
    /// Returns whether entries remain.
    fn flush_outbox(&mut self, id: NodeId) -> bool {
        let Some(link) = self.links.get_mut(&id) else {
            return false;
        };
        let mut pushed_any = false;
        while !link.outbox.is_empty() {
            let (front, _) = link.outbox.as_slices();
            match link.deliver.push_batch(front) {
                Ok(0) => break,
                Ok(n) => {
                    link.outbox.drain(..n);
                    pushed_any = true;
                }
                Err(e) => {
                    link.dirty = false;
                    self.doom(
                        id,
                        Violation::new(ViolationKind::RingIndex, format!("deliver ring: {e}")),
                    );
                    return false;
                }
            }
        }
        if pushed_any && link.deliver.needs_wake() {
            link.ring_out();
        }
        // An honest node has at most one TX_DONE per transmit sub-block, and CREDIT and DATA
        // entries bounded by its sessions' windows, waiting here. One that stops reading its
        // deliver ring while it keeps sending would grow this queue without bound.
        let layout = link.block.layout();
        let ends = self.registry.node(id).map_or(0, |n| n.ends.len());
        let credits = self.config.credits as usize;
        let cap = (layout.tx.size / layout.tx.min_block) as usize
            + 2 * credits * (ends + 1)
            + 2 * layout.deliver.capacity as usize;
        if link.outbox.len() > cap {
            let detail = format!(
                "{} entries wait for its deliver ring: it does not read it",
                link.outbox.len()
            );
            link.dirty = false;
            self.doom(id, Violation::new(ViolationKind::DeliverBacklog, detail));
            return false;
        }
        link.dirty = !link.outbox.is_empty();
        link.dirty
    }

    /// A node closed its connection: what it published in its rings before that still counts
    /// (data, half-closes, closes, releases). Bounded: a ring holds at most its capacity.
    pub(super) fn last_drain(&mut self, id: NodeId) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        let layout = *link.block.layout();
        let rounds = (layout.submit.capacity + layout.release.capacity) as usize / BATCH + 2;
        let now = Instant::now();
        for _ in 0..rounds {
            let released = self.drain_release(id, now);
            let submitted = self.drain_submit(id, now);
            if !(released || submitted) || !self.doomed.is_empty() {
                break;
            }
        }
        self.flush_credits();
        self.pump_released();
        self.flush_dirty();
    }
}
