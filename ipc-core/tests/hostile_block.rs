//! Hostile values written into a REAL block (docs/ARCHITECTURE.md, invariant 3 and Testing).
//!
//! A peer controls every byte of the block it shares. These tests play that peer: they write
//! garbage through the memfd (`pwrite`, so it lands in the same pages the other side has
//! mapped) into the header, the ring indices, the waiting words and the descriptor slots, and
//! check that `Block::open`, `Consumer`, `Producer`, `validate_submit`, `validate_release`,
//! `validate_deliver`, `copy_payload` and `rx_view` each answer with their typed error: no
//! panic, no out-of-bounds access. Each mirrors a fuzz target in `fuzz/`.

use std::mem::{offset_of, size_of};
use std::sync::Arc;

use ipc_core::descriptor::{close_reason, kind};
use ipc_core::layout::{LAYOUT_VERSION, RawArena, RawHeader, RawRing, RingRegion};
use ipc_core::ring::RingHeader;
use ipc_core::{
    Block, BlockConfig, BlockError, Consumer, Delivery, FreeError, Layout, Producer, RawDescriptor,
    RingError, Submission, Violation, copy_payload, validate_deliver, validate_release,
    validate_submit,
};
use proptest::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};

// ===== helpers =====

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

fn create() -> Block {
    Block::create(&small(), "hostile").expect("create a block")
}

/// The peer's second view of the same memory: `Block::open` on a duplicate of the fd.
fn open_copy(block: &Block) -> Result<Block, BlockError> {
    Block::open(block.fd().try_clone_to_owned().expect("dup"))
}

/// Writes `bytes` at `offset` of the block through the fd, not through any mapping.
fn poke(block: &Block, offset: u64, bytes: &[u8]) {
    let written = rustix::io::pwrite(block.fd(), bytes, offset).expect("pwrite");
    assert_eq!(written, bytes.len(), "short pwrite");
}

fn poke_u32(block: &Block, offset: u64, value: u32) {
    poke(block, offset, &value.to_le_bytes());
}

fn poke_u64(block: &Block, offset: u64, value: u64) {
    poke(block, offset, &value.to_le_bytes());
}

/// Offsets of the three words of a ring header (crate-private fields; pinned by the const
/// asserts beside `RingHeader`).
const HEAD: u64 = 0;
const TAIL: u64 = 128;
const WAITING: u64 = 256;
const SPACE_WAITING: u64 = 384;

fn slot_offset(ring: &RingRegion, index: u32) -> u64 {
    ring.offset
        + size_of::<RingHeader>() as u64
        + u64::from(index) * size_of::<RawDescriptor>() as u64
}

fn descriptor_bytes(d: &RawDescriptor) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
    put(offset_of!(RawDescriptor, session), &d.session.to_le_bytes());
    put(offset_of!(RawDescriptor, kind), &d.kind.to_le_bytes());
    put(offset_of!(RawDescriptor, flags), &d.flags.to_le_bytes());
    put(offset_of!(RawDescriptor, segment), &d.segment.to_le_bytes());
    put(offset_of!(RawDescriptor, len), &d.len.to_le_bytes());
    put(offset_of!(RawDescriptor, offset), &d.offset.to_le_bytes());
    put(offset_of!(RawDescriptor, aux), &d.aux.to_le_bytes());
    bytes
}

/// Plays a hostile producer: writes `entries` into the ring's slots from `start` and
/// publishes `start + entries.len()` as the tail, all through the fd.
fn forge_entries(block: &Block, ring: &RingRegion, start: u32, entries: &[RawDescriptor]) {
    for (i, d) in entries.iter().enumerate() {
        let index = start.wrapping_add(i as u32) & (ring.capacity - 1);
        poke(block, slot_offset(ring, index), &descriptor_bytes(d));
    }
    poke_u32(
        block,
        ring.offset + TAIL,
        start.wrapping_add(entries.len() as u32),
    );
}

/// Pops every forged entry (through the engine's mapping) and returns the copies.
fn pop_all(consumer: &mut Consumer<ipc_core::ShmRing>) -> Vec<RawDescriptor> {
    let mut all = Vec::new();
    while let Some(d) = consumer.pop().expect("indices are sane") {
        all.push(d);
    }
    all
}

fn sealed_memfd(size: u64, seals: SealFlags) -> std::os::fd::OwnedFd {
    let fd = rustix::fs::memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd");
    rustix::fs::ftruncate(&fd, size).expect("ftruncate");
    rustix::fs::fcntl_add_seals(&fd, seals).expect("seals");
    fd
}

// ===== the header =====

/// Byte offset and width of every header field, for poking.
fn header_fields() -> Vec<(&'static str, u64, usize)> {
    let ring = |name, base: usize| {
        [
            (name, base + offset_of!(RawRing, offset), 8),
            (name, base + offset_of!(RawRing, capacity), 4),
        ]
    };
    let arena = |name, base: usize| {
        [
            (name, base + offset_of!(RawArena, offset), 8),
            (name, base + offset_of!(RawArena, size), 8),
            (name, base + offset_of!(RawArena, min_block), 8),
        ]
    };
    let mut fields = vec![
        ("magic", offset_of!(RawHeader, magic), 8),
        ("layout_version", offset_of!(RawHeader, layout_version), 4),
        ("header_size", offset_of!(RawHeader, header_size), 4),
        ("total_size", offset_of!(RawHeader, total_size), 8),
        ("segment", offset_of!(RawHeader, segment), 4),
        ("descriptor_size", offset_of!(RawHeader, descriptor_size), 4),
        ("tx_tree_offset", offset_of!(RawHeader, tx_tree_offset), 8),
        ("tx_tree_len", offset_of!(RawHeader, tx_tree_len), 8),
    ];
    fields.extend(ring("submit", offset_of!(RawHeader, submit)));
    fields.extend(ring("deliver", offset_of!(RawHeader, deliver)));
    fields.extend(ring("release", offset_of!(RawHeader, release)));
    fields.extend(arena("tx", offset_of!(RawHeader, tx)));
    fields.extend(arena("rx", offset_of!(RawHeader, rx)));
    fields
        .into_iter()
        .map(|(name, at, width)| (name, at as u64, width))
        .collect()
}

fn poke_field(block: &Block, at: u64, width: usize, value: u64) {
    match width {
        4 => poke_u32(block, at, value as u32),
        8 => poke_u64(block, at, value),
        _ => unreachable!(),
    }
}

#[test]
fn garbage_headers_are_refused_by_open() {
    let good = Layout::compute(&small()).unwrap();
    let size = good.total_size;
    let h = |field: usize| field as u64;
    let submit = h(offset_of!(RawHeader, submit));
    let deliver = h(offset_of!(RawHeader, deliver));
    let release = h(offset_of!(RawHeader, release));
    let tx = h(offset_of!(RawHeader, tx));
    let rx = h(offset_of!(RawHeader, rx));
    let ring_offset = h(offset_of!(RawRing, offset));
    let ring_capacity = h(offset_of!(RawRing, capacity));
    let arena_offset = h(offset_of!(RawArena, offset));
    let arena_size = h(offset_of!(RawArena, size));
    let arena_min = h(offset_of!(RawArena, min_block));

    // (what, field offset, width, value, check)
    type Check = fn(&BlockError) -> bool;
    let header = |e: &BlockError| matches!(e, BlockError::Header(_));
    let cases: Vec<(&str, u64, usize, u64, Check)> = vec![
        ("magic zero", 0, 8, 0, |e| {
            matches!(e, BlockError::BadMagic { found: 0 })
        }),
        ("magic ones", 0, 8, u64::MAX, |e| {
            matches!(e, BlockError::BadMagic { found: u64::MAX })
        }),
        (
            "version",
            h(offset_of!(RawHeader, layout_version)),
            4,
            u64::from(LAYOUT_VERSION) + 1,
            |e| matches!(e, BlockError::Version { found, supported } if *found == LAYOUT_VERSION + 1 && *supported == LAYOUT_VERSION),
        ),
        (
            "total size one page larger",
            h(offset_of!(RawHeader, total_size)),
            8,
            size + 4096,
            |e| matches!(e, BlockError::SizeMismatch { .. }),
        ),
        (
            "total size huge",
            h(offset_of!(RawHeader, total_size)),
            8,
            u64::MAX,
            |e| {
                matches!(
                    e,
                    BlockError::SizeMismatch {
                        header: u64::MAX,
                        ..
                    }
                )
            },
        ),
        (
            "header size",
            h(offset_of!(RawHeader, header_size)),
            4,
            0,
            header,
        ),
        (
            "descriptor size",
            h(offset_of!(RawHeader, descriptor_size)),
            4,
            16,
            header,
        ),
        ("segment", h(offset_of!(RawHeader, segment)), 4, 1, header),
        ("submit capacity 0", submit + ring_capacity, 4, 0, header),
        ("submit capacity 3", submit + ring_capacity, 4, 3, header),
        (
            "submit capacity 2^31",
            submit + ring_capacity,
            4,
            1 << 31,
            header,
        ),
        ("submit over the header", submit + ring_offset, 8, 0, header),
        (
            "submit offset wraps",
            submit + ring_offset,
            8,
            u64::MAX - 4095,
            header,
        ),
        (
            "deliver overlaps submit",
            deliver + ring_offset,
            8,
            good.submit.offset,
            header,
        ),
        (
            "release misaligned",
            release + ring_offset,
            8,
            good.release.offset + 1,
            header,
        ),
        (
            "deliver capacity past the block",
            deliver + ring_capacity,
            4,
            1 << 20,
            header,
        ),
        (
            "tx tree past the end",
            h(offset_of!(RawHeader, tx_tree_offset)),
            8,
            size,
            header,
        ),
        (
            "tx tree empty",
            h(offset_of!(RawHeader, tx_tree_len)),
            8,
            0,
            header,
        ),
        (
            "tx tree length wraps",
            h(offset_of!(RawHeader, tx_tree_len)),
            8,
            u64::MAX,
            header,
        ),
        (
            "tx size not a power of two",
            tx + arena_size,
            8,
            3 << 15,
            header,
        ),
        ("tx size 1 TiB", tx + arena_size, 8, 1 << 40, header),
        ("tx min block 32", tx + arena_min, 8, 32, header),
        ("tx min block 0", tx + arena_min, 8, 0, header),
        (
            "tx overlaps its tree",
            tx + arena_offset,
            8,
            good.tx_tree_offset,
            header,
        ),
        ("rx at the very end", rx + arena_offset, 8, size, header),
        (
            "rx offset wraps",
            rx + arena_offset,
            8,
            u64::MAX - 4095,
            header,
        ),
        (
            "rx twice as large",
            rx + arena_size,
            8,
            good.rx.size * 2,
            header,
        ),
        (
            "rx min block above its size",
            rx + arena_min,
            8,
            good.rx.size * 2,
            header,
        ),
    ];
    for (what, at, width, value, check) in cases {
        let block = create();
        assert!(
            open_copy(&block).is_ok(),
            "{what}: the untouched block opens"
        );
        poke_field(&block, at, width, value);
        match open_copy(&block) {
            Ok(opened) => panic!("{what}: accepted {:?}", opened.layout()),
            Err(e) => assert!(check(&e), "{what}: wrong error {e:?}"),
        }
    }
}

#[test]
fn garbage_pages_and_files_are_refused() {
    // A whole header page of garbage.
    let block = create();
    poke(&block, 0, &[0xAB; 4096]);
    assert!(matches!(
        open_copy(&block),
        Err(BlockError::BadMagic {
            found: 0xABAB_ABAB_ABAB_ABAB
        })
    ));
    // Shorter than a header page.
    let fd = sealed_memfd(100, ipc_core::block::REQUIRED_SEALS);
    assert!(matches!(
        Block::open(fd),
        Err(BlockError::SizeMismatch { actual: 100, .. })
    ));
    // Empty.
    let fd = sealed_memfd(0, ipc_core::block::REQUIRED_SEALS);
    assert!(matches!(
        Block::open(fd),
        Err(BlockError::SizeMismatch { actual: 0, .. })
    ));
    // Missing a seal: a node could then truncate it (SIGBUS).
    for seals in [
        SealFlags::empty(),
        SealFlags::SHRINK,
        SealFlags::SHRINK | SealFlags::GROW,
        SealFlags::GROW | SealFlags::SEAL,
    ] {
        let fd = sealed_memfd(1 << 20, seals);
        assert!(
            matches!(Block::open(fd), Err(BlockError::NotSealed { .. })),
            "seals {seals:?} accepted"
        );
    }
}

/// The header is read once: garbage written after `open` changes nothing the opener uses
/// (Chromium CVE-2021-21198, a header checked and then read again).
#[test]
fn header_is_snapshotted_once() {
    let block = create();
    let opened = open_copy(&block).unwrap();
    let before = *opened.layout();
    poke(&block, 0, &[0xFF; 144]);
    assert_eq!(*opened.layout(), before);
    let mut p = Producer::new(opened.submit_ring());
    let mut c = Consumer::new(block.submit_ring());
    assert!(p.push(RawDescriptor::data(1, 64, 1)).unwrap());
    assert_eq!(c.pop().unwrap(), Some(RawDescriptor::data(1, 64, 1)));
    assert!(open_copy(&block).is_err(), "a new open sees the garbage");
}

/// Uses every region of a block that passed `open`: all must stay inside the block.
fn exercise(block: Block) {
    let layout = *block.layout();
    for region in [layout.submit, layout.deliver, layout.release] {
        let end = region.offset
            + size_of::<RingHeader>() as u64
            + u64::from(region.capacity) * size_of::<RawDescriptor>() as u64;
        assert!(end <= layout.total_size);
    }
    assert!(layout.tx.offset + layout.tx.size <= layout.total_size);
    assert!(layout.rx.offset + layout.rx.size <= layout.total_size);
    let block = Arc::new(block);
    for ring in [
        block.submit_ring(),
        block.deliver_ring(),
        block.release_ring(),
    ] {
        let mut p = Producer::new(ring.clone());
        let mut c = Consumer::new(ring);
        // Fresh rings of a fresh block: both sides agree, whatever the layout says.
        assert_eq!(p.push(RawDescriptor::data(1, 0, 1)), Ok(true));
        assert_eq!(c.pop(), Ok(Some(RawDescriptor::data(1, 0, 1))));
    }
    let rx_len = u32::try_from(layout.rx.size).unwrap_or(u32::MAX);
    if let Ok(view) = block.rx_view(0, rx_len) {
        let _ = view.as_ref().iter().fold(0u8, |a, b| a ^ b);
    }
    let tx = block.take_tx_arena().expect("tx arena");
    if let Ok(mut loan) = tx.alloc(u32::try_from(layout.tx.size).unwrap_or(u32::MAX)) {
        loan.fill(0x5A);
    }
}

/// An edit of one header field: a hostile value, or a plausible change of the real one
/// (scaled or moved by pages), which `open` often accepts, so `exercise` runs too.
#[derive(Clone, Debug)]
enum Edit {
    Set(u64),
    Shl(u32),
    Shr(u32),
    AddPages(i64),
}

impl Edit {
    fn apply(&self, old: u64) -> u64 {
        match *self {
            Self::Set(value) => value,
            Self::Shl(k) => old << k,
            Self::Shr(k) => old >> k,
            Self::AddPages(pages) => old.wrapping_add_signed(pages * 4096),
        }
    }
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => interesting_value(&Layout::compute(&small()).unwrap()).prop_map(Edit::Set),
        1 => (1u32..4).prop_map(Edit::Shl),
        2 => (1u32..4).prop_map(Edit::Shr),
        2 => (-3i64..=3).prop_map(Edit::AddPages),
    ]
}

fn peek_field(block: &Block, at: u64, width: usize) -> u64 {
    let mut bytes = [0u8; 8];
    rustix::io::pread(block.fd(), &mut bytes[..width], at).expect("pread");
    u64::from_le_bytes(bytes)
}

fn interesting_value(good: &Layout) -> impl Strategy<Value = u64> + use<> {
    let near = vec![
        good.total_size,
        good.submit.offset,
        good.deliver.offset,
        good.release.offset,
        good.tx_tree_offset,
        good.tx.offset,
        good.rx.offset,
        good.tx.size,
    ];
    prop_oneof![
        any::<u64>(),
        (0u32..64).prop_map(|shift| 1u64 << shift),
        (0u32..64).prop_map(|shift| (1u64 << shift).wrapping_sub(1)),
        (prop::sample::select(near), -4i64..=4)
            .prop_map(|(base, pages)| { base.wrapping_add_signed(pages * 4096) }),
        Just(0u64),
        Just(u64::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Up to four header fields edited: `open` returns a typed error, or a layout whose
    /// every region lies inside the block and works; it never panics.
    #[test]
    fn corrupted_header_fields_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), edit_strategy()), 1..=4)
    ) {
        let fields = header_fields();
        let block = create();
        for (index, edit) in &edits {
            let (_, at, width) = fields[index.index(fields.len())];
            let value = edit.apply(peek_field(&block, at, width));
            poke_field(&block, at, width, value);
        }
        if let Ok(opened) = open_copy(&block) {
            exercise(opened);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes anywhere in the header: the same.
    #[test]
    fn random_header_bytes_never_panic(
        edits in prop::collection::vec((0u64..size_of::<RawHeader>() as u64, any::<u8>()), 1..=8)
    ) {
        let block = create();
        for (at, byte) in &edits {
            poke(&block, *at, &[*byte]);
        }
        if let Ok(opened) = open_copy(&block) {
            exercise(opened);
        }
    }
}

// ===== ring indices =====

#[test]
fn tail_past_capacity_is_refused() {
    let block = create();
    let ring = block.layout().submit;
    let mut engine = Consumer::new(block.submit_ring());
    for tail in [ring.capacity + 1, u32::MAX, 1 << 31] {
        poke_u32(&block, ring.offset + TAIL, tail);
        assert_eq!(
            engine.pop(),
            Err(RingError::CorruptIndex {
                which: "tail",
                found: tail,
                own: 0,
                capacity: ring.capacity
            })
        );
        assert!(engine.available().is_err());
        assert!(engine.prepare_sleep().is_err());
    }
    // Exactly full is fine (the forged slots are zeros: a default descriptor).
    poke_u32(&block, ring.offset + TAIL, ring.capacity);
    assert_eq!(engine.available(), Ok(ring.capacity));
}

#[test]
fn tail_moving_backwards_is_refused() {
    let block = create();
    let node = open_copy(&block).unwrap();
    let ring = block.layout().submit;
    let mut producer = Producer::new(node.submit_ring());
    let mut engine = Consumer::new(block.submit_ring());
    for i in 0..5 {
        assert!(producer.push(RawDescriptor::data(1, i * 64, 1)).unwrap());
    }
    assert_eq!(engine.available(), Ok(5));
    assert_eq!(engine.pop().unwrap(), Some(RawDescriptor::data(1, 0, 1)));
    poke_u32(&block, ring.offset + TAIL, 2);
    assert_eq!(
        engine.available(),
        Err(RingError::CorruptIndex {
            which: "tail",
            found: 2,
            own: 1,
            capacity: ring.capacity
        })
    );
    // Behind the consumer's own head: a wrap-around to "almost 2^32 entries".
    poke_u32(&block, ring.offset + TAIL, 0);
    assert!(matches!(
        engine.available(),
        Err(RingError::CorruptIndex { which: "tail", .. })
    ));
}

#[test]
fn consumer_starting_on_garbage_indices_is_refused() {
    let block = create();
    let ring = block.layout().release;
    poke_u32(&block, ring.offset + HEAD, 0xFFFF_FFF0);
    poke_u32(&block, ring.offset + TAIL, 5);
    let mut engine = Consumer::new(block.release_ring());
    assert!(matches!(
        engine.pop(),
        Err(RingError::CorruptIndex { which: "tail", .. })
    ));
    // A producer starting on impossible indices starts from zero rather than trusting them,
    // and then notices the consumer's garbage head.
    let mut producer = Producer::new(block.release_ring());
    assert!(matches!(
        producer.free(),
        Err(RingError::CorruptIndex { which: "head", .. })
    ));
}

#[test]
fn head_past_tail_is_refused() {
    let block = create();
    let ring = block.layout().deliver;
    let mut engine = Producer::new(block.deliver_ring());
    poke_u32(&block, ring.offset + HEAD, 7);
    assert_eq!(
        engine.free(),
        Err(RingError::CorruptIndex {
            which: "head",
            found: 7,
            own: 0,
            capacity: ring.capacity
        })
    );
    // A push that needs to look at the head (the ring is full by the producer's count) fails
    // with nothing pushed.
    poke_u32(&block, ring.offset + HEAD, 0);
    let fill: Vec<_> = (0..ring.capacity)
        .map(|i| RawDescriptor::control(kind::CREDIT, i, 1))
        .collect();
    assert_eq!(engine.push_batch(&fill), Ok(ring.capacity as usize));
    poke_u32(&block, ring.offset + HEAD, ring.capacity + 1);
    assert!(matches!(
        engine.push(RawDescriptor::control(kind::CREDIT, 99, 1)),
        Err(RingError::CorruptIndex { which: "head", .. })
    ));
    assert!(engine.prepare_wait_space().is_err());
    // The tail the producer published is still its own.
    let mut tail = [0u8; 4];
    rustix::io::pread(block.fd(), &mut tail, ring.offset + TAIL).unwrap();
    assert_eq!(u32::from_le_bytes(tail), ring.capacity);
}

#[test]
fn head_moving_backwards_is_refused() {
    let block = create();
    let node = open_copy(&block).unwrap();
    let ring = block.layout().deliver;
    let mut engine = Producer::new(block.deliver_ring());
    let mut node_consumer = Consumer::new(node.deliver_ring());
    for i in 0..4 {
        assert!(
            engine
                .push(RawDescriptor::control(kind::FIN, i, 0))
                .unwrap()
        );
    }
    for _ in 0..3 {
        assert!(node_consumer.pop().unwrap().is_some());
    }
    assert_eq!(engine.free(), Ok(ring.capacity - 1));
    poke_u32(&block, ring.offset + HEAD, 1);
    assert_eq!(
        engine.free(),
        Err(RingError::CorruptIndex {
            which: "head",
            found: 1,
            own: 4,
            capacity: ring.capacity
        })
    );
}

/// Each side keeps its own index privately: a peer scribbling over it changes nothing for
/// that side (only what the peer itself then sees).
#[test]
fn scribbled_own_index_is_ignored() {
    let block = create();
    let node = open_copy(&block).unwrap();
    let ring = block.layout().submit;
    let mut producer = Producer::new(node.submit_ring());
    let mut engine = Consumer::new(block.submit_ring());
    for i in 0..6 {
        assert!(
            producer
                .push(RawDescriptor::control(kind::FIN, i, 0))
                .unwrap()
        );
    }
    assert_eq!(engine.pop().unwrap().unwrap().session, 0);
    assert_eq!(engine.pop().unwrap().unwrap().session, 1);
    // The node rewinds the engine's head: the engine neither re-reads nor skips anything.
    poke_u32(&block, ring.offset + HEAD, 0);
    for i in 2..6 {
        assert_eq!(engine.pop().unwrap().unwrap().session, i);
    }
    assert_eq!(engine.pop(), Ok(None));
    // And the engine scribbling over the node's tail does not move the node: its next push
    // publishes its own count again.
    poke_u32(&block, ring.offset + TAIL, 1000);
    assert!(
        producer
            .push(RawDescriptor::control(kind::FIN, 6, 0))
            .unwrap()
    );
    let mut fresh = [0u8; 4];
    rustix::io::pread(block.fd(), &mut fresh, ring.offset + TAIL).unwrap();
    assert_eq!(u32::from_le_bytes(fresh), 7);
    assert_eq!(engine.pop().unwrap().unwrap().session, 6);
}

#[test]
fn garbage_waiting_words_cost_at_most_a_doorbell() {
    let block = create();
    let ring = block.layout().submit;
    let node = open_copy(&block).unwrap();
    let mut producer = Producer::new(node.submit_ring());
    let mut engine = Consumer::new(block.submit_ring());
    poke_u32(&block, ring.offset + WAITING, 0xDEAD_BEEF);
    assert!(
        producer
            .push(RawDescriptor::control(kind::FIN, 1, 0))
            .unwrap()
    );
    assert!(producer.needs_wake(), "a flag is a flag");
    assert!(!producer.needs_wake(), "once per value");
    poke_u32(&block, ring.offset + SPACE_WAITING, u32::MAX);
    assert!(engine.pop().unwrap().is_some());
    assert!(engine.needs_space_wake());
    assert!(!engine.needs_space_wake());
}

// ===== descriptors =====

#[test]
fn hostile_submissions_are_violations() {
    let block = create();
    let receiver = create();
    let layout = *block.layout();
    let tx = layout.tx.bounds();
    let size = layout.tx.size;
    let d = RawDescriptor::data;
    let cases: Vec<(RawDescriptor, Result<Submission, Violation>)> = vec![
        (
            d(1, size, 1),
            Err(Violation::OutOfBounds {
                offset: size,
                len: 1,
                size,
            }),
        ),
        (
            d(1, u64::MAX - 10, u32::MAX),
            Err(Violation::OutOfBounds {
                offset: u64::MAX - 10,
                len: u64::from(u32::MAX),
                size,
            }),
        ),
        (
            d(1, u64::MAX - 63, 64),
            Err(Violation::OutOfBounds {
                offset: u64::MAX - 63,
                len: 64,
                size,
            }),
        ),
        (
            d(1, size - 64, 65),
            Err(Violation::OutOfBounds {
                offset: size - 64,
                len: 65,
                size,
            }),
        ),
        (
            d(1, 0, u32::MAX),
            Err(Violation::OutOfBounds {
                offset: 0,
                len: u64::from(u32::MAX),
                size,
            }),
        ),
        (
            d(1, 65, 1),
            Err(Violation::Misaligned {
                offset: 65,
                align: 64,
            }),
        ),
        (
            d(1, 64, 0),
            Err(Violation::OutOfBounds {
                offset: 64,
                len: 0,
                size,
            }),
        ),
        (
            RawDescriptor::control(99, 1, 0),
            Err(Violation::UnknownKind { kind: 99 }),
        ),
        (
            RawDescriptor::offset_only(kind::RELEASE, 0),
            Err(Violation::UnknownKind {
                kind: kind::RELEASE,
            }),
        ),
        (
            RawDescriptor {
                flags: 0x8000,
                ..d(1, 0, 1)
            },
            Err(Violation::Flags { flags: 0x8000 }),
        ),
        // A `DATA` entry naming a segment is a hand-off: well-formed here (whether the
        // segment was lent to the node is the engine's table to say), but only at offset 0
        // and with a byte at least.
        (
            RawDescriptor {
                segment: u32::MAX,
                ..d(1, 0, 1)
            },
            Ok(Submission::Segment {
                session: 1,
                segment: u32::MAX,
                len: 1,
            }),
        ),
        (
            RawDescriptor {
                segment: 5,
                ..d(1, 64, 1)
            },
            Err(Violation::SegmentSpan {
                segment: 5,
                offset: 64,
                len: 1,
            }),
        ),
        (
            RawDescriptor {
                segment: 5,
                ..d(1, 0, 0)
            },
            Err(Violation::SegmentSpan {
                segment: 5,
                offset: 0,
                len: 0,
            }),
        ),
        (
            RawDescriptor {
                segment: 5,
                ..RawDescriptor::frame(1, 0, 8, 1)
            },
            Err(Violation::Segment { segment: 5 }),
        ),
        // The control: a good entry passes.
        (
            d(7, size - 64, 64),
            Ok(Submission::Data {
                session: 7,
                offset: size - 64,
                len: 64,
            }),
        ),
    ];
    let ring = layout.submit;
    let mut engine = Consumer::new(block.submit_ring());
    let mut start = 0u32;
    for chunk in cases.chunks(ring.capacity as usize) {
        let raws: Vec<_> = chunk.iter().map(|(raw, _)| *raw).collect();
        forge_entries(&block, &ring, start, &raws);
        start = start.wrapping_add(raws.len() as u32);
        let popped = pop_all(&mut engine);
        assert_eq!(popped, raws, "forged bytes round-trip through the slots");
        for (raw, (_, want)) in popped.iter().zip(chunk) {
            let got = validate_submit(raw, &tx);
            assert_eq!(got, *want, "{raw:?}");
            // Defence in depth: the engine's copy refuses the same ranges by itself.
            if matches!(want, Err(Violation::OutOfBounds { .. })) && raw.len > 0 {
                assert!(matches!(
                    copy_payload(&block, raw.offset, &receiver, 0, raw.len),
                    Err(Violation::OutOfBounds { .. })
                ));
            }
        }
    }
}

#[test]
fn hostile_releases_are_violations() {
    let block = create();
    let layout = *block.layout();
    let rx = layout.rx.bounds();
    let size = layout.rx.size;
    let release = |offset| RawDescriptor::offset_only(kind::RELEASE, offset);
    let cases: Vec<(RawDescriptor, Result<u64, Violation>)> = vec![
        (
            release(size),
            Err(Violation::OutOfBounds {
                offset: size,
                len: 1,
                size,
            }),
        ),
        (
            release(u64::MAX),
            Err(Violation::OutOfBounds {
                offset: u64::MAX,
                len: 1,
                size,
            }),
        ),
        (
            release(100),
            Err(Violation::Misaligned {
                offset: 100,
                align: 64,
            }),
        ),
        (
            RawDescriptor::data(1, 0, 1),
            Err(Violation::UnknownKind { kind: kind::DATA }),
        ),
        (
            RawDescriptor {
                flags: 1,
                ..release(0)
            },
            Err(Violation::Flags { flags: 1 }),
        ),
        (
            RawDescriptor {
                segment: 2,
                ..release(0)
            },
            Err(Violation::Segment { segment: 2 }),
        ),
        (release(size - 64), Ok(size - 64)),
    ];
    let ring = layout.release;
    let raws: Vec<_> = cases.iter().map(|(raw, _)| *raw).collect();
    forge_entries(&block, &ring, 0, &raws);
    let mut engine = Consumer::new(block.release_ring());
    let popped = pop_all(&mut engine);
    assert_eq!(popped, raws);
    for (raw, (_, want)) in popped.iter().zip(&cases) {
        assert_eq!(validate_release(raw, &rx), *want, "{raw:?}");
    }
}

/// The node side: the engine is trusted, but a corrupted deliver entry still cannot make the
/// node read or free outside its arenas.
#[test]
fn hostile_deliveries_are_violations() {
    let engine_side = create();
    let node = Arc::new(open_copy(&engine_side).unwrap());
    let layout = *node.layout();
    let (rx, tx) = (layout.rx.bounds(), layout.tx.bounds());
    let cases: Vec<(RawDescriptor, Result<Delivery, Violation>)> = vec![
        (
            RawDescriptor::data(1, layout.rx.size, 1),
            Err(Violation::OutOfBounds {
                offset: layout.rx.size,
                len: 1,
                size: layout.rx.size,
            }),
        ),
        (
            RawDescriptor::offset_only(kind::TX_DONE, u64::MAX),
            Err(Violation::OutOfBounds {
                offset: u64::MAX,
                len: 1,
                size: layout.tx.size,
            }),
        ),
        (
            RawDescriptor::control(kind::CREDIT, 1, 0),
            Err(Violation::Credit { count: 0 }),
        ),
        (
            RawDescriptor::control(kind::CREDIT, 1, u64::MAX),
            Err(Violation::Credit { count: u64::MAX }),
        ),
        (
            RawDescriptor::control(0, 1, 0),
            Err(Violation::UnknownKind { kind: 0 }),
        ),
        (
            RawDescriptor::control(kind::CLOSED, 4, close_reason::PEER_DISCONNECTED),
            Ok(Delivery::Closed {
                session: 4,
                reason: close_reason::PEER_DISCONNECTED,
            }),
        ),
    ];
    let ring = layout.deliver;
    let raws: Vec<_> = cases.iter().map(|(raw, _)| *raw).collect();
    forge_entries(&engine_side, &ring, 0, &raws);
    let mut consumer = Consumer::new(node.deliver_ring());
    let popped = pop_all(&mut consumer);
    assert_eq!(popped, raws);
    for (raw, (_, want)) in popped.iter().zip(&cases) {
        assert_eq!(validate_deliver(raw, &rx, &tx), *want, "{raw:?}");
    }
    // Views and frees with hostile offsets are refused on their own too.
    for (offset, len) in [
        (layout.rx.size, 1),
        (layout.rx.size - 1, 2),
        (u64::MAX, u32::MAX),
        (0, u32::MAX),
    ] {
        assert!(matches!(
            node.rx_view(offset, len),
            Err(Violation::OutOfBounds { .. })
        ));
    }
    let tx_arena = node.take_tx_arena().unwrap();
    for offset in [0, 64, u64::MAX, layout.tx.size] {
        assert_eq!(
            tx_arena.complete(offset),
            Err(FreeError::NotAllocated { offset })
        );
    }
}
