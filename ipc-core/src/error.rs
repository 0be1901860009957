//! Errors of ipc-core: one enum per operation, every variant documented.

use thiserror::Error;

/// Why a block could not be created, or why a received block was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BlockError {
    /// A system call failed (memfd, ftruncate, seals, mmap, fstat).
    #[error("{op} failed: {source}")]
    Sys {
        /// The operation that failed.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be laid out (a size not a power of two, too small, too large).
    #[error("invalid block configuration: {0}")]
    Config(&'static str),
    /// The received memfd lacks a seal the engine always applies.
    #[error("block is not sealed: seals {found:#x}, required {required:#x}")]
    NotSealed {
        /// Seals found on the file descriptor.
        found: u32,
        /// Seals that must be present.
        required: u32,
    },
    /// The header does not start with the shmlink magic number.
    #[error("bad magic {found:#018x}: not a shmlink block")]
    BadMagic {
        /// The value found in the header.
        found: u64,
    },
    /// The header was written by another layout version.
    #[error("layout version {found} is not supported (this build speaks {supported})")]
    Version {
        /// The version in the header.
        found: u32,
        /// The version this build supports.
        supported: u32,
    },
    /// The header's total size differs from the file's real size.
    #[error("header says {header} bytes but the block is {actual} bytes")]
    SizeMismatch {
        /// Size recorded in the header.
        header: u64,
        /// Size reported by fstat.
        actual: u64,
    },
    /// A region named by the header is misplaced (outside the block, overlapping, misaligned).
    #[error("inconsistent header: {0}")]
    Header(&'static str),
    /// A hand-off segment given to a writer is already sealed against writing: it can no
    /// longer be filled.
    #[error("segment is already sealed against writing: seals {found:#x}")]
    WriteSealed {
        /// Seals found on the file descriptor.
        found: u32,
    },
}

// Used by the modules that make system calls, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
impl BlockError {
    pub(crate) fn sys(op: &'static str, err: rustix::io::Errno) -> Self {
        Self::Sys {
            op,
            source: err.into(),
        }
    }
}

/// Why the engine could not seal a hand-off segment against writing
/// ([`Segment::seal_write`](crate::segment::Segment::seal_write)).
///
/// The first two variants are the writer's doing: the engine treats them as a violation of
/// that node (it kept its mapping, or locked the seals), never as its own failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SealError {
    /// A writable shared mapping of the segment still exists, or its pages are pinned (for
    /// I/O, e.g. io_uring fixed buffers): the kernel's `EBUSY`. Its writer did not let go of
    /// it before announcing it done.
    #[error("the segment is still mapped writable: its writer kept its mapping")]
    StillMapped,
    /// The seals were frozen (`F_SEAL_SEAL`) without `F_SEAL_WRITE` (the kernel's `EPERM`):
    /// the writer locked them so that the segment can never be sealed.
    #[error("the segment's seals are locked without F_SEAL_WRITE: seals {found:#x}")]
    Locked {
        /// Seals found on the file descriptor.
        found: u32,
    },
    /// Another system call failure.
    #[error("{op} failed: {source}")]
    Sys {
        /// The operation that failed.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
}

// Used by the modules that make system calls, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
impl SealError {
    pub(crate) fn sys(op: &'static str, err: rustix::io::Errno) -> Self {
        Self::Sys {
            op,
            source: err.into(),
        }
    }
}

/// Why an allocation in an arena failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// The request can never fit in this arena, whatever is freed.
    #[error("{requested} bytes can never fit in an arena of {capacity} bytes")]
    TooLarge {
        /// Bytes requested.
        requested: u64,
        /// The largest sub-block this arena can ever hand out.
        capacity: u64,
    },
    /// The request would fit, but not now: wait for frees and try again.
    #[error("no free sub-block of {requested} bytes now (largest free: {largest_free})")]
    Full {
        /// Bytes requested.
        requested: u64,
        /// The largest free sub-block at the time of the call.
        largest_free: u64,
    },
}

/// Why a free was refused. The arena is unchanged by a refused free.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeError {
    /// The offset lies outside the arena.
    #[error("offset {offset} is outside the arena of {size} bytes")]
    OutOfBounds {
        /// The offset given.
        offset: u64,
        /// The arena's size.
        size: u64,
    },
    /// The offset is not a multiple of the smallest size class.
    #[error("offset {offset} is not aligned to the minimum block of {min_block} bytes")]
    Misaligned {
        /// The offset given.
        offset: u64,
        /// The smallest size class.
        min_block: u64,
    },
    /// No allocation starts at that offset: a double free, or a pointer into the middle of one.
    #[error("no allocation starts at offset {offset} (double free or foreign offset)")]
    NotAllocated {
        /// The offset given.
        offset: u64,
    },
}

/// A value read from the other side of a ring that cannot be right.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The peer's index claims more entries than the ring holds, or moved backwards.
    #[error("corrupted {which} index {found} (own index {own}, capacity {capacity})")]
    CorruptIndex {
        /// Which index: "head" or "tail".
        which: &'static str,
        /// The value read.
        found: u32,
        /// This side's own index at the time.
        own: u32,
        /// Ring capacity.
        capacity: u32,
    },
}
