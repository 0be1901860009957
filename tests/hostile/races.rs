//! Hostile children that race the engine: a thread of theirs rewrites a published entry
//! while the engine drains it (double fetch), or they turn their doorbell into one that
//! blocks whoever writes it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ipc_core::RawDescriptor;

use crate::attacks::{Attack, Outcome, TARGET, TARGET_HELLO, closed, release_of, with_hello};
use crate::raw::{RawNode, WAITING, poke_fd, slot_offset};
use crate::support::{self, Commands};

/// A valid `DATA` (100 bytes at offset 0) and an invalid one, such that any byte-wise mix of
/// the two (a torn read) is invalid too unless it is the valid one: `len` differs only in
/// its top byte (0 or 0xFF: 100 or far beyond the arena), `offset` in its low byte
/// (misaligned) and its five top bytes (far beyond the arena).
const VALID_LEN: u32 = 100;
const BAD_LEN: u32 = 0xFF00_0064;
const BAD_OFFSET: u64 = 0xFFFF_FFFF_FF00_00FF;

/// `len` and `offset` of a descriptor, contiguous at bytes 12..24.
fn len_offset_bytes(len: u32, offset: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b[4..].copy_from_slice(&offset.to_ne_bytes());
    b
}

/// A thread that keeps rewriting the bytes at the offset in `at` (0: idle) until `stop`:
/// once `bad`, then seven times `good`, so that the engine mostly reads a valid value that
/// is being rewritten, and now and then the invalid one (or a torn mix).
fn flipper(
    block: Arc<ipc_core::Block>,
    at: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    bad: Vec<u8>,
    good: Vec<u8>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut flips = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let offset = at.load(Ordering::Relaxed);
            if offset == 0 {
                std::thread::yield_now();
                continue;
            }
            poke_fd(block.fd(), offset, &bad);
            for _ in 0..7 {
                poke_fd(block.fd(), offset, &good);
            }
            flips += 1;
        }
        flips
    })
}

/// The engine reads each submit slot once while another thread of ours keeps flipping it
/// between a valid and an invalid value: it must either copy the valid message or close us.
pub(crate) fn flipped_descriptor(socket: &str, me: &str) -> Attack {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    let at = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let field = offset_of_len();
    let thread = flipper(
        node.block.clone(),
        at.clone(),
        stop.clone(),
        len_offset_bytes(BAD_LEN, BAD_OFFSET).to_vec(),
        len_offset_bytes(VALID_LEN, 0).to_vec(),
    );
    let mut sent = 0u64;
    for _ in 0..2000 {
        let credits = node.credits;
        if node
            .wait_until("a credit", |n| n.in_flight < credits)
            .is_err()
        {
            break;
        }
        let slot = slot_offset(&node.layout.submit, node.submit_tail);
        at.store(slot + field, Ordering::Relaxed);
        let d = node.data(VALID_LEN);
        if node.submit(&[d]).is_err() {
            break;
        }
        node.in_flight += 1;
        sent += 1;
        if node.wait_submit_consumed().is_err() {
            break;
        }
        at.store(0, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    let flips = thread.join().map_err(|_| "the flipping thread panicked")?;
    if flips == 0 {
        return Err("the flipping thread never ran".into());
    }
    if !node.closed {
        // The engine read a valid copy every time: now an invalid one for sure, so that
        // every run ends the same way.
        let bad = RawDescriptor::data(node.session, BAD_OFFSET, BAD_LEN);
        node.submit(&[bad])?;
    }
    closed(node, TARGET, sent, false)
}

fn offset_of_len() -> u64 {
    std::mem::offset_of!(RawDescriptor, len) as u64
}

/// The same on the release ring: a release flips between the sub-block we really got and an
/// offset outside the arena.
pub(crate) fn flipped_release(socket: &str, me: &str) -> Attack {
    let (mut node, data) = with_hello(socket, me)?;
    let field = std::mem::offset_of!(RawDescriptor, offset) as u64;
    let slot = slot_offset(&node.layout.release, node.release_tail);
    let at = Arc::new(AtomicU64::new(slot + field));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = flipper(
        node.block.clone(),
        at,
        stop.clone(),
        u64::MAX.to_ne_bytes().to_vec(),
        data.offset.to_ne_bytes().to_vec(),
    );
    node.release(&[release_of(data.offset)])?;
    let consumed = node.wait_release_consumed();
    stop.store(true, Ordering::Relaxed);
    thread.join().map_err(|_| "the flipping thread panicked")?;
    if consumed.is_ok() && !node.closed {
        // A valid copy was taken and the sub-block freed: a second release is a double one.
        node.release(&[release_of(data.offset)])?;
    }
    closed(node, TARGET_HELLO, 0, true)
}

// ===== a doorbell that blocks =====

/// The node's doorbell is an eventfd whose open file description the engine shares: we
/// clear `O_NONBLOCK` on it (fcntl F_SETFL acts on the shared description), fill its counter
/// to the maximum, and ask to be woken. The engine's next ring of ours is a `write` that
/// would overflow the counter: on a blocking eventfd it waits until we read, i.e. as long as
/// we like. The parent checks whether the engine kept serving others meanwhile, then tells
/// us to let go (`UNBLOCK`).
pub(crate) async fn blocking_node_doorbell(socket: &str, me: &str, cmds: &mut Commands) -> Attack {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    // A duplicate: the same open file description, whose flags the engine's copy shares.
    let bell = node
        .node_bell
        .try_clone_fd()
        .map_err(|e| format!("dup: {e}"))?;
    let bell = bell.as_fd();
    let flags = rustix::fs::fcntl_getfl(bell).map_err(|e| format!("getfl: {e}"))?;
    rustix::fs::fcntl_setfl(bell, flags - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| format!("setfl: {e}"))?;
    rustix::io::write(bell, &(u64::MAX - 1).to_ne_bytes())
        .map_err(|e| format!("fill our doorbell: {e}"))?;
    // Asleep on the deliver ring: the engine rings us after its next delivery (a TX_DONE).
    node.poke_u32(node.layout.deliver.offset + WAITING, 0x7777);
    let d = node.data(10);
    node.submit(&[d])?;
    node.in_flight += 1;
    support::say("ATTACKED");
    cmds.expect("UNBLOCK").await?;
    // Let go: empty the counter, make the descriptor non-blocking again.
    let mut buf = [0u8; 8];
    rustix::io::read(bell, &mut buf).map_err(|e| format!("drain our doorbell: {e}"))?;
    rustix::fs::fcntl_setfl(bell, flags).map_err(|e| format!("setfl: {e}"))?;
    node.poke_u32(node.layout.deliver.offset + WAITING, 0);
    // Whatever the engine decided (serve on, or close us), it has to be alive to say it.
    match node.exchange(5) {
        Ok(()) => {
            node.leave();
            Ok(Outcome {
                opened: TARGET.into(),
                sent: 8,
                exact: true,
                ..Outcome::default()
            })
        }
        Err(_) if node.closed => closed(node, TARGET, 8, false),
        Err(e) => Err(e),
    }
}
