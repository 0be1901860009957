//! The buddy allocator against a model (docs/ARCHITECTURE.md, Testing): a `BTreeMap` of live
//! `offset -> size`.
//!
//! Random sequences of allocations and frees (of live sub-blocks, and of offsets that are
//! out of bounds, misaligned, interior, already freed or never allocated) over arenas of
//! many shapes. After every step:
//! - no two live sub-blocks overlap, each lies inside the arena and is aligned to its size;
//! - each size is the request rounded up to a power of two, at least the minimum block;
//! - `stats()` equals what the model computes, `largest_free` by brute force: the largest
//!   aligned power-of-two run that no live sub-block touches;
//! - a refused free returns the error the model predicts and changes nothing;
//! - freeing everything coalesces the arena back into one block.
//!
//! Small freed sub-blocks wait in look-aside lists before they go back to the tree; the
//! exact `stats()` (which returns them first) is checked every few steps, so sequences both
//! reuse cached sub-blocks and need them coalesced (an allocation the tree alone cannot
//! serve), and frees of cached sub-blocks are refused as double frees.

use std::collections::BTreeMap;

use ipc_core::{AllocError, ArenaStats, BuddyAllocator, FreeError};
use proptest::prelude::*;
use proptest::sample::Index;

// ===== the model =====

/// What the allocator should look like: live sub-blocks by offset.
#[derive(Debug)]
struct Model {
    size: u64,
    min_block: u64,
    live: BTreeMap<u64, u64>,
}

impl Model {
    fn new(size: u64, min_block: u64) -> Self {
        Self {
            size,
            min_block,
            live: BTreeMap::new(),
        }
    }

    /// The size class of a request, or `None` when it can never fit.
    fn class_of(&self, len: u64) -> Option<u64> {
        let class = len.max(1).checked_next_power_of_two()?.max(self.min_block);
        (class <= self.size).then_some(class)
    }

    /// Whether `[offset, offset + len)` touches a live sub-block. Live sub-blocks are
    /// disjoint, so only the last one starting before the range's end can touch it.
    fn touches_live(&self, offset: u64, len: u64) -> bool {
        self.live
            .range(..offset + len)
            .next_back()
            .is_some_and(|(start, size)| start + size > offset)
    }

    /// Brute force: the largest aligned power-of-two block with no live sub-block in it.
    fn largest_free(&self) -> u64 {
        let mut block = self.size;
        while block >= self.min_block {
            let free_here = (0..self.size / block).any(|i| !self.touches_live(i * block, block));
            if free_here {
                return block;
            }
            block /= 2;
        }
        0
    }

    fn stats(&self) -> ArenaStats {
        let in_use = self.live.values().sum();
        ArenaStats {
            in_use,
            free: self.size - in_use,
            largest_free: self.largest_free(),
        }
    }

    /// The result `free(offset)` must have.
    fn expected_free(&self, offset: u64) -> Result<u64, FreeError> {
        if offset >= self.size {
            Err(FreeError::OutOfBounds {
                offset,
                size: self.size,
            })
        } else if !offset.is_multiple_of(self.min_block) {
            Err(FreeError::Misaligned {
                offset,
                min_block: self.min_block,
            })
        } else {
            self.live
                .get(&offset)
                .copied()
                .ok_or(FreeError::NotAllocated { offset })
        }
    }
}

// ===== operations =====

#[derive(Clone, Debug)]
enum Op {
    /// Allocate this many bytes.
    Alloc(u64),
    /// Free a live sub-block (the n-th by offset), if any.
    FreeLive(Index),
    /// Free an offset inside a live sub-block, `k` minimum blocks (or bytes) past its start.
    FreeInterior(Index, u64),
    /// Free an arbitrary offset (usually bogus; sometimes live by chance).
    FreeAt(u64),
}

/// Request lengths spread over every size class of the arena (and past it), plus edges.
fn len_strategy(size: u64) -> impl Strategy<Value = u64> {
    let top_shift = size.trailing_zeros() + 1;
    prop_oneof![
        12 => (0..=top_shift, any::<u64>()).prop_map(|(shift, r)| {
            let hi = 1u64 << shift;
            let lo = hi / 2;
            lo + r % (hi - lo + 1)
        }),
        1 => Just(0u64),
        1 => Just(size),
        1 => Just(size + 1),
        1 => Just(u64::MAX),
    ]
}

fn offset_strategy(size: u64, min_block: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        // An aligned offset inside the arena: live by chance, free, or already freed.
        4 => (0..size / min_block).prop_map(move |i| i * min_block),
        // Misaligned.
        2 => (0..size).prop_map(move |o| o | 1),
        // Out of bounds.
        1 => size..=size.saturating_mul(4),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - (min_block - 1)),
    ]
}

fn op_strategy(size: u64, min_block: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => len_strategy(size).prop_map(Op::Alloc),
        4 => any::<Index>().prop_map(Op::FreeLive),
        1 => (any::<Index>(), 1u64..64).prop_map(|(i, k)| Op::FreeInterior(i, k)),
        2 => offset_strategy(size, min_block).prop_map(Op::FreeAt),
    ]
}

/// An arena shape (min block 64 B..4 KiB, `2^order` minimum blocks) and a run of operations.
fn scenario(
    orders: std::ops::RangeInclusive<u32>,
    ops: std::ops::Range<usize>,
) -> impl Strategy<Value = (u64, u64, Vec<Op>)> {
    (6u32..=12, orders).prop_flat_map(move |(min_shift, order)| {
        let min_block = 1u64 << min_shift;
        let size = min_block << order;
        (
            Just(size),
            Just(min_block),
            prop::collection::vec(op_strategy(size, min_block), ops.clone()),
        )
    })
}

// ===== the check =====

fn new_arena(size: u64, min_block: u64) -> BuddyAllocator<Vec<u8>> {
    let len = BuddyAllocator::<Vec<u8>>::tree_len(size, min_block).expect("valid shape");
    BuddyAllocator::new(vec![0xA5; len], size, min_block).expect("valid shape")
}

/// Checks the model's invariants and the arena's usage; every `full`th call also the exact
/// `stats()`, which returns the look-aside lists' sub-blocks to the tree (checking it every
/// step would empty the lists before they are ever used).
fn check_invariants(
    arena: &mut BuddyAllocator<Vec<u8>>,
    model: &Model,
    full: bool,
) -> Result<(), TestCaseError> {
    let mut end_of_previous = 0;
    for (&offset, &size) in &model.live {
        prop_assert!(offset >= end_of_previous, "overlap at {offset}");
        prop_assert!(size.is_power_of_two() && size >= model.min_block);
        prop_assert_eq!(
            offset % size,
            0,
            "offset {} not aligned to {}",
            offset,
            size
        );
        prop_assert!(offset + size <= model.size);
        end_of_previous = offset + size;
    }
    prop_assert_eq!(arena.in_use(), model.stats().in_use);
    if full {
        prop_assert_eq!(arena.stats(), model.stats());
    }
    Ok(())
}

fn run(size: u64, min_block: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut arena = new_arena(size, min_block);
    let mut model = Model::new(size, min_block);
    prop_assert_eq!(arena.size(), size);
    prop_assert_eq!(arena.min_block(), min_block);
    check_invariants(&mut arena, &model, true)?;

    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Alloc(len) => {
                prop_assert_eq!(arena.class_of(len), model.class_of(len));
                let result = arena.alloc(len);
                match model.class_of(len) {
                    None => prop_assert_eq!(
                        result,
                        Err(AllocError::TooLarge {
                            requested: len,
                            capacity: size
                        })
                    ),
                    Some(class) => {
                        let largest_free = model.largest_free();
                        if class > largest_free {
                            prop_assert_eq!(
                                result,
                                Err(AllocError::Full {
                                    requested: len,
                                    largest_free
                                })
                            );
                        } else {
                            let got = result.map_err(|e| {
                                TestCaseError::fail(format!("alloc({len}) failed: {e}"))
                            })?;
                            prop_assert_eq!(got.size, class, "alloc({}) size class", len);
                            prop_assert_eq!(got.offset % class, 0);
                            prop_assert!(got.offset + class <= size);
                            prop_assert!(
                                !model.touches_live(got.offset, class),
                                "alloc({}) -> {:?} overlaps a live sub-block",
                                len,
                                got
                            );
                            model.live.insert(got.offset, class);
                        }
                    }
                }
            }
            Op::FreeLive(index) => {
                if model.live.is_empty() {
                    continue;
                }
                let (&offset, &class) = model
                    .live
                    .iter()
                    .nth(index.index(model.live.len()))
                    .expect("index in range");
                prop_assert_eq!(arena.free(offset), Ok(class));
                model.live.remove(&offset);
            }
            Op::FreeInterior(index, k) => {
                if model.live.is_empty() {
                    continue;
                }
                let (&offset, &class) = model
                    .live
                    .iter()
                    .nth(index.index(model.live.len()))
                    .expect("index in range");
                // Either k minimum blocks in (an aligned interior offset, if the sub-block is
                // large enough) or k bytes in (misaligned).
                let blocks = class / min_block;
                let inside = if blocks > 1 {
                    offset + (k % (blocks - 1) + 1) * min_block
                } else {
                    offset + k % min_block
                };
                let before = arena.in_use();
                let expected = model.expected_free(inside);
                prop_assert!(expected.is_err(), "{} is inside a live block", inside);
                prop_assert_eq!(arena.free(inside), expected);
                prop_assert_eq!(arena.in_use(), before, "a refused free changed the arena");
            }
            Op::FreeAt(offset) => {
                let before = arena.in_use();
                let expected = model.expected_free(offset);
                prop_assert_eq!(arena.free(offset), expected);
                if expected.is_ok() {
                    model.live.remove(&offset);
                } else {
                    prop_assert_eq!(arena.in_use(), before, "a refused free changed the arena");
                }
            }
        }
        check_invariants(&mut arena, &model, step % 8 == 7)?;
    }

    // Free everything (largest first, so coalescing happens in a different order than the
    // allocation did): one whole block again.
    let mut live: Vec<(u64, u64)> = model.live.iter().map(|(&o, &s)| (o, s)).collect();
    live.sort_by_key(|&(offset, size)| (std::cmp::Reverse(size), offset));
    for (offset, class) in live {
        prop_assert_eq!(arena.free(offset), Ok(class));
        model.live.remove(&offset);
        check_invariants(&mut arena, &model, false)?;
    }
    prop_assert_eq!(
        arena.stats(),
        ArenaStats {
            in_use: 0,
            free: size,
            largest_free: size
        }
    );
    let whole = arena
        .alloc(size)
        .map_err(|e| TestCaseError::fail(format!("whole arena: {e}")))?;
    prop_assert_eq!((whole.offset, whole.size), (0, size));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Small arenas (1..=256 minimum blocks) and long runs: they fill up, so `Full`,
    /// fragmentation and coalescing all happen often.
    #[test]
    fn small_arenas_match_the_model((size, min_block, ops) in scenario(0..=8, 1..160)) {
        run(size, min_block, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Larger arenas (up to 2^14 minimum blocks, deep trees) and shorter runs.
    #[test]
    fn large_arenas_match_the_model((size, min_block, ops) in scenario(9..=14, 1..48)) {
        run(size, min_block, &ops)?;
    }
}

/// Filling an arena with minimum blocks, then freeing every other one: nothing larger than
/// a minimum block is free until a buddy pair is free again.
#[test]
fn checkerboard_fragmentation() {
    let (size, min_block) = (1u64 << 16, 64u64);
    let mut arena = new_arena(size, min_block);
    let blocks = size / min_block;
    for i in 0..blocks {
        assert_eq!(arena.alloc(1).unwrap().offset, i * min_block);
    }
    assert_eq!(
        arena.alloc(1),
        Err(AllocError::Full {
            requested: 1,
            largest_free: 0
        })
    );
    for i in (0..blocks).step_by(2) {
        arena.free(i * min_block).unwrap();
    }
    let stats = arena.stats();
    assert_eq!(stats.in_use, size / 2);
    assert_eq!(stats.largest_free, min_block);
    assert_eq!(
        arena.alloc(65),
        Err(AllocError::Full {
            requested: 65,
            largest_free: 64
        })
    );
    // Free one buddy: a 128 B block appears.
    arena.free(min_block).unwrap();
    assert_eq!(arena.stats().largest_free, 2 * min_block);
    assert_eq!(arena.alloc(128).unwrap().offset, 0);
}
