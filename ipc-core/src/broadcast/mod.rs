//! Broadcast segments: one per topic, written by the engine alone, mapped read-only by every
//! subscriber of the topic.
//!
//! A topic copies a published message once, whatever the number of subscribers: the engine
//! copies it from the publisher's transmit arena into a *slot* of the topic's segment and
//! hands every subscriber a descriptor naming that slot. Because many nodes map the same
//! memory, no node may ever be able to write it (the project's first invariant: a segment
//! several nodes map is written by the engine alone, and holds only what all may read):
//!
//! ```text
//!  engine                                   subscribers (any number)
//!  BroadcastSegment::create                  ReadOnlySegment::open(fd, size)
//!    memfd_create, ftruncate(size)             F_GET_SEALS: SHRINK|GROW|SEAL|FUTURE_WRITE?
//!    F_ADD_SEALS  SHRINK | GROW                fstat: size as announced?
//!    mmap(READ|WRITE, SHARED)   <- the one     mmap(READ, SHARED)
//!                                  writable    slot views as zero-copy bytes
//!    F_ADD_SEALS  FUTURE_WRITE | SEAL          (a write, pwrite, ftruncate, mprotect or a
//!  ...then, and only then, the fd travels       writable mmap of the fd fails: EPERM)
//! ```
//!
//! `F_SEAL_FUTURE_WRITE` forbids every *new* write access to the file (write(2), a writable
//! shared mapping, `mprotect` to writable on a shared mapping, even through a reopened
//! `/proc/self/fd/N`) while the engine's own mapping, made before the seal, stays writable.
//! `F_SEAL_SEAL` then freezes the seal set. The tests in `tests/broadcast_seal.rs` prove each
//! of these against the kernel.
//!
//! Slots are managed in engine memory by [`Slots`]: the buddy allocator over the segment's
//! size (its tree in engine memory, like a receive arena's) and a holder count per slot, with
//! each holder's set of held slots, so a slot is reused only when every holder released it
//! and a release that names a slot its sender does not hold is a typed [`SlotError`] of
//! that sender alone.

mod segment;
mod slots;

pub use segment::{
    BROADCAST_SEALS, BroadcastLease, BroadcastSegment, ReadOnlySegment, SegmentView,
    copy_to_broadcast,
};
pub use slots::{Slot, SlotError, SlotStats, Slots};
