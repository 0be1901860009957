//! Topics: publish/subscribe with one copy per message, as plain data.
//!
//! [`Topics`] is the engine's topic state machine, in the manner of quinn-proto's `Endpoint`:
//! no Tokio, no sockets, no shared memory. The router feeds it events (a publisher wants to
//! send, a message was copied into a slot, a subscriber released a slot, a node went away,
//! time passed) and carries out the [`Action`]s it returns (create a broadcast segment, send
//! a `TopicAttach` with its fd, push a `TOPIC_DATA` or `TOPIC_LAGGED` entry on a node's
//! deliver ring, wake a publisher). Every rule of topics lives here and is tested without a
//! runtime:
//!
//! - **Names and patterns** ([`Pattern`]): a subscription names one topic, or every topic
//!   strictly under a prefix (`"sensors/**"`), or all topics (`"**"`).
//! - **Types**: a topic's message type is fixed by the first typed publisher or subscriber;
//!   a publisher of another type is refused, naming both types; a subscriber of raw bytes
//!   reads any topic.
//! - **One copy, counted holds**: a message lies in one slot of the topic's segment; every
//!   subscriber that gets it (and the history, if kept) holds the slot, and it is reused only
//!   when all of them released it ([`ipc_core::broadcast::Slots`]).
//! - **Flow**: each subscription has a window (slots delivered and not yet released) and a
//!   bounded queue of pending messages behind it. When the queue is full, `DropOldest` drops
//!   its oldest pending message and counts it, reported as `Lagged(n)` just before the next
//!   delivery (so received + lagged == published, exactly); `Block` holds publishers back
//!   instead, for at most the untether timeout, after which the subscription is cut loose.
//! - **History**: a topic may keep its last N messages and replay them to a late joiner.
//! - **Cleanup**: a node that goes away releases everything it held at once; publishers it
//!   held back are woken.

mod pattern;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use pattern::Pattern;
pub(crate) use state::{
    Action, CloseReason, Policy, PubKey, Reserve, SubKey, SubOptions, SubStats, SubView,
    TopicError, TopicId, TopicStats, TopicView, Topics, TopicsConfig,
};
