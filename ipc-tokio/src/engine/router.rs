//! The router: the one task that touches shared memory on the engine side, driving the
//! [`Registry`] and every node's [`Link`].
//!
//! Each pass it takes a bounded number of control commands, then visits the active nodes
//! (the [`Scheduler`]'s list: nodes that rang or were busy lately, invariant 8): drains their
//! release and submit rings (copies of each entry, validated before use: invariant 3),
//! copies payloads into receivers' arenas, returns windows, and pushes what each node's
//! deliver ring takes. Nodes idle for the spin time are demoted (they ring when they push
//! again); when none is left the router parks until a doorbell or a command arrives: idle
//! costs nothing (invariant 7). The data path itself is in `datapath.rs`; the invariants are
//! those of docs/ARCHITECTURE.md.
//!
//! A node that breaks the protocol is closed with a typed [`Violation`]; nothing it wrote is
//! trusted, and no other node notices beyond its sessions with that node ending in
//! `Disconnected` (invariants 3 and 6).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use ipc_core::control::{EngineFrame, Schema};
use ipc_core::{IdMap, RawDescriptor};
use tokio::sync::{mpsc, watch};

use crate::engine::command::{Command, EndId, NodeId, Registration};
use crate::engine::config::{Config, EngineStats};
use crate::engine::link::{Link, LinkParts};
use crate::engine::queue::QueuesConfig;
use crate::engine::queue_router::QueuePlane;
use crate::engine::registry::{Limits, OpenRefusal, Refusal, Registry};
use crate::engine::scheduler::Scheduler;
use crate::engine::topic::TopicsConfig;
use crate::engine::topic_router::TopicPlane;
use crate::engine::violation::Violation;

mod cleanup;

/// Entries popped per ring per pass: bounds the work one node gets before the others.
pub(super) const BATCH: usize = 64;

/// Control commands taken per pass: a storm of requests from one node delays the data path
/// by a bounded amount, never stops it.
const COMMANDS_PER_PASS: usize = 64;

/// Why a node is being closed.
#[derive(Debug)]
pub(super) enum Doom {
    /// It broke the protocol.
    Violation(Violation),
    /// It left (its socket closed); logged at info.
    Left(String),
}

pub(crate) struct Router {
    pub(super) config: Arc<Config>,
    commands: mpsc::UnboundedReceiver<Command>,
    pub(super) stats_tx: watch::Sender<EngineStats>,
    pub(super) stats: EngineStats,
    pub(super) registry: Registry,
    pub(super) links: IdMap<NodeId, Link>,
    pub(super) sched: Scheduler,
    /// Nodes to close at the end of this pass.
    pub(super) doomed: Vec<(NodeId, Doom)>,
    /// Windows to return, per sender end: messages and bytes.
    pub(super) credits_due: IdMap<EndId, (u32, u64)>,
    /// Nodes whose receive arena freed memory this pass: their blocked ends are retried.
    pub(super) released: Vec<NodeId>,
    /// Nodes with entries in their outbox.
    pub(super) dirty: Vec<NodeId>,
    pub(super) scratch: Vec<RawDescriptor>,
    /// Bytes of orphaned payloads held in engine memory (bounded by `config.orphan_budget`).
    pub(super) orphaned: u64,
    /// Reused buffers for node ids.
    ids: Vec<NodeId>,
    /// When the engine started (the inspector's uptime).
    pub(super) started: Instant,
    /// Topics: publish/subscribe (topic_router.rs).
    pub(super) topics: TopicPlane,
    /// Queues: produce/consume/settle (queue_router.rs).
    pub(super) queues: QueuePlane,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("nodes", &self.links.len())
            .field("active", &self.sched.active.len())
            .finish_non_exhaustive()
    }
}

// ===== impl Router =====

impl Router {
    pub(crate) fn new(
        config: Arc<Config>,
        commands: mpsc::UnboundedReceiver<Command>,
        stats_tx: watch::Sender<EngineStats>,
        durable: Option<crate::engine::queue_router::Durable>,
    ) -> Self {
        let registry = Registry::new(Limits {
            credits: config.credits,
            window_bytes: config.window_bytes,
            max_sessions_per_node: config.max_sessions_per_node,
            nodes_per_uid: config.limits.nodes_per_uid,
            sessions_per_uid: config.limits.sessions_per_uid,
            sessions_per_opener: config.limits.sessions_per_opener,
        });
        let topics = TopicPlane::new(TopicsConfig {
            segment_size: config.topic_segment,
            ..TopicsConfig::default()
        });
        let queues = QueuePlane::new(
            QueuesConfig {
                memory_budget: config.queue_memory,
                durable: durable.is_some(),
            },
            durable,
        );
        Self {
            queues,
            config,
            commands,
            stats_tx,
            stats: EngineStats::default(),
            registry,
            links: IdMap::default(),
            sched: Scheduler::default(),
            doomed: Vec::new(),
            credits_due: IdMap::default(),
            released: Vec::new(),
            dirty: Vec::new(),
            scratch: vec![RawDescriptor::default(); BATCH],
            orphaned: 0,
            ids: Vec::new(),
            started: Instant::now(),
            topics,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut spins = 0u32;
        'outer: loop {
            self.queue_take_commits();
            for _ in 0..COMMANDS_PER_PASS {
                match self.commands.try_recv() {
                    Ok(command) => {
                        if !self.command(command) {
                            break 'outer;
                        }
                    }
                    Err(_) => break,
                }
            }
            if self.pass() {
                spins = 0;
                // Let the other tasks of the runtime run between passes.
                tokio::task::yield_now().await;
                continue;
            }
            // Nothing moved. While some node is still active (within its spin time), look
            // again after letting the runtime run its other tasks (never a busy-wait that
            // starves the host application), so a node that answers quickly finds the
            // engine awake: no doorbell, no wake-up.
            if !self.sched.active.is_empty() {
                spins = spins.wrapping_add(1);
                crate::spin::pause(spins).await;
                continue;
            }
            if !self.prepare_park() {
                continue;
            }
            if let Some(command) = self.park().await
                && !self.command(command)
            {
                break;
            }
        }
        self.shutdown();
    }

    /// One pass over the active nodes. Returns whether anything moved.
    fn pass(&mut self) -> bool {
        let now = Instant::now();
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        self.sched.take_rung(&mut ids);
        for &id in &ids {
            self.activate(id, now);
        }
        ids.clear();
        ids.extend_from_slice(&self.sched.active);
        let mut moved = false;
        for &id in &ids {
            moved |= self.drain_release(id, now);
        }
        for &id in &ids {
            moved |= self.drain_submit(id, now);
        }
        moved |= self.topic_tick(now);
        moved |= self.queue_pass(now);
        self.flush_credits();
        moved |= self.pump_released();
        self.flush_dirty();
        self.bury();
        let active = self.sched.active.len();
        // Spin time counts from the end of the pass that had the work, not its start: a pass
        // that copies a large payload must not use up the spin of the node that sent it.
        self.demote_idle(now, if moved { Instant::now() } else { now });
        if moved || active != self.sched.active.len() {
            self.publish();
        }
        self.ids = ids;
        moved
    }

    fn activate(&mut self, id: NodeId, now: Instant) {
        if let Some(link) = self.links.get_mut(&id) {
            link.activate(now);
            if !link.active {
                link.active = true;
                self.sched.active.push(id);
            }
        }
    }

    /// Demotes the active nodes that had no work for the spin time. A node that had work in
    /// the pass that started at `start` counts as busy until `now`, when the pass ended.
    fn demote_idle(&mut self, start: Instant, now: Instant) {
        let spin = self.config.spin;
        let mut i = 0;
        while i < self.sched.active.len() {
            let id = self.sched.active[i];
            let Some(link) = self.links.get_mut(&id) else {
                self.sched.active.swap_remove(i);
                continue;
            };
            if link.last_work >= start {
                link.last_work = now;
            }
            if now.saturating_duration_since(link.last_work) < spin {
                i += 1;
                continue;
            }
            match link.demote() {
                Ok(true) => {
                    link.active = false;
                    self.sched.active.swap_remove(i);
                }
                Ok(false) => {
                    link.last_work = now;
                    i += 1;
                }
                Err(e) => {
                    // Found again, and punished, by the next pass.
                    tracing::debug!(node = id, error = %e, "ring index while demoting");
                    i += 1;
                }
            }
        }
    }

    /// Before parking: every node with entries its full deliver ring cannot take asks to be
    /// rung when it makes room. False if there is room already (do not park).
    fn prepare_park(&mut self) -> bool {
        for &id in &self.dirty {
            if let Some(link) = self.links.get_mut(&id)
                && !link.outbox.is_empty()
                && !link.deliver.prepare_wait_space().unwrap_or(false)
            {
                return false;
            }
        }
        true
    }

    /// Sleeps until a demoted node rings, a command arrives, the durable store commits, or
    /// a topic's untether clock or a queue lease runs out (a timer exists only while such a
    /// clock runs: idle stays free).
    async fn park(&mut self) -> Option<Command> {
        let deadline = match (self.topics.next_deadline(), self.queues.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let commands = &mut self.commands;
        let sched = &self.sched;
        let (commits, arrived) = self.queues.commit_parts();
        let mut timer = deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        poll_fn(|cx| {
            if let Poll::Ready(command) = commands.poll_recv(cx) {
                return Poll::Ready(Some(command.unwrap_or(Command::Shutdown)));
            }
            if let Some(timer) = timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            if let Some(commits) = commits.as_mut()
                && let Poll::Ready(Some(committed)) = commits.poll_recv(cx)
            {
                arrived.push(committed);
                return Poll::Ready(None);
            }
            sched.poll_rung(cx).map(|()| None)
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
            Command::Unserve { node, req, service } => match self.registry.unserve(node, service) {
                Ok(name) => {
                    tracing::debug!(node, %name, "unserved");
                    self.reply(node, EngineFrame::UnserveOk { req });
                }
                Err(refusal) => self.refuse(node, req, refusal),
            },
            Command::Open {
                node,
                req,
                service,
                schema,
            } => self.open(node, req, &service, &schema),
            Command::Publish {
                node,
                req,
                topic,
                ty,
                history,
            } => self.topic_publish(node, req, &topic, &ty, history),
            Command::Unpublish {
                node,
                req,
                publisher,
            } => self.topic_unpublish(node, req, publisher),
            Command::Subscribe {
                node,
                req,
                pattern,
                ty,
                options,
            } => self.topic_subscribe(node, req, &pattern, &ty, options),
            Command::Unsubscribe {
                node,
                req,
                subscription,
            } => self.topic_unsubscribe(node, req, subscription),
            Command::DeclareQueue {
                node,
                req,
                name,
                spec,
            } => self.queue_declare(node, req, &name, &spec),
            Command::Produce {
                node,
                req,
                queue,
                ty,
            } => self.queue_produce(node, req, &queue, &ty),
            Command::Consume {
                node,
                req,
                queue,
                ty,
                prefetch,
                lease_ms,
            } => self.queue_consume(node, req, &queue, &ty, prefetch, lease_ms),
            Command::Segment { node, req, len } => self.lend_segment(node, req, len),
            Command::Gone {
                node,
                reason,
                violation,
            } => {
                if self.links.contains_key(&node) {
                    if violation {
                        // Nothing more it wrote is acted on.
                        self.doom(
                            node,
                            Violation::new(
                                crate::engine::violation::ViolationKind::Control,
                                reason,
                            ),
                        );
                    } else {
                        self.last_drain(node);
                        self.doomed.push((node, Doom::Left(reason)));
                    }
                    self.bury();
                }
            }
            Command::Inspect { reply } => {
                let _ = reply.send(Box::new(self.snapshot()));
                return true;
            }
            Command::Shutdown => return false,
        }
        self.publish();
        true
    }

    fn register(&mut self, r: Registration) {
        let h = r.handover;
        let bell_in = match h.engine_bell.into_async() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the doorbell");
                return;
            }
        };
        let link = Link::new(LinkParts {
            name: h.name.clone(),
            block: h.block,
            memory: h.memory,
            bell_in,
            bell_waker: self.sched.bell_waker(r.node),
            bell_out: h.node_bell,
            frames: r.frames,
        });
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the node");
                return;
            }
        };
        let _span = tracing::info_span!("register", node = r.node, name = %h.name).entered();
        if let Err((limit, max)) = self.registry.add_node(r.node, h.name.clone(), h.pid, h.uid) {
            tracing::warn!(node = r.node, name = %h.name, uid = h.uid, limit = limit.name(), max, "node refused by a limit");
            // Dropping the link closes its block and doorbells; the connection task sees
            // its frame channel close after this frame and closes the socket.
            let _ = link.frames.send(
                EngineFrame::Limit {
                    req: 0,
                    limit: limit as u16,
                    max,
                }
                .into(),
            );
            return;
        }
        tracing::info!(node = r.node, name = %h.name, pid = ?h.pid, uid = h.uid, "node joined");
        self.links.insert(r.node, link);
        self.activate(r.node, Instant::now());
    }

    fn reply(&self, node: NodeId, frame: EngineFrame) {
        if let Some(link) = self.links.get(&node) {
            let _ = link.frames.send(frame.into());
        }
    }

    fn refuse(&self, node: NodeId, req: u32, refusal: Refusal) {
        self.reply(
            node,
            EngineFrame::Error {
                req,
                code: refusal.code as u16,
                message: refusal.message,
            },
        );
    }

    fn serve(&mut self, node: NodeId, req: u32, service: String, schema: Schema) {
        let Some(link) = self.links.get(&node) else {
            return;
        };
        let _span = tracing::debug_span!("serve", node, name = %link.name, %service).entered();
        match self.registry.serve(node, service.clone(), schema) {
            Ok(id) => {
                tracing::debug!(node, %service, id, "serving");
                self.reply(node, EngineFrame::ServeOk { req, service: id });
            }
            Err(refusal) => self.refuse(node, req, refusal),
        }
    }

    fn open(&mut self, node: NodeId, req: u32, service: &str, schema: &Schema) {
        let Some(link) = self.links.get(&node) else {
            return;
        };
        let _span = tracing::debug_span!("open", node, name = %link.name, %service).entered();
        let opened = match self.registry.open(node, service, schema) {
            Ok(opened) => opened,
            Err(OpenRefusal::Refused(refusal)) => return self.refuse(node, req, refusal),
            Err(OpenRefusal::SchemaMismatch { server }) => {
                tracing::debug!(node, req, %service, "schema mismatch");
                return self.reply(node, EngineFrame::SchemaMismatch { req, server });
            }
            Err(OpenRefusal::Limit { limit, max }) => {
                tracing::info!(node, req, %service, limit = limit.name(), max, "open refused by a limit");
                let limit = limit as u16;
                return self.reply(node, EngineFrame::Limit { req, limit, max });
            }
        };
        tracing::debug!(
            client_end = opened.client_end,
            server_end = opened.server_end,
            server = opened.server_node,
            server_name = %opened.server_name,
            "session opened"
        );
        // Accept goes out before OpenOk, so the server knows the session before the client
        // can send on it (a node parks early deliveries for unknown sessions anyway).
        self.reply(
            opened.server_node,
            EngineFrame::Accept {
                service: opened.service,
                session: opened.server_end,
                peer: opened.client_name,
            },
        );
        self.reply(
            node,
            EngineFrame::OpenOk {
                req,
                session: opened.client_end,
                peer: opened.server_name,
            },
        );
    }

    pub(super) fn publish(&mut self) {
        self.stats.nodes = self.registry.node_count();
        self.stats.session_ends = self.registry.end_count();
        self.stats.services = self.registry.service_count();
        self.stats.active_nodes = self.sched.active.len();
        self.stats.topics = self.topics.topic_count();
        self.stats.topic_segments = self.topics.segment_count();
        self.stats.queues = self.queues.state.queue_count();
        self.stats.queue_bytes = self.queues.state.bytes();
        self.stats.queue_ready = self.queues.state.ready_count();
        self.stats.queue_unacked = self.queues.state.unacked_count();
        let totals = self.queues.state.totals();
        self.stats.queue_enqueued = totals.enqueued;
        self.stats.queue_redelivered = totals.redelivered;
        self.stats.queue_acked = totals.acked;
        self.stats.queue_dead_lettered = totals.dead_lettered;
        self.stats.memory_used = self.config.memory.used();
        self.stats.memory_budget = self.config.memory.max();
        self.stats.segments = self.config.memory.segments();
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
        // Ends are closed without notifying peers: every peer is going too.
        self.links.clear();
        self.registry.clear();
        self.sched.active.clear();
        self.stats.waiting = 0;
        self.stats.rx_in_use = 0;
        self.orphaned = 0;
        self.publish();
        tracing::info!("engine stopped");
    }
}
