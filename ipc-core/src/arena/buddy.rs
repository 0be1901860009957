//! The buddy allocator itself; see the module docs for the tree encoding.

use std::ops::DerefMut;

use crate::error::{AllocError, BlockError, FreeError};

/// Smallest minimum block the allocator accepts.
pub const MIN_BLOCK_FLOOR: u64 = 64;

/// Largest order (arena size / min block, as a power of two) the tree encoding supports.
const MAX_ORDER: u32 = 40;

/// Orders with a look-aside list: the smallest classes, where messages churn.
const CACHED_ORDERS: usize = 5;

/// Sub-blocks each look-aside list keeps at most.
const CACHE_DEPTH: usize = 64;

/// One sub-block handed out by [`BuddyAllocator::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// Offset from the start of the arena (aligned to `size`).
    pub offset: u64,
    /// Size of the sub-block: the request rounded up to its size class.
    pub size: u64,
}

/// Usage of an arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes in live sub-blocks (size classes, not requested lengths).
    pub in_use: u64,
    /// Bytes not in any live sub-block.
    pub free: u64,
    /// The largest sub-block that could be allocated now.
    pub largest_free: u64,
}

/// A buddy allocator over an arena of `size` bytes, its tree kept in `S`.
#[derive(Debug)]
pub struct BuddyAllocator<S> {
    tree: S,
    min_shift: u32,
    max_order: u32,
    in_use: u64,
    /// Look-aside lists: freed sub-blocks of the small orders, kept out of the tree (it still
    /// counts them as allocated) and handed out again last-in first-out, so the common
    /// free-then-alloc of one size skips both walks and reuses memory still in cache.
    cache: [Vec<u64>; CACHED_ORDERS],
    /// One bit per minimum block: set where a cached sub-block starts (a second free of it
    /// is refused as a double free; the tree alone cannot tell it from a live one).
    cached: Vec<u64>,
}

// ===== impl BuddyAllocator =====

impl<S: DerefMut<Target = [u8]>> BuddyAllocator<S> {
    /// Bytes of tree storage an arena of `size` bytes with `min_block` needs.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] when the sizes are not powers of two, `min_block` is below 64 B,
    /// or `size` is below `min_block`.
    pub fn tree_len(size: u64, min_block: u64) -> Result<usize, BlockError> {
        let (min_shift, max_order) = Self::shape(size, min_block)?;
        let _ = min_shift;
        usize::try_from(2u64 << max_order).map_err(|_| BlockError::Config("arena too large"))
    }

    fn shape(size: u64, min_block: u64) -> Result<(u32, u32), BlockError> {
        if !min_block.is_power_of_two() || min_block < MIN_BLOCK_FLOOR {
            return Err(BlockError::Config(
                "min block must be a power of two of at least 64 bytes",
            ));
        }
        if !size.is_power_of_two() || size < min_block {
            return Err(BlockError::Config(
                "arena size must be a power of two of at least the min block",
            ));
        }
        let min_shift = min_block.trailing_zeros();
        let max_order = size.trailing_zeros() - min_shift;
        if max_order > MAX_ORDER {
            return Err(BlockError::Config("arena has too many min blocks"));
        }
        Ok((min_shift, max_order))
    }

    /// Formats `tree` as an allocator of an empty arena of `size` bytes.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] when the sizes are invalid (see [`Self::tree_len`]) or `tree` is
    /// shorter than [`Self::tree_len`].
    pub fn new(mut tree: S, size: u64, min_block: u64) -> Result<Self, BlockError> {
        let (min_shift, max_order) = Self::shape(size, min_block)?;
        let nodes = 2usize << max_order;
        if tree.len() < nodes {
            return Err(BlockError::Config("tree storage too small for the arena"));
        }
        // Node i at depth d covers a block of order max_order - d: fully free is order + 1.
        tree[0] = 0;
        for depth in 0..=max_order {
            let value = (max_order - depth + 1) as u8;
            tree[1usize << depth..2usize << depth].fill(value);
        }
        Ok(Self {
            tree,
            min_shift,
            max_order,
            in_use: 0,
            cache: Default::default(),
            cached: vec![0; (1usize << max_order).div_ceil(64)],
        })
    }

    /// The arena's size in bytes.
    pub fn size(&self) -> u64 {
        1u64 << (self.max_order + self.min_shift)
    }

    /// The smallest size class.
    pub fn min_block(&self) -> u64 {
        1u64 << self.min_shift
    }

    /// The size class a request of `len` bytes is rounded up to, or `None` if it can never fit.
    pub fn class_of(&self, len: u64) -> Option<u64> {
        self.order_of(len).map(|order| self.block_size(order))
    }

    fn order_of(&self, len: u64) -> Option<u32> {
        let blocks = len.max(1).div_ceil(self.min_block());
        let order = blocks.next_power_of_two().trailing_zeros();
        (order <= self.max_order).then_some(order)
    }

    fn block_size(&self, order: u32) -> u64 {
        1u64 << (order + self.min_shift)
    }

    /// Bytes in live sub-blocks now (cheap: for publishing usage on the data path).
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Usage now. Returns the look-aside lists' sub-blocks to the tree first, so that
    /// `largest_free` is exact (and so costs a walk per cached sub-block).
    pub fn stats(&mut self) -> ArenaStats {
        self.trim();
        let root = u32::from(self.tree[1]);
        let largest_free = match root {
            0 => 0,
            v => self.block_size((v - 1).min(self.max_order)),
        };
        ArenaStats {
            in_use: self.in_use,
            free: self.size() - self.in_use,
            largest_free,
        }
    }

    /// Allocates a sub-block of at least `len` bytes (a zero length takes the smallest class).
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] when `len` exceeds the arena; [`AllocError::Full`] when it
    /// would fit but no free block of its class exists now.
    pub fn alloc(&mut self, len: u64) -> Result<Allocation, AllocError> {
        let Some(order) = self.order_of(len) else {
            return Err(AllocError::TooLarge {
                requested: len,
                capacity: self.size(),
            });
        };
        if let Some(offset) = self.cache.get_mut(order as usize).and_then(Vec::pop) {
            self.set_cached(offset, false);
            let size = self.block_size(order);
            self.in_use += size;
            return Ok(Allocation { offset, size });
        }
        let want = order as u8 + 1;
        if self.tree[1] < want {
            // Cached sub-blocks may coalesce into what is asked for.
            if self.cache.iter().all(Vec::is_empty) || {
                self.trim();
                self.tree[1] < want
            } {
                return Err(AllocError::Full {
                    requested: len,
                    largest_free: self.stats().largest_free,
                });
            }
        }
        let mut node = 1usize;
        let mut node_order = self.max_order;
        while node_order > order {
            let left = node * 2;
            node = if self.tree[left] >= want {
                left
            } else {
                left + 1
            };
            node_order -= 1;
        }
        self.tree[node] = 0;
        self.update_ancestors(node);
        let depth = self.max_order - node_order;
        let index = (node - (1usize << depth)) as u64;
        let size = self.block_size(order);
        self.in_use += size;
        Ok(Allocation {
            offset: index * size,
            size,
        })
    }

    /// Frees the sub-block that starts at `offset`; returns its size.
    ///
    /// # Errors
    ///
    /// [`FreeError`] when the offset is outside the arena, misaligned, or no live allocation
    /// starts there (a double free or an interior offset). The arena is unchanged then.
    pub fn free(&mut self, offset: u64) -> Result<u64, FreeError> {
        if offset >= self.size() {
            return Err(FreeError::OutOfBounds {
                offset,
                size: self.size(),
            });
        }
        if offset & (self.min_block() - 1) != 0 {
            return Err(FreeError::Misaligned {
                offset,
                min_block: self.min_block(),
            });
        }
        let leaf_index = (offset >> self.min_shift) as usize;
        let mut node = (1usize << self.max_order) + leaf_index;
        let mut order = 0u32;
        // The allocated node is the lowest node on the path to the root that reads 0: nodes
        // below an allocated one keep their "fully free" value, and every ancestor of a free
        // leaf reads non-zero.
        while self.tree[node] != 0 {
            if node == 1 {
                return Err(FreeError::NotAllocated { offset });
            }
            node /= 2;
            order += 1;
        }
        if leaf_index & ((1usize << order) - 1) != 0 || self.is_cached(offset) {
            return Err(FreeError::NotAllocated { offset });
        }
        let size = self.block_size(order);
        self.in_use -= size;
        if let Some(list) = self.cache.get_mut(order as usize)
            && list.len() < CACHE_DEPTH
        {
            list.push(offset);
            self.set_cached(offset, true);
            return Ok(size);
        }
        self.release(node, order);
        Ok(size)
    }

    /// Returns every sub-block of the look-aside lists to the tree (coalescing them).
    pub fn trim(&mut self) {
        for order in 0..CACHED_ORDERS {
            while let Some(offset) = self.cache[order].pop() {
                self.set_cached(offset, false);
                let leaf = (1usize << self.max_order) + (offset >> self.min_shift) as usize;
                self.release(leaf >> order, order as u32);
            }
        }
    }

    /// Marks tree node `node` (of `order`) free and updates its ancestors.
    fn release(&mut self, node: usize, order: u32) {
        self.tree[node] = order as u8 + 1;
        self.update_ancestors(node);
    }

    fn is_cached(&self, offset: u64) -> bool {
        let leaf = (offset >> self.min_shift) as usize;
        self.cached[leaf / 64] & (1 << (leaf % 64)) != 0
    }

    fn set_cached(&mut self, offset: u64, on: bool) {
        let leaf = (offset >> self.min_shift) as usize;
        let word = &mut self.cached[leaf / 64];
        if on {
            *word |= 1 << (leaf % 64);
        } else {
            *word &= !(1 << (leaf % 64));
        }
    }

    fn update_ancestors(&mut self, mut node: usize) {
        let mut order = self.max_order - node.ilog2();
        while node > 1 {
            node /= 2;
            order += 1;
            let (left, right) = (self.tree[node * 2], self.tree[node * 2 + 1]);
            // Both children wholly free (value == their order + 1 == `order`): coalesce.
            let value = if left == order as u8 && right == order as u8 {
                order as u8 + 1
            } else {
                left.max(right)
            };
            if self.tree[node] == value {
                // A node's value depends on its children's alone: nothing above changes.
                break;
            }
            self.tree[node] = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(size: u64, min: u64) -> BuddyAllocator<Vec<u8>> {
        let len = BuddyAllocator::<Vec<u8>>::tree_len(size, min).unwrap();
        BuddyAllocator::new(vec![0; len], size, min).unwrap()
    }

    #[test]
    fn splits_and_coalesces() {
        let mut a = arena(4096, 64);
        let x = a.alloc(1).unwrap();
        assert_eq!(
            x,
            Allocation {
                offset: 0,
                size: 64
            }
        );
        let y = a.alloc(100).unwrap();
        assert_eq!(
            y,
            Allocation {
                offset: 128,
                size: 128
            }
        );
        let z = a.alloc(64).unwrap();
        assert_eq!(z.offset, 64);
        assert_eq!(a.stats().in_use, 256);
        assert_eq!(a.stats().largest_free, 2048);
        for off in [x.offset, y.offset, z.offset] {
            a.free(off).unwrap();
        }
        assert_eq!(
            a.stats(),
            ArenaStats {
                in_use: 0,
                free: 4096,
                largest_free: 4096
            }
        );
        assert_eq!(a.alloc(4096).unwrap().offset, 0);
    }

    #[test]
    fn bad_frees_are_errors() {
        let mut a = arena(4096, 64);
        let big = a.alloc(1024).unwrap();
        assert_eq!(
            a.free(big.offset + 64),
            Err(FreeError::NotAllocated { offset: 64 })
        );
        assert_eq!(
            a.free(7),
            Err(FreeError::Misaligned {
                offset: 7,
                min_block: 64
            })
        );
        assert_eq!(
            a.free(4096),
            Err(FreeError::OutOfBounds {
                offset: 4096,
                size: 4096
            })
        );
        assert_eq!(a.free(2048), Err(FreeError::NotAllocated { offset: 2048 }));
        assert_eq!(a.free(big.offset), Ok(1024));
        assert_eq!(
            a.free(big.offset),
            Err(FreeError::NotAllocated { offset: 0 })
        );
        assert_eq!(a.stats().in_use, 0);
    }

    #[test]
    fn look_aside_lists_reuse_refuse_double_frees_and_coalesce_when_needed() {
        let mut a = arena(4096, 64);
        let x = a.alloc(64).unwrap();
        let y = a.alloc(64).unwrap();
        assert_eq!(a.free(x.offset), Ok(64));
        assert_eq!(a.in_use(), 64);
        // A cached sub-block is not live: a second free is refused.
        assert_eq!(
            a.free(x.offset),
            Err(FreeError::NotAllocated { offset: x.offset })
        );
        // Last in, first out: the same sub-block comes back.
        assert_eq!(a.alloc(1).unwrap(), x);
        // Fill the arena with small sub-blocks, free them all (they stay cached up to the
        // lists' depth), then ask for the whole arena: it needs them coalesced.
        let mut live = vec![x, y];
        while let Ok(b) = a.alloc(64) {
            live.push(b);
        }
        assert_eq!(a.in_use(), 4096);
        for b in &live {
            a.free(b.offset).unwrap();
        }
        assert_eq!(a.in_use(), 0);
        assert_eq!(a.alloc(4096).unwrap().offset, 0);
        assert_eq!(a.free(0), Ok(4096));
        assert_eq!(
            a.stats(),
            ArenaStats {
                in_use: 0,
                free: 4096,
                largest_free: 4096
            }
        );
    }

    #[test]
    fn too_large_and_full_differ() {
        let mut a = arena(1024, 64);
        assert_eq!(
            a.alloc(1025),
            Err(AllocError::TooLarge {
                requested: 1025,
                capacity: 1024
            })
        );
        let whole = a.alloc(1024).unwrap();
        assert_eq!(
            a.alloc(1),
            Err(AllocError::Full {
                requested: 1,
                largest_free: 0
            })
        );
        a.free(whole.offset).unwrap();
        assert!(a.alloc(1).is_ok());
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(BuddyAllocator::<Vec<u8>>::tree_len(4096, 32).is_err());
        assert!(BuddyAllocator::<Vec<u8>>::tree_len(4000, 64).is_err());
        assert!(BuddyAllocator::<Vec<u8>>::tree_len(64, 128).is_err());
        assert!(BuddyAllocator::new(vec![0u8; 3], 4096, 64).is_err());
    }

    #[test]
    fn single_block_arena() {
        let mut a = arena(64, 64);
        let x = a.alloc(0).unwrap();
        assert_eq!(
            x,
            Allocation {
                offset: 0,
                size: 64
            }
        );
        assert!(a.alloc(1).is_err());
        assert_eq!(a.free(0), Ok(64));
        assert_eq!(a.free(0), Err(FreeError::NotAllocated { offset: 0 }));
    }
}
