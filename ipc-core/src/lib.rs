//! shmlink's core: sealed shared-memory blocks, the buddy allocator, descriptor rings and
//! doorbells. No async and no I/O beyond the system calls that create these; the engine and
//! nodes in `ipc-tokio` drive them.
//!
//! All `unsafe` code of the project lives in this crate, in [`block`], [`broadcast`]'s and
//! [`segment`]'s mappings, [`ring`]'s storage and `sync`'s cell; every block carries a
//! `// SAFETY:` proof.
//!
//! # A block
//!
//! One per node, a sealed memfd mapped by exactly the node and the engine:
//!
//! ```text
//!  0      4K      submit    deliver   release   tx tree   tx arena        rx arena
//!  +------+--------+---------+---------+---------+---------------+---------------+
//!  |header| ring   | ring    | ring    | buddy   | node allocs,  | engine allocs |
//!  |+stats| n -> e | e -> n  | n -> e  | state   | engine reads  | node reads    |
//!  +------+--------+---------+---------+---------+---------------+---------------+
//! ```
//!
//! The header (magic, layout version, total size, offset and capacity of every ring and
//! arena) is described in [`layout`]. A message goes: the node loans a sub-block of its
//! transmit arena ([`TxArena::alloc`]), writes the payload, pushes a `DATA` [`RawDescriptor`]
//! on its submit ring; the engine pops it, [`validate_submit`]s the copy, allocates in the
//! receiver's receive arena ([`BuddyAllocator`]), [`copy_payload`]s once, pushes `DATA` on the
//! receiver's deliver ring and `TX_DONE` on the sender's; the receiver reads in place
//! ([`RxView`]) and pushes `RELEASE` when done.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use ipc_core::{Block, BlockConfig, Consumer, Producer, RawDescriptor, copy_payload};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BlockConfig { tx_arena: 1 << 16, rx_arena: 1 << 16, min_block: 64, ..BlockConfig::default() };
//! let engine_side = Arc::new(Block::create(&config, "example")?);
//! // The node would receive this fd over the socket; here we open a duplicate.
//! let node_side = Arc::new(Block::open(engine_side.fd().try_clone_to_owned()?)?);
//!
//! let tx = node_side.take_tx_arena()?;
//! let mut loan = tx.alloc(5)?;
//! loan.copy_from_slice(b"hello");
//! let sent = loan.submit();
//! Producer::new(node_side.submit_ring()).push(RawDescriptor::data(1, sent.offset, sent.len))?;
//!
//! let raw = Consumer::new(engine_side.submit_ring()).pop()?.expect("one entry");
//! let layout = *engine_side.layout();
//! let ipc_core::Submission::Data { offset, len, .. } = ipc_core::validate_submit(&raw, &layout.tx.bounds())? else {
//!     unreachable!()
//! };
//! copy_payload(&engine_side, offset, &engine_side, 0, len)?; // into its own rx arena, for show
//! assert_eq!(node_side.rx_view(0, len)?.as_ref(), b"hello");
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    clippy::multiple_unsafe_ops_per_block
)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

pub mod arena;
#[cfg(not(loom))]
pub mod block;
#[cfg(not(loom))]
pub mod broadcast;
pub mod control;
pub mod descriptor;
#[cfg(not(loom))]
pub mod doorbell;
pub mod error;
pub mod frame;
pub mod idhash;
pub mod layout;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
mod sync;

#[doc(hidden)]
#[cfg(all(feature = "fuzzing", not(loom)))]
pub mod __fuzz;

pub use arena::{Allocation, ArenaStats, BuddyAllocator};
#[cfg(not(loom))]
pub use block::{
    Block, RxView, Submitted, TxArena, TxBuf, copy_in, copy_out, copy_payload, scan_frame,
};
pub use descriptor::{
    ArenaBounds, Delivery, QueueDelivery, QueueSettle, QueueSubmission, RawDescriptor, Submission,
    TopicDelivery, TopicRelease, Violation, kind, validate_deliver, validate_queue_deliver,
    validate_queue_submit, validate_release, validate_segment_release, validate_submit,
    validate_topic_deliver, validate_topic_release, window_charge,
};
#[cfg(not(loom))]
pub use doorbell::Doorbell;
pub use error::{AllocError, BlockError, FreeError, RingError, SealError};
pub use idhash::{IdMap, IdSet};
pub use layout::{BlockConfig, Layout};
#[cfg(not(loom))]
pub use ring::ShmRing;
pub use ring::{Consumer, HeapRing, Producer, RingStorage};
#[cfg(not(loom))]
pub use segment::{SealedView, Segment, SegmentWriter};
