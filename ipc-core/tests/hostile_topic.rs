//! Hostile topic entries written into a REAL block's rings, checked against a REAL broadcast
//! segment and the engine's slot table (the topic side of `hostile_block.rs`).
//!
//! A subscriber controls every byte of its release ring. These tests play that subscriber:
//! they write `TOPIC_RELEASE` entries through the memfd (`pwrite`, landing in the pages the
//! engine has mapped), let the engine pop them, and check that `validate_topic_release`
//! answers out-of-range values with a typed `Violation`, and that releases of slots the
//! subscriber does not hold (never delivered, released twice, an offset naming no slot) are
//! a typed `SlotError` that leaves every other subscriber's holds, and the bytes they read,
//! untouched. The deliver side (a corrupted engine entry) must never make the node read
//! outside its read-only mapping. Each mirrors the `descriptor` fuzz target.

use std::mem::{offset_of, size_of};

use ipc_core::broadcast::{BroadcastSegment, ReadOnlySegment, SlotError, Slots};
use ipc_core::descriptor::{kind, topic_close_reason};
use ipc_core::layout::RingRegion;
use ipc_core::ring::RingHeader;
use ipc_core::{
    ArenaBounds, Block, BlockConfig, Consumer, RawDescriptor, TopicDelivery, TopicRelease,
    Violation, validate_topic_deliver, validate_topic_release,
};

const SEGMENT: u64 = 1 << 16;
const MIN: u64 = 64;
const TOPIC: u32 = 3;
const TAIL: u64 = 128;

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

fn poke(block: &Block, offset: u64, bytes: &[u8]) {
    let written = rustix::io::pwrite(block.fd(), bytes, offset).expect("pwrite");
    assert_eq!(written, bytes.len(), "short pwrite");
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

/// Plays the hostile producer of `ring`: writes `entries` from index `start` and publishes
/// the new tail, all through the fd.
fn forge(block: &Block, ring: &RingRegion, start: u32, entries: &[RawDescriptor]) -> u32 {
    for (i, d) in entries.iter().enumerate() {
        let index = start.wrapping_add(i as u32) & (ring.capacity - 1);
        let at = ring.offset
            + size_of::<RingHeader>() as u64
            + u64::from(index) * size_of::<RawDescriptor>() as u64;
        poke(block, at, &descriptor_bytes(d));
    }
    let tail = start.wrapping_add(entries.len() as u32);
    poke(block, ring.offset + TAIL, &tail.to_le_bytes());
    tail
}

fn pop_all(consumer: &mut Consumer<ipc_core::ShmRing>) -> Vec<RawDescriptor> {
    let mut all = Vec::new();
    while let Some(d) = consumer.pop().expect("indices are sane") {
        all.push(d);
    }
    all
}

fn segment_bounds(topic: u32) -> Option<ArenaBounds> {
    (topic == TOPIC).then_some(ArenaBounds {
        size: SEGMENT,
        align: MIN,
    })
}

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn hostile_topic_releases_are_violations() {
    let block = Block::create(&small(), "subscriber").expect("block");
    let ring = block.layout().release;
    let mut engine = Consumer::new(block.release_ring());
    let release = |offset| RawDescriptor::topic_release(1, TOPIC, offset);
    let cases: Vec<(RawDescriptor, Result<TopicRelease, Violation>)> = vec![
        (
            release(4096),
            Ok(TopicRelease {
                subscription: 1,
                topic: TOPIC,
                offset: 4096,
            }),
        ),
        (
            release(SEGMENT),
            Err(Violation::OutOfBounds {
                offset: SEGMENT,
                len: 1,
                size: SEGMENT,
            }),
        ),
        (
            release(u64::MAX),
            Err(Violation::OutOfBounds {
                offset: u64::MAX,
                len: 1,
                size: SEGMENT,
            }),
        ),
        (
            release(65),
            Err(Violation::Misaligned {
                offset: 65,
                align: MIN,
            }),
        ),
        (
            RawDescriptor::topic_release(1, TOPIC + 1, 0),
            Err(Violation::Segment { segment: TOPIC + 1 }),
        ),
        (
            RawDescriptor::topic_release(1, u32::MAX, 0),
            Err(Violation::Segment { segment: u32::MAX }),
        ),
        (
            RawDescriptor {
                flags: 0x8000,
                ..release(0)
            },
            Err(Violation::Flags { flags: 0x8000 }),
        ),
        (
            RawDescriptor {
                kind: kind::TOPIC_DATA,
                ..release(0)
            },
            Err(Violation::UnknownKind {
                kind: kind::TOPIC_DATA,
            }),
        ),
        (
            RawDescriptor {
                kind: u16::MAX,
                ..release(0)
            },
            Err(Violation::UnknownKind { kind: u16::MAX }),
        ),
    ];
    let entries: Vec<RawDescriptor> = cases.iter().map(|(d, _)| *d).collect();
    // Two rounds, so the forged entries also wrap around the 16-slot ring.
    let mut start = 0;
    for _ in 0..2 {
        start = forge(&block, &ring, start, &entries);
        let popped = pop_all(&mut engine);
        assert_eq!(popped, entries, "the engine reads exactly what was forged");
        for (raw, (_, want)) in popped.iter().zip(&cases) {
            assert_eq!(
                &validate_topic_release(raw, segment_bounds),
                want,
                "{raw:?}"
            );
        }
    }
}

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn lying_releases_hurt_only_the_liar() {
    // The engine's side: a segment, its slots, two messages. Subscriber 1 got the first one,
    // subscriber 2 got both.
    let segment = BroadcastSegment::create(SEGMENT, "topic").expect("segment");
    let mut slots = Slots::<u32>::new(SEGMENT, MIN).expect("slots");
    let first = slots.alloc(5).unwrap();
    segment.write(first.offset, b"first").unwrap();
    let second = slots.alloc(6).unwrap();
    segment.write(second.offset, b"second").unwrap();
    slots.hold(first.offset, 1).unwrap();
    slots.hold(first.offset, 2).unwrap();
    slots.hold(second.offset, 2).unwrap();
    slots.commit(first.offset).unwrap();
    slots.commit(second.offset).unwrap();
    let honest = ReadOnlySegment::open(segment.fd().try_clone_to_owned().unwrap(), SEGMENT)
        .expect("subscriber 2 maps it");

    // Subscriber 1's release ring, written by a liar.
    let block = Block::create(&small(), "liar").expect("block");
    let ring = block.layout().release;
    let mut engine = Consumer::new(block.release_ring());
    let never_delivered = RawDescriptor::topic_release(1, TOPIC, second.offset);
    let honest_release = RawDescriptor::topic_release(1, TOPIC, first.offset);
    let no_slot = RawDescriptor::topic_release(1, TOPIC, 32 * MIN);
    forge(
        &block,
        &ring,
        0,
        &[never_delivered, honest_release, honest_release, no_slot],
    );
    let mut outcomes = Vec::new();
    for raw in pop_all(&mut engine) {
        let valid = validate_topic_release(&raw, segment_bounds).expect("in bounds");
        outcomes.push(slots.release(valid.subscription, valid.offset));
    }
    assert_eq!(
        outcomes,
        vec![
            Err(SlotError::NotHeld {
                offset: second.offset
            }),
            Ok(false),
            Err(SlotError::NotHeld {
                offset: first.offset
            }),
            Err(SlotError::NoSlot { offset: 32 * MIN }),
        ]
    );
    // The engine would now close subscriber 1 and release what it still holds: nothing.
    assert!(slots.release_all(1).is_empty());
    // Subscriber 2 is untouched: both slots still held by it, bytes intact.
    assert_eq!(slots.holders(first.offset), Some(1));
    assert_eq!(slots.holders(second.offset), Some(1));
    assert_eq!(honest.view(first.offset, 5).unwrap().as_ref(), b"first");
    assert_eq!(honest.view(second.offset, 6).unwrap().as_ref(), b"second");
    assert_eq!(slots.release(2, first.offset), Ok(true));
    assert_eq!(slots.release(2, second.offset), Ok(true));
    assert_eq!(slots.stats().arena.in_use, 0);
}

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn corrupted_topic_deliveries_never_read_outside_the_segment() {
    // The node's side: a deliver ring with garbage topic entries (as if the engine's memory
    // were corrupted), validated against the segment the node mapped.
    let segment = BroadcastSegment::create(SEGMENT, "topic").expect("segment");
    segment.write(SEGMENT - 64, &[7u8; 64]).unwrap();
    let mapped =
        ReadOnlySegment::open(segment.fd().try_clone_to_owned().unwrap(), SEGMENT).expect("map");
    let block = Block::create(&small(), "node").expect("block");
    let ring = block.layout().deliver;
    let mut node = Consumer::new(block.deliver_ring());
    let data = |offset, len| RawDescriptor::topic_data(1, TOPIC, offset, len, 9);
    let cases: Vec<(RawDescriptor, Result<TopicDelivery, Violation>)> = vec![
        (
            data(SEGMENT - 64, 64),
            Ok(TopicDelivery::Data {
                subscription: 1,
                topic: TOPIC,
                offset: SEGMENT - 64,
                len: 64,
                seq: 9,
            }),
        ),
        (
            data(SEGMENT - 64, 65),
            Err(Violation::OutOfBounds {
                offset: SEGMENT - 64,
                len: 65,
                size: SEGMENT,
            }),
        ),
        (
            data(u64::MAX - 63, 64),
            Err(Violation::OutOfBounds {
                offset: u64::MAX - 63,
                len: 64,
                size: SEGMENT,
            }),
        ),
        (
            data(0, u32::MAX),
            Err(Violation::OutOfBounds {
                offset: 0,
                len: u64::from(u32::MAX),
                size: SEGMENT,
            }),
        ),
        (
            RawDescriptor::topic_data(1, 77, 0, 1, 0),
            Err(Violation::Segment { segment: 77 }),
        ),
        (
            RawDescriptor::control(kind::TOPIC_LAGGED, 1, 0),
            Err(Violation::Lagged { count: 0 }),
        ),
        (
            RawDescriptor {
                segment: 5,
                ..RawDescriptor::control(kind::TOPIC_LAGGED, 1, 3)
            },
            Err(Violation::Segment { segment: 5 }),
        ),
        (
            RawDescriptor::control(kind::TOPIC_CLOSED, 1, topic_close_reason::UNTETHERED),
            Ok(TopicDelivery::Closed {
                subscription: 1,
                reason: topic_close_reason::UNTETHERED,
            }),
        ),
        (
            RawDescriptor::topic_release(1, TOPIC, 0),
            Err(Violation::UnknownKind {
                kind: kind::TOPIC_RELEASE,
            }),
        ),
    ];
    let entries: Vec<RawDescriptor> = cases.iter().map(|(d, _)| *d).collect();
    forge(&block, &ring, 0, &entries);
    for (raw, (_, want)) in pop_all(&mut node).iter().zip(&cases) {
        let got = validate_topic_deliver(raw, segment_bounds);
        assert_eq!(&got, want, "{raw:?}");
        if let Ok(TopicDelivery::Data { offset, len, .. }) = got {
            assert_eq!(mapped.view(offset, len).unwrap().as_ref(), &[7u8; 64]);
        }
        // Even unvalidated, the mapping refuses every out-of-range view.
        if got.is_err() && raw.kind == kind::TOPIC_DATA && raw.segment == TOPIC {
            assert!(mapped.view(raw.offset, raw.len).is_err(), "{raw:?}");
        }
    }
}
