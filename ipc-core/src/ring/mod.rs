//! Single-producer single-consumer rings of [`RawDescriptor`](crate::RawDescriptor)s in shared memory.
//!
//! The algorithm is the classic bounded SPSC queue of Lamport ("Proving the correctness of
//! multiprocess programs", 1977) with cached opposite indices (as in crossbeam's `ArrayQueue`
//! and Rigtorp's `SPSCQueue`): the producer owns `tail`, the consumer owns `head`, both are
//! free-running `u32` counters and a slot is `index & (capacity - 1)`.
//!
//! ```text
//!  RingHeader (512 B)                                      slots (capacity x 32 B)
//!  +-----------+-----------+--------------+--------------+  +------+------+------+
//!  | head      | tail      | waiting      | space_waiting|  | d[0] | d[1] | ...  |
//!  | consumer  | producer  | consumer's   | producer's   |  +------+------+------+
//!  | writes    | writes    | sleep epoch  | wait epoch   |      ^ head      ^ tail
//!  +-----------+-----------+--------------+--------------+
//!     128 B       128 B        128 B          128 B
//! ```
//!
//! Each side keeps its own index in its own memory and only *publishes* it; it never reads
//! it back from shared memory, so a peer that scribbles over it changes nothing but what the
//! peer itself sees. Every index read from the other side is checked: it may not claim more
//! entries than the ring holds, and it may not move backwards. A bad one is a
//! [`RingError::CorruptIndex`](crate::RingError::CorruptIndex), never an out-of-bounds access.
//!
//! ## The waiting flag (no lost wake-up, no syscall while busy)
//!
//! A consumer about to sleep stores a fresh non-zero *epoch* in `waiting`, issues
//! `fence(SeqCst)`, and looks at `tail` once more; a producer stores `tail`, issues
//! `fence(SeqCst)`, and reads `waiting`. By the two fences (a Dekker pair) at least one of
//! them sees the other's store: either the consumer sees the new entry and does not sleep, or
//! the producer sees the flag and rings the doorbell. The producer rings once per epoch, so a
//! burst into a sleeping consumer costs one syscall, and a busy consumer (flag 0) costs none.
//! The loom model in `loom_tests.rs` checks exactly this.
//!
//! The same pair, mirrored, lets a producer that found the ring full sleep: it stores an
//! epoch in `space_waiting` ([`Producer::prepare_wait_space`]), and a consumer that frees
//! slots rings the producer's doorbell ([`Consumer::needs_space_wake`]).

mod spsc;
mod storage;

#[cfg(all(test, loom))]
mod loom_tests;

pub use spsc::{Consumer, Producer, RingHeader, RingStorage};
pub use storage::HeapRing;
#[cfg(not(loom))]
pub use storage::ShmRing;
