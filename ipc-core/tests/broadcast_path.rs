//! A topic's data path through real blocks, rings and a real broadcast segment, one process
//! playing the engine, a publisher node and three subscriber nodes: the publisher's loan is
//! copied once into a slot, every subscriber gets a `TOPIC_DATA` entry on its deliver ring
//! and reads the bytes in place as zero-copy `Bytes`, whose drop pushes `TOPIC_RELEASE` on
//! its release ring; the slot is reused only when all three released it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ipc_core::broadcast::{
    BroadcastLease, BroadcastSegment, ReadOnlySegment, Slots, copy_to_broadcast,
};
use ipc_core::{
    ArenaBounds, Block, BlockConfig, Consumer, Producer, RawDescriptor, ShmRing, Submission,
    TopicDelivery, Violation, validate_submit, validate_topic_deliver, validate_topic_release,
};

const SEGMENT: u64 = 1 << 18;
const MIN: u64 = 64;
const TOPIC: u32 = 1;

fn config() -> BlockConfig {
    BlockConfig {
        submit_capacity: 64,
        deliver_capacity: 64,
        release_capacity: 64,
        tx_arena: 1 << 18,
        rx_arena: 1 << 16,
        min_block: 64,
    }
}

fn payload(i: u32) -> Vec<u8> {
    let len = (i * 977) % 20_000;
    (0..len).map(|b| (b as u8) ^ (i as u8)).collect()
}

struct Subscriber {
    /// The engine's mapping of the subscriber's block (kept alive with its rings).
    _engine_side: Arc<Block>,
    deliver: Consumer<ShmRing>,
    release: Arc<Mutex<Producer<ShmRing>>>,
    segment: Arc<ReadOnlySegment>,
    engine_release: Consumer<ShmRing>,
    engine_deliver: Producer<ShmRing>,
}

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn one_copy_many_readers_slots_reused_after_the_last_release() {
    // The publisher node and the engine's view of it.
    let publisher = Arc::new(Block::create(&config(), "publisher").unwrap());
    let publisher_node =
        Arc::new(Block::open(publisher.fd().try_clone_to_owned().unwrap()).unwrap());
    let tx = publisher_node.take_tx_arena().unwrap();
    let mut submit = Producer::new(publisher_node.submit_ring());
    let mut engine_submit = Consumer::new(publisher.submit_ring());

    // The topic: segment and slots in the engine.
    let segment = BroadcastSegment::create(SEGMENT, "topic").unwrap();
    let mut slots = Slots::<usize>::new(SEGMENT, MIN).unwrap();
    let bounds = |t: u32| {
        (t == TOPIC).then_some(ArenaBounds {
            size: SEGMENT,
            align: MIN,
        })
    };

    let mut subs: Vec<Subscriber> = (0..3)
        .map(|i| {
            let engine_side = Arc::new(Block::create(&config(), &format!("sub{i}")).unwrap());
            let node =
                Arc::new(Block::open(engine_side.fd().try_clone_to_owned().unwrap()).unwrap());
            Subscriber {
                deliver: Consumer::new(node.deliver_ring()),
                release: Arc::new(Mutex::new(Producer::new(node.release_ring()))),
                segment: ReadOnlySegment::open(segment.fd().try_clone_to_owned().unwrap(), SEGMENT)
                    .unwrap(),
                engine_release: Consumer::new(engine_side.release_ring()),
                engine_deliver: Producer::new(engine_side.deliver_ring()),
                _engine_side: engine_side,
            }
        })
        .collect();

    let mut kept: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
    for i in 0..300u32 {
        // The publisher loans, writes, submits.
        let body = payload(i);
        let mut loan = tx.alloc(body.len() as u32).unwrap();
        loan.copy_from_slice(&body);
        let sent = loan.submit();
        submit
            .push(RawDescriptor::data(7, sent.offset, sent.len))
            .unwrap();

        // The engine: validate, reserve a slot, copy once, deliver to all, TX_DONE.
        let raw = engine_submit.pop().unwrap().expect("one entry");
        let Submission::Data { offset, len, .. } =
            validate_submit(&raw, &publisher.layout().tx.bounds()).unwrap()
        else {
            panic!("data")
        };
        let slot = slots.alloc(len).unwrap();
        copy_to_broadcast(&publisher, offset, &segment, slot.offset, len).unwrap();
        for (h, sub) in subs.iter_mut().enumerate() {
            slots.hold(slot.offset, h).unwrap();
            sub.engine_deliver
                .push(RawDescriptor::topic_data(
                    5,
                    TOPIC,
                    slot.offset,
                    len,
                    u64::from(i),
                ))
                .unwrap();
        }
        slots.commit(slot.offset).unwrap();
        if sent.len > 0 {
            tx.complete(sent.offset).unwrap();
        }

        // Each subscriber reads in place; subscriber 0 keeps its last 5 messages alive.
        for (h, sub) in subs.iter_mut().enumerate() {
            let raw = sub.deliver.pop().unwrap().expect("delivered");
            let TopicDelivery::Data {
                subscription,
                topic,
                offset,
                len,
                seq,
            } = validate_topic_deliver(&raw, bounds).unwrap()
            else {
                panic!("data")
            };
            assert_eq!((subscription, topic, seq), (5, TOPIC, u64::from(i)));
            let ring = sub.release.clone();
            let lease =
                BroadcastLease::new(sub.segment.view(offset, len).unwrap(), 5, TOPIC, move |e| {
                    ring.lock().unwrap().push(e).unwrap();
                });
            let bytes = Bytes::from_owner(lease);
            assert_eq!(&bytes[..], &body[..], "subscriber {h} message {i}");
            if h == 0 {
                kept[0].push(bytes);
                if kept[0].len() > 5 {
                    kept[0].remove(0);
                }
            }
        }

        // The engine drains the release rings: validate, release, maybe free.
        for (h, sub) in subs.iter_mut().enumerate() {
            while let Some(raw) = sub.engine_release.pop().unwrap() {
                let valid = validate_topic_release(&raw, bounds).unwrap();
                slots.release(h, valid.offset).unwrap();
            }
        }
        // Only subscriber 0's kept messages hold slots.
        assert_eq!(slots.stats().live, kept[0].len());
    }
    drop(kept);
    let sub = &mut subs[0];
    while let Some(raw) = sub.engine_release.pop().unwrap() {
        slots
            .release(0, validate_topic_release(&raw, bounds).unwrap().offset)
            .unwrap();
    }
    assert_eq!(slots.stats().live, 0);
    assert_eq!(slots.stats().arena.in_use, 0);
    assert_eq!(tx.stats().in_use, 0);

    // The copy refuses ranges outside the publisher's arena or the segment.
    let tx_size = publisher.layout().tx.size;
    assert!(matches!(
        copy_to_broadcast(&publisher, tx_size - 64, &segment, 0, 65),
        Err(Violation::OutOfBounds { .. })
    ));
    assert!(matches!(
        copy_to_broadcast(&publisher, 0, &segment, SEGMENT - 64, 65),
        Err(Violation::OutOfBounds { .. })
    ));
    assert!(copy_to_broadcast(&publisher, 0, &segment, u64::MAX, 1).is_err());
    assert!(copy_to_broadcast(&publisher, 0, &segment, SEGMENT - 64, 64).is_ok());
}
