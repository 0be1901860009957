//! Slots of a broadcast segment and who holds them, all in engine memory.
//!
//! A slot's life:
//!
//! ```text
//!  alloc(len) ──> open (the publication holds it) ──hold(h)*──> commit ──> held by h1..hn
//!                                                                  │  release(h) each
//!                                              no holder left ─────┴──> freed (reusable)
//! ```
//!
//! The publication's own hold keeps a slot alive while the engine copies into it and hands
//! it out, so a slot with no subscriber at all is freed by [`Slots::commit`]. Each holder (a
//! subscription, or the topic's history) holds a slot at most once; its set of held slots is
//! kept here, so a release is checked against what that holder really holds: a release of a
//! slot it never got, a second release, or an offset that names no slot is a [`SlotError`]
//! that leaves every count unchanged, and so affects no other holder.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash};

use thiserror::Error;

use crate::arena::{ArenaStats, BuddyAllocator};
use crate::error::{AllocError, BlockError};
use crate::idhash::{IdHasher, IdMap, IdSet};

/// A slot handed out by [`Slots::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Offset in the segment.
    pub offset: u64,
    /// Length of the message it holds.
    pub len: u32,
}

/// Why a hold, commit or release was refused. Nothing changed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotError {
    /// No live slot starts at that offset (a lying release, or one after the slot was freed).
    #[error("no live slot at offset {offset}")]
    NoSlot {
        /// The offset given.
        offset: u64,
    },
    /// The holder does not hold that slot (never delivered to it, or released already).
    #[error(
        "slot at offset {offset} is not held by this holder (never delivered, or released twice)"
    )]
    NotHeld {
        /// The offset given.
        offset: u64,
    },
    /// The holder holds that slot already (an engine bug: a slot is delivered once per holder).
    #[error("slot at offset {offset} is held by this holder already")]
    AlreadyHeld {
        /// The offset given.
        offset: u64,
    },
    /// The slot's publication was committed already, or has not been (engine bugs).
    #[error("slot at offset {offset} is not open for its publication")]
    NotOpen {
        /// The offset given.
        offset: u64,
    },
}

/// Usage of a segment's slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Slots not yet freed.
    pub live: usize,
    /// Holds across all slots (a slot held by three subscribers counts three).
    pub holds: usize,
    /// The allocator's view of the segment.
    pub arena: ArenaStats,
}

#[derive(Debug)]
struct SlotState {
    len: u32,
    holders: u32,
    /// The publication still holds it (between alloc and commit).
    open: bool,
}

/// The slots of one segment: a buddy allocator over its size (tree in engine memory) and a
/// holder count per slot, with each holder's held set. `H` names holders (the engine's
/// subscription keys).
pub struct Slots<H> {
    allocator: BuddyAllocator<Vec<u8>>,
    live: IdMap<u64, SlotState>,
    /// Each holder's slots. Holders are ids the engine assigned (its subscription keys), never
    /// a peer's choice: the integer hash is right (see [`crate::idhash`]); SipHash here cost
    /// a hash per subscriber per message, twice.
    held: std::collections::HashMap<H, IdSet<u64>, BuildHasherDefault<IdHasher>>,
}

impl<H: fmt::Debug> fmt::Debug for Slots<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("live", &self.live.len())
            .field("holders", &self.held.len())
            .finish()
    }
}

// ===== impl Slots =====

impl<H: Copy + Eq + Hash> Slots<H> {
    /// Slots over a segment of `size` bytes, in sub-blocks of at least `min_block` bytes.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] when the sizes are not powers of two or `min_block` is below
    /// 64 B (see [`BuddyAllocator::tree_len`]).
    pub fn new(size: u64, min_block: u64) -> Result<Self, BlockError> {
        let tree = vec![0u8; BuddyAllocator::<Vec<u8>>::tree_len(size, min_block)?];
        Ok(Self {
            allocator: BuddyAllocator::new(tree, size, min_block)?,
            live: IdMap::default(),
            held: Default::default(),
        })
    }

    /// The segment's size.
    pub fn size(&self) -> u64 {
        self.allocator.size()
    }

    /// The segment's minimum block (every slot offset is a multiple of it).
    pub fn min_block(&self) -> u64 {
        self.allocator.min_block()
    }

    /// Allocates a slot for a message of `len` bytes (an empty message still takes a minimum
    /// block, so that its offset names it). The slot is *open*: the publication holds it
    /// until [`Self::commit`].
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] when it can never fit, [`AllocError::Full`] when not now.
    pub fn alloc(&mut self, len: u32) -> Result<Slot, AllocError> {
        let allocation = self.allocator.alloc(u64::from(len).max(1))?;
        self.live.insert(
            allocation.offset,
            SlotState {
                len,
                holders: 0,
                open: true,
            },
        );
        Ok(Slot {
            offset: allocation.offset,
            len,
        })
    }

    /// Adds `holder` to the slot at `offset`.
    ///
    /// # Errors
    ///
    /// [`SlotError::NoSlot`] or [`SlotError::AlreadyHeld`]; nothing changes.
    pub fn hold(&mut self, offset: u64, holder: H) -> Result<(), SlotError> {
        let state = self
            .live
            .get_mut(&offset)
            .ok_or(SlotError::NoSlot { offset })?;
        let set = self.held.entry(holder).or_default();
        if !set.insert(offset) {
            return Err(SlotError::AlreadyHeld { offset });
        }
        state.holders += 1;
        Ok(())
    }

    /// Ends the publication's hold; frees the slot if nobody else holds it. Returns whether
    /// it was freed.
    ///
    /// # Errors
    ///
    /// [`SlotError::NoSlot`] or [`SlotError::NotOpen`]; nothing changes.
    pub fn commit(&mut self, offset: u64) -> Result<bool, SlotError> {
        let state = self
            .live
            .get_mut(&offset)
            .ok_or(SlotError::NoSlot { offset })?;
        if !state.open {
            return Err(SlotError::NotOpen { offset });
        }
        state.open = false;
        Ok(self.free_if_unheld(offset))
    }

    /// `holder` is done with the slot at `offset`; frees it if it was the last holder.
    /// Returns whether it was freed.
    ///
    /// # Errors
    ///
    /// [`SlotError::NoSlot`] when no live slot starts there, [`SlotError::NotHeld`] when
    /// the holder does not hold it; nothing changes, for this holder or any other.
    pub fn release(&mut self, holder: H, offset: u64) -> Result<bool, SlotError> {
        if !self.live.contains_key(&offset) {
            return Err(SlotError::NoSlot { offset });
        }
        let removed = self
            .held
            .get_mut(&holder)
            .is_some_and(|set| set.remove(&offset));
        if !removed {
            return Err(SlotError::NotHeld { offset });
        }
        if self.held.get(&holder).is_some_and(|set| set.is_empty()) {
            self.held.remove(&holder);
        }
        let state = self.live.get_mut(&offset).expect("checked above");
        state.holders -= 1;
        Ok(self.free_if_unheld(offset))
    }

    /// Releases every slot `holder` holds (its node died, or it was cut loose); returns the
    /// offsets that were freed.
    pub fn release_all(&mut self, holder: H) -> Vec<u64> {
        let Some(set) = self.held.remove(&holder) else {
            return Vec::new();
        };
        let mut offsets: Vec<u64> = set.into_iter().collect();
        offsets.sort_unstable();
        let mut freed = Vec::new();
        for offset in offsets {
            let state = self.live.get_mut(&offset).expect("a held slot is live");
            state.holders -= 1;
            if self.free_if_unheld(offset) {
                freed.push(offset);
            }
        }
        freed
    }

    fn free_if_unheld(&mut self, offset: u64) -> bool {
        match self.live.get(&offset) {
            Some(state) if state.holders == 0 && !state.open => {
                self.live.remove(&offset);
                self.allocator
                    .free(offset)
                    .expect("a live slot is an allocation");
                true
            }
            _ => false,
        }
    }

    /// How many holders the slot at `offset` has, or `None` if it is not live.
    pub fn holders(&self, offset: u64) -> Option<u32> {
        self.live.get(&offset).map(|s| s.holders)
    }

    /// The message length of the live slot at `offset`.
    pub fn len_of(&self, offset: u64) -> Option<u32> {
        self.live.get(&offset).map(|s| s.len)
    }

    /// Whether `holder` holds the slot at `offset`.
    pub fn is_held_by(&self, holder: H, offset: u64) -> bool {
        self.held
            .get(&holder)
            .is_some_and(|set| set.contains(&offset))
    }

    /// How many slots `holder` holds.
    pub fn held_by(&self, holder: H) -> usize {
        self.held.get(&holder).map_or(0, |set| set.len())
    }

    /// Usage now.
    pub fn stats(&mut self) -> SlotStats {
        SlotStats {
            live: self.live.len(),
            holds: self.held.values().map(|s| s.len()).sum(),
            arena: self.allocator.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_freed_when_its_last_holder_releases() {
        let mut slots = Slots::<u32>::new(1 << 12, 64).unwrap();
        let s = slots.alloc(100).unwrap();
        slots.hold(s.offset, 1).unwrap();
        slots.hold(s.offset, 2).unwrap();
        assert_eq!(
            slots.hold(s.offset, 2),
            Err(SlotError::AlreadyHeld { offset: s.offset })
        );
        assert_eq!(slots.commit(s.offset), Ok(false));
        assert_eq!(
            slots.commit(s.offset),
            Err(SlotError::NotOpen { offset: s.offset })
        );
        assert_eq!(slots.release(1, s.offset), Ok(false));
        assert_eq!(
            slots.release(1, s.offset),
            Err(SlotError::NotHeld { offset: s.offset }),
            "double release"
        );
        assert_eq!(
            slots.release(3, s.offset),
            Err(SlotError::NotHeld { offset: s.offset }),
            "never delivered"
        );
        assert_eq!(slots.holders(s.offset), Some(1), "others unaffected");
        assert_eq!(slots.release(2, s.offset), Ok(true));
        assert_eq!(
            slots.release(2, s.offset),
            Err(SlotError::NoSlot { offset: s.offset })
        );
        assert_eq!(slots.stats().arena.in_use, 0);
    }

    #[test]
    fn unheld_slot_is_freed_at_commit_and_empty_messages_take_a_block() {
        let mut slots = Slots::<u32>::new(1 << 12, 64).unwrap();
        let a = slots.alloc(0).unwrap();
        let b = slots.alloc(0).unwrap();
        assert_ne!(a.offset, b.offset, "empty messages have slots of their own");
        assert_eq!(slots.commit(a.offset), Ok(true));
        assert_eq!(slots.commit(b.offset), Ok(true));
        assert_eq!(
            slots.stats(),
            SlotStats {
                live: 0,
                holds: 0,
                arena: ArenaStats {
                    in_use: 0,
                    free: 1 << 12,
                    largest_free: 1 << 12
                }
            }
        );
        assert!(matches!(
            slots.alloc((1 << 12) + 1),
            Err(AllocError::TooLarge { .. })
        ));
    }

    #[test]
    fn release_all_frees_only_what_nobody_else_holds() {
        let mut slots = Slots::<u32>::new(1 << 12, 64).unwrap();
        let shared = slots.alloc(10).unwrap();
        let own = slots.alloc(10).unwrap();
        slots.hold(shared.offset, 1).unwrap();
        slots.hold(shared.offset, 2).unwrap();
        slots.hold(own.offset, 1).unwrap();
        slots.commit(shared.offset).unwrap();
        slots.commit(own.offset).unwrap();
        assert_eq!(slots.release_all(1), vec![own.offset]);
        assert_eq!(slots.holders(shared.offset), Some(1));
        assert_eq!(slots.held_by(1), 0);
        assert!(slots.release_all(1).is_empty());
        assert_eq!(slots.release_all(2), vec![shared.offset]);
        assert_eq!(slots.stats().live, 0);
    }
}
