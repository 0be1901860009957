//! The ring protocol on a [`HeapRing`] between two real threads, sleeping only through the
//! waiting flags: a consumer that found the ring empty parks after `prepare_sleep`, a
//! producer that found it full parks after `prepare_wait_space`, and each side unparks the
//! other only when `needs_wake` / `needs_space_wake` say so.
//!
//! No syscalls, so this file also runs under Miri, whose data-race detector and weak-memory
//! emulation check the orderings the loom model checks exhaustively on smaller cases:
//! `MIRIFLAGS=-Zmiri-strict-provenance cargo +nightly miri test -p ipc-core --test heap_ring_threads`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use ipc_core::{Consumer, HeapRing, Producer, RawDescriptor};

/// Entries per run: enough to wrap a small ring many times, few enough for Miri.
const COUNT: u64 = if cfg!(miri) { 400 } else { 200_000 };
/// A park longer than this without the doorbell is a lost wake-up.
const HANG: Duration = Duration::from_secs(30);

fn entry(n: u64) -> RawDescriptor {
    RawDescriptor {
        session: (n as u32) ^ 0x5A5A_5A5A,
        kind: n as u16,
        flags: (n >> 16) as u16,
        segment: (n as u32).rotate_left(11),
        len: (n as u32).wrapping_mul(3),
        offset: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        aux: n,
    }
}

/// A doorbell between two threads: a flag plus unpark, like an eventfd plus poll.
struct Bell {
    rung: AtomicBool,
    sleeper: Thread,
}

impl Bell {
    fn new(sleeper: Thread) -> Arc<Self> {
        Arc::new(Self {
            rung: AtomicBool::new(false),
            sleeper,
        })
    }

    fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.sleeper.unpark();
    }

    /// Sleeps until rung (the calling thread must be `sleeper`), then resets the bell.
    fn wait(&self) {
        let start = Instant::now();
        while !self.rung.swap(false, Ordering::Acquire) {
            assert!(start.elapsed() < HANG, "lost wake-up: parked for {HANG:?}");
            thread::park_timeout(HANG);
        }
    }
}

fn run(capacity: u32, batch: usize) {
    let ring = Arc::new(HeapRing::new(capacity));
    let mut producer = Producer::new(ring.clone());
    let mut consumer = Consumer::new(ring);
    let consumer_bell = Bell::new(thread::current());

    thread::scope(|scope| {
        let (producer_bell_tx, producer_bell_rx) = std::sync::mpsc::channel();
        let wake_consumer = consumer_bell.clone();
        let producing = scope.spawn(move || {
            let own_bell = Bell::new(thread::current());
            producer_bell_tx.send(own_bell.clone()).expect("send bell");
            let mut next = 0u64;
            let mut items = Vec::with_capacity(batch);
            while next < COUNT {
                items.clear();
                items.extend((next..COUNT.min(next + batch as u64)).map(entry));
                let pushed = producer.push_batch(&items).expect("sane head");
                if pushed > 0 {
                    next += pushed as u64;
                    if producer.needs_wake() {
                        wake_consumer.ring();
                    }
                } else if producer.prepare_wait_space().expect("sane head") {
                    own_bell.wait();
                    producer.woke_space();
                }
            }
        });
        let wake_producer = producer_bell_rx.recv().expect("the producer's bell");

        let mut out = vec![RawDescriptor::default(); batch];
        let mut expected = 0u64;
        while expected < COUNT {
            let popped = consumer.pop_batch(&mut out).expect("sane tail");
            if popped > 0 {
                for got in &out[..popped] {
                    assert_eq!(*got, entry(expected), "lost, reordered or torn entry");
                    expected += 1;
                }
                if consumer.needs_space_wake() {
                    wake_producer.ring();
                }
            } else if consumer.prepare_sleep().expect("sane tail") {
                consumer_bell.wait();
                consumer.woke();
            }
        }
        producing.join().expect("producer");
        assert_eq!(consumer.pop(), Ok(None));
    });
}

#[test]
fn single_entries_through_a_tiny_ring() {
    run(2, 1);
}

#[test]
fn batches_through_a_small_ring() {
    run(8, 5);
}

#[test]
fn batches_larger_than_the_ring() {
    run(4, 7);
}
