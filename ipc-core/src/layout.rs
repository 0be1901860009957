//! The layout of a block: header, rings, the transmit arena's tree, and the two arenas.
//!
//! A block is one sealed memfd, mapped by exactly two parties: its node and the engine
//! (docs/ARCHITECTURE.md, invariant 1). The engine computes a [`Layout`] from a
//! [`BlockConfig`], writes it into the header, and hands the block over; the node reads the
//! header once, checks it against the file's real size, and from then on uses only its own
//! validated copy.
//!
//! ```text
//!  offset 0      +---------------------------------------------+
//!                | header page (4 KiB)                         |
//!                |   0: RawHeader  magic, version, sizes,      |
//!                |                 offset+capacity of regions  |
//!                |  2048: BlockStats (informational counters)  |
//!  4 KiB         +---------------------------------------------+
//!                | submit ring   node -> engine  (DATA/FIN/    |
//!                |   RingHeader 512 B + capacity x 32 B  CLOSE)|
//!                +---------------------------------------------+
//!                | deliver ring  engine -> node  (DATA/FIN/    |
//!                |               CLOSED/TX_DONE/CREDIT)        |
//!                +---------------------------------------------+
//!                | release ring  node -> engine  (RELEASE)     |
//!                +---------------------------------------------+
//!                | tx tree: the node's buddy allocator state    |
//!                +---------------------------------------------+
//!                | tx arena: the node allocates (loans), the   |
//!                |   engine only reads (one copy out)          |
//!                +---------------------------------------------+
//!                | rx arena: the engine allocates and writes,  |
//!                |   the node only reads (zero-copy receive);  |
//!                |   its tree lives in the engine's memory     |
//!  total_size    +---------------------------------------------+
//! ```
//!
//! Every region starts on a 4 KiB boundary. All offsets are from the block's base; offsets
//! in descriptors are from their arena's start. No pointer is ever stored in the block.

use std::mem::{offset_of, size_of};
use std::ops::{Deref, DerefMut};

use crate::arena::BuddyAllocator;
use crate::descriptor::{ArenaBounds, RawDescriptor};
use crate::error::BlockError;
use crate::ring::RingHeader;
use crate::sync::AtomicU64;

/// "SHMLINK\0" read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMLINK\0");
/// The layout version this build writes and accepts.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header page.
pub const HEADER_SIZE: u64 = 4096;
/// Offset of [`BlockStats`] inside the header page.
pub const STATS_OFFSET: u64 = 2048;
/// Alignment of every region.
pub const REGION_ALIGN: u64 = 4096;
/// Largest block the engine will create or a node accept (64 GiB).
pub const MAX_BLOCK_SIZE: u64 = 1 << 36;
/// Largest ring capacity (entries).
pub const MAX_RING_CAPACITY: u32 = 1 << 20;

/// Pads and aligns a value to 128 bytes, so two values never share a cache line pair.
///
/// Why 128 and not 64 (crossbeam-utils `CachePadded`): on x86_64 the spatial prefetcher
/// pulls cache lines in pairs, so two indices 64 bytes apart still ping-pong between cores.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for CachePadded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// What the engine asks for when it creates a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Entries in the submit ring (node to engine). A power of two.
    pub submit_capacity: u32,
    /// Entries in the deliver ring (engine to node). A power of two.
    pub deliver_capacity: u32,
    /// Entries in the release ring (node to engine). A power of two.
    pub release_capacity: u32,
    /// Bytes of the transmit arena (a power of two).
    pub tx_arena: u64,
    /// Bytes of the receive arena (a power of two).
    pub rx_arena: u64,
    /// Smallest size class of both arenas (a power of two, at least 64).
    pub min_block: u64,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            submit_capacity: 1024,
            deliver_capacity: 4096,
            release_capacity: 1024,
            tx_arena: 32 << 20,
            rx_arena: 32 << 20,
            min_block: 256,
        }
    }
}

/// A ring's place in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegion {
    /// Offset of its [`RingHeader`] from the block's base.
    pub offset: u64,
    /// Number of slots.
    pub capacity: u32,
}

impl RingRegion {
    fn len(&self) -> u64 {
        size_of::<RingHeader>() as u64
            + u64::from(self.capacity) * size_of::<RawDescriptor>() as u64
    }
}

/// An arena's place in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaRegion {
    /// Offset of the arena from the block's base.
    pub offset: u64,
    /// Bytes (a power of two).
    pub size: u64,
    /// Smallest size class.
    pub min_block: u64,
}

impl ArenaRegion {
    /// The bounds descriptors into this arena are checked against.
    pub fn bounds(&self) -> ArenaBounds {
        ArenaBounds {
            size: self.size,
            align: self.min_block,
        }
    }
}

/// A validated layout, in the reader's own memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the whole block.
    pub total_size: u64,
    /// Segment index of this block (0 until blocks can grow).
    pub segment: u32,
    /// The submit ring.
    pub submit: RingRegion,
    /// The deliver ring.
    pub deliver: RingRegion,
    /// The release ring.
    pub release: RingRegion,
    /// Offset of the transmit arena's allocator tree.
    pub tx_tree_offset: u64,
    /// Bytes of the transmit arena's allocator tree.
    pub tx_tree_len: u64,
    /// The transmit arena.
    pub tx: ArenaRegion,
    /// The receive arena.
    pub rx: ArenaRegion,
}

fn align_up(value: u64) -> u64 {
    value.div_ceil(REGION_ALIGN) * REGION_ALIGN
}

fn check_ring_capacity(capacity: u32) -> Result<(), BlockError> {
    if !capacity.is_power_of_two() || capacity > MAX_RING_CAPACITY {
        return Err(BlockError::Config(
            "ring capacity must be a power of two of at most 2^20",
        ));
    }
    Ok(())
}

impl Layout {
    /// Lays out a block for `config`.
    ///
    /// # Errors
    ///
    /// [`BlockError::Config`] when a capacity or size is not a power of two, the minimum
    /// block is below 64 B, or the block would exceed [`MAX_BLOCK_SIZE`].
    pub fn compute(config: &BlockConfig) -> Result<Self, BlockError> {
        for capacity in [
            config.submit_capacity,
            config.deliver_capacity,
            config.release_capacity,
        ] {
            check_ring_capacity(capacity)?;
        }
        let tree_len =
            BuddyAllocator::<Vec<u8>>::tree_len(config.tx_arena, config.min_block)? as u64;
        BuddyAllocator::<Vec<u8>>::tree_len(config.rx_arena, config.min_block)?;
        if config.tx_arena > MAX_BLOCK_SIZE / 4 || config.rx_arena > MAX_BLOCK_SIZE / 4 {
            return Err(BlockError::Config("arena larger than 16 GiB"));
        }
        let mut cursor = HEADER_SIZE;
        let mut ring = |capacity| {
            let region = RingRegion {
                offset: cursor,
                capacity,
            };
            cursor = align_up(cursor + region.len());
            region
        };
        let submit = ring(config.submit_capacity);
        let deliver = ring(config.deliver_capacity);
        let release = ring(config.release_capacity);
        let tx_tree_offset = cursor;
        cursor = align_up(cursor + tree_len);
        let tx = ArenaRegion {
            offset: cursor,
            size: config.tx_arena,
            min_block: config.min_block,
        };
        cursor += config.tx_arena;
        let rx = ArenaRegion {
            offset: cursor,
            size: config.rx_arena,
            min_block: config.min_block,
        };
        cursor += config.rx_arena;
        Ok(Self {
            total_size: cursor,
            segment: 0,
            submit,
            deliver,
            release,
            tx_tree_offset,
            tx_tree_len: tree_len,
            tx,
            rx,
        })
    }

    /// Checks a header read from a block of `actual_size` bytes and returns its layout.
    ///
    /// Everything is checked against `actual_size` (from fstat, not from the header) with
    /// checked arithmetic: every region inside the block, aligned, in order and disjoint.
    ///
    /// # Errors
    ///
    /// The [`BlockError`] naming the first inconsistency.
    pub fn from_header(raw: &RawHeader, actual_size: u64) -> Result<Self, BlockError> {
        if raw.magic != MAGIC {
            return Err(BlockError::BadMagic { found: raw.magic });
        }
        if raw.layout_version != LAYOUT_VERSION {
            return Err(BlockError::Version {
                found: raw.layout_version,
                supported: LAYOUT_VERSION,
            });
        }
        if raw.total_size != actual_size {
            return Err(BlockError::SizeMismatch {
                header: raw.total_size,
                actual: actual_size,
            });
        }
        if raw.header_size as u64 != HEADER_SIZE
            || raw.descriptor_size as usize != size_of::<RawDescriptor>()
        {
            return Err(BlockError::Header("header or descriptor size differs"));
        }
        if actual_size > MAX_BLOCK_SIZE {
            return Err(BlockError::Header("block larger than the maximum"));
        }
        if raw.segment != 0 {
            return Err(BlockError::Header("unknown segment index"));
        }
        let ring = |r: &RawRing| -> Result<RingRegion, BlockError> {
            check_ring_capacity(r.capacity)
                .map_err(|_| BlockError::Header("ring capacity not a power of two"))?;
            Ok(RingRegion {
                offset: r.offset,
                capacity: r.capacity,
            })
        };
        let arena = |a: &RawArena| -> Result<ArenaRegion, BlockError> {
            BuddyAllocator::<Vec<u8>>::tree_len(a.size, a.min_block)
                .map_err(|_| BlockError::Header("arena size or min block invalid"))?;
            Ok(ArenaRegion {
                offset: a.offset,
                size: a.size,
                min_block: a.min_block,
            })
        };
        let layout = Self {
            total_size: actual_size,
            segment: 0,
            submit: ring(&raw.submit)?,
            deliver: ring(&raw.deliver)?,
            release: ring(&raw.release)?,
            tx_tree_offset: raw.tx_tree_offset,
            tx_tree_len: raw.tx_tree_len,
            tx: arena(&raw.tx)?,
            rx: arena(&raw.rx)?,
        };
        let need = BuddyAllocator::<Vec<u8>>::tree_len(layout.tx.size, layout.tx.min_block)? as u64;
        if layout.tx_tree_len < need {
            return Err(BlockError::Header("tx tree too small for the tx arena"));
        }
        // Regions in order, aligned, disjoint, inside the block.
        let regions = [
            (layout.submit.offset, layout.submit.len()),
            (layout.deliver.offset, layout.deliver.len()),
            (layout.release.offset, layout.release.len()),
            (layout.tx_tree_offset, layout.tx_tree_len),
            (layout.tx.offset, layout.tx.size),
            (layout.rx.offset, layout.rx.size),
        ];
        let mut floor = HEADER_SIZE;
        for (offset, len) in regions {
            if offset % REGION_ALIGN != 0 {
                return Err(BlockError::Header("region not 4 KiB aligned"));
            }
            if offset < floor {
                return Err(BlockError::Header("regions overlap or are out of order"));
            }
            floor = offset
                .checked_add(len)
                .filter(|end| *end <= actual_size)
                .ok_or(BlockError::Header(
                    "region extends past the end of the block",
                ))?;
        }
        Ok(layout)
    }

    /// The header that describes this layout.
    pub fn to_header(&self) -> RawHeader {
        let ring = |r: &RingRegion| RawRing {
            offset: r.offset,
            capacity: r.capacity,
            _pad: 0,
        };
        let arena = |a: &ArenaRegion| RawArena {
            offset: a.offset,
            size: a.size,
            min_block: a.min_block,
        };
        RawHeader {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size: HEADER_SIZE as u32,
            total_size: self.total_size,
            segment: self.segment,
            descriptor_size: size_of::<RawDescriptor>() as u32,
            submit: ring(&self.submit),
            deliver: ring(&self.deliver),
            release: ring(&self.release),
            tx_tree_offset: self.tx_tree_offset,
            tx_tree_len: self.tx_tree_len,
            tx: arena(&self.tx),
            rx: arena(&self.rx),
        }
    }

    /// The largest payload a session can carry between two nodes with this layout.
    pub fn max_payload(&self) -> u64 {
        self.tx.size.min(self.rx.size).min(u64::from(u32::MAX))
    }
}

/// A ring as recorded in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawRing {
    /// Offset of the ring header from the block's base.
    pub offset: u64,
    /// Number of slots.
    pub capacity: u32,
    _pad: u32,
}

/// An arena as recorded in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawArena {
    /// Offset from the block's base.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// Smallest size class.
    pub min_block: u64,
}

/// The header as it lies at offset 0 of every block: plain integers, any bits allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHeader {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// [`HEADER_SIZE`].
    pub header_size: u32,
    /// Bytes of the whole block.
    pub total_size: u64,
    /// Segment index.
    pub segment: u32,
    /// Bytes per descriptor (32).
    pub descriptor_size: u32,
    /// Submit ring.
    pub submit: RawRing,
    /// Deliver ring.
    pub deliver: RawRing,
    /// Release ring.
    pub release: RawRing,
    /// Offset of the transmit arena's tree.
    pub tx_tree_offset: u64,
    /// Bytes of that tree.
    pub tx_tree_len: u64,
    /// Transmit arena.
    pub tx: RawArena,
    /// Receive arena.
    pub rx: RawArena,
}

const _: () = assert!(offset_of!(RawHeader, magic) == 0);
const _: () = assert!(offset_of!(RawHeader, layout_version) == 8);
const _: () = assert!(offset_of!(RawHeader, submit) == 32);
const _: () = assert!(size_of::<RawHeader>() == 144);
const _: () = assert!((size_of::<RawHeader>() as u64) <= STATS_OFFSET);

/// Usage counters published in the header page. Informational only: the engine never
/// trusts the node's counter, and the node never needs the engine's.
#[repr(C)]
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Bytes in use in the transmit arena (written by the node).
    pub(crate) tx_in_use: CachePadded<AtomicU64>,
    /// Bytes in use in the receive arena (written by the engine).
    pub(crate) rx_in_use: CachePadded<AtomicU64>,
}

#[cfg(not(loom))]
const _: () = assert!(STATS_OFFSET + size_of::<BlockStats>() as u64 <= HEADER_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_round_trips() {
        let layout = Layout::compute(&BlockConfig::default()).unwrap();
        let back = Layout::from_header(&layout.to_header(), layout.total_size).unwrap();
        assert_eq!(layout, back);
        assert_eq!(layout.tx.offset % REGION_ALIGN, 0);
        assert!(layout.rx.offset >= layout.tx.offset + layout.tx.size);
    }

    #[test]
    fn garbage_headers_are_refused() {
        let layout = Layout::compute(&BlockConfig::default()).unwrap();
        let good = layout.to_header();
        let size = layout.total_size;
        let cases: Vec<(RawHeader, u64)> = vec![
            (RawHeader::default(), size),
            (RawHeader { magic: 7, ..good }, size),
            (
                RawHeader {
                    layout_version: 99,
                    ..good
                },
                size,
            ),
            (good, size - 4096),
            (
                RawHeader {
                    total_size: u64::MAX,
                    ..good
                },
                u64::MAX,
            ),
            (
                RawHeader {
                    descriptor_size: 16,
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    submit: RawRing {
                        capacity: 3,
                        ..good.submit
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    deliver: RawRing {
                        offset: 4096,
                        ..good.deliver
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    tx: RawArena {
                        offset: good.tx.offset + 1,
                        ..good.tx
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    rx: RawArena {
                        size: 1 << 40,
                        ..good.rx
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    rx: RawArena {
                        offset: u64::MAX - 4095,
                        ..good.rx
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    tx: RawArena {
                        min_block: 8,
                        ..good.tx
                    },
                    ..good
                },
                size,
            ),
            (
                RawHeader {
                    tx_tree_len: 1,
                    ..good
                },
                size,
            ),
            (RawHeader { segment: 1, ..good }, size),
        ];
        for (i, (header, size)) in cases.iter().enumerate() {
            assert!(
                Layout::from_header(header, *size).is_err(),
                "case {i} was accepted: {header:?}"
            );
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = [
            BlockConfig {
                submit_capacity: 100,
                ..BlockConfig::default()
            },
            BlockConfig {
                tx_arena: 3 << 20,
                ..BlockConfig::default()
            },
            BlockConfig {
                min_block: 32,
                ..BlockConfig::default()
            },
            BlockConfig {
                rx_arena: 64,
                min_block: 128,
                ..BlockConfig::default()
            },
        ];
        for config in bad {
            assert!(Layout::compute(&config).is_err(), "{config:?}");
        }
    }
}
