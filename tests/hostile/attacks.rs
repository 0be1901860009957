//! The hostile child: one attack per process, chosen by name.
//!
//! Each attack registers (or starts to) by hand, usually opens a session to the test's
//! `target` service and sends a few valid messages first, then breaks one rule through its
//! block, its doorbells or its control socket. It ends in one of two ways:
//! - it waits until the engine closes its connection, and reports the engine's last `Error`
//!   frame (for the ring and descriptor violations that frame says "closed by the engine:
//!   <the reason the engine logged>");
//! - or, for what the engine should shrug off, it proves it is still served (valid messages
//!   copied) and leaves on its own.
//!
//! The report is the child's `OK` line: see [`Outcome`]. Attacks on the control socket are
//! in `control`, those racing the engine with a thread or a blocking doorbell in `races`.

use std::fmt;
use std::os::fd::AsFd;

use ipc_core::{RawDescriptor, kind};

use crate::raw::{HEAD, RawNode, SPACE_WAITING, TAIL, WAITING};
use crate::support::{self, ChildSpec, Commands};
use crate::{control, races};

/// The silent service of the target node: it reads and checks what it gets.
pub(crate) const TARGET: &str = "target";
/// The target's other service: it also sends one message on every new session.
pub(crate) const TARGET_HELLO: &str = "target-hello";

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, mut cmds| async move {
        match spec.role.as_str() {
            "noop" => cmds.done("").await,
            "hostile" => {
                let (socket, name) = (&spec.args[0], &spec.args[1]);
                let outcome = attack(socket, name, &mut cmds)
                    .await
                    .map_err(|e| format!("attack {name:?}: {e}"))?;
                cmds.done(outcome).await
            }
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// What a hostile child reports on its `OK` line.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The service it opened a session to, or `none`.
    pub(crate) opened: String,
    /// Valid messages it sent before the attack (all of which the target must receive when
    /// `exact`, at most this many otherwise).
    pub(crate) sent: u64,
    pub(crate) exact: bool,
    /// The engine closed the connection (rather than the child leaving on its own).
    pub(crate) closed: bool,
    /// Code and message of the engine's last `Error` frame (0 and empty if none).
    pub(crate) code: u16,
    pub(crate) reason: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "opened={} sent={} exact={} closed={} code={} reason={}",
            self.opened,
            self.sent,
            u8::from(self.exact),
            u8::from(self.closed),
            self.code,
            self.reason.replace('\n', " ")
        )
    }
}

impl Outcome {
    /// Parses an `OK` line (the reason is the rest of the line).
    pub(crate) fn parse(ok: &str) -> Self {
        let (head, reason) = ok
            .split_once("reason=")
            .unwrap_or_else(|| panic!("no reason= in {ok:?}"));
        let field = |key: &str| -> String {
            head.split_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .unwrap_or_else(|| panic!("no {key}= in {ok:?}"))
                .to_owned()
        };
        let num = |key: &str| -> u64 {
            field(key)
                .parse()
                .unwrap_or_else(|e| panic!("{key} in {ok:?}: {e}"))
        };
        Self {
            opened: field("opened"),
            sent: num("sent"),
            exact: num("exact") == 1,
            closed: num("closed") == 1,
            code: num("code") as u16,
            reason: reason.to_owned(),
        }
    }
}

/// What an attack returns.
pub(crate) type Attack = Result<Outcome, String>;

/// The engine closed `node`: waits for the end of the connection and reports.
pub(crate) fn closed(
    mut node: RawNode,
    opened: &str,
    sent: u64,
    exact: bool,
) -> Result<Outcome, String> {
    let (code, reason) = node.wait_closed()?;
    Ok(Outcome {
        opened: opened.into(),
        sent,
        exact,
        closed: true,
        code,
        reason,
    })
}

/// `node` is still served: `n` more valid messages go through, then it leaves on its own.
pub(crate) fn survived(
    mut node: RawNode,
    opened: &str,
    sent: u64,
    n: u32,
) -> Result<Outcome, String> {
    node.exchange(n)?;
    node.leave();
    Ok(Outcome {
        opened: opened.into(),
        sent: sent + u64::from(n),
        exact: true,
        closed: false,
        code: 0,
        reason: String::new(),
    })
}

/// Opens `TARGET`, sends two valid messages (copied before anything else happens), then
/// submits one batch: a valid message, `bad`, and a valid message that must never arrive.
fn bad_submit(
    socket: &str,
    me: &str,
    bad: impl FnOnce(&RawNode) -> RawDescriptor,
) -> Result<Outcome, String> {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    let bad = bad(&node);
    let entries = [node.data(10), bad, node.data(20)];
    node.submit(&entries)?;
    closed(node, TARGET, 3, true)
}

/// A frame of records of the given lengths, each a prefix of the hostile pattern.
fn frame_of(lens: &[usize]) -> Vec<u8> {
    let pattern = support::pattern(crate::raw::HOSTILE_SEED, 0, crate::raw::PAYLOAD_MAX);
    let mut f = Vec::new();
    for &len in lens {
        f.extend_from_slice(&(len as u32).to_le_bytes());
        f.extend_from_slice(&pattern[..len]);
    }
    f
}

/// Opens `TARGET`, sends two valid messages, then one valid, a frame built by `bad` (its
/// bytes, its declared record count, and its offset in the transmit arena, away from the
/// valid messages' bytes at 0) and another valid one.
fn bad_frame(
    socket: &str,
    me: &str,
    bad: impl FnOnce(&RawNode) -> (Vec<u8>, u64, u64),
) -> Result<Outcome, String> {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    let (bytes, records, at) = bad(&node);
    node.poke(node.layout.tx.offset + at, &bytes);
    let frame = RawDescriptor {
        aux: records,
        ..RawDescriptor::frame(node.session, at, bytes.len() as u32, 1)
    };
    let entries = [node.data(10), frame, node.data(20)];
    node.submit(&entries)?;
    closed(node, TARGET, 3, true)
}

/// Opens `TARGET`, sends two valid messages, then pushes `bad` on the release ring.
fn bad_release(
    socket: &str,
    me: &str,
    bad: impl FnOnce(&RawNode) -> RawDescriptor,
) -> Result<Outcome, String> {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    let bad = bad(&node);
    node.release(&[bad])?;
    closed(node, TARGET, 2, true)
}

/// Opens `TARGET_HELLO` and waits for the target's message; returns it.
pub(crate) fn with_hello(socket: &str, me: &str) -> Result<(RawNode, RawDescriptor), String> {
    let mut node = RawNode::register_open(socket, me, TARGET_HELLO)?;
    let data = node.next_data()?;
    let bytes = node.peek(node.layout.rx.offset + data.offset, data.len as usize);
    if bytes != crate::world::hello_payload() {
        return Err(format!("the target's message arrived garbled: {data:?}"));
    }
    Ok((node, data))
}

pub(crate) fn release_of(offset: u64) -> RawDescriptor {
    RawDescriptor::offset_only(kind::RELEASE, offset)
}

async fn attack(socket: &str, name: &str, cmds: &mut Commands) -> Result<Outcome, String> {
    let me = &format!("hostile-{name}");
    if let Some(outcome) = control::attack(socket, me, name)? {
        return Ok(outcome);
    }
    if let Some(outcome) = crate::segments::attack(socket, me, name)? {
        return outcome;
    }
    match name {
        // ===== ring indices =====
        "submit-tail-past-capacity" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let ring = node.layout.submit;
            node.poke_u32(
                ring.offset + TAIL,
                node.submit_tail.wrapping_add(ring.capacity + 1),
            );
            node.ring()?;
            closed(node, TARGET, 2, true)
        }
        "submit-tail-backwards" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            node.wait_submit_consumed()?;
            // The engine has consumed two entries: a tail of 1 moves backwards past them.
            node.poke_u32(node.layout.submit.offset + TAIL, node.submit_tail - 1);
            node.ring()?;
            closed(node, TARGET, 2, true)
        }
        "release-tail-past-capacity" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            node.poke_u32(node.layout.release.offset + TAIL, u32::MAX);
            node.ring()?;
            closed(node, TARGET, 2, true)
        }
        "release-tail-backwards" => {
            let (mut node, data) = with_hello(socket, me)?;
            node.release(&[release_of(data.offset)])?;
            node.wait_release_consumed()?;
            node.poke_u32(node.layout.release.offset + TAIL, 0);
            node.ring()?;
            closed(node, TARGET_HELLO, 0, true)
        }
        "deliver-head-ahead" | "deliver-head-backwards" => {
            // Our head jumps (ahead of everything the engine published, or back before
            // everything we consumed); we keep sending, reading deliveries without moving
            // the head again, until the engine needs room and looks at our head.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let ring = node.layout.deliver;
            let head = if name.ends_with("ahead") {
                node.deliver_next.wrapping_add(1000)
            } else {
                node.deliver_next.wrapping_sub(1000)
            };
            node.publish_head = false;
            node.poke_u32(ring.offset + HEAD, head);
            let mut sent = 2;
            while !node.closed {
                let credits = node.credits;
                if node
                    .wait_until("a credit", |n| n.in_flight < credits)
                    .is_err()
                {
                    break;
                }
                let d = node.data(64);
                node.submit(&[d])?;
                node.in_flight += 1;
                sent += 1;
            }
            closed(node, TARGET, sent, false)
        }
        "block-hole-punched" => {
            // Punching a hole is allowed by the seals (no shrink, no grow): every page of the
            // block reads as zeros again, ring indices included.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            node.wait_submit_consumed()?;
            let flags =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(node.block.fd(), flags, 0, node.layout.total_size)
                .map_err(|e| format!("punch hole: {e}"))?;
            node.ring()?;
            closed(node, TARGET, 2, true)
        }

        // ===== descriptor bounds and lengths =====
        "data-offset-at-arena-end" => bad_submit(socket, me, |n| {
            RawDescriptor::data(n.session, n.layout.tx.size, 1)
        }),
        "data-straddles-arena-end" => bad_submit(socket, me, |n| {
            RawDescriptor::data(n.session, n.layout.tx.size - 256, 512)
        }),
        "data-offset-into-rx-arena" => bad_submit(socket, me, |n| {
            let l = n.layout;
            RawDescriptor::data(n.session, l.rx.offset - l.tx.offset + l.rx.size / 2, 64)
        }),
        "data-offset-wraps-to-header" => bad_submit(socket, me, |n| {
            RawDescriptor::data(n.session, 0u64.wrapping_sub(n.layout.tx.offset), 144)
        }),
        "data-offset-wraps-to-submit-ring" => bad_submit(socket, me, |n| {
            let l = n.layout;
            RawDescriptor::data(n.session, l.submit.offset.wrapping_sub(l.tx.offset), 512)
        }),
        "data-offset-misaligned" => {
            bad_submit(socket, me, |n| RawDescriptor::data(n.session, 100, 10))
        }
        "data-empty-with-offset" => {
            bad_submit(socket, me, |n| RawDescriptor::data(n.session, 256, 0))
        }
        "data-len-u32-max" => bad_submit(socket, me, |n| {
            RawDescriptor::data(n.session, 256, u32::MAX)
        }),
        "data-offset-plus-len-wraps" => bad_submit(socket, me, |n| {
            RawDescriptor::data(n.session, u64::MAX - 255, 512)
        }),

        // ===== kinds, flags, segments =====
        "kind-zero" => bad_submit(socket, me, |n| RawDescriptor::control(0, n.session, 0)),
        "kind-release-on-submit" => bad_submit(socket, me, |n| RawDescriptor {
            session: n.session,
            ..release_of(0)
        }),
        "kind-tx-done-on-submit" => bad_submit(socket, me, |n| RawDescriptor {
            session: n.session,
            ..RawDescriptor::offset_only(kind::TX_DONE, 0)
        }),
        "kind-credit-on-submit" => bad_submit(socket, me, |n| {
            RawDescriptor::control(kind::CREDIT, n.session, 1000)
        }),
        "kind-99" => bad_submit(socket, me, |n| RawDescriptor::control(99, n.session, 0)),
        "kind-u16-max" => bad_submit(socket, me, |n| {
            RawDescriptor::control(u16::MAX, n.session, 0)
        }),
        "flags-on-data" => bad_submit(socket, me, |n| RawDescriptor {
            flags: 1,
            ..n.data(10)
        }),
        "flags-high-bit-on-fin" => bad_submit(socket, me, |n| RawDescriptor {
            flags: 0x8000,
            ..RawDescriptor::control(kind::FIN, n.session, 0)
        }),
        "segment-one" => bad_submit(socket, me, |n| RawDescriptor {
            segment: 1,
            ..n.data(10)
        }),
        "segment-max-on-close" => bad_submit(socket, me, |n| RawDescriptor {
            segment: u32::MAX,
            ..RawDescriptor::control(kind::CLOSE, n.session, 0)
        }),

        // ===== sessions it does not own =====
        "data-on-peer-end" => bad_submit(socket, me, |n| RawDescriptor::data(n.session + 1, 0, 10)),
        "fin-on-peer-end" => bad_submit(socket, me, |n| {
            RawDescriptor::control(kind::FIN, n.session + 1, 0)
        }),
        "close-on-peer-end" => bad_submit(socket, me, |n| {
            RawDescriptor::control(kind::CLOSE, n.session + 1, 0)
        }),
        "close-on-stream-end" => {
            // End 1 is the good stream's client end: the test opens it first on a fresh
            // engine. Closing it would break the stream the test checks.
            bad_submit(socket, me, |n| {
                assert_ne!(n.session, 1, "our own end");
                RawDescriptor::control(kind::CLOSE, 1, 0)
            })
        }
        "data-on-session-u32-max" => {
            bad_submit(socket, me, |_| RawDescriptor::data(u32::MAX, 0, 10))
        }
        "data-on-session-zero" => bad_submit(socket, me, |_| RawDescriptor::data(0, 0, 10)),

        // ===== credits and session state =====
        "data-beyond-credits" => {
            // All in one batch: the engine pops them together, before any release by the
            // target can give a credit back.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let credits = node.credits;
            let entries: Vec<_> = (0..=credits).map(|i| node.data(1 + i)).collect();
            node.submit(&entries)?;
            closed(node, TARGET, u64::from(credits), true)
        }
        "data-after-fin" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let fin = RawDescriptor::control(kind::FIN, node.session, 0);
            let entries = [node.data(10), fin, node.data(20)];
            node.submit(&entries)?;
            closed(node, TARGET, 1, true)
        }
        "data-after-close" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let close = RawDescriptor::control(kind::CLOSE, node.session, 0);
            let entries = [node.data(10), close, node.data(20)];
            node.submit(&entries)?;
            closed(node, TARGET, 1, true)
        }

        // ===== frames =====
        "frame-record-overruns" => bad_frame(socket, me, |n| {
            // One record whose length runs 1 byte past the frame's end.
            let mut f = frame_of(&[10]);
            f[..4].copy_from_slice(&11u32.to_le_bytes());
            (f, 1, n.layout.tx.min_block)
        }),
        "frame-record-len-u32-max" => bad_frame(socket, me, |n| {
            let mut f = frame_of(&[10, 20]);
            f[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
            (f, 2, n.layout.tx.min_block)
        }),
        "frame-trailing-bytes" => bad_frame(socket, me, |n| {
            let mut f = frame_of(&[10]);
            f.extend_from_slice(&[0, 0]);
            (f, 2, n.layout.tx.min_block)
        }),
        "frame-count-too-high" => bad_frame(socket, me, |n| {
            (frame_of(&[10, 20]), 3, n.layout.tx.min_block)
        }),
        "frame-count-too-low" => bad_frame(socket, me, |n| {
            (frame_of(&[10, 20, 30]), 2, n.layout.tx.min_block)
        }),
        "frame-zero-records" => {
            bad_frame(socket, me, |n| (frame_of(&[10]), 0, n.layout.tx.min_block))
        }
        "frame-count-beyond-length" => bad_frame(socket, me, |n| {
            // 14 bytes cannot hold 4 records of at least 4 bytes each.
            (frame_of(&[10]), 4, n.layout.tx.min_block)
        }),
        "frame-shorter-than-a-header" => bad_submit(socket, me, |n| {
            RawDescriptor::frame(n.session, n.layout.tx.min_block, 3, 1)
        }),
        "frame-straddles-arena-end" => bad_submit(socket, me, |n| {
            RawDescriptor::frame(n.session, n.layout.tx.size - 256, 512, 1)
        }),
        "frame-misaligned" => bad_submit(socket, me, |n| {
            RawDescriptor::frame(n.session, n.layout.tx.min_block + 4, 14, 1)
        }),
        "frame-beyond-credits" => {
            // One frame of credits + 1 records: each record is a message of the window.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let lens: Vec<usize> = (0..=node.credits as usize).map(|i| 1 + i % 7).collect();
            let f = frame_of(&lens);
            let at = node.layout.tx.min_block;
            node.poke(node.layout.tx.offset + at, &f);
            let d = RawDescriptor::frame(node.session, at, f.len() as u32, lens.len() as u32);
            node.submit(&[d])?;
            closed(node, TARGET, 0, true)
        }
        "frame-valid" => {
            // A frame of three records, each a prefix of the pattern, goes through whole.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let lens = [5, 1, 300];
            let f = frame_of(&lens);
            let at = node.layout.tx.min_block;
            node.poke(node.layout.tx.offset + at, &f);
            let done = node.tx_done + 1;
            node.submit(&[RawDescriptor::frame(node.session, at, f.len() as u32, 3)])?;
            node.in_flight += 3;
            node.wait_until("the frame copied", |n| n.tx_done >= done)?;
            survived(node, TARGET, 2 + 3, 2)
        }

        // ===== releases =====
        "release-never-delivered" => bad_release(socket, me, |n| release_of(n.layout.rx.size / 2)),
        "release-offset-zero-never-delivered" => bad_release(socket, me, |_| release_of(0)),
        "release-out-of-bounds" => bad_release(socket, me, |n| release_of(n.layout.rx.size)),
        "release-offset-u64-max" => bad_release(socket, me, |_| release_of(u64::MAX)),
        "release-misaligned" => bad_release(socket, me, |_| release_of(100)),
        "release-wrong-kind" => {
            bad_release(socket, me, |_| RawDescriptor::offset_only(kind::DATA, 0))
        }
        "release-flags" => bad_release(socket, me, |_| RawDescriptor {
            flags: 4,
            ..release_of(0)
        }),
        "release-segment" => bad_release(socket, me, |_| RawDescriptor {
            segment: 7,
            ..release_of(0)
        }),
        "release-twice-in-one-batch" => {
            let (mut node, data) = with_hello(socket, me)?;
            node.release(&[release_of(data.offset), release_of(data.offset)])?;
            closed(node, TARGET_HELLO, 0, true)
        }
        "release-twice-later" => {
            let (mut node, data) = with_hello(socket, me)?;
            node.release(&[release_of(data.offset)])?;
            node.wait_release_consumed()?;
            node.exchange(2)?;
            node.release(&[release_of(data.offset)])?;
            closed(node, TARGET_HELLO, 2, true)
        }

        "bad-release-and-bad-submit-together" => {
            // A bad release, then a submit batch whose first entry is valid and second bad,
            // then one doorbell. Releases are drained before submissions, and the release is
            // published first: whenever the engine looks, its first finding is the release.
            // It must close the node once, for that, and act on nothing else it wrote (were
            // the valid entry acted on, the target would get one message too many).
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            node.release_quietly(&[release_of(node.layout.rx.size / 2)])?;
            let entries = [node.data(10), RawDescriptor::data(node.session, 100, 1)];
            node.submit_quietly(&entries)?;
            node.ring()?;
            closed(node, TARGET, 2, true)
        }

        // ===== values changed after the engine read them =====
        "descriptor-flipped-while-read" => races::flipped_descriptor(socket, me),
        "release-flipped-while-read" => races::flipped_release(socket, me),

        // ===== doorbells =====
        "doorbell-flood" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let bell = ipc_core::Doorbell::from_fd(
                node.engine_bell
                    .try_clone_fd()
                    .map_err(|e| format!("dup: {e}"))?,
            )
            .map_err(|e| format!("doorbell: {e}"))?;
            let flood = std::thread::spawn(move || {
                for _ in 0..100_000 {
                    bell.ring().expect("ring");
                }
            });
            node.exchange(40)?;
            flood.join().map_err(|_| "the flooding thread panicked")?;
            survived(node, TARGET, 40, 10)
        }
        "doorbells-saturated" => {
            // Both counters at their maximum: the engine's next ring of ours gets EAGAIN.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            saturate(node.engine_bell.as_fd()).map_err(|e| format!("the engine's: {e}"))?;
            saturate(node.node_bell.as_fd()).map_err(|e| format!("ours: {e}"))?;
            survived(node, TARGET, 2, 20)
        }
        "node-doorbell-made-blocking" => races::blocking_node_doorbell(socket, me, cmds).await,

        // ===== scribbles the engine must ignore =====
        "header-page-scribbled" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            node.poke(0, &[0xA5; 4096]);
            survived(node, TARGET, 2, 10)
        }
        "engine-owned-words-scribbled" => {
            // The words only the engine writes: its consumer indices and sleep flags on the
            // rings we produce, and its wait-for-space flag on the ring it produces.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let l = node.layout;
            for ring in [l.submit, l.release] {
                node.poke_u32(ring.offset + HEAD, 0xDEAD_BEEF);
                node.poke_u32(ring.offset + WAITING, 0xFFFF_FFFF);
            }
            node.poke_u32(l.deliver.offset + SPACE_WAITING, 0x5555_5555);
            node.ring()?;
            survived(node, TARGET, 2, 10)
        }
        "tx-tree-scribbled" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let l = node.layout;
            node.poke(l.tx_tree_offset, &vec![0xFF; l.tx_tree_len as usize]);
            survived(node, TARGET, 2, 10)
        }
        "block-resize-refused" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let (fd, size) = (node.block.fd(), node.layout.total_size);
            for (what, result) in [
                ("shrink", rustix::fs::ftruncate(fd, size / 2)),
                ("truncate to 0", rustix::fs::ftruncate(fd, 0)),
                ("grow", rustix::fs::ftruncate(fd, size * 2)),
                (
                    "seal against writes",
                    rustix::fs::fcntl_add_seals(fd, rustix::fs::SealFlags::WRITE),
                ),
            ] {
                if result != Err(rustix::io::Errno::PERM) {
                    return Err(format!(
                        "{what}: expected EPERM from the seals, got {result:?}"
                    ));
                }
            }
            survived(node, TARGET, 2, 10)
        }

        other => Err(format!("unknown attack {other:?}")),
    }
}

/// Fills a (non-blocking) eventfd's counter to its maximum: one write of each power of two
/// that still fits, largest first. The other side may drain meanwhile (the engine does):
/// then the counter is merely near full, and the attack goes on either way (retrying until
/// full would race the engine's reads forever).
fn saturate(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    for shift in (0..64).rev() {
        match rustix::io::write(fd, &(1u64 << shift).to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(format!("fill the doorbell: {e}")),
        }
    }
    Ok(())
}
