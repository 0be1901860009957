//! Large payloads: hand-off segments (see [`ipc_core::segment`] and docs/ARCHITECTURE.md,
//! "Large payloads").
//!
//! A payload too large for the arenas gets a memfd of its own. The engine creates it for the
//! sender (charged to the sender's memory budget) and lends it (`SegmentOk`); the sender
//! fills it, unmaps it and names it in a `DATA` entry. The engine then seals it against
//! writing, for good, and hands the very same file to the receiver (`SegmentDelivery`,
//! followed by the `DATA` entry in its deliver ring): no copy, and the engine never maps it.
//! The receiver reads it in place and releases it with a `RELEASE` entry naming it, which
//! returns the window to the sender and the bytes to the budget.
//!
//! Everything a node names is checked against the engine's own tables: a segment id it was
//! not lent, one it sends twice or with a length beyond it, one it still maps writable when
//! it sends it, or a release of a segment it does not hold, closes that node only.

use ipc_core::control::{EngineFrame, ErrorCode};
use ipc_core::{RawDescriptor, SealError, Segment, validate_segment_release, window_charge};

use crate::engine::command::{EndId, NodeId, Outbound};
use crate::engine::link::{Held, Inbound, Lent, Source};
use crate::engine::memory::SegmentRefusal;
use crate::engine::router::Router;
use crate::engine::violation::{Violation, ViolationKind};

/// Hand-off segments of one sender alive at once (lent, on their way, or held by their
/// receivers): each is a descriptor of the engine's or of a receiver's, so the count is
/// bounded beside the bytes.
pub(crate) const MAX_SEGMENTS_PER_NODE: u64 = 64;

/// Hand-off segments alive in the whole engine.
pub(crate) const MAX_SEGMENTS: u64 = 1024;

/// A segment's bytes are charged in whole pages: a memfd holds no less.
const PAGE: u64 = 4096;

impl Router {
    /// A node asks for a segment of `len` bytes: lent with its memfd, or refused (a memory
    /// budget, too many segments, or no memory for a memfd).
    pub(super) fn lend_segment(&mut self, node: NodeId, req: u32, len: u32) {
        let memory = self.config.memory.clone();
        let Some(link) = self.links.get_mut(&node) else {
            return;
        };
        let refuse = |code: ErrorCode, message: String| EngineFrame::Error {
            req,
            code: code as u16,
            message,
        };
        // Only what no arena holds is handed off: a node's sink never asks for less, and
        // small segments would cost descriptors and pages far beyond their bytes.
        let arenas = link.block.layout().max_payload();
        if u64::from(len) <= arenas {
            let frame = refuse(
                ErrorCode::BadFrame,
                format!("a segment of {len} bytes: payloads up to {arenas} travel in the arenas"),
            );
            let _ = link.frames.send(frame.into());
            return;
        }
        let bytes = u64::from(len).div_ceil(PAGE) * PAGE;
        let charge = match memory.charge_segment(node, bytes, MAX_SEGMENTS_PER_NODE, MAX_SEGMENTS) {
            Ok(charge) => charge,
            Err(SegmentRefusal::Budget(limit, max)) => {
                let frame = EngineFrame::Limit {
                    req,
                    limit: limit as u16,
                    max,
                };
                let _ = link.frames.send(frame.into());
                return;
            }
            Err(SegmentRefusal::TooMany { max, engine }) => {
                let whose = if engine { "the engine" } else { "this node" };
                let frame = refuse(
                    ErrorCode::Resources,
                    format!("{max} hand-off segments of {whose} are alive: wait for releases"),
                );
                let _ = link.frames.send(frame.into());
                return;
            }
        };
        let id = link.next_segment();
        let segment = match Segment::create(u64::from(len), &format!("shmlink-seg-{node}-{id}")) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!(node, len, error = %e, "cannot create a hand-off segment");
                let frame = refuse(
                    ErrorCode::Resources,
                    format!("cannot create a segment: {e}"),
                );
                let _ = link.frames.send(frame.into());
                return;
            }
        };
        let fd = match segment.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                let frame = refuse(ErrorCode::Resources, format!("cannot lend a segment: {e}"));
                let _ = link.frames.send(frame.into());
                return;
            }
        };
        link.lent.insert(
            id,
            Lent {
                segment,
                memory: charge,
            },
        );
        let _ = link.frames.send(Outbound {
            frame: EngineFrame::SegmentOk {
                req,
                segment: id,
                len,
            },
            fd: Some(fd),
        });
    }

    /// `node` sends the first `len` bytes of segment `id` on `session`: sealed against
    /// writing, then routed to the peer like any payload.
    pub(super) fn send_segment(
        &mut self,
        node: NodeId,
        session: EndId,
        id: u32,
        len: u32,
    ) -> Result<(), Violation> {
        let link = self.links.get_mut(&node).expect("the caller's own link");
        let violation = |detail: String| Violation::new(ViolationKind::Payload, detail);
        let Some(lent) = link.lent.remove(&id) else {
            return Err(violation(format!("segment {id} is not lent to it")));
        };
        if u64::from(len) > lent.segment.len() {
            return Err(violation(format!(
                "{len} bytes of segment {id}, which holds {}",
                lent.segment.len()
            )));
        }
        // From here on nobody can change a byte of it: the receiver may read it in place.
        match lent.segment.seal_write() {
            Ok(()) => {}
            Err(SealError::StillMapped) => {
                return Err(violation(format!(
                    "segment {id} is still mapped writable when sent"
                )));
            }
            Err(e) => return Err(violation(format!("segment {id} cannot be sealed: {e}"))),
        }
        let charge = window_charge(len, self.links[&node].block.layout().tx.min_block);
        if let Some(route) = self.registry.send(node, session, charge, len, 0)? {
            self.inbound(
                route.node,
                route.end,
                Inbound::Data {
                    src_node: node,
                    src: Source::Segment(Box::new(lent)),
                    src_end: session,
                    charge,
                    len,
                    records: 0,
                },
            );
        }
        // The peer is gone: the segment and its bytes go now.
        Ok(())
    }

    /// Hands segment `lent` to `dst` for its end `end`: the memfd first (a control frame),
    /// then the `DATA` entry that names it. Never waits for room: the segment is its own.
    pub(super) fn deliver_segment(
        &mut self,
        dst: NodeId,
        end: EndId,
        lent: Lent,
        src_end: EndId,
        charge: u64,
        len: u32,
    ) {
        let Some(link) = self.links.get_mut(&dst) else {
            return;
        };
        let id = link.next_segment();
        let Lent { segment, memory } = lent;
        let size = u32::try_from(segment.len()).unwrap_or(u32::MAX);
        // The engine's own descriptor goes to the receiver: the receiver's (in flight, then
        // mapped) keeps the memory; the bytes stay charged to the sender until the release.
        let _ = link.frames.send(Outbound {
            frame: EngineFrame::SegmentDelivery {
                segment: id,
                len: size,
            },
            fd: Some(segment.into_fd()),
        });
        link.held.insert(
            id,
            Held {
                src_end,
                charge,
                _memory: memory,
            },
        );
        self.push_out(dst, RawDescriptor::segment_data(end, id, len));
        self.stats.messages += 1;
        self.stats.bytes += u64::from(len);
    }

    /// A release entry of `node` naming a segment: one delivered to it (its window goes back
    /// to the sender), or one lent to it and given back unused (its sender gave up).
    pub(super) fn release_segment(
        &mut self,
        node: NodeId,
        raw: &RawDescriptor,
    ) -> Result<(), Violation> {
        let id = validate_segment_release(raw).map_err(|e| {
            Violation::new(ViolationKind::Descriptor, format!("release entry: {e}"))
        })?;
        let link = self.links.get_mut(&node).expect("the caller's own link");
        let Some(held) = link.held.remove(&id) else {
            if link.lent.remove(&id).is_some() {
                return Ok(());
            }
            return Err(Violation::new(
                ViolationKind::Release,
                format!("release of segment {id}, which it does not hold"),
            ));
        };
        let due = self.credits_due.entry(held.src_end).or_default();
        due.0 += 1;
        due.1 += held.charge;
        Ok(())
    }
}
