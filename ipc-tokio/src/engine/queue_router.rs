//! The router's queue plane: carries out what the [`Queues`] state machine decides.
//!
//! - Setup (`DeclareQueue`, `Produce`, `Consume`) arrives as commands. Producer and consumer
//!   ids come from the registry's session-end id space, like publishers, so a ring entry's
//!   session field names exactly one session end, publisher, producer or consumer.
//! - A producer's `DATA` entry: admitted (room in the queue and in the engine's queue
//!   memory), copied once out of its transmit arena into engine memory, `TX_DONE`, and
//!   confirmed (`QUEUE_CONFIRM`) at once for an in-memory queue, after the commit for a
//!   durable one. A full queue that waits parks the producer's entries here, in order, until
//!   an `Unblock`; one that refuses confirms with `FULL`.
//! - Deliveries: each pass, the queues that changed hand ready messages to consumers with
//!   room; the payload is copied into the consumer's receive arena (`QUEUE_DATA`), which the
//!   node releases like any other receive sub-block. A node whose arena is full has its
//!   consumers skipped until it releases memory.
//! - Settlements (`QUEUE_ACK`, `QUEUE_NACK`, `QUEUE_REJECT`, `QUEUE_EXTEND`) and cancels
//!   travel on the submit ring: ordered after the consumer's earlier entries, batched, and
//!   free of syscalls while both sides are busy, which matters because there is one per
//!   message. Each gets a `QUEUE_SETTLED` answer. A settlement for a consumer that is not the
//!   node's, or for a tag never delivered to it, closes that node (an honest node never sends
//!   one); a double settlement or one after the lease expired is answered `NOT_HELD` and
//!   changes nothing, since an honest but slow consumer can send it.
//! - Leases: [`Router::queue_tick`] runs every pass; the router's park wakes at the earliest
//!   lease deadline only while a lease runs (idle stays free).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use ipc_core::control::{EngineFrame, ErrorCode, MessageType, QueueSpec};
use ipc_core::descriptor::queue_outcome;
use ipc_core::{AllocError, IdMap, QueueSubmission, RawDescriptor, kind, validate_queue_submit};

use crate::engine::command::{NodeId, Outbound};
use tokio::sync::mpsc;

use crate::engine::queue::store::{Committed, Store, StoreError, StoreOp};
use crate::engine::queue::{
    Action, Produced, ProducerId, QueueError, QueueId, Queues, QueuesConfig, SettleOutcome,
    decode_spec,
};
use crate::engine::router::Router;
use crate::engine::violation::{Violation, ViolationKind};

/// A producer's entry waiting for room: its transmit offset and length.
type Parked = (u64, u32);

/// The router's queue state.
#[derive(Debug)]
pub(crate) struct QueuePlane {
    pub(super) state: Queues,
    /// Entries of held-back producers, in order.
    parked: IdMap<ProducerId, VecDeque<Parked>>,
    /// Store operations of this pass, committed together (group commit).
    batch: Vec<StoreOp>,
    /// Answers that wait for this pass's batch to be committed.
    batch_answers: Vec<(NodeId, RawDescriptor)>,
    /// Answers waiting for the commit of their ticket, oldest first.
    pending: VecDeque<(u64, Vec<(NodeId, RawDescriptor)>)>,
    next_ticket: u64,
    /// The durable store (with a data directory), its commits, and commits received while
    /// parked.
    store: Option<Store>,
    commits: Option<mpsc::UnboundedReceiver<Committed>>,
    arrived: Vec<Committed>,
}

/// One recovered queue: its name, its spec, and its messages `(id, payload, deliveries)` in
/// id order.
type RecoveredQueueSpec = (String, QueueSpec, Vec<(u64, Bytes, u32)>);

/// The opened store of an engine with a data directory, and what it recovered.
#[derive(Debug)]
pub(crate) struct Durable {
    store: Store,
    commits: mpsc::UnboundedReceiver<Committed>,
    recovered: Vec<RecoveredQueueSpec>,
}

impl Durable {
    /// Opens the store in `dir` and recovers every queue (blocking: at engine start).
    ///
    /// # Errors
    ///
    /// The store cannot be opened or read, or holds options this engine cannot read.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let (done, commits) = mpsc::unbounded_channel();
        let (store, recovered) = Store::open(dir, done)?;
        let mut queues = Vec::with_capacity(recovered.queues.len());
        for q in recovered.queues {
            let spec = decode_spec(&q.options).ok_or_else(|| StoreError::Corrupted {
                path: store.path().to_owned(),
                detail: format!("queue {:?} has options this engine cannot read", q.name),
            })?;
            queues.push((q.name, spec, q.messages));
        }
        Ok(Self {
            store,
            commits,
            recovered: queues,
        })
    }
}

impl QueuePlane {
    pub(crate) fn new(config: QueuesConfig, durable: Option<Durable>) -> Self {
        let mut state = Queues::new(config);
        let (store, commits) = match durable {
            Some(d) => {
                let mut messages = 0;
                for (name, spec, recovered) in d.recovered {
                    messages += recovered.len();
                    state.recover(&name, spec, recovered);
                }
                tracing::info!(path = %d.store.path().display(), queues = state.queue_count(), messages, "durable queues recovered");
                (Some(d.store), Some(d.commits))
            }
            None => (None, None),
        };
        Self {
            state,
            parked: IdMap::default(),
            batch: Vec::new(),
            batch_answers: Vec::new(),
            pending: VecDeque::new(),
            next_ticket: 0,
            store,
            commits,
            arrived: Vec::new(),
        }
    }

    /// The commit channel and the buffer for what the park receives from it.
    pub(crate) fn commit_parts(
        &mut self,
    ) -> (
        &mut Option<mpsc::UnboundedReceiver<Committed>>,
        &mut Vec<Committed>,
    ) {
        (&mut self.commits, &mut self.arrived)
    }

    /// When the router must wake to expire a lease.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.state.next_deadline()
    }
}

fn outcome_entry(kind: u16, session: u32, aux: u64, outcome: u32) -> RawDescriptor {
    RawDescriptor::queue_outcome(kind, session, aux, outcome)
}

impl Router {
    // ===== setup =====

    fn queue_reply(&self, node: NodeId, frame: EngineFrame) {
        if let Some(link) = self.links.get(&node) {
            let _ = link.frames.send(Outbound::from(frame));
        }
    }

    fn queue_refuse(&self, node: NodeId, req: u32, e: &QueueError) {
        let code = match e {
            QueueError::NoQueue(_) => ErrorCode::NoQueue,
            QueueError::Mismatch(_) | QueueError::SelfDeadLetter(_) => ErrorCode::QueueMismatch,
            QueueError::SchemaMismatch { .. } => ErrorCode::SchemaMismatch,
            QueueError::NotDurable(_) => ErrorCode::NotDurable,
        };
        self.queue_reply(
            node,
            EngineFrame::Error {
                req,
                code: code as u16,
                message: e.to_string(),
            },
        );
    }

    pub(super) fn queue_declare(&mut self, node: NodeId, req: u32, name: &str, spec: &QueueSpec) {
        if !self.links.contains_key(&node) {
            return;
        }
        match self.queues.state.declare(name, spec) {
            Ok((id, actions)) => {
                tracing::debug!(node, queue = %name, id, durable = spec.durable, "queue declared");
                self.queue_actions(actions);
                self.queue_reply(node, EngineFrame::QueueOk { req, id });
            }
            Err(e) => self.queue_refuse(node, req, &e),
        }
    }

    pub(super) fn queue_produce(&mut self, node: NodeId, req: u32, queue: &str, ty: &MessageType) {
        if !self.links.contains_key(&node) {
            return;
        }
        let id = self.registry.add_publisher(node);
        match self.queues.state.add_producer(node, id, queue, ty) {
            Ok(()) => {
                tracing::debug!(node, %queue, producer = id, "producing");
                self.queue_reply(node, EngineFrame::QueueOk { req, id });
            }
            Err(e) => {
                self.registry.remove_publisher(id);
                self.queue_refuse(node, req, &e);
            }
        }
    }

    pub(super) fn queue_consume(
        &mut self,
        node: NodeId,
        req: u32,
        queue: &str,
        ty: &MessageType,
        prefetch: u32,
        lease_ms: u64,
    ) {
        if !self.links.contains_key(&node) {
            return;
        }
        let id = self.registry.add_publisher(node);
        match self
            .queues
            .state
            .add_consumer(node, id, queue, ty, prefetch, lease_ms)
        {
            Ok(()) => {
                tracing::debug!(node, %queue, consumer = id, prefetch, "consuming");
                // The reply goes out before any delivery can be pushed (at the pass's pump).
                self.queue_reply(node, EngineFrame::QueueOk { req, id });
            }
            Err(e) => {
                self.registry.remove_publisher(id);
                self.queue_refuse(node, req, &e);
            }
        }
    }

    // ===== the data path =====

    /// Whether `id` is a producer (its `DATA` entries go to a queue).
    pub(super) fn is_producer(&self, id: u32) -> bool {
        self.queues.state.is_producer(id)
    }

    /// A `DATA` entry of producer `producer`, owned by `node`.
    pub(super) fn queue_data(
        &mut self,
        node: NodeId,
        producer: ProducerId,
        offset: u64,
        len: u32,
    ) -> Result<(), Violation> {
        match self.queues.state.producer(producer) {
            Some((owner, _)) if owner == node => {}
            _ => {
                return Err(Violation::new(
                    ViolationKind::Queue,
                    format!("data for producer {producer}, which is not its own"),
                ));
            }
        }
        if let Some(parked) = self.queues.parked.get_mut(&producer) {
            parked.push_back((offset, len));
            return Ok(());
        }
        if !self.try_produce(node, producer, offset, len)? {
            self.queues
                .parked
                .insert(producer, VecDeque::from([(offset, len)]));
        }
        Ok(())
    }

    /// Takes one entry if the queue has room. False: held back (nothing changed).
    fn try_produce(
        &mut self,
        node: NodeId,
        producer: ProducerId,
        offset: u64,
        len: u32,
    ) -> Result<bool, Violation> {
        match self.queues.state.admit(producer, len) {
            Produced::Blocked => return Ok(false),
            Produced::Refused => {
                let entry = outcome_entry(kind::QUEUE_CONFIRM, producer, 1, queue_outcome::FULL);
                self.push_out(node, entry);
            }
            Produced::Room => {
                let link = &self.links[&node];
                let payload = ipc_core::copy_out(&link.block, offset, len).map_err(|e| {
                    Violation::new(
                        ViolationKind::Payload,
                        format!("queue payload outside its arena: {e}"),
                    )
                })?;
                let actions = self.queues.state.accept(producer, Bytes::from(payload));
                self.queue_actions(actions);
            }
        }
        self.tx_done(node, len, offset);
        Ok(true)
    }

    /// Takes what producer `producer` parked, in order, as far as its queue has room.
    fn retry_producer(&mut self, producer: ProducerId) {
        let Some(mut parked) = self.queues.parked.remove(&producer) else {
            return;
        };
        let Some((node, _)) = self.queues.state.producer(producer) else {
            return;
        };
        while let Some((offset, len)) = parked.pop_front() {
            match self.try_produce(node, producer, offset, len) {
                Ok(true) => {}
                Ok(false) => {
                    parked.push_front((offset, len));
                    break;
                }
                Err(v) => {
                    self.doom(node, v);
                    return;
                }
            }
        }
        if !parked.is_empty() {
            self.queues.parked.insert(producer, parked);
        }
    }

    /// A queue entry of `node`'s submit ring: a settlement or a cancel.
    pub(super) fn queue_entry(
        &mut self,
        node: NodeId,
        raw: &RawDescriptor,
    ) -> Result<(), Violation> {
        let entry = validate_queue_submit(raw)
            .map_err(|e| Violation::new(ViolationKind::Descriptor, format!("queue entry: {e}")))?;
        match entry {
            QueueSubmission::Settle { consumer, tag, how } => {
                let (outcome, actions) = self
                    .queues
                    .state
                    .settle(node, consumer, tag, how, Instant::now())
                    .map_err(|e| Violation::new(ViolationKind::Queue, e.to_string()))?;
                if outcome == SettleOutcome::Done {
                    self.stats.queue_settled += 1;
                }
                self.queue_actions(actions);
            }
            QueueSubmission::Cancel { id } => self.queue_cancel(node, id)?,
        }
        Ok(())
    }

    fn queue_cancel(&mut self, node: NodeId, id: u32) -> Result<(), Violation> {
        if self.queues.state.owns_consumer(node, id) {
            let actions = self.queues.state.remove_consumer(id, true);
            self.registry.remove_publisher(id);
            self.queue_actions(actions);
            return Ok(());
        }
        match self.queues.state.producer(id) {
            Some((owner, _)) if owner == node => {
                // Entries it parked were sent before its cancel: they are taken if there is
                // room now, the rest go back to the producer unconfirmed.
                self.retry_producer(id);
                if let Some(parked) = self.queues.parked.remove(&id) {
                    for (offset, len) in parked {
                        self.tx_done(node, len, offset);
                    }
                }
                self.queues.state.remove_producer(id);
                self.registry.remove_publisher(id);
                Ok(())
            }
            Some(_) => Err(Violation::new(
                ViolationKind::Queue,
                format!("cancels producer {id}, which is not its own"),
            )),
            None if self.queues.state.owns_consumer(node, id) => Ok(()),
            // Already gone (or never more than an answer it gave up on): nothing to do.
            None => Ok(()),
        }
    }

    /// Once per pass: expires leases, hands ready messages to consumers, submits this
    /// pass's store batch. Returns whether anything moved.
    pub(super) fn queue_pass(&mut self, now: Instant) -> bool {
        let mut moved = false;
        if self
            .queues
            .state
            .next_deadline()
            .is_some_and(|at| at <= now)
        {
            let (expired, actions) = self.queues.state.tick(now);
            self.stats.queue_expired += expired as u64;
            moved |= expired > 0;
            self.queue_actions(actions);
        }
        let mut out: Vec<(NodeId, RawDescriptor)> = Vec::new();
        let links = &mut self.links;
        let stats = &mut self.stats;
        let delivered = self.queues.state.pump(
            |node, consumer, payload, tag, count, redelivered| {
                let Some(link) = links.get_mut(&node) else {
                    return false;
                };
                let len = payload.len() as u32;
                let allocation = match link.rx.alloc(u64::from(len)) {
                    Ok(a) => a,
                    Err(AllocError::Full { .. }) => return false,
                    Err(e) => {
                        // Larger than the consumer's arena can ever hold: it waits for good,
                        // visible in the queue's depth and the log.
                        tracing::warn!(node, consumer, len, error = %e, "a queued message cannot fit this consumer's receive arena");
                        return false;
                    }
                };
                if let Err(e) = ipc_core::copy_in(&link.block, allocation.offset, payload) {
                    let _ = link.rx.free(allocation.offset);
                    tracing::error!(node, error = %e, "cannot copy a queued message");
                    return false;
                }
                let (before, now) = link.publish_rx();
                stats.rx_in_use = (stats.rx_in_use + now).saturating_sub(before);
                out.push((
                    node,
                    RawDescriptor::queue_data(
                        consumer,
                        allocation.offset,
                        len,
                        tag,
                        count,
                        redelivered,
                    ),
                ));
                true
            },
            now,
        );
        self.stats.queue_delivered += delivered as u64;
        moved |= delivered > 0;
        for (node, entry) in out {
            self.push_out(node, entry);
        }
        self.queue_commit_batch();
        moved
    }

    /// `node` released receive memory: its consumers waiting for room are tried again.
    pub(super) fn queue_node_released(&mut self, node: NodeId) {
        self.queues.state.node_released(node);
    }

    /// `node` is being buried: its producers and consumers go, and every delivery it held
    /// returns to its queue's head at once, marked redelivered.
    pub(super) fn queue_node_gone(&mut self, node: NodeId) {
        let producers: Vec<ProducerId> = self
            .queues
            .parked
            .keys()
            .copied()
            .filter(|&p| {
                self.queues
                    .state
                    .producer(p)
                    .is_some_and(|(n, _)| n == node)
            })
            .collect();
        for p in producers {
            // Its block goes with it: the loans need no TX_DONE.
            self.queues.parked.remove(&p);
        }
        for id in self.queues.state.ids_of(node) {
            self.registry.remove_publisher(id);
        }
        let actions = self.queues.state.node_gone(node);
        self.queue_actions(actions);
    }

    // ===== actions =====

    fn queue_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Confirm {
                    node,
                    producer,
                    outcome,
                    durable,
                } => {
                    let entry = outcome_entry(kind::QUEUE_CONFIRM, producer, 1, outcome);
                    if durable {
                        self.queues.batch_answers.push((node, entry));
                    } else {
                        self.stats.queue_confirmed += 1;
                        self.push_out(node, entry);
                    }
                }
                Action::Settled {
                    node,
                    consumer,
                    tag,
                    outcome,
                    durable,
                } => {
                    let entry = outcome_entry(kind::QUEUE_SETTLED, consumer, tag, outcome);
                    if durable {
                        self.queues.batch_answers.push((node, entry));
                    } else {
                        self.push_out(node, entry);
                    }
                }
                Action::Ended { node, consumer } => {
                    self.push_out(node, RawDescriptor::control(kind::QUEUE_ENDED, consumer, 0));
                }
                Action::Store(op) => self.queues.batch.push(op),
                Action::Unblock { queue } => self.queue_unblock(queue),
            }
        }
    }

    fn queue_unblock(&mut self, queue: QueueId) {
        let producers: Vec<ProducerId> = self
            .queues
            .parked
            .keys()
            .copied()
            .filter(|&p| {
                self.queues
                    .state
                    .producer(p)
                    .is_some_and(|(_, q)| q == queue)
            })
            .collect();
        for p in producers {
            self.retry_producer(p);
        }
    }

    /// Hands this pass's store operations to the store as one ticket; their answers go out
    /// when it is committed.
    fn queue_commit_batch(&mut self) {
        if self.queues.batch.is_empty() && self.queues.batch_answers.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.queues.batch);
        let answers = std::mem::take(&mut self.queues.batch_answers);
        if ops.is_empty() {
            // Nothing to write: the answers wait only for what is already being written.
            match self.queues.pending.back_mut() {
                Some((_, earlier)) => earlier.extend(answers),
                None => {
                    for (node, entry) in answers {
                        self.push_out(node, entry);
                    }
                }
            }
            return;
        }
        self.queues.next_ticket += 1;
        let ticket = self.queues.next_ticket;
        self.queues.pending.push_back((ticket, answers));
        self.store_submit(ticket, ops);
    }

    /// Hands `ops` to the store under `ticket` (it never blocks). Without a store no queue
    /// is durable, so there is nothing to write and the answers go out at once.
    fn store_submit(&mut self, ticket: u64, ops: Vec<StoreOp>) {
        match &self.queues.store {
            Some(store) => store.submit(ticket, ops),
            None => {
                debug_assert!(false, "durable queues need a store");
                self.queue_committed(ticket, false);
            }
        }
    }

    /// Takes the store's reports: the answers of committed tickets go out.
    pub(super) fn queue_take_commits(&mut self) {
        let mut arrived = std::mem::take(&mut self.queues.arrived);
        if let Some(commits) = self.queues.commits.as_mut() {
            while let Ok(committed) = commits.try_recv() {
                arrived.push(committed);
            }
        }
        for committed in arrived.drain(..) {
            if let Err(e) = &committed.result {
                tracing::error!(upto = committed.upto, error = %e, "the durable queue store failed a commit: its producers and consumers are told");
            }
            self.queue_committed(committed.upto, committed.result.is_ok());
        }
        self.queues.arrived = arrived;
    }

    /// The store committed every ticket up to `upto` (or failed to): their answers go out,
    /// turned into `STORE_FAILED` on failure.
    pub(super) fn queue_committed(&mut self, upto: u64, ok: bool) {
        while self
            .queues
            .pending
            .front()
            .is_some_and(|(ticket, _)| *ticket <= upto)
        {
            let (_, answers) = self.queues.pending.pop_front().expect("checked");
            for (node, mut entry) in coalesce(answers) {
                if !ok {
                    entry.len = queue_outcome::STORE_FAILED;
                } else if entry.kind == kind::QUEUE_CONFIRM {
                    self.stats.queue_confirmed += entry.aux;
                }
                self.push_out(node, entry);
            }
        }
    }
}

/// Merges consecutive confirms of one producer with one outcome into one entry.
fn coalesce(answers: Vec<(NodeId, RawDescriptor)>) -> Vec<(NodeId, RawDescriptor)> {
    let mut out: Vec<(NodeId, RawDescriptor)> = Vec::with_capacity(answers.len());
    for (node, entry) in answers {
        if let Some((_, last)) = out.last_mut()
            && entry.kind == kind::QUEUE_CONFIRM
            && last.kind == kind::QUEUE_CONFIRM
            && last.session == entry.session
            && last.len == entry.len
        {
            last.aux += entry.aux;
            continue;
        }
        out.push((node, entry));
    }
    out
}
