//! The descriptor: the fixed-size location record that travels in every ring.
//!
//! A descriptor names a sub-block of an arena by offset (relative to the arena, never a
//! pointer) and length, together with the session it belongs to and its kind. It is made
//! of integers only, so any bit pattern a peer writes is a valid `RawDescriptor`; whether it
//! means anything is decided by [`validate_submit`], [`validate_release`] and
//! [`validate_deliver`], which return the only types the rest of the system acts on.
//!
//! ```text
//!  0        4      6      8        12       16               24               32
//!  +--------+------+------+--------+--------+----------------+----------------+
//!  |session | kind |flags |segment |  len   |     offset     |      aux       |
//!  +--------+------+------+--------+--------+----------------+----------------+
//! ```

use std::mem::{offset_of, size_of};

use thiserror::Error;

/// A descriptor as it lies in shared memory: plain integers, any bits allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawDescriptor {
    /// Session end this entry belongs to (the sender's end on the submit ring, the
    /// receiver's end on the deliver ring).
    pub session: u32,
    /// What the entry means: one of the constants in [`kind`].
    pub kind: u16,
    /// Reserved for per-kind flags; must be zero for now.
    pub flags: u16,
    /// Index of the segment the offset refers to (always 0 until blocks can grow).
    pub segment: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Offset of the payload from the start of its arena.
    pub offset: u64,
    /// Per-kind extra word (a credit count, a close reason, a caller's tag).
    pub aux: u64,
}

const _: () = assert!(size_of::<RawDescriptor>() == 32);
const _: () = assert!(offset_of!(RawDescriptor, kind) == 4);
const _: () = assert!(offset_of!(RawDescriptor, segment) == 8);
const _: () = assert!(offset_of!(RawDescriptor, len) == 12);
const _: () = assert!(offset_of!(RawDescriptor, offset) == 16);
const _: () = assert!(offset_of!(RawDescriptor, aux) == 24);

/// Descriptor kinds. Submit ring: `DATA`, `FRAME`, `FIN`, `CLOSE`. Release ring: `RELEASE`.
/// Deliver ring: `DATA`, `FRAME`, `FIN`, `CLOSED`, `TX_DONE`, `CREDIT`.
pub mod kind {
    /// A payload in the sender's transmit arena (submit) or the receiver's receive arena (deliver).
    pub const DATA: u16 = 1;
    /// The sender will send no more on this session (half-close); the peer's stream ends.
    pub const FIN: u16 = 2;
    /// Submit: the node closes its end. Deliver (`CLOSED`): the peer end is gone; `aux` says why.
    pub const CLOSE: u16 = 3;
    /// Deliver: the session ended; `aux` is a [`super::close_reason`].
    pub const CLOSED: u16 = 3;
    /// Release ring: the node is done with a receive sub-block at `offset`.
    pub const RELEASE: u16 = 4;
    /// Deliver: the engine has copied the transmit sub-block at `offset`; the node may free it.
    pub const TX_DONE: u16 = 5;
    /// A frame (see [`crate::frame`]): `len` bytes at `offset` holding `aux` (at least one)
    /// length-prefixed records of the session, in the sender's transmit arena (submit) or the
    /// receiver's receive arena (deliver). Copied, delivered and released as one sub-block;
    /// each record counts as one message of the session's window.
    pub const FRAME: u16 = 7;
    /// Deliver: the peer released `aux` messages of this session, which took `offset` bytes
    /// of its window (the sum of their [`window_charge`](super::window_charge)s); the sender
    /// may send that much more.
    pub const CREDIT: u16 = 6;
    /// Deliver: a topic message for subscription `session`, in slot `offset` (length `len`) of
    /// the broadcast segment of topic `segment`; `aux` is the topic's sequence number.
    pub const TOPIC_DATA: u16 = 16;
    /// Deliver: subscription `session` lost `aux` (> 0) messages to its overflow policy just
    /// before the next `TOPIC_DATA`.
    pub const TOPIC_LAGGED: u16 = 17;
    /// Deliver: subscription `session` is over; `aux` is a [`super::topic_close_reason`].
    pub const TOPIC_CLOSED: u16 = 18;
    /// Release ring: subscription `session` is done with slot `offset` of topic `segment`.
    pub const TOPIC_RELEASE: u16 = 19;

    /// Whether `kind` is one of the topic kinds (the node and engine dispatch on it first).
    pub fn is_topic(kind: u16) -> bool {
        (TOPIC_DATA..=TOPIC_RELEASE).contains(&kind)
    }

    /// Submit: consumer `session` acknowledges delivery `aux` (the message is done).
    pub const QUEUE_ACK: u16 = 32;
    /// Submit: consumer `session` hands delivery `aux` back to the queue's head (requeue).
    pub const QUEUE_NACK: u16 = 33;
    /// Submit: consumer `session` rejects delivery `aux`: it goes to the dead-letter queue.
    pub const QUEUE_REJECT: u16 = 34;
    /// Submit: consumer `session` asks for a fresh lease on delivery `aux`.
    pub const QUEUE_EXTEND: u16 = 35;
    /// Submit: producer or consumer `session` ends (a consumer's unsettled deliveries return
    /// to the queue); a consumer gets `QUEUE_ENDED` as its last entry.
    pub const QUEUE_CANCEL: u16 = 36;
    /// Deliver: a queue message for consumer `session` at `offset`/`len` of the receive
    /// arena; `aux` is the delivery tag, `segment` the delivery count (at least 1), flag
    /// [`super::queue_flags::REDELIVERED`] set when it was delivered before.
    pub const QUEUE_DATA: u16 = 40;
    /// Deliver: `aux` (> 0) messages of producer `session` were settled by the engine with
    /// outcome `len` (a [`super::queue_outcome`] value): confirmed, or refused.
    pub const QUEUE_CONFIRM: u16 = 41;
    /// Deliver: the engine's answer to an ack, nack, reject or lease extension of delivery
    /// `aux` by consumer `session`; `len` is a [`super::queue_outcome`] value.
    pub const QUEUE_SETTLED: u16 = 42;
    /// Deliver: consumer `session` is over (the answer to its `QUEUE_CANCEL`): the last
    /// entry for it.
    pub const QUEUE_ENDED: u16 = 43;

    /// Whether `kind` is one of the queue kinds (the node and engine dispatch on it first).
    pub fn is_queue(kind: u16) -> bool {
        (QUEUE_ACK..=QUEUE_ENDED).contains(&kind)
    }
}

/// Flags of a `QUEUE_DATA` entry.
pub mod queue_flags {
    /// The message was delivered before (to this or another consumer, or before a restart).
    pub const REDELIVERED: u16 = 1;
}

/// Outcomes carried in `len` of `QUEUE_CONFIRM` and `QUEUE_SETTLED` entries.
pub mod queue_outcome {
    /// Done: a message confirmed (on disk for a durable queue), a settlement applied.
    pub const OK: u32 = 0;
    /// Refused: the queue is full and its overflow policy is to refuse.
    pub const FULL: u32 = 1;
    /// Refused: the durable store failed to commit.
    pub const STORE_FAILED: u32 = 2;
    /// The engine no longer holds that delivery for this consumer (its lease expired and it
    /// went back to the queue, or it was settled already): nothing was changed.
    pub const NOT_HELD: u32 = 3;
    /// The queue is gone.
    pub const NO_QUEUE: u32 = 4;
}

mod queue;
pub use queue::{
    QueueDelivery, QueueSettle, QueueSubmission, validate_queue_deliver, validate_queue_submit,
};

/// Why a subscription ended, carried in `aux` of a `TOPIC_CLOSED` entry.
pub mod topic_close_reason {
    /// Acknowledges the node's own unsubscribe: the last entry for this subscription.
    pub const UNSUBSCRIBED: u64 = 1;
    /// A `Block` subscription stayed full past its untether timeout and was cut loose.
    pub const UNTETHERED: u64 = 2;
    /// The engine is shutting down.
    pub const ENGINE_SHUTDOWN: u64 = 3;
}

/// Why a session ended, carried in `aux` of a `CLOSED` entry.
pub mod close_reason {
    /// The peer closed its end.
    pub const PEER_CLOSED: u64 = 1;
    /// The peer's process went away (exit, crash, SIGKILL, or it broke the protocol).
    pub const PEER_DISCONNECTED: u64 = 2;
    /// The engine is shutting down.
    pub const ENGINE_SHUTDOWN: u64 = 3;
    /// Acknowledges the receiving node's own `CLOSE` of this end: the last entry the engine
    /// will ever deliver for it.
    pub const CLOSE_ACK: u64 = 4;
}

/// The bounds a descriptor is checked against: state the checking side owns, never state
/// the peer wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaBounds {
    /// Size of the arena the offset must point into.
    pub size: u64,
    /// Alignment every sub-block start must have (the arena's minimum block).
    pub align: u64,
}

/// An entry from a node's submit ring that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submission {
    /// Send `len` bytes at `offset` of the node's transmit arena on session end `session`.
    Data {
        /// The sender's session end.
        session: u32,
        /// Offset in the transmit arena.
        offset: u64,
        /// Payload length.
        len: u32,
    },
    /// Send the frame of `len` bytes at `offset` of the transmit arena, holding `records`
    /// records, on session end `session` (its records are checked when it is copied).
    Frame {
        /// The sender's session end.
        session: u32,
        /// Offset in the transmit arena.
        offset: u64,
        /// Frame length (at least one record header).
        len: u32,
        /// Records the descriptor declares (at least one).
        records: u32,
    },
    /// Send the first `len` bytes of hand-off segment `segment` (which the engine lent this
    /// node, see [`crate::segment`]) on session end `session`.
    Segment {
        /// The sender's session end.
        session: u32,
        /// The segment's id in the node's table (never 0: 0 names the arenas).
        segment: u32,
        /// Payload length (at least 1).
        len: u32,
    },
    /// Half-close of `session`.
    Fin {
        /// The sender's session end.
        session: u32,
    },
    /// Full close of `session`.
    Close {
        /// The sender's session end.
        session: u32,
    },
}

/// An entry from the engine's deliver ring that passed validation (the node side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A payload of `len` bytes in hand-off segment `segment`, whose sealed memfd came in an
    /// [`EngineFrame::SegmentDelivery`](crate::control::EngineFrame::SegmentDelivery), for
    /// session end `session`.
    Segment {
        /// The receiver's session end.
        session: u32,
        /// The segment's id in the node's table.
        segment: u32,
        /// Payload length.
        len: u32,
    },
    /// A payload at `offset` of the receive arena for session end `session`.
    Data {
        /// The receiver's session end.
        session: u32,
        /// Offset in the receive arena.
        offset: u64,
        /// Payload length.
        len: u32,
    },
    /// A frame of `records` records, `len` bytes at `offset` of the receive arena.
    Frame {
        /// The receiver's session end.
        session: u32,
        /// Offset in the receive arena.
        offset: u64,
        /// Frame length.
        len: u32,
        /// Records the engine counted in it.
        records: u32,
    },
    /// The peer half-closed: no more data will arrive on `session`.
    Fin {
        /// The receiver's session end.
        session: u32,
    },
    /// The session is over; `reason` is a [`close_reason`] value.
    Closed {
        /// The receiver's session end.
        session: u32,
        /// Why.
        reason: u64,
    },
    /// The transmit sub-block at `offset` has been copied and may be freed.
    TxDone {
        /// Offset in the transmit arena.
        offset: u64,
    },
    /// `count` more messages, and `bytes` more of the window, may be sent on `session`.
    Credit {
        /// The sender's session end.
        session: u32,
        /// How many message credits come back.
        count: u32,
        /// How many bytes of the window come back (the sum of the messages' charges).
        bytes: u64,
    },
}

/// What was wrong with a descriptor. The engine logs it and closes the node that wrote it.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The kind is not one this ring carries.
    #[error("unknown descriptor kind {kind}")]
    UnknownKind {
        /// The kind found.
        kind: u16,
    },
    /// Flags must be zero.
    #[error("reserved flags set: {flags:#x}")]
    Flags {
        /// The flags found.
        flags: u16,
    },
    /// A payload in a hand-off segment starts at its offset 0 and holds at least one byte.
    #[error(
        "a payload in segment {segment} at offset {offset} of {len} bytes: it must start at 0 and hold a byte"
    )]
    SegmentSpan {
        /// The segment named.
        segment: u32,
        /// The offset found.
        offset: u64,
        /// The length found.
        len: u32,
    },
    /// The segment index names no segment.
    #[error("segment {segment} does not exist")]
    Segment {
        /// The segment found.
        segment: u32,
    },
    /// The payload does not lie wholly inside the arena (the sum is checked, so lengths that
    /// overflow land here too).
    #[error("payload at offset {offset} of {len} bytes lies outside the arena of {size} bytes")]
    OutOfBounds {
        /// Offset found.
        offset: u64,
        /// Length found.
        len: u64,
        /// Size of the arena.
        size: u64,
    },
    /// The offset is not aligned to the arena's minimum block.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// Offset found.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// A credit of zero or more than any window can hold.
    #[error("credit count {count} is out of range")]
    Credit {
        /// The count found.
        count: u64,
    },
    /// The ring's indices were corrupted.
    #[error(transparent)]
    Ring(#[from] crate::RingError),
    /// A frame's records do not tile it, or their count is not the declared one.
    #[error("malformed frame: {0}")]
    Frame(#[from] crate::frame::FrameError),
    /// A `TOPIC_LAGGED` entry that counts no lost message.
    #[error("lag count {count} is out of range")]
    Lagged {
        /// The count found.
        count: u64,
    },
}

fn check_common(raw: &RawDescriptor) -> Result<(), Violation> {
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    if raw.segment != 0 {
        return Err(Violation::Segment {
            segment: raw.segment,
        });
    }
    Ok(())
}

fn check_span(offset: u64, len: u64, bounds: &ArenaBounds) -> Result<(), Violation> {
    let fits = offset
        .checked_add(len)
        .is_some_and(|end| end <= bounds.size && offset < bounds.size.max(1));
    if !fits {
        return Err(Violation::OutOfBounds {
            offset,
            len,
            size: bounds.size,
        });
    }
    if bounds.align != 0 && !offset.is_multiple_of(bounds.align) {
        return Err(Violation::Misaligned {
            offset,
            align: bounds.align,
        });
    }
    Ok(())
}

/// Where an empty payload points.
#[derive(Clone, Copy)]
enum Empty {
    /// Nowhere: the offset must be zero.
    NoSubBlock,
    /// At a sub-block of its own, like any other payload.
    OwnSubBlock,
}

fn check_payload(raw: &RawDescriptor, bounds: &ArenaBounds, empty: Empty) -> Result<(), Violation> {
    match (raw.len, empty) {
        (0, Empty::NoSubBlock) if raw.offset != 0 => Err(Violation::OutOfBounds {
            offset: raw.offset,
            len: 0,
            size: bounds.size,
        }),
        (0, Empty::NoSubBlock) => Ok(()),
        (len, _) => check_span(raw.offset, u64::from(len).max(1), bounds),
    }
}

/// The frame's span in its arena, and the record count it declares: at least one record, and
/// no more than its length leaves room for (each takes at least a length prefix).
fn check_frame(raw: &RawDescriptor, bounds: &ArenaBounds) -> Result<(u32, u32), Violation> {
    let header = crate::frame::RECORD_HEADER;
    let fits = raw.len >= header && raw.aux >= 1 && raw.aux <= u64::from(raw.len / header);
    if !fits {
        return Err(Violation::Frame(crate::frame::FrameError::Count {
            declared: raw.aux,
            found: 0,
        }));
    }
    check_span(raw.offset, u64::from(raw.len), bounds)?;
    // `aux <= len / 4` fits a u32.
    Ok((raw.len, raw.aux as u32))
}

/// Validates an entry of a node's submit ring against the node's transmit arena.
///
/// `raw` must already be a copy in the caller's memory; the function never looks at shared
/// memory. Session ownership is checked by the caller, which owns the session table.
///
/// # Errors
///
/// Returns the [`Violation`] that disqualifies the entry.
pub fn validate_submit(raw: &RawDescriptor, tx: &ArenaBounds) -> Result<Submission, Violation> {
    if raw.kind == kind::DATA && raw.segment != 0 {
        check_segment_payload(raw)?;
        return Ok(Submission::Segment {
            session: raw.session,
            segment: raw.segment,
            len: raw.len,
        });
    }
    check_common(raw)?;
    match raw.kind {
        kind::DATA => {
            // A zero-length loan takes no sub-block: its offset must be zero.
            check_payload(raw, tx, Empty::NoSubBlock)?;
            Ok(Submission::Data {
                session: raw.session,
                offset: raw.offset,
                len: raw.len,
            })
        }
        kind::FRAME => {
            let (len, records) = check_frame(raw, tx)?;
            Ok(Submission::Frame {
                session: raw.session,
                offset: raw.offset,
                len,
                records,
            })
        }
        kind::FIN => Ok(Submission::Fin {
            session: raw.session,
        }),
        kind::CLOSE => Ok(Submission::Close {
            session: raw.session,
        }),
        kind => Err(Violation::UnknownKind { kind }),
    }
}

/// A payload in a hand-off segment: no flags, offset 0, at least one byte (whether the
/// segment is the node's and the length fits it is the engine's table to say).
fn check_segment_payload(raw: &RawDescriptor) -> Result<(), Violation> {
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    if raw.offset != 0 || raw.len == 0 {
        return Err(Violation::SegmentSpan {
            segment: raw.segment,
            offset: raw.offset,
            len: raw.len,
        });
    }
    Ok(())
}

/// Validates an entry of a node's release ring that names a hand-off segment (`segment`
/// not 0); returns the segment's id. Whether the engine delivered that segment to this node
/// is the engine's table to say.
///
/// # Errors
///
/// Returns the [`Violation`] that disqualifies the entry.
pub fn validate_segment_release(raw: &RawDescriptor) -> Result<u32, Violation> {
    if raw.kind != kind::RELEASE {
        return Err(Violation::UnknownKind { kind: raw.kind });
    }
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    if raw.segment == 0 || raw.offset != 0 {
        return Err(Violation::Segment {
            segment: raw.segment,
        });
    }
    Ok(raw.segment)
}

/// Validates an entry of a node's release ring; returns the offset in the receive arena.
///
/// Whether that offset is a sub-block the engine really delivered to this node is decided by
/// the engine's own receive allocator (a foreign or repeated offset is a [`crate::FreeError`]).
///
/// # Errors
///
/// Returns the [`Violation`] that disqualifies the entry.
pub fn validate_release(raw: &RawDescriptor, rx: &ArenaBounds) -> Result<u64, Violation> {
    check_common(raw)?;
    if raw.kind != kind::RELEASE {
        return Err(Violation::UnknownKind { kind: raw.kind });
    }
    check_span(raw.offset, 1, rx)?;
    Ok(raw.offset)
}

/// Validates an entry of the deliver ring (the node side: the engine is trusted, but a
/// corrupted entry must still never lead to an out-of-bounds read).
///
/// # Errors
///
/// Returns the [`Violation`] that disqualifies the entry.
pub fn validate_deliver(
    raw: &RawDescriptor,
    rx: &ArenaBounds,
    tx: &ArenaBounds,
) -> Result<Delivery, Violation> {
    if raw.kind == kind::DATA && raw.segment != 0 {
        check_segment_payload(raw)?;
        return Ok(Delivery::Segment {
            session: raw.session,
            segment: raw.segment,
            len: raw.len,
        });
    }
    check_common(raw)?;
    match raw.kind {
        kind::DATA => {
            // The engine gives even an empty payload a sub-block (the node releases it, which
            // returns the sender's credit): its offset names that sub-block.
            check_payload(raw, rx, Empty::OwnSubBlock)?;
            Ok(Delivery::Data {
                session: raw.session,
                offset: raw.offset,
                len: raw.len,
            })
        }
        kind::FRAME => {
            let (len, records) = check_frame(raw, rx)?;
            Ok(Delivery::Frame {
                session: raw.session,
                offset: raw.offset,
                len,
                records,
            })
        }
        kind::FIN => Ok(Delivery::Fin {
            session: raw.session,
        }),
        kind::CLOSED => Ok(Delivery::Closed {
            session: raw.session,
            reason: raw.aux,
        }),
        kind::TX_DONE => {
            check_span(raw.offset, 1, tx)?;
            Ok(Delivery::TxDone { offset: raw.offset })
        }
        kind::CREDIT => match u32::try_from(raw.aux) {
            Ok(count) if count > 0 => Ok(Delivery::Credit {
                session: raw.session,
                count,
                bytes: raw.offset,
            }),
            _ => Err(Violation::Credit { count: raw.aux }),
        },
        kind => Err(Violation::UnknownKind { kind }),
    }
}

/// A topic entry of the deliver ring that passed validation (the node side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicDelivery {
    /// A message in slot `offset` of topic `topic`'s segment, for `subscription`.
    Data {
        /// The node's subscription id.
        subscription: u32,
        /// The topic whose segment holds the slot.
        topic: u32,
        /// Offset of the slot in the segment.
        offset: u64,
        /// Message length.
        len: u32,
        /// The topic's sequence number of this message.
        seq: u64,
    },
    /// `count` messages were lost to the overflow policy before the next `Data`.
    Lagged {
        /// The node's subscription id.
        subscription: u32,
        /// How many.
        count: u64,
    },
    /// The subscription is over; `reason` is a [`topic_close_reason`] value.
    Closed {
        /// The node's subscription id.
        subscription: u32,
        /// Why.
        reason: u64,
    },
}

/// A `TOPIC_RELEASE` entry that passed validation (the engine side). Whether the
/// subscription belongs to the node and holds that slot is decided by the engine's own
/// tables (a foreign slot is a [`crate::broadcast::SlotError`] of that subscriber alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicRelease {
    /// The node's subscription id.
    pub subscription: u32,
    /// The topic whose segment holds the slot.
    pub topic: u32,
    /// Offset of the slot in the segment.
    pub offset: u64,
}

/// Validates a `TOPIC_RELEASE` entry of a node's release ring. `segment` gives the bounds
/// of a topic's segment (size, minimum block) from the engine's own tables, or `None` for a
/// topic that does not exist.
///
/// # Errors
///
/// [`Violation::UnknownKind`], [`Violation::Flags`], [`Violation::Segment`] (no such topic),
/// [`Violation::OutOfBounds`] or [`Violation::Misaligned`].
pub fn validate_topic_release(
    raw: &RawDescriptor,
    segment: impl FnOnce(u32) -> Option<ArenaBounds>,
) -> Result<TopicRelease, Violation> {
    if raw.kind != kind::TOPIC_RELEASE {
        return Err(Violation::UnknownKind { kind: raw.kind });
    }
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    let bounds = segment(raw.segment).ok_or(Violation::Segment {
        segment: raw.segment,
    })?;
    check_span(raw.offset, 1, &bounds)?;
    Ok(TopicRelease {
        subscription: raw.session,
        topic: raw.segment,
        offset: raw.offset,
    })
}

/// Validates a topic entry of the deliver ring (the node side). `segment` gives the bounds of
/// a topic segment the node has mapped, or `None` if it has none for that topic.
///
/// # Errors
///
/// The [`Violation`] that disqualifies the entry.
pub fn validate_topic_deliver(
    raw: &RawDescriptor,
    segment: impl FnOnce(u32) -> Option<ArenaBounds>,
) -> Result<TopicDelivery, Violation> {
    if raw.flags != 0 {
        return Err(Violation::Flags { flags: raw.flags });
    }
    match raw.kind {
        kind::TOPIC_DATA => {
            let bounds = segment(raw.segment).ok_or(Violation::Segment {
                segment: raw.segment,
            })?;
            check_payload(raw, &bounds, Empty::OwnSubBlock)?;
            Ok(TopicDelivery::Data {
                subscription: raw.session,
                topic: raw.segment,
                offset: raw.offset,
                len: raw.len,
                seq: raw.aux,
            })
        }
        kind::TOPIC_LAGGED | kind::TOPIC_CLOSED if raw.segment != 0 => Err(Violation::Segment {
            segment: raw.segment,
        }),
        kind::TOPIC_LAGGED if raw.aux == 0 => Err(Violation::Lagged { count: raw.aux }),
        kind::TOPIC_LAGGED => Ok(TopicDelivery::Lagged {
            subscription: raw.session,
            count: raw.aux,
        }),
        kind::TOPIC_CLOSED => Ok(TopicDelivery::Closed {
            subscription: raw.session,
            reason: raw.aux,
        }),
        kind => Err(Violation::UnknownKind { kind }),
    }
}

/// The part of a session's byte window a payload of `len` bytes takes: the memory it really
/// occupies in a buddy arena whose smallest block is `min_block` (0 for an empty payload,
/// which takes no transmit sub-block). The engine and the node compute it alike.
pub fn window_charge(len: u32, min_block: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    u64::from(len).next_power_of_two().max(min_block)
}

impl RawDescriptor {
    /// A `FRAME` entry: `records` records of `session` in `len` bytes at `offset`.
    pub fn frame(session: u32, offset: u64, len: u32, records: u32) -> Self {
        Self {
            session,
            kind: kind::FRAME,
            len,
            offset,
            aux: u64::from(records),
            ..Self::default()
        }
    }

    /// A `CREDIT` entry: `messages` messages of `session` released, `bytes` of window with them.
    pub fn credit(session: u32, messages: u64, bytes: u64) -> Self {
        Self {
            session,
            kind: kind::CREDIT,
            offset: bytes,
            aux: messages,
            ..Self::default()
        }
    }

    /// A `TOPIC_DATA` entry: slot `offset`/`len` of topic `topic`'s segment, sequence `seq`.
    pub fn topic_data(subscription: u32, topic: u32, offset: u64, len: u32, seq: u64) -> Self {
        Self {
            session: subscription,
            kind: kind::TOPIC_DATA,
            segment: topic,
            len,
            offset,
            aux: seq,
            ..Self::default()
        }
    }

    /// A `TOPIC_RELEASE` entry for slot `offset` of topic `topic`'s segment.
    pub fn topic_release(subscription: u32, topic: u32, offset: u64) -> Self {
        Self {
            session: subscription,
            kind: kind::TOPIC_RELEASE,
            segment: topic,
            offset,
            ..Self::default()
        }
    }

    /// A `DATA` entry.
    pub fn data(session: u32, offset: u64, len: u32) -> Self {
        Self {
            session,
            kind: kind::DATA,
            offset,
            len,
            ..Self::default()
        }
    }

    /// An entry of `kind` for `session` with `aux`, and no payload.
    pub fn control(kind: u16, session: u32, aux: u64) -> Self {
        Self {
            session,
            kind,
            aux,
            ..Self::default()
        }
    }

    /// A `RELEASE` or `TX_DONE` entry naming `offset`.
    pub fn offset_only(kind: u16, offset: u64) -> Self {
        Self {
            kind,
            offset,
            ..Self::default()
        }
    }

    /// A `DATA` entry naming `len` bytes of hand-off segment `segment` (not 0).
    pub fn segment_data(session: u32, segment: u32, len: u32) -> Self {
        Self {
            session,
            kind: kind::DATA,
            segment,
            len,
            ..Self::default()
        }
    }

    /// The `RELEASE` entry of hand-off segment `segment` (not 0).
    pub fn segment_release(segment: u32) -> Self {
        Self {
            kind: kind::RELEASE,
            segment,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: ArenaBounds = ArenaBounds {
        size: 1 << 20,
        align: 64,
    };

    #[test]
    fn data_inside_arena_is_valid() {
        let d = RawDescriptor::data(7, 4096, 100);
        assert_eq!(
            validate_submit(&d, &TX),
            Ok(Submission::Data {
                session: 7,
                offset: 4096,
                len: 100
            })
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let past_end = RawDescriptor::data(1, 1 << 20, 1);
        assert!(matches!(
            validate_submit(&past_end, &TX),
            Err(Violation::OutOfBounds { .. })
        ));
        let overflow = RawDescriptor::data(1, u64::MAX - 10, u32::MAX);
        assert!(matches!(
            validate_submit(&overflow, &TX),
            Err(Violation::OutOfBounds { .. })
        ));
        let straddles = RawDescriptor::data(1, (1 << 20) - 64, 65);
        assert!(matches!(
            validate_submit(&straddles, &TX),
            Err(Violation::OutOfBounds { .. })
        ));
        let misaligned = RawDescriptor::data(1, 65, 1);
        assert!(matches!(
            validate_submit(&misaligned, &TX),
            Err(Violation::Misaligned { .. })
        ));
        let unknown = RawDescriptor::control(99, 1, 0);
        assert_eq!(
            validate_submit(&unknown, &TX),
            Err(Violation::UnknownKind { kind: 99 })
        );
        let flagged = RawDescriptor {
            flags: 1,
            ..RawDescriptor::data(1, 0, 1)
        };
        assert!(matches!(
            validate_submit(&flagged, &TX),
            Err(Violation::Flags { .. })
        ));
        let segment = RawDescriptor {
            segment: 3,
            ..RawDescriptor::data(1, 64, 1)
        };
        assert!(matches!(
            validate_submit(&segment, &TX),
            Err(Violation::SegmentSpan { segment: 3, .. })
        ));
        let closing_segment = RawDescriptor {
            segment: 3,
            ..RawDescriptor::control(kind::CLOSE, 1, 0)
        };
        assert!(matches!(
            validate_submit(&closing_segment, &TX),
            Err(Violation::Segment { segment: 3 })
        ));
        assert_eq!(
            validate_submit(&RawDescriptor::segment_data(1, 3, 10), &TX),
            Ok(Submission::Segment {
                session: 1,
                segment: 3,
                len: 10
            })
        );
        assert_eq!(
            validate_segment_release(&RawDescriptor::segment_release(3)),
            Ok(3)
        );
        assert!(validate_segment_release(&RawDescriptor::offset_only(kind::RELEASE, 0)).is_err());
        let empty_with_offset = RawDescriptor::data(1, 64, 0);
        assert!(validate_submit(&empty_with_offset, &TX).is_err());
        let release_oob = RawDescriptor::offset_only(kind::RELEASE, 1 << 21);
        assert!(validate_release(&release_oob, &TX).is_err());
        let release_kind = RawDescriptor::offset_only(kind::DATA, 0);
        assert!(validate_release(&release_kind, &TX).is_err());
        let zero_credit = RawDescriptor::control(kind::CREDIT, 1, 0);
        assert!(validate_deliver(&zero_credit, &TX, &TX).is_err());
        let huge_credit = RawDescriptor::control(kind::CREDIT, 1, u64::MAX);
        assert!(validate_deliver(&huge_credit, &TX, &TX).is_err());
    }

    #[test]
    fn window_charge_is_the_buddy_block() {
        assert_eq!(window_charge(0, 256), 0);
        assert_eq!(window_charge(1, 256), 256);
        assert_eq!(window_charge(256, 256), 256);
        assert_eq!(window_charge(257, 256), 512);
        assert_eq!(window_charge(64 << 10, 256), 64 << 10);
        assert_eq!(window_charge((64 << 10) + 1, 256), 128 << 10);
        assert_eq!(window_charge(u32::MAX, 64), 1 << 32);
    }

    #[test]
    fn credit_carries_messages_and_bytes() {
        let c = RawDescriptor::credit(9, 3, 3 << 16);
        assert_eq!(
            validate_deliver(&c, &TX, &TX),
            Ok(Delivery::Credit {
                session: 9,
                count: 3,
                bytes: 3 << 16
            })
        );
    }

    #[test]
    fn topic_entries_validate_against_their_segment() {
        let seg = |topic: u32| (topic == 5).then_some(TX);
        let data = RawDescriptor::topic_data(2, 5, 4096, 100, 77);
        assert_eq!(
            validate_topic_deliver(&data, seg),
            Ok(TopicDelivery::Data {
                subscription: 2,
                topic: 5,
                offset: 4096,
                len: 100,
                seq: 77
            })
        );
        let release = RawDescriptor::topic_release(2, 5, 4096);
        assert_eq!(
            validate_topic_release(&release, seg),
            Ok(TopicRelease {
                subscription: 2,
                topic: 5,
                offset: 4096
            })
        );
        // Unknown topic, out of bounds, misaligned, flags, wrong kind, zero lag.
        let unknown = RawDescriptor::topic_release(2, 6, 4096);
        assert_eq!(
            validate_topic_release(&unknown, seg),
            Err(Violation::Segment { segment: 6 })
        );
        let oob = RawDescriptor::topic_release(2, 5, 1 << 20);
        assert!(matches!(
            validate_topic_release(&oob, seg),
            Err(Violation::OutOfBounds { .. })
        ));
        let misaligned = RawDescriptor::topic_release(2, 5, 4097);
        assert!(matches!(
            validate_topic_release(&misaligned, seg),
            Err(Violation::Misaligned { .. })
        ));
        let flagged = RawDescriptor {
            flags: 2,
            ..release
        };
        assert!(matches!(
            validate_topic_release(&flagged, seg),
            Err(Violation::Flags { .. })
        ));
        let session_release = RawDescriptor::offset_only(kind::RELEASE, 0);
        assert!(matches!(
            validate_topic_release(&session_release, seg),
            Err(Violation::UnknownKind { .. })
        ));
        assert!(
            validate_release(&release, &TX).is_err(),
            "session path refuses topic releases"
        );
        let straddles = RawDescriptor::topic_data(2, 5, (1 << 20) - 64, 65, 0);
        assert!(validate_topic_deliver(&straddles, seg).is_err());
        let zero_lag = RawDescriptor::control(kind::TOPIC_LAGGED, 2, 0);
        assert_eq!(
            validate_topic_deliver(&zero_lag, seg),
            Err(Violation::Lagged { count: 0 })
        );
        let lag = RawDescriptor::control(kind::TOPIC_LAGGED, 2, 9);
        assert_eq!(
            validate_topic_deliver(&lag, seg),
            Ok(TopicDelivery::Lagged {
                subscription: 2,
                count: 9
            })
        );
        let closed = RawDescriptor::control(kind::TOPIC_CLOSED, 2, topic_close_reason::UNTETHERED);
        assert!(validate_topic_deliver(&closed, seg).is_ok());
        assert!(kind::is_topic(kind::TOPIC_RELEASE) && !kind::is_topic(kind::CREDIT));
    }

    #[test]
    fn zero_length_payload_needs_no_sub_block() {
        let d = RawDescriptor::data(3, 0, 0);
        assert!(validate_submit(&d, &TX).is_ok());
        assert!(validate_deliver(&d, &TX, &TX).is_ok());
        // Delivered, an empty payload names the sub-block the engine gave it.
        let delivered = RawDescriptor::data(3, 4096, 0);
        assert!(validate_submit(&delivered, &TX).is_err());
        assert!(validate_deliver(&delivered, &TX, &TX).is_ok());
        let outside = RawDescriptor::data(3, 1 << 20, 0);
        assert!(validate_deliver(&outside, &TX, &TX).is_err());
    }
}
