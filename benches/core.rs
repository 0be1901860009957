//! Micro-benchmarks of ipc-core: the buddy allocator and the descriptor rings.
//!
//! One `benchmark_group` per scenario (tokio `benches/sync_mpsc.rs`):
//! - `alloc_free`: one allocation and its free, per size class, in a 32 MiB arena with 64 B
//!   minimum blocks (a 20-level tree);
//! - `heap_ring` / `shm_ring`: push then pop, one entry at a time and in batches of 32, on a
//!   heap ring and on a real block's shared ring (producer and consumer on two mappings of
//!   one memfd, as the node and the engine have them); `shm_ring` also measures the
//!   waiting-flag check (`needs_wake`, a SeqCst fence) a producer does after every push.
//!
//! Every group reports throughput in elements, so criterion prints time per operation for
//! batched runs too. Single-threaded: these measure the code path, not cross-core traffic;
//! the side-by-side comparison lives in `compare/`.
//!
//! `cargo bench -p shmlink-benches --bench core -- --quick` for a short run.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipc_core::{Block, BlockConfig, BuddyAllocator, Consumer, HeapRing, Producer, RawDescriptor};

const ARENA: u64 = 32 << 20;
const MIN_BLOCK: u64 = 64;
const RING_CAPACITY: u32 = 1024;
const BATCH: usize = 32;

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free");
    group.throughput(Throughput::Elements(1));
    let tree_len = BuddyAllocator::<Vec<u8>>::tree_len(ARENA, MIN_BLOCK).expect("valid arena");
    let mut arena =
        BuddyAllocator::new(vec![0u8; tree_len], ARENA, MIN_BLOCK).expect("valid arena");
    for (label, size) in [
        ("64B", 64u64),
        ("256B", 256),
        ("4KiB", 4 << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
    ] {
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let allocation = arena.alloc(black_box(size)).expect("fits");
                arena.free(black_box(allocation.offset)).expect("live")
            })
        });
    }
    // The same with the arena half full of minimum blocks (every other one live): the
    // search walks past partially used subtrees.
    let live: Vec<u64> = (0..ARENA / MIN_BLOCK / 2)
        .map(|_| arena.alloc(MIN_BLOCK).expect("fits").offset)
        .collect();
    for &offset in live.iter().step_by(2) {
        arena.free(offset).expect("live");
    }
    group.bench_function(BenchmarkId::new("fragmented", "64B"), |b| {
        b.iter(|| {
            let allocation = arena.alloc(black_box(64)).expect("fits");
            arena.free(black_box(allocation.offset)).expect("live")
        })
    });
    group.finish();
}

fn entry(n: u64) -> RawDescriptor {
    RawDescriptor::data(n as u32, n * MIN_BLOCK, 100)
}

/// Push one, pop one; push 32, pop 32 — over any ring storage.
fn ring_scenarios<S: ipc_core::RingStorage>(
    c: &mut Criterion,
    group_name: &str,
    mut producer: Producer<S>,
    mut consumer: Consumer<S>,
    with_wake_check: bool,
) {
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_pop/1", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            assert!(producer.push(black_box(entry(n))).expect("sane"));
            black_box(consumer.pop().expect("sane"))
        })
    });
    if with_wake_check {
        group.bench_function("push_wake_check_pop/1", |b| {
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                assert!(producer.push(black_box(entry(n))).expect("sane"));
                black_box(producer.needs_wake());
                black_box(consumer.pop().expect("sane"))
            })
        });
    }
    group.throughput(Throughput::Elements(BATCH as u64));
    let items: Vec<RawDescriptor> = (0..BATCH as u64).map(entry).collect();
    let mut out = [RawDescriptor::default(); BATCH];
    group.bench_function(format!("push_pop/{BATCH}"), |b| {
        b.iter(|| {
            assert_eq!(producer.push_batch(black_box(&items)).expect("sane"), BATCH);
            assert_eq!(
                consumer.pop_batch(black_box(&mut out)).expect("sane"),
                BATCH
            );
        })
    });
    group.finish();
}

fn heap_ring(c: &mut Criterion) {
    let ring = Arc::new(HeapRing::new(RING_CAPACITY));
    ring_scenarios(
        c,
        "heap_ring",
        Producer::new(ring.clone()),
        Consumer::new(ring),
        false,
    );
}

fn shm_ring(c: &mut Criterion) {
    let config = BlockConfig {
        submit_capacity: RING_CAPACITY,
        tx_arena: 1 << 20,
        rx_arena: 1 << 20,
        min_block: MIN_BLOCK,
        ..BlockConfig::default()
    };
    let engine = Block::create(&config, "bench").expect("create a block");
    let node = Block::open(engine.fd().try_clone_to_owned().expect("dup")).expect("open");
    ring_scenarios(
        c,
        "shm_ring",
        Producer::new(node.submit_ring()),
        Consumer::new(engine.submit_ring()),
        true,
    );
}

criterion_group!(benches, alloc_free, heap_ring, shm_ring);
criterion_main!(benches);
