//! The segment itself: the engine's writable mapping and the subscribers' read-only ones.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::block::Block;
use crate::descriptor::{RawDescriptor, Violation};
use crate::error::BlockError;

/// The seals a broadcast segment carries before any subscriber gets its fd: no shrink (so no
/// SIGBUS), no grow, no new write access of any kind, no further seal changes.
pub const BROADCAST_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::FUTURE_WRITE)
    .union(SealFlags::SEAL);

/// A shared mapping of a whole segment; unmapped on drop.
struct SegMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: plain shared memory; the engine writes it only through `copy_to_broadcast` and
// `BroadcastSegment::write` (raw copies, exclusive by the slot protocol), and readers only
// read slots nobody writes while they are held.
unsafe impl Send for SegMapping {}
// SAFETY: as for Send.
unsafe impl Sync for SegMapping {}

impl fmt::Debug for SegMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegMapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl SegMapping {
    fn map(fd: BorrowedFd<'_>, len: u64, prot: ProtFlags) -> Result<Self, BlockError> {
        let len = usize::try_from(len).map_err(|_| BlockError::Config("segment too large"))?;
        if len == 0 {
            return Err(BlockError::Config("a broadcast segment cannot be empty"));
        }
        // SAFETY: a fresh shared mapping at an address the kernel chooses (null hint): it
        // aliases no Rust object. The file is sealed against shrinking before anyone maps it
        // (engine: create adds SHRINK first; subscriber: open checks it), so every page of
        // the mapping stays backed and no access can raise SIGBUS.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
                .map_err(|e| BlockError::sys("mmap", e))?;
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or(BlockError::Header("mmap returned null"))?;
        Ok(Self { base, len })
    }

    /// A pointer to `len` bytes at `offset`, or `None` if that range is not inside.
    fn range(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: offset + len <= self.len (checked above), so the result stays within (or
        // one past the end of) the mapping.
        Some(unsafe { self.base.as_ptr().add(offset as usize) })
    }
}

impl Drop for SegMapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; every user of the memory holds an
        // Arc to the owner of this mapping, so none is left when this runs.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

fn out_of_bounds(offset: u64, len: u64, size: u64) -> Violation {
    Violation::OutOfBounds { offset, len, size }
}

// ===== impl BroadcastSegment =====

/// A topic's broadcast segment, the engine side: the only writable mapping that will ever
/// exist of it.
#[derive(Debug)]
pub struct BroadcastSegment {
    fd: OwnedFd,
    mapping: SegMapping,
}

impl BroadcastSegment {
    /// Creates a segment of `size` bytes: memfd, size, seals against shrink and grow, the
    /// engine's writable mapping, then `F_SEAL_FUTURE_WRITE | F_SEAL_SEAL` (see the module
    /// docs). When this returns, [`Self::fd`] may be handed to subscribers.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] for a zero size, [`BlockError::Sys`] when a system call fails
    /// (a kernel before 5.1 has no `F_SEAL_FUTURE_WRITE`, and the segment is then refused
    /// rather than handed out writable).
    pub fn create(size: u64, name: &str) -> Result<Self, BlockError> {
        if size == 0 {
            return Err(BlockError::Config("a broadcast segment cannot be empty"));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| BlockError::sys("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| BlockError::sys("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)
            .map_err(|e| BlockError::sys("fcntl(F_ADD_SEALS)", e))?;
        let mapping = SegMapping::map(fd.as_fd(), size, ProtFlags::READ | ProtFlags::WRITE)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
            .map_err(|e| BlockError::sys("fcntl(F_ADD_SEALS, FUTURE_WRITE)", e))?;
        Ok(Self { fd, mapping })
    }

    /// The segment's size in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len as u64
    }

    /// The memfd, sealed read-only for everyone but this mapping (to hand over with
    /// `SCM_RIGHTS`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies `bytes` into the segment at `offset` (engine-made payloads, and tests).
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when the range is not inside the segment.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), Violation> {
        let len = bytes.len() as u64;
        let to = self
            .mapping
            .range(offset, len)
            .ok_or_else(|| out_of_bounds(offset, len, self.size()))?;
        if !bytes.is_empty() {
            // SAFETY: `to..to + len` lies inside the engine's live writable mapping (checked
            // above); `bytes` is engine memory, so the ranges cannot overlap. The engine writes
            // a slot only between allocating it and delivering it: no subscriber reads it
            // then, and none can write it ever (the seals), so no reference is formed into
            // memory another party may change.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), to, bytes.len()) };
        }
        Ok(())
    }

    /// Copies `len` bytes at `offset` of the segment into engine memory (tests, inspection).
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when the range is not inside the segment.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, Violation> {
        let len64 = u64::from(len);
        let from = self
            .mapping
            .range(offset, len64)
            .ok_or_else(|| out_of_bounds(offset, len64, self.size()))?;
        let mut out = vec![0u8; len as usize];
        if len > 0 {
            // SAFETY: the source lies inside the live mapping (checked above), the destination
            // is a fresh vector of exactly `len` bytes; raw copy, no reference into the segment.
            unsafe { std::ptr::copy_nonoverlapping(from, out.as_mut_ptr(), len as usize) };
        }
        Ok(out)
    }
}

impl AsFd for BroadcastSegment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Copies `len` bytes from `src`'s transmit arena at `src_offset` into `dst` at `dst_offset`:
/// a topic's one copy, whatever the number of subscribers. Both ranges are checked against
/// bounds the engine owns (the publisher's layout as the engine computed it, the segment's
/// real size); no reference into either memory is formed.
///
/// # Errors
///
/// [`Violation::OutOfBounds`] when either range is not inside its arena or segment.
pub fn copy_to_broadcast(
    src: &Block,
    src_offset: u64,
    dst: &BroadcastSegment,
    dst_offset: u64,
    len: u32,
) -> Result<(), Violation> {
    let len64 = u64::from(len);
    let from = src.tx_range(src_offset, len64)?;
    let to = dst
        .mapping
        .range(dst_offset, len64)
        .ok_or_else(|| out_of_bounds(dst_offset, len64, dst.size()))?;
    if len > 0 {
        // SAFETY: the source lies inside the publisher's transmit arena of a live block and
        // the destination inside the segment's live writable mapping (both checked above);
        // they are different memfds, so they cannot overlap. A hostile publisher may change
        // its bytes under us: we copy raw bytes and interpret none, so it garbles only its
        // own message.
        unsafe { std::ptr::copy_nonoverlapping(from, to, len as usize) };
    }
    Ok(())
}

// ===== impl ReadOnlySegment =====

/// A topic's broadcast segment, the subscriber side: mapped read-only after its seals and
/// size were checked.
#[derive(Debug)]
pub struct ReadOnlySegment {
    _fd: OwnedFd,
    mapping: SegMapping,
}

impl ReadOnlySegment {
    /// Checks that `fd` carries every seal of [`BROADCAST_SEALS`] and is exactly
    /// `expected_size` bytes long (as the engine announced it), then maps it read-only.
    ///
    /// # Errors
    ///
    /// [`BlockError::NotSealed`] when a seal is missing (a segment some node could write or
    /// truncate), [`BlockError::SizeMismatch`] when the size differs, [`BlockError::Sys`]
    /// when fstat or mmap fails.
    pub fn open(fd: OwnedFd, expected_size: u64) -> Result<Arc<Self>, BlockError> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| BlockError::sys("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(BROADCAST_SEALS) {
            return Err(BlockError::NotSealed {
                found: seals.bits(),
                required: BROADCAST_SEALS.bits(),
            });
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| BlockError::sys("fstat", e))?;
        let actual =
            u64::try_from(stat.st_size).map_err(|_| BlockError::Header("negative size"))?;
        if actual != expected_size || actual == 0 {
            return Err(BlockError::SizeMismatch {
                header: expected_size,
                actual,
            });
        }
        let mapping = SegMapping::map(fd.as_fd(), actual, ProtFlags::READ)?;
        Ok(Arc::new(Self { _fd: fd, mapping }))
    }

    /// The segment's size in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len as u64
    }

    /// A zero-copy view of the `len` bytes of the slot at `offset`.
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when the range is not inside the segment.
    pub fn view(self: &Arc<Self>, offset: u64, len: u32) -> Result<SegmentView, Violation> {
        let len64 = u64::from(len);
        let ptr = self
            .mapping
            .range(offset, len64)
            .ok_or_else(|| out_of_bounds(offset, len64, self.size()))?;
        Ok(SegmentView {
            segment: self.clone(),
            ptr,
            offset,
            len: len as usize,
        })
    }
}

/// A delivered slot, read in place from the read-only mapping.
///
/// The engine wrote the slot before delivering its descriptor and does not reuse it until
/// every holder released it, so the bytes do not change while this view lives (the node
/// trusts its engine, as for session deliveries); and no node can write them at all.
pub struct SegmentView {
    segment: Arc<ReadOnlySegment>,
    ptr: *mut u8,
    offset: u64,
    len: usize,
}

// SAFETY: a read-only view of memory nobody writes while it lives (type docs).
unsafe impl Send for SegmentView {}
// SAFETY: as for Send.
unsafe impl Sync for SegmentView {}

impl fmt::Debug for SegmentView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentView")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("segment_size", &self.segment.size())
            .finish()
    }
}

impl SegmentView {
    /// The slot's offset in the segment (what the release entry names).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl AsRef<[u8]> for SegmentView {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the range lies inside the read-only mapping (checked by `view`), which
        // `segment` keeps alive; nobody writes it while the slot is held (type docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A held slot that pushes its release entry when dropped: wrap it in
/// `bytes::Bytes::from_owner` for a zero-copy `Bytes` whose last clone releases the slot.
///
/// `release` receives the `TOPIC_RELEASE` entry (see [`RawDescriptor::topic_release`]); the
/// node pushes it on its release ring.
pub struct BroadcastLease<F: FnMut(RawDescriptor)> {
    view: SegmentView,
    entry: RawDescriptor,
    release: F,
}

impl<F: FnMut(RawDescriptor)> fmt::Debug for BroadcastLease<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastLease")
            .field("view", &self.view)
            .field("entry", &self.entry)
            .finish()
    }
}

impl<F: FnMut(RawDescriptor)> BroadcastLease<F> {
    /// A lease over `view`, delivered to `subscription` from `topic`, released through
    /// `release` when dropped.
    pub fn new(view: SegmentView, subscription: u32, topic: u32, release: F) -> Self {
        let entry = RawDescriptor::topic_release(subscription, topic, view.offset());
        Self {
            view,
            entry,
            release,
        }
    }
}

impl<F: FnMut(RawDescriptor)> AsRef<[u8]> for BroadcastLease<F> {
    fn as_ref(&self) -> &[u8] {
        self.view.as_ref()
    }
}

impl<F: FnMut(RawDescriptor)> Drop for BroadcastLease<F> {
    fn drop(&mut self) {
        (self.release)(self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn engine_writes_subscriber_reads() {
        let seg = BroadcastSegment::create(1 << 16, "topic").unwrap();
        let seals = rustix::fs::fcntl_get_seals(seg.fd()).unwrap();
        assert!(seals.contains(BROADCAST_SEALS), "{seals:?}");
        let sub = ReadOnlySegment::open(seg.fd().try_clone_to_owned().unwrap(), 1 << 16).unwrap();
        seg.write(128, b"tick 1").unwrap();
        let view = sub.view(128, 6).unwrap();
        assert_eq!(view.as_ref(), b"tick 1");
        assert_eq!(seg.read(128, 6).unwrap(), b"tick 1");
        assert!(seg.write((1 << 16) - 2, b"abc").is_err());
        assert!(seg.write(u64::MAX, b"a").is_err());
        assert!(sub.view(1 << 16, 1).is_err());
        assert!(sub.view(u64::MAX - 1, 4).is_err());
        assert_eq!(sub.view(1 << 16, 0).unwrap().as_ref(), b"");
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn open_refuses_wrong_size_and_missing_seals() {
        let seg = BroadcastSegment::create(4096, "topic").unwrap();
        let dup = || seg.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            ReadOnlySegment::open(dup(), 8192),
            Err(BlockError::SizeMismatch { .. })
        ));
        // A node block's seals are not enough: it is writable by its node.
        let fd =
            rustix::fs::memfd_create("w", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, crate::block::REQUIRED_SEALS).unwrap();
        assert!(matches!(
            ReadOnlySegment::open(fd, 4096),
            Err(BlockError::NotSealed { .. })
        ));
        assert!(BroadcastSegment::create(0, "empty").is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn lease_pushes_its_release_entry_on_drop() {
        let seg = BroadcastSegment::create(4096, "topic").unwrap();
        let sub = ReadOnlySegment::open(seg.fd().try_clone_to_owned().unwrap(), 4096).unwrap();
        seg.write(64, b"x").unwrap();
        let mut pushed = Vec::new();
        {
            let lease = BroadcastLease::new(sub.view(64, 1).unwrap(), 7, 3, |e| pushed.push(e));
            assert_eq!(lease.as_ref(), b"x");
        }
        assert_eq!(pushed, vec![RawDescriptor::topic_release(7, 3, 64)]);
    }
}
