//! The buddy allocator: the memory manager of one arena.
//!
//! An arena of `size` bytes (a power of two) is handed out in power-of-two sub-blocks from
//! `min_block` bytes (64 B is allowed) up to the whole arena. Allocation rounds up to a size
//! class and splits larger blocks; free coalesces a block with its buddy as far as it can.
//! Both walk one path of a complete binary tree, so both are O(log n).
//!
//! The tree is one byte per node, kept apart from the payload memory (never intrusive free
//! lists inside sub-blocks a peer can write). Each byte holds `order + 1` of the largest free
//! block in that subtree, or 0 when nothing is free there:
//!
//! ```text
//!                       [4]                 arena of 4 min-blocks, all free: order 2 (+1)
//!              [3]               [3]
//!          [1]      [1]      [1]      [1]   leaves: one min-block each (order 0, +1)
//!
//! after alloc(1 min-block) -> offset 0:
//!                       [2]                 largest free: order 1 (the right half)
//!              [1]               [2]
//!          [0]      [1]      [1]      [1]
//! ```
//!
//! The allocator is generic over where the tree lives ([`BuddyAllocator<S>`] with
//! `S: DerefMut<Target = [u8]>`): a node keeps its transmit arena's tree inside its block,
//! the engine keeps each receive arena's tree in its own memory (a node must not be able to
//! corrupt the engine's allocator: docs/ARCHITECTURE.md, invariant 3), and tests use a
//! `Vec<u8>`.
//! Exactly one party ever mutates a given tree (invariant 2).

mod buddy;

pub use buddy::{Allocation, ArenaStats, BuddyAllocator, MIN_BLOCK_FLOOR};
