//! The router: the one task that touches shared memory on the engine side.
//!
//! Each pass it drains every node's release and submit rings (copies of each entry,
//! validated before use: DESIGN.md invariant 3), copies payloads into receivers' arenas,
//! and flushes every node's outbox into its deliver ring. When nothing is left it announces
//! sleep on every ring it consumes (the waiting-flag protocol of `ipc_core::ring`) and parks
//! until a doorbell or a command arrives: idle costs nothing (invariant 7).
//!
//! A node that breaks the protocol (a bad index, descriptor, session, credit or release) is
//! closed with a logged reason; nothing it wrote is trusted, and no other node notices
//! beyond its sessions with that node ending in `Disconnected` (invariants 3 and 6).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use ipc_core::control::{EngineFrame, ErrorCode, Schema};
use ipc_core::descriptor::close_reason;
use ipc_core::{
    AllocError, Block, BuddyAllocator, Consumer, Doorbell, Producer, RawDescriptor, ShmRing,
    Submission, kind, validate_release, validate_submit,
};
use ipc_core::{IdMap, IdSet};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::engine::builder::{Config, EngineStats};

type NodeId = u32;
type EndId = u32;

/// Entries popped per ring per pass: bounds the work one node gets before the others.
const BATCH: usize = 64;

/// Names one node may serve at once.
const MAX_SERVICES_PER_NODE: usize = 1024;

/// What a connection task hands over once a node is ready.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) name: String,
    pub(crate) pid: Option<i32>,
    pub(crate) block: Arc<Block>,
    pub(crate) engine_bell: Doorbell,
    pub(crate) node_bell: Doorbell,
}

/// A node to add to the registry.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) node: NodeId,
    pub(crate) frames: mpsc::UnboundedSender<EngineFrame>,
    pub(crate) handover: Handover,
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
    Gone {
        node: NodeId,
        reason: String,
        /// The connection ended because the node broke the control protocol.
        violation: bool,
    },
    Shutdown,
}

/// A message or control entry on its way into a node, waiting for room in its receive arena.
#[derive(Debug, Clone)]
enum Inbound {
    Data {
        src_node: NodeId,
        /// Keeps the sender's block mapped until the payload is copied, even if the sender
        /// exits meanwhile: what it sent before leaving is still delivered.
        src_block: Arc<Block>,
        src_end: EndId,
        dst_end: EndId,
        offset: u64,
        len: u32,
    },
    Control(RawDescriptor),
}

#[derive(Debug)]
struct End {
    node: NodeId,
    peer: Option<EndId>,
    /// Messages sent on this end and not yet released by the receiver.
    in_flight: u32,
    fin: bool,
}

#[derive(Debug)]
struct Service {
    id: u32,
    node: NodeId,
    schema: Schema,
}

struct NodeState {
    name: String,
    pid: Option<i32>,
    block: Arc<Block>,
    submit: Consumer<ShmRing>,
    release: Consumer<ShmRing>,
    deliver: Producer<ShmRing>,
    bell_in: AsyncFd<Doorbell>,
    /// The node closed its end of `bell_in`: no longer watched.
    bell_closed: std::sync::atomic::AtomicBool,
    bell_out: Doorbell,
    rx: BuddyAllocator<Vec<u8>>,
    /// Receive sub-blocks delivered and not yet released, and the sender end to credit.
    rx_owner: IdMap<u64, EndId>,
    inbox: VecDeque<Inbound>,
    outbox: VecDeque<RawDescriptor>,
    frames: mpsc::UnboundedSender<EngineFrame>,
    ends: IdSet<EndId>,
    services: HashSet<String>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("ends", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl NodeState {
    fn ring_out(&self) {
        if let Err(e) = self.bell_out.ring() {
            tracing::warn!(node = %self.name, error = %e, "doorbell write failed");
        }
    }
}

pub(crate) struct Router {
    config: Arc<Config>,
    commands: mpsc::UnboundedReceiver<Command>,
    stats_tx: watch::Sender<EngineStats>,
    stats: EngineStats,
    nodes: IdMap<NodeId, NodeState>,
    ends: IdMap<EndId, End>,
    services: HashMap<String, Service>,
    next_end: EndId,
    next_service: u32,
    /// Nodes to close at the end of this pass, with the reason.
    doomed: Vec<(NodeId, String)>,
    credits_due: IdMap<EndId, u32>,
    scratch: Vec<RawDescriptor>,
    /// The nodes being buried left on their own (log at info, not warn).
    bury_quietly: bool,
    /// Node ids of the current pass (kept to avoid an allocation per pass).
    ids: Vec<NodeId>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

// ===== impl Router =====

impl Router {
    pub(crate) fn new(
        config: Arc<Config>,
        commands: mpsc::UnboundedReceiver<Command>,
        stats_tx: watch::Sender<EngineStats>,
    ) -> Self {
        Self {
            config,
            commands,
            stats_tx,
            stats: EngineStats::default(),
            nodes: IdMap::default(),
            ends: IdMap::default(),
            services: HashMap::new(),
            next_end: 1,
            next_service: 1,
            doomed: Vec::new(),
            credits_due: IdMap::default(),
            scratch: vec![RawDescriptor::default(); BATCH],
            bury_quietly: false,
            ids: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut last_work = Instant::now();
        let mut spins = 0u32;
        'outer: loop {
            // Commands first: registrations and opens are rare and cheap.
            while let Ok(command) = self.commands.try_recv() {
                if !self.command(command) {
                    break 'outer;
                }
            }
            if self.pass() {
                last_work = Instant::now();
                // Let the other tasks of the runtime run between passes.
                tokio::task::yield_now().await;
                continue;
            }
            // Nothing moved. Within the spin budget, look again after letting the runtime run
            // its other tasks (never a busy-wait that starves the host application), so a node
            // that answers quickly finds the engine awake: no doorbell, no wake-up.
            if last_work.elapsed() < self.config.spin {
                spins = spins.wrapping_add(1);
                crate::spin::pause(spins).await;
                continue;
            }
            if !self.prepare_sleep() {
                continue;
            }
            match self.park().await {
                Some(command) => {
                    self.wake_all();
                    if !self.command(command) {
                        break;
                    }
                }
                None => self.wake_all(),
            }
        }
        self.shutdown();
    }

    /// One pass over every node. Returns whether anything moved.
    fn pass(&mut self) -> bool {
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        ids.extend(self.nodes.keys().copied());
        let mut moved = false;
        for &id in &ids {
            moved |= self.drain_release(id);
        }
        for &id in &ids {
            moved |= self.drain_submit(id);
        }
        self.flush_credits();
        for &id in &ids {
            moved |= self.pump_inbox(id);
        }
        for &id in &ids {
            self.flush_outbox(id);
        }
        self.bury();
        if moved {
            self.publish();
        }
        self.ids = ids;
        moved
    }

    /// Announces sleep on every ring the engine consumes. False if work arrived meanwhile.
    fn prepare_sleep(&mut self) -> bool {
        let mut sleep = true;
        for node in self.nodes.values_mut() {
            // A corrupted index here is found again, and punished, by the next pass.
            sleep &= node.submit.prepare_sleep().unwrap_or(false);
            sleep &= node.release.prepare_sleep().unwrap_or(false);
            if !node.outbox.is_empty() {
                sleep &= node.deliver.prepare_wait_space().unwrap_or(false);
            }
        }
        if !sleep {
            self.wake_all();
        }
        sleep
    }

    fn wake_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.submit.woke();
            node.release.woke();
            node.deliver.woke_space();
        }
    }

    /// Sleeps until a doorbell rings or a command arrives.
    async fn park(&mut self) -> Option<Command> {
        let commands = &mut self.commands;
        let nodes = &self.nodes;
        poll_fn(|cx| {
            if let Poll::Ready(command) = commands.poll_recv(cx) {
                return Poll::Ready(Some(command.unwrap_or(Command::Shutdown)));
            }
            let mut rang = false;
            for node in nodes.values() {
                if node.bell_closed.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                match node.bell_in.poll_read_ready(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        if node.bell_in.get_ref().drain().is_err() {
                            // Its end is closed (it exited, or threw it away): a closed end
                            // stays readable, so stop watching it. Its socket tells the rest.
                            node.bell_closed
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        rang = true;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::warn!(node = %node.name, error = %e, "doorbell poll failed");
                        rang = true;
                    }
                    Poll::Pending => {}
                }
            }
            if rang {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    // ===== commands =====

    /// Handles one command; false means shut down.
    fn command(&mut self, command: Command) -> bool {
        match command {
            Command::Register(registration) => self.register(*registration),
            Command::Serve {
                node,
                req,
                service,
                schema,
            } => self.serve(node, req, service, schema),
            Command::Unserve { node, req, service } => self.unserve(node, req, service),
            Command::Open {
                node,
                req,
                service,
                schema,
            } => self.open(node, req, service, schema),
            Command::Gone {
                node,
                reason,
                violation,
            } => {
                if self.nodes.contains_key(&node) {
                    if violation {
                        // Nothing more it wrote is acted on.
                        self.doom(node, reason);
                    } else {
                        self.last_drain(node);
                        self.doomed.push((node, reason));
                        self.bury_quietly = true;
                    }
                    self.bury();
                    self.bury_quietly = false;
                }
            }
            Command::Shutdown => return false,
        }
        self.publish();
        true
    }

    fn register(&mut self, r: Registration) {
        let h = r.handover;
        let layout = *h.block.layout();
        let tree = match BuddyAllocator::<Vec<u8>>::tree_len(layout.rx.size, layout.rx.min_block) {
            Ok(len) => vec![0u8; len],
            Err(e) => {
                tracing::error!(error = %e, "cannot size the receive allocator");
                return;
            }
        };
        let rx = BuddyAllocator::new(tree, layout.rx.size, layout.rx.min_block)
            .expect("layout validated");
        let bell_in = match h.engine_bell.into_async() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the doorbell");
                return;
            }
        };
        let state = NodeState {
            name: h.name,
            pid: h.pid,
            submit: Consumer::new(h.block.submit_ring()),
            release: Consumer::new(h.block.release_ring()),
            deliver: Producer::new(h.block.deliver_ring()),
            block: h.block,
            bell_in,
            bell_closed: std::sync::atomic::AtomicBool::new(false),
            bell_out: h.node_bell,
            rx,
            rx_owner: IdMap::default(),
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            frames: r.frames,
            ends: IdSet::default(),
            services: HashSet::new(),
        };
        tracing::info!(node = r.node, name = %state.name, pid = ?state.pid, "node joined");
        self.nodes.insert(r.node, state);
    }

    fn reply(&self, node: NodeId, frame: EngineFrame) {
        if let Some(n) = self.nodes.get(&node) {
            let _ = n.frames.send(frame);
        }
    }

    fn refuse(&self, node: NodeId, req: u32, code: ErrorCode, message: String) {
        self.reply(
            node,
            EngineFrame::Error {
                req,
                code: code as u16,
                message,
            },
        );
    }

    fn serve(&mut self, node: NodeId, req: u32, service: String, schema: Schema) {
        if !self.nodes.contains_key(&node) {
            return;
        }
        if self.nodes[&node].services.len() >= MAX_SERVICES_PER_NODE {
            return self.refuse(
                node,
                req,
                ErrorCode::Resources,
                format!("a node may serve at most {MAX_SERVICES_PER_NODE} names"),
            );
        }
        if self.services.contains_key(&service) {
            return self.refuse(
                node,
                req,
                ErrorCode::AlreadyServed,
                format!("{service:?} is already served"),
            );
        }
        let id = self.next_service;
        self.next_service = self.next_service.wrapping_add(1).max(1);
        self.services
            .insert(service.clone(), Service { id, node, schema });
        if let Some(n) = self.nodes.get_mut(&node) {
            n.services.insert(service.clone());
        }
        tracing::debug!(node, %service, id, "serving");
        self.reply(node, EngineFrame::ServeOk { req, service: id });
    }

    fn unserve(&mut self, node: NodeId, req: u32, service: u32) {
        let name = self
            .services
            .iter()
            .find(|(_, s)| s.id == service && s.node == node)
            .map(|(name, _)| name.clone());
        match name {
            Some(name) => {
                self.services.remove(&name);
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.services.remove(&name);
                }
                self.reply(node, EngineFrame::UnserveOk { req });
            }
            None => self.refuse(
                node,
                req,
                ErrorCode::NotServed,
                format!("service id {service} is not served by this node"),
            ),
        }
    }

    fn alloc_end(&mut self) -> EndId {
        loop {
            let id = self.next_end;
            self.next_end = self.next_end.wrapping_add(1).max(1);
            if !self.ends.contains_key(&id) {
                return id;
            }
        }
    }

    fn open(&mut self, node: NodeId, req: u32, service: String, schema: Schema) {
        let Some(client) = self.nodes.get(&node) else {
            return;
        };
        let Some(target) = self.services.get(&service) else {
            return self.refuse(
                node,
                req,
                ErrorCode::NotServed,
                format!("no node serves {service:?}"),
            );
        };
        if !schema.matches(&target.schema) {
            let message = format!(
                "{service:?}: the client sends {} and receives {}, but the server receives {} and sends {}",
                schema.send, schema.recv, target.schema.recv, target.schema.send
            );
            return self.refuse(node, req, ErrorCode::SchemaMismatch, message);
        }
        let (server_node, service_id) = (target.node, target.id);
        let limit = self.config.max_sessions_per_node;
        let server_full = self
            .nodes
            .get(&server_node)
            .is_none_or(|s| s.ends.len() >= limit);
        if client.ends.len() >= limit || server_full {
            return self.refuse(
                node,
                req,
                ErrorCode::Resources,
                format!("session limit of {limit} per node reached"),
            );
        }
        let client_name = client.name.clone();
        let server_name = self.nodes[&server_node].name.clone();
        let (c, s) = (self.alloc_end(), self.alloc_end());
        self.ends.insert(
            c,
            End {
                node,
                peer: Some(s),
                in_flight: 0,
                fin: false,
            },
        );
        self.ends.insert(
            s,
            End {
                node: server_node,
                peer: Some(c),
                in_flight: 0,
                fin: false,
            },
        );
        self.nodes.get_mut(&node).expect("checked").ends.insert(c);
        self.nodes
            .get_mut(&server_node)
            .expect("checked")
            .ends
            .insert(s);
        // Accept goes out before OpenOk, so the server knows the session before the client
        // can send on it (a node parks early deliveries for unknown sessions anyway).
        self.reply(
            server_node,
            EngineFrame::Accept {
                service: service_id,
                session: s,
                peer: client_name,
            },
        );
        self.reply(
            node,
            EngineFrame::OpenOk {
                req,
                session: c,
                peer: server_name,
            },
        );
    }

    // ===== data path =====

    /// A node closed its connection: what it published in its rings before that still counts
    /// (data, half-closes, closes, releases). Bounded: a ring holds at most its capacity.
    fn last_drain(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let layout = *node.block.layout();
        let rounds = (layout.submit.capacity + layout.release.capacity) as usize / BATCH + 2;
        for _ in 0..rounds {
            let released = self.drain_release(id);
            let submitted = self.drain_submit(id);
            if !(released || submitted) || !self.doomed.is_empty() {
                break;
            }
        }
        self.flush_credits();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            self.pump_inbox(other);
            self.flush_outbox(other);
        }
    }

    /// Condemns a node for breaking the protocol: counted once, its first reason kept, and
    /// nothing it writes afterwards is acted on (it is buried at the end of the pass).
    fn doom(&mut self, node: NodeId, reason: String) {
        if self.is_doomed(node) {
            return;
        }
        self.stats.violations += 1;
        self.doomed.push((node, reason));
    }

    fn is_doomed(&self, node: NodeId) -> bool {
        self.doomed.iter().any(|(id, _)| *id == node)
    }

    /// Drains one node's release ring. Returns whether anything was popped.
    fn drain_release(&mut self, id: NodeId) -> bool {
        if self.is_doomed(id) {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let bounds = node.block.layout().rx.bounds();
        let n = match node.release.pop_batch(&mut self.scratch) {
            Ok(n) => n,
            Err(e) => return self.violation(id, format!("release ring: {e}")),
        };
        for raw in &self.scratch[..n] {
            let offset = match validate_release(raw, &bounds) {
                Ok(offset) => offset,
                Err(e) => return self.violation(id, format!("release entry: {e}")),
            };
            if let Err(e) = node.rx.free(offset) {
                return self.violation(id, format!("release of a sub-block it does not hold: {e}"));
            }
            if let Some(sender) = node.rx_owner.remove(&offset) {
                *self.credits_due.entry(sender).or_default() += 1;
            }
        }
        if n > 0 {
            node.block.publish_rx_in_use(node.rx.in_use());
            if node.release.needs_space_wake() {
                node.ring_out();
            }
        }
        n > 0
    }

    fn violation(&mut self, id: NodeId, reason: String) -> bool {
        self.doom(id, reason);
        true
    }

    /// Drains one node's submit ring. Returns whether anything was popped.
    fn drain_submit(&mut self, id: NodeId) -> bool {
        if self.is_doomed(id) {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let bounds = node.block.layout().tx.bounds();
        let n = match node.submit.pop_batch(&mut self.scratch) {
            Ok(n) => n,
            Err(e) => return self.violation(id, format!("submit ring: {e}")),
        };
        if n > 0 && node.submit.needs_space_wake() {
            node.ring_out();
        }
        for i in 0..n {
            let raw = self.scratch[i];
            let result = validate_submit(&raw, &bounds)
                .map_err(|e| format!("submit entry: {e}"))
                .and_then(|submission| self.submission(id, submission));
            if let Err(reason) = result {
                return self.violation(id, reason);
            }
        }
        n > 0
    }

    /// Checks that `end` exists and belongs to `node`.
    fn owned_end(&mut self, node: NodeId, end: EndId) -> Result<&mut End, String> {
        match self.ends.get_mut(&end) {
            Some(e) if e.node == node => Ok(e),
            _ => Err(format!("session {end} does not belong to this node")),
        }
    }

    fn submission(&mut self, node: NodeId, submission: Submission) -> Result<(), String> {
        let credits = self.config.credits;
        match submission {
            Submission::Data {
                session,
                offset,
                len,
            } => {
                let end = self.owned_end(node, session)?;
                if end.fin {
                    return Err(format!("data on session {session} after it finished"));
                }
                if end.in_flight >= credits {
                    return Err(format!("session {session} exceeded its {credits} credits"));
                }
                match end.peer {
                    Some(peer) => {
                        end.in_flight += 1;
                        let dst = self.ends[&peer].node;
                        let src_block = self.nodes[&node].block.clone();
                        self.inbound(
                            dst,
                            Inbound::Data {
                                src_node: node,
                                src_block,
                                src_end: session,
                                dst_end: peer,
                                offset,
                                len,
                            },
                        );
                    }
                    // The peer is gone; the node has been told (CLOSED). Free the loan.
                    None => self.tx_done(node, len, offset),
                }
            }
            Submission::Fin { session } => {
                let end = self.owned_end(node, session)?;
                end.fin = true;
                if let Some(peer) = end.peer {
                    let dst = self.ends[&peer].node;
                    self.inbound(
                        dst,
                        Inbound::Control(RawDescriptor::control(kind::FIN, peer, 0)),
                    );
                }
            }
            Submission::Close { session } => {
                self.owned_end(node, session)?;
                self.close_end(session, close_reason::PEER_CLOSED);
                // The closer learns, after anything still queued for the end, that nothing
                // more will come for it.
                let ack = RawDescriptor::control(kind::CLOSED, session, close_reason::CLOSE_ACK);
                self.inbound(node, Inbound::Control(ack));
            }
        }
        Ok(())
    }

    /// Removes `end`; its peer learns why (after any data still queued for it).
    fn close_end(&mut self, end: EndId, reason: u64) {
        let Some(state) = self.ends.remove(&end) else {
            return;
        };
        if let Some(n) = self.nodes.get_mut(&state.node) {
            n.ends.remove(&end);
        }
        self.credits_due.remove(&end);
        if let Some(peer) = state.peer
            && let Some(p) = self.ends.get_mut(&peer)
        {
            p.peer = None;
            let dst = p.node;
            self.inbound(
                dst,
                Inbound::Control(RawDescriptor::control(kind::CLOSED, peer, reason)),
            );
        }
    }

    fn tx_done(&mut self, node: NodeId, len: u32, offset: u64) {
        if len > 0
            && let Some(n) = self.nodes.get_mut(&node)
        {
            n.outbox
                .push_back(RawDescriptor::offset_only(kind::TX_DONE, offset));
        }
    }

    /// Queues an entry for `dst`, delivering at once when nothing is ahead of it.
    fn inbound(&mut self, dst: NodeId, entry: Inbound) {
        let Some(node) = self.nodes.get_mut(&dst) else {
            return;
        };
        if node.inbox.is_empty() {
            if let Err(entry) = self.deliver(dst, entry) {
                self.nodes
                    .get_mut(&dst)
                    .expect("checked")
                    .inbox
                    .push_back(entry);
            }
        } else {
            node.inbox.push_back(entry);
        }
    }

    /// Delivers one entry into `dst`: copies data into its receive arena. Gives the entry back
    /// when the arena has no room now.
    fn deliver(&mut self, dst: NodeId, entry: Inbound) -> Result<(), Inbound> {
        // Borrowed, not cloned: the entry goes back whole if the receiver has no room.
        let (src_node, src_block, src_end, dst_end, offset, len) = match &entry {
            Inbound::Control(raw) => {
                self.nodes
                    .get_mut(&dst)
                    .expect("caller checked")
                    .outbox
                    .push_back(*raw);
                return Ok(());
            }
            Inbound::Data {
                src_node,
                src_block,
                src_end,
                dst_end,
                offset,
                len,
            } => (*src_node, src_block, *src_end, *dst_end, *offset, *len),
        };
        let node = self.nodes.get_mut(&dst).expect("caller checked");
        let allocation = match node.rx.alloc(u64::from(len)) {
            Ok(a) => a,
            Err(AllocError::Full { .. }) => return Err(entry),
            Err(e) => {
                // The sender's node checks sizes against the arenas before sending.
                self.doom(
                    src_node,
                    format!("payload of {len} bytes cannot fit any receive arena: {e}"),
                );
                return Ok(());
            }
        };
        if let Err(e) =
            ipc_core::copy_payload(src_block, offset, &node.block, allocation.offset, len)
        {
            let _ = node.rx.free(allocation.offset);
            self.doom(src_node, format!("payload outside its arena: {e}"));
            return Ok(());
        }
        node.rx_owner.insert(allocation.offset, src_end);
        node.outbox
            .push_back(RawDescriptor::data(dst_end, allocation.offset, len));
        node.block.publish_rx_in_use(node.rx.in_use());
        self.stats.messages += 1;
        self.tx_done(src_node, len, offset);
        Ok(())
    }

    /// Retries entries waiting for room in `id`'s receive arena. Returns whether any moved.
    fn pump_inbox(&mut self, id: NodeId) -> bool {
        let mut moved = false;
        while let Some(entry) = self.nodes.get_mut(&id).and_then(|n| n.inbox.pop_front()) {
            match self.deliver(id, entry) {
                Ok(()) => moved = true,
                Err(entry) => {
                    self.nodes
                        .get_mut(&id)
                        .expect("popped from it")
                        .inbox
                        .push_front(entry);
                    break;
                }
            }
        }
        moved
    }

    fn flush_credits(&mut self) {
        for (end, count) in self.credits_due.drain() {
            let Some(state) = self.ends.get_mut(&end) else {
                continue;
            };
            state.in_flight = state.in_flight.saturating_sub(count);
            if let Some(node) = self.nodes.get_mut(&state.node) {
                node.outbox
                    .push_back(RawDescriptor::control(kind::CREDIT, end, u64::from(count)));
            }
        }
    }

    /// Pushes as much of `id`'s outbox as its deliver ring takes, and rings it if it sleeps.
    fn flush_outbox(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.outbox.is_empty() {
            return;
        }
        let mut pushed_any = false;
        while !node.outbox.is_empty() {
            let (front, _) = node.outbox.as_slices();
            match node.deliver.push_batch(front) {
                Ok(0) => break,
                Ok(n) => {
                    node.outbox.drain(..n);
                    pushed_any = true;
                }
                Err(e) => {
                    let reason = format!("deliver ring: {e}");
                    self.doom(id, reason);
                    return;
                }
            }
        }
        if pushed_any && node.deliver.needs_wake() {
            node.ring_out();
        }
        // An honest node has at most one TX_DONE per transmit sub-block, and CREDIT and DATA
        // entries bounded by its sessions' credits, waiting here. One that stops reading its
        // deliver ring while it keeps sending would grow this queue without bound.
        let layout = node.block.layout();
        let credits = self.config.credits as usize;
        let cap = (layout.tx.size / layout.tx.min_block) as usize
            + 2 * credits * (node.ends.len() + 1)
            + 2 * layout.deliver.capacity as usize;
        if node.outbox.len() > cap {
            let reason = format!(
                "{} entries wait for its deliver ring: it does not read it",
                node.outbox.len()
            );
            self.doom(id, reason);
        }
    }

    // ===== cleanup =====

    /// Closes every doomed node: its block, rings, doorbells, sessions and services go; its
    /// peers get `CLOSED(PEER_DISCONNECTED)`; senders into it get their loans back.
    fn bury(&mut self) {
        // In the order they were condemned (burying one can condemn another).
        while !self.doomed.is_empty() {
            let (id, reason) = self.doomed.remove(0);
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            if self.bury_quietly {
                tracing::info!(node = id, name = %node.name, pid = ?node.pid, %reason, "node left");
            } else {
                tracing::warn!(node = id, name = %node.name, pid = ?node.pid, %reason, "closing node");
            }
            let _ = node.frames.send(EngineFrame::Error {
                req: 0,
                code: ErrorCode::BadFrame as u16,
                message: format!("closed by the engine: {reason}"),
            });
            for name in &node.services {
                self.services.remove(name);
            }
            for &end in &node.ends {
                self.close_end(end, close_reason::PEER_DISCONNECTED);
            }
            // Loans other nodes sent into the dead node and that were never copied.
            for entry in &node.inbox {
                if let Inbound::Data {
                    src_node,
                    len,
                    offset,
                    ..
                } = *entry
                {
                    self.tx_done(src_node, len, offset);
                }
            }
            // Payloads the dead node sent that wait for room elsewhere stay queued: they hold
            // its block and are delivered when room frees, like everything it sent before.
            drop(node); // unmaps the block, closes the memfd and both doorbells
        }
    }

    fn publish(&mut self) {
        self.stats.nodes = self.nodes.len();
        self.stats.session_ends = self.ends.len();
        self.stats.services = self.services.len();
        let stats = self.stats;
        self.stats_tx.send_if_modified(|s| {
            // The listener's counts are the listener's to publish.
            let stats = EngineStats {
                accept_failures: s.accept_failures,
                refused_connections: s.refused_connections,
                connections: s.connections,
                handshakes: s.handshakes,
                ..stats
            };
            let changed = *s != stats;
            *s = stats;
            changed
        });
    }

    fn shutdown(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            // Ends are closed without notifying peers: every peer is going too.
            if let Some(node) = self.nodes.remove(&id) {
                drop(node);
            }
        }
        self.ends.clear();
        self.services.clear();
        self.publish();
        tracing::info!("engine stopped");
    }
}
