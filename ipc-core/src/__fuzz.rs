//! Entry points for the fuzz targets in `fuzz/` (one line each there). Not public API.

use crate::descriptor::{ArenaBounds, RawDescriptor};
use crate::layout::{Layout, RawHeader};

fn descriptor_from(data: &[u8]) -> Option<RawDescriptor> {
    let b = data.get(..32)?;
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
    Some(RawDescriptor {
        session: u32_at(0),
        kind: u16_at(4),
        flags: u16_at(6),
        segment: u32_at(8),
        len: u32_at(12),
        offset: u64_at(16),
        aux: u64_at(24),
    })
}

/// Parses arbitrary bytes as node and engine control frames, to the end of the buffer. Every
/// frame that decodes must encode back to exactly the bytes it came from (the encoding is
/// canonical, so a decoder that accepts two spellings of one frame is a bug).
pub fn control_msg(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((frame, used))) = crate::control::decode_node_frame(&data[at..]) {
        assert_eq!(frame.encode(), &data[at..at + used], "{frame:?}");
        at += used;
    }
    if let Ok(Some((frame, used))) = crate::control::decode_engine_frame(data) {
        assert_eq!(frame.encode(), &data[..used], "{frame:?}");
    }
}

/// Validates arbitrary bytes as descriptors of every ring.
pub fn descriptor(data: &[u8]) {
    let bounds = ArenaBounds {
        size: 1 << 20,
        align: 64,
    };
    for chunk in data.chunks(32) {
        if let Some(raw) = descriptor_from(chunk) {
            let _ = crate::descriptor::validate_submit(&raw, &bounds);
            let _ = crate::descriptor::validate_release(&raw, &bounds);
            let _ = crate::descriptor::validate_deliver(&raw, &bounds, &bounds);
            let segment = |topic: u32| (topic < 4).then_some(bounds);
            let _ = crate::descriptor::validate_topic_release(&raw, segment);
            let _ = crate::descriptor::validate_topic_deliver(&raw, segment);
        }
    }
}

/// Validates arbitrary bytes as a block header against a size taken from the input.
pub fn header(data: &[u8]) {
    if data.len() < 8 + size_of::<RawHeader>() {
        return;
    }
    let actual = u64::from_le_bytes(data[..8].try_into().expect("8"));
    let mut raw = RawHeader::default();
    let bytes = &data[8..8 + size_of::<RawHeader>()];
    // Field by field, so no unsafe transmute is needed.
    let mut words = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8")));
    let mut next = || words.next().unwrap_or(0);
    raw.magic = next();
    let w = next();
    raw.layout_version = w as u32;
    raw.header_size = (w >> 32) as u32;
    raw.total_size = next();
    let w = next();
    raw.segment = w as u32;
    raw.descriptor_size = (w >> 32) as u32;
    raw.submit.offset = next();
    raw.submit.capacity = next() as u32;
    raw.deliver.offset = next();
    raw.deliver.capacity = next() as u32;
    raw.release.offset = next();
    raw.release.capacity = next() as u32;
    raw.tx_tree_offset = next();
    raw.tx_tree_len = next();
    raw.tx.offset = next();
    raw.tx.size = next();
    raw.tx.min_block = next();
    raw.rx.offset = next();
    raw.rx.size = next();
    raw.rx.min_block = next();
    let _ = Layout::from_header(&raw, actual);
}

/// Drives a consumer over a heap ring whose indices and slots come from the input.
pub fn ring_drain(data: &[u8]) {
    use std::sync::Arc;

    use crate::ring::{Consumer, HeapRing, Producer};
    let ring = Arc::new(HeapRing::new(8));
    let mut consumer = Consumer::new(ring.clone());
    let mut producer = Producer::new(ring);
    let bounds = ArenaBounds {
        size: 1 << 16,
        align: 64,
    };
    for chunk in data.chunks(33) {
        let Some(raw) = descriptor_from(chunk) else {
            break;
        };
        match chunk.get(32).copied().unwrap_or(0) % 3 {
            0 => {
                let _ = producer.push(raw);
            }
            1 => {
                if let Ok(Some(d)) = consumer.pop() {
                    let _ = crate::descriptor::validate_submit(&d, &bounds);
                }
            }
            _ => {
                let _ = consumer.prepare_sleep();
                let _ = producer.needs_wake();
                consumer.woke();
            }
        }
    }
}

/// Parses arbitrary bytes as a frame (the first byte is the declared record count, the rest
/// the frame): the engine's scan and the receiver's iterator must agree on every frame, the
/// records of an accepted frame must tile it, and writing them again must give back the very
/// same bytes.
pub fn frame(data: &[u8]) {
    let Some((&declared, frame)) = data.split_first() else {
        return;
    };
    let declared = u64::from(declared);
    let scanned = crate::frame::scan_slice(frame, declared);
    let records: Vec<_> = crate::frame::Records::new(frame).collect();
    let good: Vec<_> = records.iter().filter_map(|r| r.clone().ok()).collect();
    let failed = records.iter().any(Result::is_err);
    match scanned {
        Ok(count) => {
            assert!(!failed, "{records:?}");
            assert_eq!(good.len() as u64, u64::from(count));
            assert_eq!(u64::from(count), declared);
            let mut end = 0;
            let mut rebuilt = vec![0u8; frame.len()];
            for range in &good {
                assert_eq!(range.start, end + 4);
                let body = crate::frame::reserve_record(&mut rebuilt, end, range.len())
                    .expect("room for every record");
                rebuilt[body.clone()].copy_from_slice(&frame[range.clone()]);
                end = body.end;
            }
            assert_eq!(end, frame.len());
            assert_eq!(rebuilt, frame);
        }
        Err(crate::frame::FrameError::Count { found, .. }) => {
            assert!(!failed, "{records:?}");
            assert_eq!(good.len() as u64, u64::from(found));
        }
        Err(_) => assert!(failed, "{records:?}"),
    }
    for range in &good {
        assert!(range.end <= frame.len());
    }
    if let Ok(len) = u32::try_from(frame.len()) {
        let raw = RawDescriptor {
            session: 1,
            kind: crate::descriptor::kind::FRAME,
            len,
            offset: 0,
            aux: declared,
            ..RawDescriptor::default()
        };
        let bounds = ArenaBounds {
            size: 1 << 20,
            align: 64,
        };
        let _ = crate::descriptor::validate_submit(&raw, &bounds);
        let _ = crate::descriptor::validate_deliver(&raw, &bounds, &bounds);
    }
}
