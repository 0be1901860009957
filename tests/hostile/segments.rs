//! Hostile children and hand-off segments (issue 15): ids the engine never lent, lengths past
//! a segment, a segment sent while still mapped writable, sent twice, or used after it was
//! given back, and releases of segments the node does not hold. Each closes that node only;
//! a well-behaved hand-off goes through and the target checks its bytes.

use ipc_core::{RawDescriptor, SegmentWriter};

use crate::attacks::{Attack, TARGET, closed, survived};
use crate::raw::{HOSTILE_SEED, PAYLOAD_MAX, RawNode};

/// The size of every segment asked for here: the engine lends only what no arena holds.
fn size(node: &RawNode) -> u32 {
    node.layout.max_payload() as u32 + 1
}

/// A segment lent, its first `len` bytes filled with the hostile pattern, then unmapped:
/// ready to send `len` bytes of it.
fn filled(node: &mut RawNode, len: u32) -> Result<u32, String> {
    let size = size(node);
    let (id, fd) = node.lend(size)?;
    let mut writer =
        SegmentWriter::open(fd, u64::from(size)).map_err(|e| format!("map segment {id}: {e}"))?;
    let pattern = crate::support::pattern(HOSTILE_SEED, 0, PAYLOAD_MAX);
    writer[..len as usize].copy_from_slice(&pattern[..len as usize]);
    writer.finish();
    Ok(id)
}

/// Opens `TARGET`, sends two valid messages, then lets `bad` submit (or release) what it
/// will, and waits to be closed: the target got exactly `sent` messages.
fn bad(
    socket: &str,
    me: &str,
    sent: u64,
    bad: impl FnOnce(&mut RawNode) -> Result<Vec<RawDescriptor>, String>,
) -> Attack {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    let entries = bad(&mut node)?;
    if !entries.is_empty() {
        node.submit(&entries)?;
    }
    closed(node, TARGET, sent, true)
}

/// Runs the segment attack `name`; `Ok(None)` if it is not one.
pub(crate) fn attack(socket: &str, me: &str, name: &str) -> Result<Option<Attack>, String> {
    let outcome = match name {
        "seg-valid" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let id = filled(&mut node, 3000)?;
            node.submit(&[RawDescriptor::segment_data(node.session, id, 3000)])?;
            node.in_flight += 1;
            survived(node, TARGET, 3, 10)
        }
        "seg-never-lent" => bad(socket, me, 2, |n| {
            Ok(vec![RawDescriptor::segment_data(n.session, 9, 100)])
        }),
        "seg-len-past-it" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            Ok(vec![RawDescriptor::segment_data(
                n.session,
                id,
                size(n) + 1,
            )])
        }),
        "seg-small" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            // A segment for what the arenas hold: refused, and the node goes on.
            match node.lend(1000) {
                Err(e) if e.contains("travel in the arenas") => {}
                other => return Err(format!("a segment of 1000 bytes: {other:?}")),
            }
            survived(node, TARGET, 2, 10)
        }
        "seg-offset" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            Ok(vec![RawDescriptor {
                offset: 4096,
                ..RawDescriptor::segment_data(n.session, id, 100)
            }])
        }),
        "seg-still-mapped" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let size = size(&node);
            let (id, fd) = node.lend(size)?;
            // Kept mapped writable while sent: the engine cannot seal it.
            let writer =
                SegmentWriter::open(fd, u64::from(size)).map_err(|e| format!("map: {e}"))?;
            node.submit(&[RawDescriptor::segment_data(node.session, id, 1000)])?;
            let outcome = closed(node, TARGET, 2, true);
            drop(writer);
            outcome
        }
        // The first goes through.
        "seg-sent-twice" => bad(socket, me, 3, |n| {
            let id = filled(n, 1000)?;
            let entry = RawDescriptor::segment_data(n.session, id, 1000);
            Ok(vec![entry, entry])
        }),
        "seg-after-giving-back" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            n.release(&[RawDescriptor::segment_release(id)])?;
            n.wait_release_consumed()?;
            Ok(vec![RawDescriptor::segment_data(n.session, id, 1000)])
        }),
        "seg-given-back-twice" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            let back = RawDescriptor::segment_release(id);
            n.release(&[back, back])?;
            Ok(Vec::new())
        }),
        "seg-release-offset" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            n.release(&[RawDescriptor {
                offset: 64,
                ..RawDescriptor::segment_release(id)
            }])?;
            Ok(Vec::new())
        }),
        "seg-on-a-frame" => bad(socket, me, 2, |n| {
            let id = filled(n, 1000)?;
            Ok(vec![RawDescriptor {
                segment: id,
                ..RawDescriptor::frame(n.session, 0, 8, 1)
            }])
        }),
        _ => return Ok(None),
    };
    Ok(Some(outcome))
}
