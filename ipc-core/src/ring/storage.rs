//! Ring storage: on the heap (tests, loom, Miri) or inside a mapped block.

use std::sync::Arc;

use crate::descriptor::RawDescriptor;
use crate::ring::{RingHeader, RingStorage};
use crate::sync::UnsafeCell;

/// A ring on the heap: the same algorithm, for tests, loom and Miri.
#[derive(Debug)]
pub struct HeapRing {
    header: RingHeader,
    slots: Box<[UnsafeCell<RawDescriptor>]>,
}

// SAFETY: slots are only touched through RingStorage, whose contract (one producer, one
// consumer, disjoint published ranges ordered by head/tail) makes every access exclusive.
unsafe impl Sync for HeapRing {}
// SAFETY: HeapRing owns its data; RawDescriptor and the atomics are Send.
unsafe impl Send for HeapRing {}

impl HeapRing {
    /// A ring of `capacity` slots.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two.
    pub fn new(capacity: u32) -> Self {
        assert!(
            capacity.is_power_of_two(),
            "ring capacity must be a power of two"
        );
        Self {
            header: RingHeader::default(),
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(RawDescriptor::default()))
                .collect(),
        }
    }
}

// SAFETY: capacity is the slot count, a power of two checked in `new`; each slot is its own
// cell, so a write or read touches only that slot.
unsafe impl RingStorage for Arc<HeapRing> {
    fn header(&self) -> &RingHeader {
        &self.header
    }

    fn capacity(&self) -> u32 {
        self.slots.len() as u32
    }

    unsafe fn write_slot(&self, index: u32, value: RawDescriptor) {
        // SAFETY: the caller is the only producer and the slot is unpublished (trait
        // contract), so no read of it can be in progress.
        self.slots[index as usize].with_mut(|p| unsafe { p.write(value) });
    }

    unsafe fn read_slot(&self, index: u32) -> RawDescriptor {
        // SAFETY: the caller is the only consumer and the slot is published (trait contract),
        // so the producer does not write it until we hand it back.
        self.slots[index as usize].with(|p| unsafe { p.read() })
    }
}

#[cfg(not(loom))]
pub use shm::ShmRing;

#[cfg(not(loom))]
mod shm {
    use std::ptr::NonNull;
    use std::sync::Arc;

    use super::*;
    use crate::block::Mapping;

    /// A ring inside a mapped block. Keeps the mapping alive.
    #[derive(Debug, Clone)]
    pub struct ShmRing {
        _mapping: Arc<Mapping>,
        header: NonNull<RingHeader>,
        slots: NonNull<RawDescriptor>,
        capacity: u32,
    }

    // SAFETY: the pointers target a shared mapping kept alive by `_mapping`; all access goes
    // through atomics (header) or volatile copies (slots) under the RingStorage contract.
    unsafe impl Send for ShmRing {}
    // SAFETY: as for Send; &ShmRing exposes no unsynchronised access.
    unsafe impl Sync for ShmRing {}

    impl ShmRing {
        /// A ring at `offset` of `mapping` (header, then `capacity` slots).
        ///
        /// # Safety
        ///
        /// The caller must ensure:
        /// - `offset` is 128-byte aligned and `offset + 512 + capacity * 32` lies within the
        ///   mapping (the layout validated it);
        /// - `capacity` is a power of two;
        /// - no other ring overlaps this range.
        pub(crate) unsafe fn new(mapping: Arc<Mapping>, offset: usize, capacity: u32) -> Self {
            let base = mapping.base();
            // SAFETY: offset is within the mapping (caller's first bullet), so the sum stays
            // inside the same allocation.
            let header = unsafe { base.add(offset) };
            // SAFETY: the slots follow the 512-byte header, still within the range the caller
            // vouched for.
            let slots = unsafe { header.add(size_of::<RingHeader>()) };
            let header = NonNull::new(header.cast()).expect("mapping base is non-null");
            let slots = NonNull::new(slots.cast()).expect("mapping base is non-null");
            Self {
                header,
                slots,
                capacity,
                _mapping: mapping,
            }
        }
    }

    // SAFETY: `capacity` is a power of two and the slot range lies in the mapping (`new`'s
    // contract); each access below touches one 32-byte slot.
    unsafe impl RingStorage for ShmRing {
        fn header(&self) -> &RingHeader {
            // SAFETY: the header lies in the live mapping, is 128-aligned, and consists of
            // atomics only: any bit pattern is valid and all access is atomic, so a shared
            // reference is sound even though the peer writes the same memory.
            unsafe { self.header.as_ref() }
        }

        fn capacity(&self) -> u32 {
            self.capacity
        }

        unsafe fn write_slot(&self, index: u32, value: RawDescriptor) {
            debug_assert!(index < self.capacity);
            // SAFETY: index < capacity (caller masks it), so the slot lies in the mapping.
            let slot = unsafe { self.slots.as_ptr().add(index as usize) };
            // SAFETY: `slot` is in bounds and aligned (32-byte slots after a 128-aligned
            // header); a volatile write of plain integers, never a reference into shared memory.
            unsafe { slot.write_volatile(value) };
        }

        unsafe fn read_slot(&self, index: u32) -> RawDescriptor {
            debug_assert!(index < self.capacity);
            // SAFETY: index < capacity, so the slot lies in the mapping.
            let slot = unsafe { self.slots.as_ptr().add(index as usize) };
            // SAFETY: `slot` is in bounds and aligned; a volatile read copies it once into our
            // memory (any bit pattern is a valid RawDescriptor).
            unsafe { slot.read_volatile() }
        }
    }
}
