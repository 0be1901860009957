//! The producer and consumer halves of a ring; see the module docs for the protocol.

#[cfg(not(loom))]
use std::mem::{offset_of, size_of};

use crate::descriptor::RawDescriptor;
use crate::error::RingError;
use crate::layout::CachePadded;
use crate::sync::{AtomicU32, Ordering, fence};

/// The shared header of a ring: four words, each on its own pair of cache lines.
///
/// `head` is written by the consumer only, `tail` and `space_waiting` by the producer only,
/// `waiting` by the consumer only (one writer per word: docs/ARCHITECTURE.md, invariant 2).
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingHeader {
    head: CachePadded<AtomicU32>,
    tail: CachePadded<AtomicU32>,
    /// The consumer's sleep epoch (0: awake): a producer rings the consumer's doorbell.
    waiting: CachePadded<AtomicU32>,
    /// The producer's wait-for-space epoch (0: not waiting): a consumer that frees slots rings
    /// the producer's doorbell.
    space_waiting: CachePadded<AtomicU32>,
}

#[cfg(not(loom))]
const _: () = assert!(size_of::<RingHeader>() == 512);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(RingHeader, tail) == 128);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(RingHeader, waiting) == 256);
#[cfg(not(loom))]
const _: () = assert!(offset_of!(RingHeader, space_waiting) == 384);

/// Where a ring's header and slots live: the heap (tests, loom, Miri) or a block.
///
/// # Safety
///
/// Implementors must ensure:
/// - `capacity()` is a power of two, constant for the storage's lifetime, and every slot
///   index below it can be passed to `write_slot` and `read_slot`;
/// - `write_slot` and `read_slot` touch only that slot's 32 bytes.
pub unsafe trait RingStorage {
    /// The shared header.
    fn header(&self) -> &RingHeader;
    /// Number of slots (a power of two).
    fn capacity(&self) -> u32;
    /// Writes slot `index` (already masked).
    ///
    /// # Safety
    ///
    /// The caller must ensure it is the ring's only producer and that the slot is not
    /// published (it lies in `[tail, head + capacity)`).
    unsafe fn write_slot(&self, index: u32, value: RawDescriptor);
    /// Reads slot `index` (already masked) into a copy.
    ///
    /// # Safety
    ///
    /// The caller must ensure it is the ring's only consumer and that the slot is published
    /// (it lies in `[head, tail)` as validated).
    unsafe fn read_slot(&self, index: u32) -> RawDescriptor;
}

/// The producing half of a ring. Not `Clone`: there is exactly one per ring side.
#[derive(Debug)]
pub struct Producer<S> {
    storage: S,
    tail: u32,
    cached_head: u32,
    last_rung: u32,
    space_epoch: u32,
    /// Whether our wait-for-space flag may be set in the header (so `woke_space` only
    /// writes the shared line when there is something to withdraw).
    space_armed: bool,
}

/// The consuming half of a ring. Not `Clone`: there is exactly one per ring side.
#[derive(Debug)]
pub struct Consumer<S> {
    storage: S,
    head: u32,
    cached_tail: u32,
    epoch: u32,
    last_space_rung: u32,
}

fn corrupt(which: &'static str, found: u32, own: u32, capacity: u32) -> RingError {
    RingError::CorruptIndex {
        which,
        found,
        own,
        capacity,
    }
}

// ===== impl Producer =====

impl<S: RingStorage> Producer<S> {
    /// Takes the producing side of `storage`, starting from the indices it holds now.
    ///
    /// Only the side that initialised the ring (both indices zero) or that owns it may call
    /// this; the indices are read once here and then kept privately.
    pub fn new(storage: S) -> Self {
        // SYNC: pairs with the consumer's Release store of head; we only start from it.
        let head = storage.header().head.load(Ordering::Acquire);
        let tail = storage.header().tail.load(Ordering::Relaxed);
        let (tail, head) = if tail.wrapping_sub(head) > storage.capacity() {
            (0, 0)
        } else {
            (tail, head)
        };
        Self {
            storage,
            tail,
            cached_head: head,
            last_rung: 0,
            space_epoch: 0,
            space_armed: false,
        }
    }

    /// Slots free as of the last look at the consumer's index.
    fn cached_free(&self) -> u32 {
        self.storage.capacity() - self.tail.wrapping_sub(self.cached_head)
    }

    /// Re-reads and checks the consumer's `head`; returns the free slots.
    fn refresh(&mut self) -> Result<u32, RingError> {
        // SYNC: Acquire pairs with Consumer::release_slots's Release store of head: the
        // consumer has finished reading the slots it hands back before we overwrite them.
        let head = self.storage.header().head.load(Ordering::Acquire);
        let capacity = self.storage.capacity();
        // head may only move forward from where we saw it, and never past our tail.
        let advanced = head.wrapping_sub(self.cached_head);
        let in_flight = self.tail.wrapping_sub(self.cached_head);
        if advanced > in_flight {
            return Err(corrupt("head", head, self.tail, capacity));
        }
        self.cached_head = head;
        Ok(self.cached_free())
    }

    /// Free slots now (re-reads the consumer's index).
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the consumer's index is impossible.
    pub fn free(&mut self) -> Result<u32, RingError> {
        self.refresh()
    }

    /// Pushes as many of `items` as fit; returns how many. Zero means the ring is full.
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the consumer's index is impossible; nothing is pushed.
    pub fn push_batch(&mut self, items: &[RawDescriptor]) -> Result<usize, RingError> {
        let mut free = self.cached_free();
        if (free as usize) < items.len() {
            free = self.refresh()?;
        }
        let n = items.len().min(free as usize);
        let mask = self.storage.capacity() - 1;
        for (i, item) in items[..n].iter().enumerate() {
            let index = self.tail.wrapping_add(i as u32) & mask;
            // SAFETY: we are the only producer (Producer is not Clone and owns the side), and
            // `index` lies in [tail, cached_head + capacity): free, not visible to the consumer.
            unsafe { self.storage.write_slot(index, *item) };
        }
        if n > 0 {
            self.tail = self.tail.wrapping_add(n as u32);
            // SYNC: Release publishes the slots written above; pairs with the Acquire load of
            // tail in Consumer::refresh.
            self.storage
                .header()
                .tail
                .store(self.tail, Ordering::Release);
        }
        Ok(n)
    }

    /// Pushes one entry; `Ok(false)` when the ring is full.
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the consumer's index is impossible.
    pub fn push(&mut self, item: RawDescriptor) -> Result<bool, RingError> {
        Ok(self.push_batch(std::slice::from_ref(&item))? == 1)
    }

    /// After pushing: must the consumer's doorbell be rung? True at most once per sleep epoch.
    pub fn needs_wake(&mut self) -> bool {
        // SYNC: SeqCst fence between our Release store of tail and this load of waiting; pairs
        // with the fence in Consumer::prepare_sleep (Dekker: one of the two sees the other).
        fence(Ordering::SeqCst);
        let waiting = self.storage.header().waiting.load(Ordering::Relaxed);
        if waiting != 0 && waiting != self.last_rung {
            self.last_rung = waiting;
            true
        } else {
            false
        }
    }

    /// Announces that the producer waits for free slots. Returns `Ok(true)` if the ring is
    /// still full (wait now: the consumer will ring this side's doorbell when it frees slots),
    /// or `Ok(false)` if slots were freed meanwhile (the flag is withdrawn; push again).
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the consumer's index is impossible.
    pub fn prepare_wait_space(&mut self) -> Result<bool, RingError> {
        self.space_epoch = self.space_epoch.wrapping_add(1).max(1);
        self.space_armed = true;
        self.storage
            .header()
            .space_waiting
            .store(self.space_epoch, Ordering::Relaxed);
        // SYNC: SeqCst fence between the store of space_waiting and the load of head; pairs
        // with the fence in Consumer::needs_space_wake.
        fence(Ordering::SeqCst);
        if self.refresh()? > 0 {
            self.storage
                .header()
                .space_waiting
                .store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws the wait-for-space flag after a wake-up (a no-op, touching no shared
    /// memory, when it was not raised).
    pub fn woke_space(&mut self) {
        if std::mem::take(&mut self.space_armed) {
            self.storage
                .header()
                .space_waiting
                .store(0, Ordering::Relaxed);
        }
    }

    /// The storage (for the owner's bookkeeping).
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

// ===== impl Consumer =====

impl<S: RingStorage> Consumer<S> {
    /// Takes the consuming side of `storage`, starting from the indices it holds now.
    pub fn new(storage: S) -> Self {
        let head = storage.header().head.load(Ordering::Relaxed);
        Self {
            storage,
            head,
            cached_tail: head,
            epoch: 0,
            last_space_rung: 0,
        }
    }

    /// Re-reads and checks the producer's `tail`; returns the entries available.
    fn refresh(&mut self) -> Result<u32, RingError> {
        // SYNC: Acquire pairs with Producer::push_batch's Release store of tail: the slots
        // below it are written.
        let tail = self.storage.header().tail.load(Ordering::Acquire);
        let capacity = self.storage.capacity();
        let available = tail.wrapping_sub(self.head);
        let seen = self.cached_tail.wrapping_sub(self.head);
        // tail may not claim more than the ring holds, nor move backwards.
        if available > capacity || available < seen {
            return Err(corrupt("tail", tail, self.head, capacity));
        }
        self.cached_tail = tail;
        Ok(available)
    }

    /// Entries available now (re-reads the producer's index).
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the producer's index is impossible.
    pub fn available(&mut self) -> Result<u32, RingError> {
        self.refresh()
    }

    /// Pops up to `out.len()` entries into `out` (copies in the caller's memory); returns how
    /// many. The slots are handed back to the producer before this returns.
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the producer's index is impossible; nothing is popped.
    pub fn pop_batch(&mut self, out: &mut [RawDescriptor]) -> Result<usize, RingError> {
        let mut available = self.cached_tail.wrapping_sub(self.head);
        if (available as usize) < out.len() {
            available = self.refresh()?;
        }
        let n = out.len().min(available as usize);
        let mask = self.storage.capacity() - 1;
        for (i, slot) in out[..n].iter_mut().enumerate() {
            let index = self.head.wrapping_add(i as u32) & mask;
            // SAFETY: we are the only consumer, and `index` lies in [head, tail) where tail
            // was validated against the capacity: the slot is published and not yet returned.
            *slot = unsafe { self.storage.read_slot(index) };
        }
        if n > 0 {
            self.head = self.head.wrapping_add(n as u32);
            // SYNC: Release hands the slots back after our reads; pairs with the Acquire load
            // of head in Producer::refresh.
            self.storage
                .header()
                .head
                .store(self.head, Ordering::Release);
        }
        Ok(n)
    }

    /// Pops one entry.
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the producer's index is impossible.
    pub fn pop(&mut self) -> Result<Option<RawDescriptor>, RingError> {
        let mut out = [RawDescriptor::default()];
        Ok((self.pop_batch(&mut out)? == 1).then_some(out[0]))
    }

    /// Announces that the consumer is about to sleep. Returns `Ok(true)` if the ring is still
    /// empty (sleep now: a later push will ring the doorbell) or `Ok(false)` if entries arrived
    /// meanwhile (the flag is withdrawn; do not sleep).
    ///
    /// # Errors
    ///
    /// [`RingError::CorruptIndex`] when the producer's index is impossible.
    pub fn prepare_sleep(&mut self) -> Result<bool, RingError> {
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.storage
            .header()
            .waiting
            .store(self.epoch, Ordering::Relaxed);
        // SYNC: SeqCst fence between the store of waiting and the load of tail; pairs with the
        // fence in Producer::needs_wake.
        fence(Ordering::SeqCst);
        if self.refresh()? > 0 {
            self.storage.header().waiting.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// After popping: must the producer's doorbell be rung because it waits for space? True at
    /// most once per wait epoch.
    pub fn needs_space_wake(&mut self) -> bool {
        // SYNC: SeqCst fence between our Release store of head and this load; pairs with the
        // fence in Producer::prepare_wait_space.
        fence(Ordering::SeqCst);
        let waiting = self.storage.header().space_waiting.load(Ordering::Relaxed);
        if waiting != 0 && waiting != self.last_space_rung {
            self.last_space_rung = waiting;
            true
        } else {
            false
        }
    }

    /// Withdraws the waiting flag after a wake-up (the producer stops ringing).
    pub fn woke(&mut self) {
        self.storage.header().waiting.store(0, Ordering::Relaxed);
    }

    /// The storage (for the owner's bookkeeping).
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapRing;
    use std::sync::Arc;

    fn ring(capacity: u32) -> (Producer<Arc<HeapRing>>, Consumer<Arc<HeapRing>>) {
        let ring = Arc::new(HeapRing::new(capacity));
        (Producer::new(ring.clone()), Consumer::new(ring))
    }

    fn d(n: u64) -> RawDescriptor {
        RawDescriptor::control(1, 0, n)
    }

    #[test]
    fn fifo_and_full() {
        let (mut p, mut c) = ring(4);
        for i in 0..4 {
            assert!(p.push(d(i)).unwrap());
        }
        assert!(!p.push(d(9)).unwrap());
        for i in 0..4 {
            assert_eq!(c.pop().unwrap().unwrap().aux, i);
        }
        assert_eq!(c.pop().unwrap(), None);
    }

    #[test]
    fn batches_wrap_around() {
        let (mut p, mut c) = ring(8);
        let mut next = 0u64;
        let mut expect = 0u64;
        let mut out = [RawDescriptor::default(); 5];
        for _ in 0..100 {
            let batch: Vec<_> = (0..5).map(|i| d(next + i)).collect();
            let pushed = p.push_batch(&batch).unwrap();
            next += pushed as u64;
            let popped = c.pop_batch(&mut out).unwrap();
            for item in &out[..popped] {
                assert_eq!(item.aux, expect);
                expect += 1;
            }
        }
        assert!(expect > 300);
    }

    #[test]
    fn waiting_flag_rings_once_per_epoch() {
        let (mut p, mut c) = ring(8);
        assert!(!p.needs_wake(), "an awake consumer needs no doorbell");
        assert!(c.prepare_sleep().unwrap());
        p.push(d(1)).unwrap();
        assert!(p.needs_wake());
        p.push(d(2)).unwrap();
        assert!(!p.needs_wake(), "one doorbell per sleep");
        c.woke();
        assert_eq!(c.pop().unwrap().unwrap().aux, 1);
        // Entries pending: prepare_sleep declines.
        assert!(!c.prepare_sleep().unwrap());
        assert_eq!(c.pop().unwrap().unwrap().aux, 2);
        assert!(c.prepare_sleep().unwrap());
        p.push(d(3)).unwrap();
        assert!(p.needs_wake(), "a new epoch rings again");
    }

    #[test]
    fn space_flag_rings_the_producer_once() {
        let (mut p, mut c) = ring(2);
        p.push_batch(&[d(1), d(2)]).unwrap();
        assert!(!c.needs_space_wake(), "nobody waits for space");
        assert!(p.prepare_wait_space().unwrap(), "full: wait");
        assert_eq!(c.pop().unwrap().unwrap().aux, 1);
        assert!(c.needs_space_wake());
        assert!(!c.needs_space_wake(), "once per epoch");
        p.woke_space();
        assert!(p.push(d(3)).unwrap());
        assert_eq!(c.pop().unwrap().unwrap().aux, 2);
        assert!(
            !p.prepare_wait_space().unwrap(),
            "space was freed: do not wait"
        );
    }

    #[test]
    fn corrupted_indices_are_errors() {
        let ring = Arc::new(HeapRing::new(8));
        let mut p = Producer::new(ring.clone());
        let mut c = Consumer::new(ring.clone());
        // Tail past capacity.
        ring.header().tail.store(9, Ordering::Relaxed);
        assert!(matches!(
            c.pop(),
            Err(RingError::CorruptIndex { which: "tail", .. })
        ));
        // Tail moving backwards after we saw 3 entries.
        ring.header().tail.store(3, Ordering::Relaxed);
        assert_eq!(c.available().unwrap(), 3);
        ring.header().tail.store(1, Ordering::Relaxed);
        assert!(c.available().is_err());
        // Head claiming the consumer read what was never pushed.
        ring.header().head.store(5, Ordering::Relaxed);
        assert!(matches!(
            p.free(),
            Err(RingError::CorruptIndex { which: "head", .. })
        ));
        // Head moving backwards (wraps to a huge advance).
        p.push(d(0)).unwrap();
        ring.header().head.store(1, Ordering::Relaxed);
        assert_eq!(p.free().unwrap(), 8);
        ring.header().head.store(0, Ordering::Relaxed);
        assert!(p.free().is_err());
    }
}
