//! Blocks: a sealed memfd per node, mapped by that node and the engine only.
//!
//! The engine calls [`Block::create`]: memfd, size, seals (no shrink, no grow, no further
//! seals: a node can never truncate the block under the engine, so no SIGBUS), map, header.
//! The node calls [`Block::open`] on the descriptor it received: it checks the seals, reads
//! the header once into its own memory and validates it against the file's real size.
//!
//! All raw memory access of the project goes through this module and `ring::storage`:
//! - the engine copies payloads between blocks with [`copy_payload`], bounds-checked against
//!   layouts it computed itself, and never forms a reference into a node's memory;
//! - the node writes loans through [`TxBuf`] (exclusive by construction: the allocator
//!   handed out the range, and it is freed only after the engine says it is done) and reads
//!   deliveries through [`RxView`].

use crate::RawDescriptor;
use crate::idhash::IdSet;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::arena::{ArenaStats, BuddyAllocator};
use crate::descriptor::Violation;
use crate::error::{AllocError, BlockError, FreeError};
use crate::layout::{
    ArenaRegion, BlockConfig, BlockStats, HEADER_SIZE, Layout, RawHeader, STATS_OFFSET,
};
use crate::ring::ShmRing;
use crate::sync::Ordering;

/// The seals every block carries before it is handed over.
pub const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A shared mapping of a whole block; unmapped on drop.
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics or explicit
// volatile/raw copies whose exclusivity the owning types (rings, TxBuf, RxView) ensure.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    fn map(fd: BorrowedFd<'_>, len: u64) -> Result<Self, BlockError> {
        let len = usize::try_from(len).map_err(|_| BlockError::Config("block too large"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint); it aliases no Rust
        // object. The file is sealed against shrinking, so every page stays backed.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| BlockError::sys("mmap", e))?;
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or(BlockError::Header("mmap returned null"))?;
        Ok(Self { base, len })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// A pointer to `len` bytes at `offset`, or `None` if that range is not inside.
    fn range(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: offset + len <= self.len, so the result stays within the mapping.
        Some(unsafe { self.base.as_ptr().add(offset as usize) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; every user of the memory holds an
        // Arc<Mapping>, so none is left when this runs.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

/// One node's block, mapped.
#[derive(Debug)]
pub struct Block {
    fd: OwnedFd,
    mapping: Arc<Mapping>,
    layout: Layout,
    tx_taken: AtomicBool,
}

impl Block {
    /// Creates, sizes, seals and maps a new block, and writes its header (the engine side).
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] for an invalid configuration, [`BlockError::Sys`] when a system
    /// call fails.
    pub fn create(config: &BlockConfig, name: &str) -> Result<Self, BlockError> {
        let layout = Layout::compute(config)?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(|e| BlockError::sys("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, layout.total_size)
            .map_err(|e| BlockError::sys("ftruncate", e))?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS)
            .map_err(|e| BlockError::sys("fcntl(F_ADD_SEALS)", e))?;
        let mapping = Mapping::map(fd.as_fd(), layout.total_size)?;
        let header = layout.to_header();
        // SAFETY: the header lies at offset 0 of a fresh mapping of at least HEADER_SIZE bytes
        // (Layout::compute puts the first region at HEADER_SIZE); nobody else has the fd yet.
        unsafe { mapping.base().cast::<RawHeader>().write_volatile(header) };
        // The rings and the tx tree start zeroed (a fresh memfd reads as zeros): both ring
        // indices 0, and the node formats its tree when it takes its transmit arena.
        Ok(Self {
            fd,
            mapping: Arc::new(mapping),
            layout,
            tx_taken: AtomicBool::new(false),
        })
    }

    /// Maps a block received as a file descriptor and validates it (the node side).
    ///
    /// # Errors
    ///
    /// [`BlockError::NotSealed`] when a required seal is missing, [`BlockError::Sys`] when
    /// fstat or mmap fails, and the header errors of [`Layout::from_header`].
    pub fn open(fd: OwnedFd) -> Result<Self, BlockError> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| BlockError::sys("fcntl(F_GET_SEALS)", e))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(BlockError::NotSealed {
                found: seals.bits(),
                required: REQUIRED_SEALS.bits(),
            });
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| BlockError::sys("fstat", e))?;
        let actual =
            u64::try_from(stat.st_size).map_err(|_| BlockError::Header("negative size"))?;
        if actual < HEADER_SIZE {
            return Err(BlockError::SizeMismatch {
                header: HEADER_SIZE,
                actual,
            });
        }
        let mapping = Mapping::map(fd.as_fd(), actual)?;
        // SAFETY: the mapping is at least HEADER_SIZE bytes (checked above) and RawHeader is
        // plain integers: a volatile read copies whatever is there once into our memory.
        let raw = unsafe { mapping.base().cast::<RawHeader>().read_volatile() };
        let layout = Layout::from_header(&raw, actual)?;
        Ok(Self {
            fd,
            mapping: Arc::new(mapping),
            layout,
            tx_taken: AtomicBool::new(false),
        })
    }

    /// The validated layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The memfd (to hand over with SCM_RIGHTS).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn ring(&self, region: crate::layout::RingRegion) -> ShmRing {
        // SAFETY: the region comes from a validated Layout: 4 KiB aligned, inside the block,
        // capacity a power of two, disjoint from every other region.
        unsafe {
            ShmRing::new(
                self.mapping.clone(),
                region.offset as usize,
                region.capacity,
            )
        }
    }

    /// The submit ring (node produces, engine consumes).
    pub fn submit_ring(&self) -> ShmRing {
        self.ring(self.layout.submit)
    }

    /// The deliver ring (engine produces, node consumes).
    pub fn deliver_ring(&self) -> ShmRing {
        self.ring(self.layout.deliver)
    }

    /// The release ring (node produces, engine consumes).
    pub fn release_ring(&self) -> ShmRing {
        self.ring(self.layout.release)
    }

    fn stats(&self) -> &BlockStats {
        // SAFETY: STATS_OFFSET + size_of::<BlockStats>() <= HEADER_SIZE <= the mapping's
        // length, so the pointer stays inside the mapping.
        let stats = unsafe { self.mapping.base().add(STATS_OFFSET as usize) };
        // SAFETY: in bounds (above), 128-aligned (2048 from a page-aligned base), and
        // BlockStats is atomics only: any bits are valid and every access is atomic, so a
        // shared reference is sound even though the peer writes the same memory.
        unsafe { &*stats.cast::<BlockStats>() }
    }

    /// Publishes the receive arena's usage (the engine side; informational).
    pub fn publish_rx_in_use(&self, bytes: u64) {
        self.stats().rx_in_use.store(bytes, Ordering::Relaxed);
    }

    /// The transmit arena's usage as the node last published it. Untrusted: display only.
    pub fn published_tx_in_use(&self) -> u64 {
        self.stats().tx_in_use.load(Ordering::Relaxed)
    }

    /// Takes the transmit arena (the node side), formatting its allocator tree in the block.
    /// Only the first call succeeds: exactly one party allocates in an arena.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] on a second call.
    pub fn take_tx_arena(self: &Arc<Self>) -> Result<TxArena, BlockError> {
        if self.tx_taken.swap(true, StdOrdering::AcqRel) {
            return Err(BlockError::Config("the transmit arena is already taken"));
        }
        let tree = ShmTree {
            _block: self.clone(),
            // Validated: the tree region lies inside the block (Layout::from_header/compute).
            ptr: self
                .mapping
                .range(self.layout.tx_tree_offset, self.layout.tx_tree_len)
                .ok_or(BlockError::Header("tx tree outside the block"))?,
            len: self.layout.tx_tree_len as usize,
        };
        let allocator = BuddyAllocator::new(tree, self.layout.tx.size, self.layout.tx.min_block)?;
        Ok(TxArena {
            inner: Arc::new(Mutex::new(TxInner {
                allocator,
                in_flight: IdSet::default(),
            })),
            block: self.clone(),
        })
    }

    /// A read-only view of `len` bytes at `offset` of the receive arena (the node side).
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when the range is not inside the receive arena.
    pub fn rx_view(self: &Arc<Self>, offset: u64, len: u32) -> Result<RxView, Violation> {
        let ptr = arena_range(&self.mapping, &self.layout.rx, offset, u64::from(len))?;
        Ok(RxView {
            _owner: Owner::Block(self.clone()),
            ptr,
            len: len as usize,
            offset,
            segment: 0,
        })
    }
}

impl Block {
    /// A raw pointer to `len` bytes at `offset` of the transmit arena, checked against the
    /// layout (crate-internal copies out of it, such as a topic's one copy).
    pub(crate) fn tx_range(&self, offset: u64, len: u64) -> Result<*mut u8, Violation> {
        arena_range(&self.mapping, &self.layout.tx, offset, len)
    }
}

fn arena_range(
    mapping: &Mapping,
    arena: &ArenaRegion,
    offset: u64,
    len: u64,
) -> Result<*mut u8, Violation> {
    let oob = Violation::OutOfBounds {
        offset,
        len,
        size: arena.size,
    };
    let end = offset.checked_add(len).ok_or(oob)?;
    if end > arena.size {
        return Err(oob);
    }
    mapping.range(arena.offset + offset, len).ok_or(oob)
}

/// Copies `len` bytes from `src`'s transmit arena at `src_offset` into `dst`'s receive arena
/// at `dst_offset` (the engine's one copy). Both ranges are checked against the layouts the
/// engine computed; no reference into either block is formed.
///
/// # Errors
///
/// [`Violation::OutOfBounds`] when either range is not inside its arena.
pub fn copy_payload(
    src: &Block,
    src_offset: u64,
    dst: &Block,
    dst_offset: u64,
    len: u32,
) -> Result<(), Violation> {
    let len64 = u64::from(len);
    let from = arena_range(&src.mapping, &src.layout.tx, src_offset, len64)?;
    let to = arena_range(&dst.mapping, &dst.layout.rx, dst_offset, len64)?;
    if len > 0 {
        // SAFETY: both ranges lie inside live mappings (checked above). They are in different
        // arenas (tx of one block, rx of another or the same block), which never overlap.
        // The source may change under us if the node is hostile: we copy raw bytes and
        // interpret none of them, so that can only garble its own payload.
        unsafe { std::ptr::copy_nonoverlapping(from, to, len as usize) };
    }
    Ok(())
}

/// Checks the records of the frame (see [`crate::frame`]) of `len` bytes at `src_offset` of
/// `src`'s transmit arena, declared to hold `declared` records: each length prefix is read once
/// from shared memory into engine memory, every record must lie inside the frame, the records
/// must tile it exactly, and there must be `declared` of them. Returns the record count.
///
/// The engine relies on that count alone (each record is a message of the session's window);
/// it copies the frame's bytes later without interpreting them, so a node that rewrites its
/// frame after the check garbles only its own records, which the receiver checks again.
///
/// # Errors
///
/// [`Violation::OutOfBounds`] when the range is not inside the transmit arena;
/// [`Violation::Frame`] when the records do not check.
pub fn scan_frame(src: &Block, src_offset: u64, len: u32, declared: u64) -> Result<u32, Violation> {
    let from = arena_range(&src.mapping, &src.layout.tx, src_offset, u64::from(len))?;
    let records = crate::frame::scan(len, declared, |at| {
        let mut word = [0u8; 4];
        // SAFETY: `scan` asks only for `at + 4 <= len`, so the four bytes lie inside
        // `from..from + len`, a live mapping (checked above); `word` is engine memory, so the
        // two never overlap. A hostile node may rewrite them at any time: they are read once,
        // as plain bytes, and only the copy in `word` is used.
        unsafe {
            std::ptr::copy_nonoverlapping(from.wrapping_add(at as usize), word.as_mut_ptr(), 4)
        };
        u32::from_le_bytes(word)
    })?;
    Ok(records)
}

/// Copies `len` bytes out of `src`'s transmit arena at `src_offset` into engine memory: what
/// the engine keeps of a payload whose sender is gone, so that its block can be released.
///
/// # Errors
///
/// [`Violation::OutOfBounds`] when the range is not inside the transmit arena.
pub fn copy_out(src: &Block, src_offset: u64, len: u32) -> Result<Vec<u8>, Violation> {
    let from = arena_range(&src.mapping, &src.layout.tx, src_offset, u64::from(len))?;
    let mut out = vec![0u8; len as usize];
    if len > 0 {
        // SAFETY: `from..from + len` lies inside a live mapping (checked above) and `out` is a
        // fresh allocation of `len` bytes: the two never overlap. The source may change under
        // us if the node is hostile: we copy raw bytes and interpret none of them.
        unsafe { std::ptr::copy_nonoverlapping(from, out.as_mut_ptr(), len as usize) };
    }
    Ok(out)
}

/// Copies `data` into `dst`'s receive arena at `dst_offset` (delivery of a payload the engine
/// kept in its own memory, see [`copy_out`]).
///
/// # Errors
///
/// [`Violation::OutOfBounds`] when the range is not inside the receive arena, or `data` is
/// longer than a payload can be.
pub fn copy_in(dst: &Block, dst_offset: u64, data: &[u8]) -> Result<(), Violation> {
    let len = data.len() as u64; // usize is at most 64 bits on every target we build for
    let to = arena_range(&dst.mapping, &dst.layout.rx, dst_offset, len)?;
    if !data.is_empty() {
        // SAFETY: the destination range lies inside a live mapping (checked above); `data` is
        // engine memory, which never overlaps a mapping of shared memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), to, data.len()) };
    }
    Ok(())
}

/// The node's transmit arena: allocates loans, frees them when the engine says it copied them.
#[derive(Debug, Clone)]
pub struct TxArena {
    inner: Arc<Mutex<TxInner>>,
    block: Arc<Block>,
}

#[derive(Debug)]
struct TxInner {
    allocator: BuddyAllocator<ShmTree>,
    /// Sub-blocks submitted and not yet reported done. A `TX_DONE` for anything else is refused,
    /// so a confused engine can never make two live loans alias.
    in_flight: IdSet<u64>,
}

/// A loan: `len` writable bytes in the transmit arena, exclusively ours until submitted.
pub struct TxBuf {
    arena: TxArena,
    ptr: *mut u8,
    offset: u64,
    len: usize,
    /// A real sub-block is held and not yet submitted: drop frees it.
    owned: bool,
}

// SAFETY: TxBuf is the unique owner of its range (see `TxArena::alloc`); moving it to another
// thread moves that ownership.
unsafe impl Send for TxBuf {}
// SAFETY: &TxBuf only gives &[u8] to a range nobody else writes.
unsafe impl Sync for TxBuf {}

impl fmt::Debug for TxBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxBuf")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// A loan handed to the engine: what goes into the `DATA` descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Offset in the transmit arena (0 for an empty payload).
    pub offset: u64,
    /// Length.
    pub len: u32,
}

impl TxArena {
    fn lock(&self) -> MutexGuard<'_, TxInner> {
        // A panic while holding this lock cannot leave the tree half-updated in a way that
        // matters more than the panic itself; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates a loan of `len` bytes (zero-length loans take no memory).
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] if it can never fit, [`AllocError::Full`] if not now.
    pub fn alloc(&self, len: u32) -> Result<TxBuf, AllocError> {
        if len == 0 {
            return Ok(TxBuf {
                arena: self.clone(),
                ptr: NonNull::dangling().as_ptr(),
                offset: 0,
                len: 0,
                owned: false,
            });
        }
        let mut inner = self.lock();
        let allocation = inner.allocator.alloc(u64::from(len))?;
        self.block
            .stats()
            .tx_in_use
            .store(inner.allocator.in_use(), Ordering::Relaxed);
        drop(inner);
        let ptr = arena_range(
            &self.block.mapping,
            &self.block.layout.tx,
            allocation.offset,
            u64::from(len),
        )
        .expect("the allocator returns ranges inside its arena");
        Ok(TxBuf {
            arena: self.clone(),
            ptr,
            offset: allocation.offset,
            len: len as usize,
            owned: true,
        })
    }

    /// Frees a submitted loan after the engine's `TX_DONE` for `offset`.
    ///
    /// # Errors
    ///
    /// [`FreeError::NotAllocated`] when `offset` is not a loan in flight.
    pub fn complete(&self, offset: u64) -> Result<(), FreeError> {
        let mut inner = self.lock();
        if !inner.in_flight.remove(&offset) {
            return Err(FreeError::NotAllocated { offset });
        }
        inner.allocator.free(offset)?;
        self.block
            .stats()
            .tx_in_use
            .store(inner.allocator.in_use(), Ordering::Relaxed);
        Ok(())
    }

    /// Usage now.
    pub fn stats(&self) -> ArenaStats {
        self.lock().allocator.stats()
    }

    /// The largest loan that can ever be allocated.
    pub fn capacity(&self) -> u64 {
        self.block.layout.tx.size
    }

    /// Number of loans submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

impl TxBuf {
    /// Offset in the transmit arena.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether this loan was allocated in `arena` (a loan names an offset of its own arena
    /// only: submitted with another, it would name someone else's bytes).
    pub fn is_from(&self, arena: &TxArena) -> bool {
        Arc::ptr_eq(&self.arena.inner, &arena.inner)
    }

    /// Shrinks the loan's visible length (the sub-block stays as allocated).
    ///
    /// # Panics
    ///
    /// If `len` is larger than the current length.
    pub fn truncate(&mut self, len: usize) {
        assert!(len <= self.len, "truncate past the loan's length");
        self.len = len;
    }

    /// Hands the loan to the engine: from now on the node must not touch it, and it is freed
    /// by [`TxArena::complete`] when the engine reports it copied.
    pub fn submit(mut self) -> Submitted {
        if self.len == 0 {
            // Nothing to send (an empty loan, or one truncated to zero): Drop frees any
            // sub-block, and the descriptor names none.
            return Submitted { offset: 0, len: 0 };
        }
        self.arena.lock().in_flight.insert(self.offset);
        self.owned = false;
        Submitted {
            offset: self.offset,
            len: self.len as u32,
        }
    }
}

impl std::ops::Deref for TxBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies in the transmit arena (TxArena::alloc checked it) or is a
        // dangling pointer with len 0; the range is ours alone until submit.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for TxBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self makes the access exclusive within this process, and
        // the engine does not read the range before the loan is submitted.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for TxBuf {
    fn drop(&mut self) {
        // Dropped without submitting: the loan goes back to the arena.
        if self.owned {
            let mut inner = self.arena.lock();
            let _ = inner.allocator.free(self.offset);
            let in_use = inner.allocator.in_use();
            self.arena
                .block
                .stats()
                .tx_in_use
                .store(in_use, Ordering::Relaxed);
        }
    }
}

/// A read-only view of a delivered payload in the receive arena.
///
/// The engine wrote it before publishing the `DATA` entry and does not touch it again until
/// the node releases the offset, so reading it in place is sound as long as the engine keeps
/// its protocol (the node trusts its engine).
pub struct RxView {
    _owner: Owner,
    ptr: *mut u8,
    len: usize,
    offset: u64,
    /// The hand-off segment holding the payload, or 0 for the receive arena.
    segment: u32,
}

/// What keeps an [`RxView`]'s memory mapped.
enum Owner {
    Block(#[allow(dead_code)] Arc<Block>),
    Sealed(#[allow(dead_code)] crate::segment::SealedView),
}

// SAFETY: a read-only view of memory nobody writes while it lives.
unsafe impl Send for RxView {}
// SAFETY: as for Send.
unsafe impl Sync for RxView {}

impl fmt::Debug for RxView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxView")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl RxView {
    /// A payload of `len` bytes at the start of a write-sealed hand-off segment, `segment`
    /// in the node's table (see [`crate::segment`]).
    ///
    /// # Errors
    ///
    /// [`Violation::OutOfBounds`] when `len` is longer than the segment.
    pub fn sealed(
        view: crate::segment::SealedView,
        segment: u32,
        len: u32,
    ) -> Result<Self, Violation> {
        if u64::from(len) > view.len() {
            return Err(Violation::OutOfBounds {
                offset: 0,
                len: u64::from(len),
                size: view.len(),
            });
        }
        // Cast to `*mut` only to share the field with arena views: nothing writes through it.
        let ptr = view.as_ref().as_ptr().cast_mut();
        Ok(Self {
            _owner: Owner::Sealed(view),
            ptr,
            len: len as usize,
            offset: 0,
            segment,
        })
    }

    /// Offset in the receive arena (what the release entry names); 0 in a segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The hand-off segment holding the payload, or 0 for the receive arena.
    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// The entry that gives this payload's memory back to the engine.
    pub fn release_entry(&self) -> RawDescriptor {
        match self.segment {
            0 => RawDescriptor::offset_only(crate::descriptor::kind::RELEASE, self.offset),
            segment => RawDescriptor::segment_release(segment),
        }
    }
}

impl AsRef<[u8]> for RxView {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the range lies in the receive arena (checked by rx_view) of a mapping kept
        // alive by `_owner`, and the engine does not write it until we release it (type
        // docs); or it lies in a write-sealed segment mapped by `_owner` (checked by
        // `sealed`), which nobody can write any more (see `SealedView::as_ref`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The transmit arena's tree inside the block, as `[u8]` for the allocator.
struct ShmTree {
    _block: Arc<Block>,
    ptr: *mut u8,
    len: usize,
}

impl fmt::Debug for ShmTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmTree").field("len", &self.len).finish()
    }
}

// SAFETY: ShmTree is created once per block (take_tx_arena's flag) and lives inside the
// TxArena's mutex: exclusive access moves with it.
unsafe impl Send for ShmTree {}

impl std::ops::Deref for ShmTree {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the tree region lies inside the mapping (validated layout), and only this
        // node's single ShmTree touches it (the engine never reads the tree).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for ShmTree {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl AsFd for Block {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Consumer, Producer};

    fn small() -> BlockConfig {
        BlockConfig {
            submit_capacity: 16,
            deliver_capacity: 16,
            release_capacity: 16,
            tx_arena: 1 << 16,
            rx_arena: 1 << 16,
            min_block: 64,
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn create_then_open_a_copy() {
        let block = Block::create(&small(), "test").unwrap();
        let dup = block.fd().try_clone_to_owned().unwrap();
        let opened = Block::open(dup).unwrap();
        assert_eq!(opened.layout(), block.layout());
        // A ring written through one mapping is read through the other.
        let mut p = Producer::new(block.submit_ring());
        let mut c = Consumer::new(opened.submit_ring());
        p.push(crate::RawDescriptor::data(1, 64, 10)).unwrap();
        assert_eq!(c.pop().unwrap().unwrap().offset, 64);
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn seals_hold() {
        let block = Block::create(&small(), "test").unwrap();
        let size = block.layout().total_size;
        assert!(rustix::fs::ftruncate(block.fd(), size / 2).is_err());
        assert!(rustix::fs::ftruncate(block.fd(), size * 2).is_err());
        assert!(rustix::fs::fcntl_add_seals(block.fd(), SealFlags::WRITE).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn unsealed_and_garbage_fds_are_refused() {
        let fd = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 1 << 20).unwrap();
        assert!(matches!(Block::open(fd), Err(BlockError::NotSealed { .. })));
        let fd =
            rustix::fs::memfd_create("garbage", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .unwrap();
        rustix::fs::ftruncate(&fd, 1 << 20).unwrap();
        rustix::io::write(&fd, &[0xAB; 512]).unwrap();
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).unwrap();
        assert!(matches!(Block::open(fd), Err(BlockError::BadMagic { .. })));
        let fd = rustix::fs::memfd_create("tiny", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
        rustix::fs::ftruncate(&fd, 100).unwrap();
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).unwrap();
        assert!(matches!(
            Block::open(fd),
            Err(BlockError::SizeMismatch { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn loan_copy_view() {
        let sender = Arc::new(Block::create(&small(), "tx").unwrap());
        let receiver = Arc::new(Block::create(&small(), "rx").unwrap());
        let tx = sender.take_tx_arena().unwrap();
        assert!(sender.take_tx_arena().is_err(), "one allocator per arena");
        let mut loan = tx.alloc(5).unwrap();
        loan.copy_from_slice(b"hello");
        assert_eq!(sender.published_tx_in_use(), 64);
        let sub = loan.submit();
        copy_payload(&sender, sub.offset, &receiver, 128, sub.len).unwrap();
        let view = receiver.rx_view(128, 5).unwrap();
        assert_eq!(view.as_ref(), b"hello");
        assert!(tx.complete(sub.offset + 64).is_err(), "not in flight");
        tx.complete(sub.offset).unwrap();
        assert!(tx.complete(sub.offset).is_err(), "completed twice");
        assert_eq!(tx.stats().in_use, 0);
        // Out-of-bounds copies and views are refused.
        assert!(copy_payload(&sender, (1 << 16) - 1, &receiver, 0, 2).is_err());
        assert!(copy_payload(&sender, 0, &receiver, u64::MAX, 2).is_err());
        assert!(receiver.rx_view(1 << 16, 1).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
    fn dropped_loan_is_freed() {
        let block = Arc::new(Block::create(&small(), "tx").unwrap());
        let tx = block.take_tx_arena().unwrap();
        let loan = tx.alloc(1000).unwrap();
        assert_eq!(tx.stats().in_use, 1024);
        drop(loan);
        assert_eq!(tx.stats().in_use, 0);
        let mut loan = tx.alloc(100).unwrap();
        loan.truncate(0);
        assert_eq!(loan.submit(), Submitted { offset: 0, len: 0 });
        assert_eq!(tx.stats().in_use, 0);
    }
}
