//! Loom models of the ring protocol: no lost entry, no torn descriptor, no lost wake-up.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p ipc-core --release --lib loom`.
//! The doorbell is modelled by an atomic counter: ringing adds one, the consumer "sleeps" by
//! checking that a ring happened (a lost wake-up is a consumer that finds the ring non-empty
//! was never woken while it slept with nothing visible).

use std::sync::Arc as StdArc;

use loom::sync::Arc;
use loom::sync::atomic::AtomicU32;
use loom::thread;

use crate::descriptor::RawDescriptor;
use crate::ring::{Consumer, HeapRing, Producer};
use crate::sync::Ordering;

fn entry(n: u64) -> RawDescriptor {
    // Every word derived from n: a torn read would show mismatched words.
    RawDescriptor {
        session: n as u32,
        kind: n as u16,
        flags: 0,
        segment: n as u32,
        len: n as u32,
        offset: n,
        aux: n,
    }
}

fn check(d: &RawDescriptor, n: u64) {
    assert_eq!(*d, entry(n), "torn or reordered descriptor");
}

#[test]
fn loom_fifo_no_loss_no_tearing() {
    loom::model(|| {
        let ring = StdArc::new(HeapRing::new(2));
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring);
        let t = thread::spawn(move || {
            let mut sent = 0;
            while sent < 3 {
                if producer.push(entry(sent + 1)).unwrap() {
                    sent += 1;
                } else {
                    thread::yield_now();
                }
            }
        });
        let mut got = 0;
        while got < 3 {
            match consumer.pop().unwrap() {
                Some(d) => {
                    got += 1;
                    check(&d, got);
                }
                None => thread::yield_now(),
            }
        }
        t.join().unwrap();
    });
}

#[test]
fn loom_waiting_flag_no_lost_wakeup() {
    loom::model(|| {
        let ring = StdArc::new(HeapRing::new(4));
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring);
        let doorbell = Arc::new(AtomicU32::new(0));
        let bell = doorbell.clone();
        let t = thread::spawn(move || {
            assert!(producer.push(entry(1)).unwrap());
            if producer.needs_wake() {
                bell.fetch_add(1, Ordering::Release);
            }
        });
        // The consumer's loop: drain, announce sleep, and sleep only if still empty.
        let mut got = 0;
        let mut seen = 0;
        while got == 0 {
            if let Some(d) = consumer.pop().unwrap() {
                check(&d, 1);
                got += 1;
                continue;
            }
            if consumer.prepare_sleep().unwrap() {
                // "Sleeping": the producer must ring, or this never returns (loom then fails
                // the model: a lost wake-up).
                seen = sleep_on(&doorbell, seen);
                consumer.woke();
            }
        }
        t.join().unwrap();
    });
}

/// Sleeping on the modelled doorbell (a monotonic count of rings): returns once it has rung
/// more than `seen` times. A lost wake-up spins here forever after the producer finished,
/// which loom reports as a failed model.
fn sleep_on(doorbell: &AtomicU32, seen: u32) -> u32 {
    loop {
        let rung = doorbell.load(Ordering::Acquire);
        if rung > seen {
            return rung;
        }
        thread::yield_now();
    }
}

#[test]
fn loom_space_flag_no_lost_wakeup() {
    loom::model(|| {
        let ring = StdArc::new(HeapRing::new(1));
        let mut producer = Producer::new(ring.clone());
        let mut consumer = Consumer::new(ring);
        assert!(producer.push(entry(1)).unwrap());
        let bell = Arc::new(AtomicU32::new(0));
        let rung = bell.clone();
        let t = thread::spawn(move || {
            let d = consumer.pop().unwrap().expect("one entry");
            check(&d, 1);
            if consumer.needs_space_wake() {
                rung.fetch_add(1, Ordering::Release);
            }
        });
        // The producer waits for room for its second entry.
        let mut seen = 0;
        loop {
            if producer.push(entry(2)).unwrap() {
                break;
            }
            if producer.prepare_wait_space().unwrap() {
                seen = sleep_on(&bell, seen);
                producer.woke_space();
            }
        }
        t.join().unwrap();
    });
}
