//! `Slots` against a model: a slot is reused only when every holder released it, a release
//! a holder has no right to is refused and changes nothing, and live slots never overlap.

use std::collections::{BTreeMap, BTreeSet};

use ipc_core::broadcast::{SlotError, Slots};
use proptest::prelude::*;

const SIZE: u64 = 1 << 14;
const MIN: u64 = 64;
const HOLDERS: u8 = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Publish a message of `len` bytes held by the holders whose bit is set in `mask`.
    Publish { len: u32, mask: u8 },
    /// `holder` releases the `pick`-th live slot (or a bogus offset when `bogus`).
    Release {
        holder: u8,
        pick: usize,
        bogus: bool,
    },
    /// `holder` goes away.
    ReleaseAll { holder: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..3000, 0u8..16).prop_map(|(len, mask)| Op::Publish { len, mask }),
        (0..HOLDERS, 0usize..64, proptest::bool::weighted(0.2)).prop_map(
            |(holder, pick, bogus)| Op::Release {
                holder,
                pick,
                bogus
            }
        ),
        (0..HOLDERS).prop_map(|holder| Op::ReleaseAll { holder }),
    ]
}

fn class(len: u32) -> u64 {
    u64::from(len).max(1).next_power_of_two().max(MIN)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn slots_follow_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let mut slots = Slots::<u8>::new(SIZE, MIN).unwrap();
        // offset -> (len, holders)
        let mut model: BTreeMap<u64, (u32, BTreeSet<u8>)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Publish { len, mask } => {
                    let slot = match slots.alloc(len) {
                        Ok(slot) => slot,
                        // Not now (held slots fill the segment): a publisher would wait.
                        Err(ipc_core::AllocError::Full { .. }) => {
                            prop_assert!(!model.is_empty(), "full with nothing held");
                            continue;
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                    };
                    prop_assert!(!model.contains_key(&slot.offset), "reused a live slot");
                    let holders: BTreeSet<u8> = (0..HOLDERS).filter(|h| mask & (1 << h) != 0).collect();
                    for h in &holders {
                        slots.hold(slot.offset, *h).unwrap();
                    }
                    let freed = slots.commit(slot.offset).unwrap();
                    prop_assert_eq!(freed, holders.is_empty());
                    if !holders.is_empty() {
                        model.insert(slot.offset, (len, holders));
                    }
                }
                Op::Release { holder, pick, bogus } => {
                    let offsets: Vec<u64> = model.keys().copied().collect();
                    let offset = if bogus || offsets.is_empty() {
                        // An offset that names no slot start, or a slot start at random.
                        (pick as u64) * MIN + if bogus { 1 } else { 0 }
                    } else {
                        offsets[pick % offsets.len()]
                    };
                    let before = slots.stats();
                    let result = slots.release(holder, offset);
                    match model.get_mut(&offset) {
                        Some((_, holders)) if holders.contains(&holder) => {
                            holders.remove(&holder);
                            let gone = holders.is_empty();
                            if gone {
                                model.remove(&offset);
                            }
                            prop_assert_eq!(result, Ok(gone));
                        }
                        Some(_) => {
                            prop_assert_eq!(result, Err(SlotError::NotHeld { offset }));
                            prop_assert_eq!(slots.stats(), before, "a refused release changed something");
                        }
                        None => {
                            prop_assert_eq!(result, Err(SlotError::NoSlot { offset }));
                            prop_assert_eq!(slots.stats(), before, "a refused release changed something");
                        }
                    }
                }
                Op::ReleaseAll { holder } => {
                    let mut expect = Vec::new();
                    model.retain(|offset, (_, holders)| {
                        if holders.remove(&holder) && holders.is_empty() {
                            expect.push(*offset);
                            return false;
                        }
                        true
                    });
                    prop_assert_eq!(slots.release_all(holder), expect);
                }
            }
            // Invariants after every step.
            let stats = slots.stats();
            prop_assert_eq!(stats.live, model.len());
            prop_assert_eq!(stats.holds, model.values().map(|(_, h)| h.len()).sum::<usize>());
            prop_assert_eq!(stats.arena.in_use, model.iter().map(|(_, (l, _))| class(*l)).sum::<u64>());
            let mut end = 0;
            for (offset, (len, holders)) in &model {
                prop_assert!(*offset >= end, "live slots overlap");
                prop_assert_eq!(offset % class(*len), 0, "misaligned slot");
                end = offset + class(*len);
                prop_assert!(end <= SIZE);
                prop_assert_eq!(slots.holders(*offset), Some(holders.len() as u32));
                for h in 0..HOLDERS {
                    prop_assert_eq!(slots.is_held_by(h, *offset), holders.contains(&h));
                }
            }
        }
        // Everyone leaves: everything is free again.
        for h in 0..HOLDERS {
            slots.release_all(h);
        }
        let stats = slots.stats();
        prop_assert_eq!(stats.live, 0);
        prop_assert_eq!(stats.arena.largest_free, SIZE);
    }
}
