//! Why the engine closes a node: a typed kind (what tests and counters match on) and a
//! detail for the log.

use std::fmt;

/// The ways a node can break the protocol. Each closes that node alone (docs/ARCHITECTURE.md,
/// invariant 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ViolationKind {
    /// A ring index the node wrote is impossible (past the capacity, or moving backwards).
    RingIndex,
    /// An entry on its submit or release ring does not validate.
    Descriptor,
    /// An entry names a session end that is not the node's.
    ForeignSession,
    /// Data on a session end after the node half-closed it.
    DataAfterFin,
    /// More messages or bytes in flight than the session's window allows.
    Window,
    /// A release of a sub-block the node does not hold.
    Release,
    /// A payload outside the node's transmit arena, or larger than any receive arena.
    Payload,
    /// A frame whose records overrun it, do not tile it, or differ from its declared count.
    Frame,
    /// The node does not read its deliver ring while it keeps the engine busy.
    DeliverBacklog,
    /// A malformed or unexpected control frame.
    Control,
    /// A queue entry naming a consumer or producer that is not the node's, or settling a
    /// delivery it was never given.
    Queue,
}

/// A protocol violation: what happened and the particulars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) kind: ViolationKind,
    pub(crate) detail: String,
}

impl Violation {
    pub(crate) fn new(kind: ViolationKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}
