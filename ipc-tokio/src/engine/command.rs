//! What the engine's tasks tell the router: registrations, control requests, departures.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use ipc_core::control::{EngineFrame, MessageType, QueueSpec, Schema, SubscribeOptions};
use ipc_core::{Block, Doorbell};
use tokio::sync::{mpsc, oneshot};

use crate::engine::inspect::Snapshot;
use crate::engine::memory::Charge;

/// A node's id in the registry.
pub(crate) type NodeId = u32;
/// A session end's id in the registry.
pub(crate) type EndId = u32;

/// What a connection task hands over once a node is ready.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) name: String,
    pub(crate) pid: Option<i32>,
    pub(crate) uid: u32,
    pub(crate) block: Arc<Block>,
    /// The block's bytes, taken from the memory budgets until the link goes.
    pub(crate) memory: Charge,
    pub(crate) engine_bell: Doorbell,
    pub(crate) node_bell: Doorbell,
}

/// A node to add to the registry.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) node: NodeId,
    pub(crate) frames: mpsc::UnboundedSender<Outbound>,
    pub(crate) handover: Handover,
}

/// A frame on its way to a node, with the descriptor that rides with it (a `TopicAttach`
/// carries its topic's broadcast segment; see [`EngineFrame::fd_count`]).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) frame: EngineFrame,
    pub(crate) fd: Option<OwnedFd>,
}

impl From<EngineFrame> for Outbound {
    fn from(frame: EngineFrame) -> Self {
        Self { frame, fd: None }
    }
}

/// Requests from connection tasks and the engine handle.
#[derive(Debug)]
pub(crate) enum Command {
    Register(Box<Registration>),
    Serve {
        node: NodeId,
        req: u32,
        service: String,
        schema: Schema,
    },
    Unserve {
        node: NodeId,
        req: u32,
        service: u32,
    },
    Open {
        node: NodeId,
        req: u32,
        service: String,
        schema: Schema,
    },
    Publish {
        node: NodeId,
        req: u32,
        topic: String,
        ty: MessageType,
        history: u32,
    },
    Unpublish {
        node: NodeId,
        req: u32,
        publisher: u32,
    },
    Subscribe {
        node: NodeId,
        req: u32,
        pattern: String,
        ty: MessageType,
        options: SubscribeOptions,
    },
    Unsubscribe {
        node: NodeId,
        req: u32,
        subscription: u32,
    },
    DeclareQueue {
        node: NodeId,
        req: u32,
        name: String,
        spec: QueueSpec,
    },
    Produce {
        node: NodeId,
        req: u32,
        queue: String,
        ty: MessageType,
    },
    Consume {
        node: NodeId,
        req: u32,
        queue: String,
        ty: MessageType,
        prefetch: u32,
        lease_ms: u64,
    },
    /// A hand-off segment for one large payload.
    Segment {
        node: NodeId,
        req: u32,
        len: u32,
    },
    Gone {
        node: NodeId,
        reason: String,
        /// The connection ended because the node broke the control protocol.
        violation: bool,
    },
    /// A snapshot for the inspector (built by the router, serialised by the asker).
    Inspect {
        reply: oneshot::Sender<Box<Snapshot>>,
    },
    Shutdown,
}
