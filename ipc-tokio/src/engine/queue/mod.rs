//! Queues, the engine's state machine: named queues with producers and competing consumers
//! that settle each delivery (ack, nack, reject), plain data with no I/O and no Tokio, driven
//! by the router (`queue_router.rs`) and unit-tested without either.
//!
//! - A message is kept by the engine (its payload in engine memory, within a budget) until a
//!   consumer acknowledges it; at least once, never silently dropped.
//! - Each ready message goes to one consumer with room in its prefetch window, round-robin;
//!   FIFO per queue apart from redeliveries, which go back to the head.
//! - A consumer that goes (its node's socket closed, or it cancelled), a lease that runs out,
//!   and a nack all return deliveries to the head at once, marked redelivered; one that was
//!   delivered `max_deliveries` times goes to the dead-letter queue instead, as does a
//!   rejected one.
//! - Durable queues say what must reach the disk as [`StoreOp`]s, in order; the router groups
//!   them into one commit and sends confirms and settlement answers only after it.
//!
//! Leases run on a heap of deadlines (lazy deletion), so expiry costs nothing per pass and
//! the router wakes only at the earliest deadline.

mod state;
pub(crate) mod store;
#[cfg(test)]
mod tests;

pub(crate) use state::{
    Action, Produced, ProducerId, QueueError, QueueId, Queues, QueuesConfig, SettleOutcome,
    decode_spec,
};
