//! The attacks, grouped by what they break. Each test runs its attacks in order on one
//! engine (see `world`); each attack is one hostile child (see `attacks` for what it does).

use ipc_core::control::ErrorCode;

use crate::support;
use crate::world::Expect::{self, BadFrame, CountedBadFrame, Either, Survives, Violation};
use crate::world::World;

/// Runs `attacks` on a fresh engine, alone in a copy of this binary.
fn run(test: &str, attacks: &[(&str, Expect)]) {
    run_with(test, |mut world| async move {
        for &(name, expect) in attacks {
            world.attack(name, expect).await;
        }
        world
    });
}

fn run_with<F, Fut>(test: &str, body: F)
where
    F: FnOnce(World) -> Fut,
    Fut: std::future::Future<Output = World>,
{
    support::run_isolated(&format!("cases::{test}"), || async {
        let world = World::new(test).await;
        body(world).await.finish().await;
    });
}

/// Ring indices a node publishes (or overwrites) that no correct peer could: past the
/// capacity, backwards, or all zeroed at once by punching a hole in the whole block.
#[test]
fn ring_indices() {
    run(
        "ring_indices",
        &[
            (
                "submit-tail-past-capacity",
                Violation("submit ring: corrupted tail"),
            ),
            (
                "submit-tail-backwards",
                Violation("submit ring: corrupted tail"),
            ),
            (
                "release-tail-past-capacity",
                Violation("release ring: corrupted tail"),
            ),
            (
                "release-tail-backwards",
                Violation("release ring: corrupted tail"),
            ),
            (
                "deliver-head-ahead",
                Violation("deliver ring: corrupted head"),
            ),
            (
                "deliver-head-backwards",
                Violation("deliver ring: corrupted head"),
            ),
            (
                "block-hole-punched",
                Violation("submit ring: corrupted tail"),
            ),
        ],
    );
}

/// `DATA` descriptors naming bytes outside the sender's transmit arena: at or across its
/// end, in the receive arena, wrapping around to the block's header or a ring, misaligned,
/// with lengths that overflow.
#[test]
fn descriptor_bounds() {
    run(
        "descriptor_bounds",
        &[
            ("data-offset-at-arena-end", Violation("outside the arena")),
            ("data-straddles-arena-end", Violation("outside the arena")),
            ("data-offset-into-rx-arena", Violation("outside the arena")),
            (
                "data-offset-wraps-to-header",
                Violation("outside the arena"),
            ),
            (
                "data-offset-wraps-to-submit-ring",
                Violation("outside the arena"),
            ),
            ("data-offset-misaligned", Violation("is not aligned to 256")),
            (
                "data-empty-with-offset",
                Violation("of 0 bytes lies outside"),
            ),
            (
                "data-len-u32-max",
                Violation("of 4294967295 bytes lies outside"),
            ),
            ("data-offset-plus-len-wraps", Violation("outside the arena")),
        ],
    );
}

/// Unknown kinds (including kinds that belong to other rings), reserved flags, segments
/// that do not exist.
#[test]
fn descriptor_kinds_flags_segments() {
    run(
        "descriptor_kinds_flags_segments",
        &[
            ("kind-zero", Violation("unknown descriptor kind 0")),
            (
                "kind-release-on-submit",
                Violation("unknown descriptor kind 4"),
            ),
            (
                "kind-tx-done-on-submit",
                Violation("unknown descriptor kind 5"),
            ),
            (
                "kind-credit-on-submit",
                Violation("unknown descriptor kind 6"),
            ),
            ("kind-99", Violation("unknown descriptor kind 99")),
            ("kind-u16-max", Violation("unknown descriptor kind 65535")),
            ("flags-on-data", Violation("reserved flags set: 0x1")),
            (
                "flags-high-bit-on-fin",
                Violation("reserved flags set: 0x8000"),
            ),
            // A `DATA` entry naming a segment is a hand-off: of a segment never lent, here.
            ("segment-one", Violation("segment 1 is not lent to it")),
            (
                "segment-max-on-close",
                Violation("segment 4294967295 does not exist"),
            ),
        ],
    );
}

/// Hand-off segments (issue 15): ids never lent, lengths past a segment, offsets, a segment
/// still mapped writable, sent twice or after it was given back, given back twice, released
/// with an offset, or named by a frame. A well-behaved hand-off goes through.
#[test]
fn segments() {
    run(
        "segments",
        &[
            ("seg-valid", Survives),
            ("seg-never-lent", Violation("segment 9 is not lent to it")),
            ("seg-small", Survives),
            (
                "seg-len-past-it",
                Violation("bytes of segment 1, which holds"),
            ),
            ("seg-offset", Violation("it must start at 0")),
            (
                "seg-still-mapped",
                Violation("is still mapped writable when sent"),
            ),
            ("seg-sent-twice", Violation("is not lent to it")),
            ("seg-after-giving-back", Violation("is not lent to it")),
            ("seg-given-back-twice", Violation("which it does not hold")),
            ("seg-release-offset", Violation("segment")),
            ("seg-on-a-frame", Violation("does not exist")),
        ],
    );
}

/// Frames whose records overrun them, do not tile them, or do not match their declared
/// count; frames outside the arena; a frame of more records than the window holds. A valid
/// frame goes through, record by record.
#[test]
fn frames() {
    run(
        "frames",
        &[
            ("frame-valid", Survives),
            (
                "frame-record-overruns",
                Violation("of 11 bytes overruns the 14-byte frame"),
            ),
            (
                "frame-record-len-u32-max",
                Violation("of 4294967295 bytes overruns"),
            ),
            (
                "frame-trailing-bytes",
                Violation("has no room for its length"),
            ),
            (
                "frame-count-too-high",
                Violation("declares 3 records and holds 2"),
            ),
            (
                "frame-count-too-low",
                Violation("declares 2 records and holds 3"),
            ),
            ("frame-zero-records", Violation("declares 0 records")),
            ("frame-count-beyond-length", Violation("declares 4 records")),
            (
                "frame-shorter-than-a-header",
                Violation("declares 1 records"),
            ),
            ("frame-straddles-arena-end", Violation("outside the arena")),
            ("frame-misaligned", Violation("is not aligned to 256")),
            (
                "frame-beyond-credits",
                Violation("exceeded its window: 0 messages"),
            ),
        ],
    );
}

/// Session ends the node does not own: its peer's end of its own session, the good stream's
/// end (closing it would break the stream), ids that were never given out.
#[test]
fn foreign_sessions() {
    run(
        "foreign_sessions",
        &[
            (
                "data-on-peer-end",
                Violation("does not belong to this node"),
            ),
            ("fin-on-peer-end", Violation("does not belong to this node")),
            (
                "close-on-peer-end",
                Violation("does not belong to this node"),
            ),
            (
                "close-on-stream-end",
                Violation("session 1 does not belong"),
            ),
            (
                "data-on-session-u32-max",
                Violation("session 4294967295 does not belong"),
            ),
            (
                "data-on-session-zero",
                Violation("session 0 does not belong"),
            ),
        ],
    );
}

/// Flow control and session state: more messages than credits, data after a half-close,
/// data on an end after closing it.
#[test]
fn credits_and_session_state() {
    run(
        "credits_and_session_state",
        &[
            (
                "data-beyond-credits",
                Violation("exceeded its window: 8 messages"),
            ),
            ("data-after-fin", Violation("after it finished")),
            (
                "data-after-close",
                Violation("does not belong to this node"),
            ),
        ],
    );
}

/// Release entries: sub-blocks never delivered, out of bounds, misaligned, of the wrong
/// kind, with flags or a segment, and releases of the same sub-block twice.
#[test]
fn releases() {
    run(
        "releases",
        &[
            ("release-never-delivered", Violation("does not hold")),
            (
                "release-offset-zero-never-delivered",
                Violation("does not hold"),
            ),
            (
                "release-out-of-bounds",
                Violation("release entry: payload at offset"),
            ),
            (
                "release-offset-u64-max",
                Violation("release entry: payload at offset"),
            ),
            (
                "release-misaligned",
                Violation("release entry: offset 100 is not aligned"),
            ),
            (
                "release-wrong-kind",
                Violation("release entry: unknown descriptor kind 1"),
            ),
            ("release-flags", Violation("release entry: reserved flags")),
            (
                "release-segment",
                Violation("release of segment 7, which it does not hold"),
            ),
            ("release-twice-in-one-batch", Violation("does not hold")),
            ("release-twice-later", Violation("does not hold")),
        ],
    );
}

/// Values changed after the engine read them (double fetch): another thread of the node
/// keeps flipping a published descriptor between a valid and an invalid value while the
/// engine drains. The engine copies each entry once: it copies the valid message (checked
/// byte for byte by the target) or closes the node; it never copies out of bounds.
#[test]
fn values_changed_while_read() {
    run(
        "values_changed_while_read",
        &[
            ("descriptor-flipped-while-read", Violation("submit entry: ")),
            ("release-flipped-while-read", Violation("release")),
        ],
    );
}

/// Doorbells: 100 000 rings while messages flow, and both counters saturated. Not
/// violations: the engine just keeps working.
#[test]
fn doorbells() {
    run(
        "doorbells",
        &[
            ("doorbell-flood", Survives),
            ("doorbells-saturated", Survives),
        ],
    );
}

/// What a node may scribble without the engine caring: the header page (the engine keeps its
/// own validated layout), the words of the rings only the engine writes, the transmit
/// arena's allocator tree; and what the seals refuse (resizing, sealing against writes).
#[test]
fn scribbles_the_engine_ignores() {
    run(
        "scribbles_the_engine_ignores",
        &[
            ("header-page-scribbled", Survives),
            ("engine-owned-words-scribbled", Survives),
            ("tx-tree-scribbled", Survives),
            ("block-resize-refused", Survives),
        ],
    );
}

/// Control frames from a registered node: cut short, too long, of an unknown version or
/// tag, frames only the engine sends, a second hello or ready, bytes after the fields, a
/// string longer than its frame, a service name with a control character. Also what is not a violation: a frame dribbled one byte at
/// a time, unserving services of others, descriptors attached to a frame.
#[test]
fn control_frames_after_registration() {
    use ErrorCode::{BadFrame as Bad, Version};
    run(
        "control_frames_after_registration",
        &[
            (
                "ctl-truncated-then-eof",
                BadFrame(Bad, "in the middle of a frame"),
            ),
            (
                "ctl-length-over-limit",
                BadFrame(Bad, "frame length 65537 is out of range"),
            ),
            (
                "ctl-length-u32-max",
                BadFrame(Bad, "frame length 4294967295"),
            ),
            (
                "ctl-length-zero",
                BadFrame(Bad, "frame length 0 is out of range"),
            ),
            (
                "ctl-unknown-version",
                BadFrame(Version, "is not supported (this build speaks"),
            ),
            ("ctl-unknown-tag", BadFrame(Bad, "unknown frame tag 200")),
            ("ctl-engine-frame", BadFrame(Bad, "unknown frame tag 64")),
            (
                "ctl-second-hello",
                BadFrame(Bad, "unexpected frame after rendezvous"),
            ),
            (
                "ctl-second-ready",
                BadFrame(Bad, "unexpected frame after rendezvous"),
            ),
            ("ctl-trailing-bytes", BadFrame(Bad, "trailing bytes")),
            (
                "ctl-string-longer-than-frame",
                BadFrame(Bad, "frame truncated"),
            ),
            (
                "ctl-request-id-zero",
                BadFrame(Bad, "request id 0 is reserved for the engine"),
            ),
            (
                "ctl-open-name-nul",
                BadFrame(Bad, "control character '\\0' at byte 3"),
            ),
            (
                "ctl-serve-name-escape",
                BadFrame(Bad, "control character '\\u{1b}' at byte 3"),
            ),
            ("ctl-frame-dribbled", Survives),
            ("ctl-unserve-foreign", Survives),
            ("ctl-fds-attached", Survives),
        ],
    );
}

/// Before registration: a frame before hello, a hello of another version or with a control
/// character in the node's name, a frame instead
/// of ready (the engine had created a block and doorbells: all must go), leaving before
/// ready, and ring entries written before ready (the engine must judge them as the node's
/// once it is registered).
#[test]
fn before_registration() {
    use ErrorCode::{BadFrame as Bad, Version};
    run(
        "before_registration",
        &[
            ("open-before-hello", BadFrame(Bad, "expected Hello")),
            (
                "hello-unknown-version",
                BadFrame(Version, "protocol version 9"),
            ),
            (
                "hello-name-newline",
                BadFrame(Bad, "control character '\\n'"),
            ),
            ("open-instead-of-ready", BadFrame(Bad, "expected Ready")),
            ("close-instead-of-ready", Survives),
            (
                "submit-entry-before-ready",
                Violation("session 1 does not belong"),
            ),
            ("release-entry-before-ready", Violation("does not hold")),
        ],
    );
}

/// A registered node closed for a bad control frame is a node "closed for breaking the
/// protocol" (`EngineStats::violations`), like one closed for a bad ring entry.
#[test]
fn control_frame_violations_are_counted() {
    use ErrorCode::BadFrame as Bad;
    run(
        "control_frame_violations_are_counted",
        &[
            (
                "ctl-length-over-limit",
                CountedBadFrame(Bad, "out of range"),
            ),
            (
                "ctl-unknown-tag",
                CountedBadFrame(Bad, "unknown frame tag 200"),
            ),
        ],
    );
}

/// The node clears `O_NONBLOCK` on its doorbell (the open file description is shared with
/// the engine), fills the counter, and asks to be woken: the engine must not block on it
/// (docs/ARCHITECTURE.md, invariant 4), whatever it then does with the node.
#[test]
fn a_node_cannot_stall_the_engine_through_its_doorbell() {
    run_with(
        "a_node_cannot_stall_the_engine_through_its_doorbell",
        |mut world| async move {
            world
                .attack_holding("node-doorbell-made-blocking", Either)
                .await;
            world
        },
    );
}

/// A node whose release ring and submit ring both hold violations when the engine looks is
/// closed once, for the first one, and nothing it wrote after that is acted on: not the
/// valid message that follows in its submit ring, and not its second violation (one node,
/// one count in `EngineStats::violations`).
#[test]
fn one_node_one_violation() {
    run(
        "one_node_one_violation",
        &[(
            "bad-release-and-bad-submit-together",
            Violation("release of a sub-block it does not hold"),
        )],
    );
}
