//! Hand-off segments: one sealed memfd per large payload, written by its sender, then sealed
//! against writing by the engine and read in place by its receiver, with no copy between.
//!
//! A payload too large for the arenas can travel in a segment of its own. The engine never
//! maps it: it creates the file, lets the sender fill it, and once the sender has unmapped
//! it, seals it with `F_SEAL_WRITE`. From then on the kernel lets nobody change a byte of it
//! (no `write(2)`, no writable mapping, no hole punching, no truncation), so the receiver may
//! read it as an ordinary `&[u8]`:
//!
//! ```text
//!  engine                     sender                         receiver
//!  Segment::create(len)
//!    memfd_create, ftruncate
//!    F_ADD_SEALS SHRINK|GROW
//!    -- fd (SCM_RIGHTS) -->   SegmentWriter::open(fd, len)
//!                               seals? size? mmap(READ|WRITE, SHARED)
//!                             write_at(..) ...
//!                             finish(): munmap, close
//!    <-- "done" -----------
//!  Segment::seal_write()
//!    F_ADD_SEALS WRITE|SEAL   (EBUSY while any writable mapping is left:
//!                              SealError::StillMapped, the sender's violation)
//!    -- fd (SCM_RIGHTS) -------------------------------->    SealedView::open(fd, len)
//!                                                              seals WRITE|SHRINK|GROW? size?
//!                                                              mmap(READ, SHARED)
//!                                                              &[u8] for as long as it lives
//! ```
//!
//! The kernel refuses `F_SEAL_WRITE` while a writable shared mapping of the file exists
//! (`EBUSY`), and refuses every new one after it (`EPERM`); a read-only shared mapping of a
//! write-sealed memfd loses `VM_MAYWRITE`, so `mprotect` cannot make it writable either
//! (Linux 6.7 and later; see [`SealedView::open`] for older kernels). The unit tests below
//! check each of these against the running kernel.
//!
//! Whether the engine uses hand-offs, and from which size, is decided by measurement
//! (`benches/handoff.rs`; the figures are in `docs/ARCHITECTURE.md`).

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::descriptor::Violation;
use crate::error::{BlockError, SealError};

/// The seals a hand-off segment carries while its sender fills it: no shrink (so no
/// `SIGBUS`), no grow.
pub const FILL_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// The seals a receiver requires before it maps a hand-off segment: [`FILL_SEALS`] and
/// `F_SEAL_WRITE`, so the bytes can never change nor vanish under it.
pub const SEALED_SEALS: SealFlags = FILL_SEALS.union(SealFlags::WRITE);

/// What [`Segment::seal_write`] adds: `F_SEAL_WRITE`, then no further seal changes.
const SEAL_WRITE_AND_LOCK: SealFlags = SealFlags::WRITE.union(SealFlags::SEAL);

/// A shared mapping of a whole segment; unmapped on drop.
struct SegmentMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is an address range, usable from any thread. Its owners give access
// only through `&mut self` raw copies (SegmentWriter) or to memory nobody can write
// (SealedView), so sharing the handle across threads adds no race.
unsafe impl Send for SegmentMapping {}
// SAFETY: as for Send.
unsafe impl Sync for SegmentMapping {}

impl fmt::Debug for SegmentMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentMapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl SegmentMapping {
    /// Maps `len` bytes of `fd` from offset 0. The caller has checked that the file is at
    /// least `len` bytes long and sealed against shrinking.
    fn map(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> Result<Self, Errno> {
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint): it aliases no
        // Rust object. Every caller checked the file's seals (F_SEAL_SHRINK) and its size
        // (fstat == len) first, so every page of the mapping stays backed for its whole life
        // and no access can raise SIGBUS.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::INVAL)?;
        Ok(Self { base, len })
    }
}

impl Drop for SegmentMapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned, and every pointer or slice into the
        // mapping is borrowed from its owner, so none outlives this call.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

/// Checks `fd`'s seals against `required` and its real size against `expected_len`.
fn check(fd: BorrowedFd<'_>, required: SealFlags, expected_len: u64) -> Result<usize, BlockError> {
    let seals =
        rustix::fs::fcntl_get_seals(fd).map_err(|e| BlockError::sys("fcntl(F_GET_SEALS)", e))?;
    if !seals.contains(required) {
        return Err(BlockError::NotSealed {
            found: seals.bits(),
            required: required.bits(),
        });
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| BlockError::sys("fstat", e))?;
    let actual = u64::try_from(stat.st_size).map_err(|_| BlockError::Header("negative size"))?;
    if actual != expected_len || actual == 0 {
        return Err(BlockError::SizeMismatch {
            header: expected_len,
            actual,
        });
    }
    usize::try_from(actual).map_err(|_| BlockError::Config("segment too large"))
}

// ===== impl Segment =====

/// A hand-off segment, the engine side: the memfd, never mapped by the engine.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: u64,
}

impl Segment {
    /// Creates a segment of `len` bytes: memfd, size, seals against shrink and grow (not yet
    /// against writing). Hand [`Self::fd`] to the sender, who fills it with a
    /// [`SegmentWriter`].
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] for a zero or unaddressable length, [`BlockError::Sys`] when a
    /// system call fails (`ftruncate` fails with `ENOMEM`/`EFBIG` past the host's limits).
    pub fn create(len: u64, name: &str) -> Result<Self, BlockError> {
        if len == 0 {
            return Err(BlockError::Config("a hand-off segment cannot be empty"));
        }
        if usize::try_from(len).is_err() || len > isize::MAX as u64 {
            return Err(BlockError::Config("segment too large"));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| BlockError::sys("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, len).map_err(|e| BlockError::sys("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, FILL_SEALS)
            .map_err(|e| BlockError::sys("fcntl(F_ADD_SEALS)", e))?;
        Ok(Self { fd, len })
    }

    /// The segment's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: a segment is never empty ([`Self::create`] refuses a zero length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd (to hand over with `SCM_RIGHTS`: to the sender before [`Self::seal_write`],
    /// to the receiver after).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The memfd itself, given up: what the engine hands to the receiver once the segment
    /// is sealed (it keeps no descriptor of a delivered segment).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Seals the segment against writing, for good: `F_ADD_SEALS(F_SEAL_WRITE | F_SEAL_SEAL)`.
    /// When this returns `Ok`, nobody can change its bytes any more and its fd may be handed
    /// to a receiver. Sealing an already write-sealed segment is `Ok`.
    ///
    /// # Errors
    ///
    /// [`SealError::StillMapped`] while some process still maps it writable (its sender
    /// kept its mapping); the seal may succeed later, once that mapping is gone.
    /// [`SealError::Locked`] when someone froze the seals without `F_SEAL_WRITE`: the
    /// segment can never be sealed. [`SealError::Sys`] for any other failure.
    pub fn seal_write(&self) -> Result<(), SealError> {
        match rustix::fs::fcntl_add_seals(&self.fd, SEAL_WRITE_AND_LOCK) {
            Ok(()) => Ok(()),
            Err(Errno::BUSY) => Err(SealError::StillMapped),
            Err(Errno::PERM) => {
                // F_SEAL_SEAL is set. If F_SEAL_WRITE is too (sealed before, by us or by the
                // writer itself), the segment is as sealed as we want it.
                let seals = rustix::fs::fcntl_get_seals(&self.fd)
                    .map_err(|e| SealError::sys("fcntl(F_GET_SEALS)", e))?;
                if seals.contains(SEALED_SEALS) {
                    Ok(())
                } else {
                    Err(SealError::Locked {
                        found: seals.bits(),
                    })
                }
            }
            Err(e) => Err(SealError::sys("fcntl(F_ADD_SEALS, WRITE)", e)),
        }
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

// ===== impl SegmentWriter =====

/// A hand-off segment, the sender side: a writable mapping, to be filled and then given up
/// with [`Self::finish`] (or drop) before the engine seals it.
#[derive(Debug)]
pub struct SegmentWriter {
    mapping: SegmentMapping,
    /// The file's device and inode, in [`WRITERS`] while this writer lives.
    key: (u64, u64),
}

/// The files a [`SegmentWriter`] of this process maps: a second writer of the same file (a
/// duplicate descriptor opened before the first one's seal) is refused.
static WRITERS: std::sync::Mutex<std::collections::BTreeSet<(u64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        WRITERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl SegmentWriter {
    /// Checks that `fd` is sealed against shrink and grow, not yet against writing, and is
    /// exactly `expected_len` bytes long (as the engine announced it), then maps it
    /// read-write. The fd itself is closed: the mapping is all the writer needs.
    ///
    /// # Errors
    ///
    /// [`BlockError::NotSealed`] when shrink or grow is not sealed (the file could be
    /// truncated under the mapping), [`BlockError::WriteSealed`] when it can no longer be
    /// written, [`BlockError::SizeMismatch`] when its size differs, [`BlockError::Sys`] when
    /// a system call fails.
    pub fn open(fd: OwnedFd, expected_len: u64) -> Result<Self, BlockError> {
        let len = check(fd.as_fd(), FILL_SEALS, expected_len)?;
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| BlockError::sys("fcntl(F_GET_SEALS)", e))?;
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return Err(BlockError::WriteSealed {
                found: seals.bits(),
            });
        }
        // One writer per file in this process, from the check above to the seal below; after
        // the seal nothing can open another (it refuses FUTURE_WRITE, above).
        let stat = rustix::fs::fstat(&fd).map_err(|e| BlockError::sys("fstat", e))?;
        let key = (stat.st_dev, stat.st_ino);
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        if writers.contains(&key) {
            return Err(BlockError::Config(
                "the segment is open for writing already",
            ));
        }
        let mapping = SegmentMapping::map(
            fd.as_fd(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )
        .map_err(|e| BlockError::sys("mmap", e))?;
        // From now on no process can write the file but through this mapping: no `write`, no
        // new writable mapping (F_SEAL_FUTURE_WRITE), while this one stays writable.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::FUTURE_WRITE)
            .map_err(|e| BlockError::sys("fcntl(F_ADD_SEALS, FUTURE_WRITE)", e))?;
        writers.insert(key);
        Ok(Self { mapping, key })
    }

    /// The segment's size in bytes.
    pub fn len(&self) -> u64 {
        self.mapping.len as u64
    }

    /// Always `false`: an open segment is never empty.
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// Copies `bytes` into the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when `offset..offset + bytes.len()` is not inside the
    /// segment; nothing is written then.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Violation> {
        let len = bytes.len() as u64;
        let oob = Violation::OutOfBounds {
            offset,
            len,
            size: self.len(),
        };
        let end = offset.checked_add(len).ok_or(oob)?;
        if end > self.len() {
            return Err(oob);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: offset + len <= the mapping's length (checked above), so the destination
        // lies inside the live mapping, and `&mut self` makes this the writer's only access.
        // `bytes` cannot lie in this mapping (a slice of it borrows `self`, which `&mut self`
        // excludes), so the two ranges do not overlap. The copy is raw: no reference into shared memory is formed,
        // so another party writing the same file at once (the engine never does; a second
        // writer on a duplicate fd would be the sender's own doing) can only garble bytes,
        // never break a Rust reference. No reader exists yet: a `SealedView` needs
        // F_SEAL_WRITE, which the kernel refuses while this mapping lives.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.mapping.base.as_ptr().wrapping_add(offset as usize),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Unmaps the segment: after this, the engine can seal it ([`Segment::seal_write`]).
    /// Dropping the writer does the same; `finish` says so at the call site.
    pub fn finish(self) {
        drop(self);
    }
}

impl std::ops::Deref for SegmentWriter {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: base..base + len is one live mapping owned by `self` (unmapped only on its
        // drop, which the borrow outlives), fully backed (`open` checked F_SEAL_SHRINK and
        // the size). Nothing else writes the file while it lives: `open` added
        // F_SEAL_FUTURE_WRITE right after mapping, so the kernel refuses `write(2)` and new
        // writable mappings to every process from then on, and refused this open had the
        // seal been there; no other writer of this process got in between (`WRITERS`). A
        // writable mapping made before `open` would be another process's (the engine never
        // maps a segment it lent: the node trusts its engine, as for its transmit arena) or
        // one made with raw `mmap` outside this module. No reader exists before F_SEAL_WRITE,
        // which the kernel refuses while this mapping lives. So the bytes change only through
        // this value's `&mut` borrows.
        unsafe { std::slice::from_raw_parts(self.mapping.base.as_ptr(), self.mapping.len) }
    }
}

impl std::ops::DerefMut for SegmentWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow of the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.base.as_ptr(), self.mapping.len) }
    }
}

// ===== impl SealedView =====

/// A write-sealed hand-off segment, the receiver side: a read-only mapping read in place as
/// `&[u8]` (zero-copy: wrap it in `bytes::Bytes::from_owner`).
pub struct SealedView {
    mapping: SegmentMapping,
}

impl fmt::Debug for SealedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedView")
            .field("len", &self.mapping.len)
            .finish()
    }
}

impl SealedView {
    /// Checks that `fd` carries `F_SEAL_WRITE`, `F_SEAL_SHRINK` and `F_SEAL_GROW` (see
    /// [`SEALED_SEALS`]) and is exactly `expected_len` bytes long, then maps it read-only.
    /// The fd itself is closed: the mapping keeps the memory alive.
    ///
    /// The mapping is shared (`MAP_SHARED`, `PROT_READ`). Kernels before 6.7 refuse any
    /// shared mapping of a write-sealed memfd (`EPERM`), read-only or not; there the view
    /// falls back to a private read-only mapping, which reads the same pages (a file that
    /// cannot be written never diverges from a private mapping that is never written).
    ///
    /// # Errors
    ///
    /// [`BlockError::NotSealed`] when a seal is missing (a segment someone could still write
    /// or truncate), [`BlockError::SizeMismatch`] when the size differs, [`BlockError::Sys`]
    /// when a system call fails.
    pub fn open(fd: OwnedFd, expected_len: u64) -> Result<Self, BlockError> {
        let len = check(fd.as_fd(), SEALED_SEALS, expected_len)?;
        let mapping = match SegmentMapping::map(fd.as_fd(), len, ProtFlags::READ, MapFlags::SHARED)
        {
            Err(Errno::PERM) => {
                SegmentMapping::map(fd.as_fd(), len, ProtFlags::READ, MapFlags::PRIVATE)
            }
            other => other,
        }
        .map_err(|e| BlockError::sys("mmap", e))?;
        Ok(Self { mapping })
    }

    /// The segment's size in bytes.
    pub fn len(&self) -> u64 {
        self.mapping.len as u64
    }

    /// Always `false`: an open view is never empty.
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }
}

impl AsRef<[u8]> for SealedView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: base..base + len is one live mapping (kept alive by `self`, unmapped only on
        // its drop, which the borrow outlives), readable, and fully backed: `open` checked
        // F_SEAL_SHRINK and that the file is exactly len bytes, and a seal is never removed,
        // so no page can vanish (no SIGBUS). The bytes can never change while the slice
        // lives: `open` checked F_SEAL_WRITE, which the kernel grants only when no writable
        // shared mapping exists (EBUSY otherwise) and after which it refuses every write
        // path (write/pwrite, a writable shared mmap or mprotect, fallocate hole punching,
        // truncation), in every process. Nothing writes through this mapping (PROT_READ).
        // So the memory is immutable and initialised (file pages read as bytes): exactly
        // what a `&[u8]` requires.
        unsafe { std::slice::from_raw_parts(self.mapping.base.as_ptr(), self.mapping.len) }
    }
}

impl std::ops::Deref for SealedView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::FallocateFlags;
    use rustix::mm::MprotectFlags;

    const LEN: u64 = 3 * 4096 + 100;

    fn dup(segment: &Segment) -> OwnedFd {
        segment.fd().try_clone_to_owned().unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn written_bytes_are_read_back_sealed() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        assert_eq!(segment.len(), LEN);
        let seals = rustix::fs::fcntl_get_seals(segment.fd()).unwrap();
        assert_eq!(seals, FILL_SEALS);
        let data = pattern(LEN as usize);
        let mut writer = SegmentWriter::open(dup(&segment), LEN).unwrap();
        writer.write_at(0, &data[..5000]).unwrap();
        writer.write_at(5000, &data[5000..]).unwrap();
        writer.write_at(LEN, &[]).unwrap();
        writer.finish();
        segment.seal_write().unwrap();
        let seals = rustix::fs::fcntl_get_seals(segment.fd()).unwrap();
        assert!(seals.contains(SEALED_SEALS | SealFlags::SEAL), "{seals:?}");
        let view = SealedView::open(dup(&segment), LEN).unwrap();
        assert_eq!(view.len(), LEN);
        assert_eq!(&view[..], &data[..]);
        // Sealing again is harmless, and a second view reads the same bytes.
        segment.seal_write().unwrap();
        assert_eq!(
            SealedView::open(dup(&segment), LEN).unwrap().as_ref(),
            &data
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn a_writer_is_the_only_way_to_write_while_it_lives() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        let writer = SegmentWriter::open(dup(&segment), LEN).unwrap();
        // A second writer, on another descriptor of the file: refused (its seal check).
        assert!(SegmentWriter::open(dup(&segment), LEN).is_err());
        // No other write path either: F_SEAL_FUTURE_WRITE.
        assert_eq!(
            rustix::io::pwrite(segment.fd(), b"evil", 0),
            Err(Errno::PERM)
        );
        writer.finish();
        // Nor after it: the engine seals, the receiver reads.
        assert!(SegmentWriter::open(dup(&segment), LEN).is_err());
        segment.seal_write().unwrap();
        assert!(SealedView::open(dup(&segment), LEN).is_ok());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn out_of_bounds_writes_are_refused() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        let mut writer = SegmentWriter::open(dup(&segment), LEN).unwrap();
        let oob = |r: Result<(), Violation>| matches!(r, Err(Violation::OutOfBounds { .. }));
        assert!(oob(writer.write_at(LEN - 1, b"ab")));
        assert!(oob(writer.write_at(LEN + 1, b"")));
        assert!(oob(writer.write_at(u64::MAX, b"a")));
        writer.write_at(LEN - 2, b"yz").unwrap();
        writer.finish();
        segment.seal_write().unwrap();
        let view = SealedView::open(dup(&segment), LEN).unwrap();
        assert_eq!(&view[LEN as usize - 2..], b"yz");
        assert!(view[..LEN as usize - 2].iter().all(|&b| b == 0));
        assert!(matches!(
            Segment::create(0, "empty"),
            Err(BlockError::Config(_))
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn seal_is_refused_while_a_writer_maps_it() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        let mut writer = SegmentWriter::open(dup(&segment), LEN).unwrap();
        writer.write_at(0, b"kept mapped").unwrap();
        assert!(matches!(segment.seal_write(), Err(SealError::StillMapped)));
        // Nothing was sealed: the receiver refuses it meanwhile.
        assert!(matches!(
            SealedView::open(dup(&segment), LEN),
            Err(BlockError::NotSealed { .. })
        ));
        writer.finish();
        segment.seal_write().unwrap();
        assert_eq!(
            &SealedView::open(dup(&segment), LEN).unwrap()[..11],
            b"kept mapped"
        );
        // A writer comes too late once the segment is sealed.
        assert!(matches!(
            SegmentWriter::open(dup(&segment), LEN),
            Err(BlockError::WriteSealed { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn seals_locked_by_the_writer_are_reported() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        rustix::fs::fcntl_add_seals(segment.fd(), SealFlags::SEAL).unwrap();
        assert!(matches!(
            segment.seal_write(),
            Err(SealError::Locked { found }) if found == (FILL_SEALS | SealFlags::SEAL).bits()
        ));
        // A writer that sealed the segment itself leaves it as sealed as the engine wants.
        let segment = Segment::create(LEN, "handoff").unwrap();
        rustix::fs::fcntl_add_seals(segment.fd(), SealFlags::WRITE | SealFlags::SEAL).unwrap();
        segment.seal_write().unwrap();
        SealedView::open(dup(&segment), LEN).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn reader_and_writer_refuse_bad_fds() {
        // Unsealed, or sealed against shrink and grow only: not for a reader.
        let segment = Segment::create(LEN, "handoff").unwrap();
        assert!(matches!(
            SealedView::open(dup(&segment), LEN),
            Err(BlockError::NotSealed { found, .. }) if found == FILL_SEALS.bits()
        ));
        let plain = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, LEN).unwrap();
        let plain2 = plain.try_clone().unwrap();
        assert!(matches!(
            SealedView::open(plain, LEN),
            Err(BlockError::NotSealed { .. })
        ));
        // A file that could shrink under the writer's mapping: not for a writer either.
        assert!(matches!(
            SegmentWriter::open(plain2, LEN),
            Err(BlockError::NotSealed { .. })
        ));
        // The wrong size, for both.
        assert!(matches!(
            SegmentWriter::open(dup(&segment), LEN + 1),
            Err(BlockError::SizeMismatch { header, actual }) if header == LEN + 1 && actual == LEN
        ));
        segment.seal_write().unwrap();
        assert!(matches!(
            SealedView::open(dup(&segment), LEN - 1),
            Err(BlockError::SizeMismatch { .. })
        ));
        assert!(matches!(
            SealedView::open(dup(&segment), 0),
            Err(BlockError::SizeMismatch { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn a_sealed_segment_cannot_be_written_by_any_path() {
        let segment = Segment::create(LEN, "handoff").unwrap();
        let mut writer = SegmentWriter::open(dup(&segment), LEN).unwrap();
        writer.write_at(0, b"final").unwrap();
        writer.finish();
        segment.seal_write().unwrap();
        let view = SealedView::open(dup(&segment), LEN).unwrap();
        let fd = segment.fd();
        let len = LEN as usize;

        // A new writable shared mapping: EPERM.
        assert_eq!(
            SegmentMapping::map(
                fd,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED
            )
            .err(),
            Some(Errno::PERM)
        );
        // The view's own read-only mapping cannot be made writable: the kernel dropped its
        // VM_MAYWRITE when it was mapped (EACCES). Linux 6.7 and later: an older kernel maps
        // the view privately (see `SealedView::open`), and this check does not apply there.
        let base = view.as_ref().as_ptr().cast_mut().cast();
        // SAFETY: exactly the view's own mapping (page-aligned base, its length); had the
        // kernel allowed it, the mapping would only have become writable, and the test fails.
        let mprotect =
            unsafe { rustix::mm::mprotect(base, len, MprotectFlags::READ | MprotectFlags::WRITE) };
        assert_eq!(mprotect, Err(Errno::ACCESS));
        // Every file write path: EPERM.
        assert_eq!(rustix::io::write(fd, b"evil"), Err(Errno::PERM));
        assert_eq!(rustix::io::pwrite(fd, b"evil", 0), Err(Errno::PERM));
        assert_eq!(
            rustix::fs::fallocate(
                fd,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                LEN
            ),
            Err(Errno::PERM)
        );
        assert_eq!(rustix::fs::ftruncate(fd, 0), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(fd, 2 * LEN), Err(Errno::PERM));
        assert_eq!(&view[..5], b"final");
    }
}
