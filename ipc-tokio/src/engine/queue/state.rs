//! [`Queues`]: every queue, producer and consumer of the engine, and what follows from each
//! event (see the module docs).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipc_core::control::{MessageType, QueueSpec};
use ipc_core::descriptor::queue_outcome;
use ipc_core::{IdMap, IdSet, QueueSettle};

use super::store::StoreOp;
use crate::engine::command::NodeId;

mod flow;

/// A queue's id (engine memory only).
pub(crate) type QueueId = u32;
/// A consumer's id, from the registry's session-end id space (what its entries name).
pub(crate) type ConsumerId = u32;
/// A producer's id, from the same space.
pub(crate) type ProducerId = u32;

/// The engine-wide settings of queues.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueuesConfig {
    /// Bytes of queued payloads the engine keeps in its memory, all queues together.
    pub(crate) memory_budget: u64,
    /// Whether durable queues can be declared (the engine has a store).
    pub(crate) durable: bool,
}

/// Why a queue request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueueError {
    #[error("no queue named {0:?} (declare it first)")]
    NoQueue(String),
    #[error("queue {0:?} exists with other settings")]
    Mismatch(String),
    #[error("queue {0:?} cannot be its own dead-letter queue")]
    SelfDeadLetter(String),
    #[error("queue {queue:?} carries {queue_type}, not {wanted}")]
    SchemaMismatch {
        queue: String,
        queue_type: MessageType,
        wanted: MessageType,
    },
    #[error(
        "queue {0:?} is durable but the engine has no data directory (EngineBuilder::data_dir, shmlinkd --data-dir)"
    )]
    NotDurable(String),
}

/// A breach by a consumer's node: the router closes that node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Hostile {
    #[error("settles for consumer {0}, which is not its own")]
    NotOwner(ConsumerId),
    #[error("settles delivery {tag} of consumer {consumer}, which was never delivered")]
    NeverDelivered { consumer: ConsumerId, tag: u64 },
}

/// A queue's options as the store keeps them: a version byte, then the fields in order,
/// little-endian (the store treats them as opaque bytes).
pub(crate) fn encode_spec(spec: &QueueSpec) -> Vec<u8> {
    let mut out = vec![1u8, u8::from(spec.durable)];
    out.extend_from_slice(&spec.max_length.to_le_bytes());
    out.push(u8::from(spec.reject_when_full));
    out.extend_from_slice(&spec.max_deliveries.to_le_bytes());
    out.extend_from_slice(&spec.lease_ms.to_le_bytes());
    let dead = spec.dead_letter.as_bytes();
    out.extend_from_slice(&(dead.len() as u16).to_le_bytes());
    out.extend_from_slice(dead);
    out
}

/// The other way; `None` for bytes this engine did not write.
pub(crate) fn decode_spec(bytes: &[u8]) -> Option<QueueSpec> {
    let (&version, rest) = bytes.split_first()?;
    if version != 1 || rest.len() < 24 {
        return None;
    }
    let flag = |b: u8| match b {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    };
    let u64_at = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
    let durable = flag(rest[0])?;
    let max_length = u64_at(1);
    let reject_when_full = flag(rest[9])?;
    let max_deliveries = u32::from_le_bytes(rest[10..14].try_into().expect("4 bytes"));
    let lease_ms = u64_at(14);
    let len = u16::from_le_bytes(rest[22..24].try_into().expect("2 bytes")) as usize;
    let dead = rest.get(24..24 + len)?;
    if rest.len() != 24 + len || max_deliveries == 0 {
        return None;
    }
    Some(QueueSpec {
        durable,
        max_length,
        reject_when_full,
        max_deliveries,
        dead_letter: String::from_utf8(dead.to_vec()).ok()?,
        lease_ms,
    })
}

/// What the router must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell producer `producer` one message was settled with `outcome`; after the commit of
    /// this batch's store operations when `durable`.
    Confirm {
        node: NodeId,
        producer: ProducerId,
        outcome: u32,
        durable: bool,
    },
    /// Answer consumer `consumer`'s settlement of `tag`.
    Settled {
        node: NodeId,
        consumer: ConsumerId,
        tag: u64,
        outcome: u32,
        durable: bool,
    },
    /// Consumer `consumer` is over: its last entry.
    Ended { node: NodeId, consumer: ConsumerId },
    /// Write this to the store.
    Store(StoreOp),
    /// Queue `queue` has room again: its held-back producers go on.
    Unblock { queue: QueueId },
}

/// Whether a produced message may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Produced {
    /// Room: copy it out and call [`Queues::accept`].
    Room,
    /// Full, and the queue refuses: confirm with `FULL`.
    Refused,
    /// Full, and the producer waits: keep its entry until `Unblock`.
    Blocked,
}

/// A ready message offered to a consumer ([`Queues::pump`]).
#[derive(Debug)]
pub(crate) struct Offer<'a> {
    pub(crate) node: NodeId,
    pub(crate) consumer: ConsumerId,
    pub(crate) payload: &'a Bytes,
    pub(crate) tag: u64,
    /// Its delivery count, this delivery included.
    pub(crate) count: u32,
    pub(crate) redelivered: bool,
}

/// How a settlement ended, for the engine's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettleOutcome {
    Done,
    NotHeld,
}

#[derive(Debug)]
struct Msg {
    id: u64,
    payload: Bytes,
    /// Deliveries so far.
    deliveries: u32,
    redelivered: bool,
}

/// What happened to the messages of one queue, or of every queue together, since the
/// engine started (messages recovered from the store at start are not counted as enqueued).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    /// Messages that entered: from producers, and dead letters from other queues.
    pub(crate) enqueued: u64,
    /// Deliveries to consumers, redeliveries included.
    pub(crate) delivered: u64,
    /// Of which deliveries of a message delivered before (or recovered from the store).
    pub(crate) redelivered: u64,
    /// Deliveries acknowledged.
    pub(crate) acked: u64,
    /// Messages that left for the dead-letter queue (rejected, or delivered
    /// `max_deliveries` times), or were dropped for having none.
    pub(crate) dead_lettered: u64,
}

/// One queue as the inspector sees it.
#[derive(Clone, Debug)]
pub(crate) struct QueueView {
    pub(crate) name: String,
    pub(crate) spec: QueueSpec,
    pub(crate) ty: Option<MessageType>,
    pub(crate) ready: u64,
    pub(crate) unacked: u64,
    pub(crate) bytes: u64,
    pub(crate) producers: u64,
    pub(crate) consumers: u64,
    pub(crate) counts: QueueCounts,
}

/// One consumer as the inspector sees it.
#[derive(Clone, Debug)]
pub(crate) struct ConsumerView {
    pub(crate) id: ConsumerId,
    pub(crate) node: NodeId,
    pub(crate) queue: String,
    pub(crate) prefetch: u32,
    pub(crate) lease: Option<Duration>,
    pub(crate) unacked: u64,
    pub(crate) delivered: u64,
    pub(crate) acked: u64,
    pub(crate) stalled: bool,
}

#[derive(Debug)]
struct Queue {
    name: String,
    spec: QueueSpec,
    ty: Option<MessageType>,
    ready: VecDeque<Msg>,
    /// Messages delivered and not settled.
    held: usize,
    next_id: u64,
    consumers: Vec<ConsumerId>,
    rr: usize,
    counts: QueueCounts,
}

impl Queue {
    fn len(&self) -> u64 {
        (self.ready.len() + self.held) as u64
    }
}

#[derive(Debug)]
struct Held {
    msg: Msg,
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct Consumer {
    node: NodeId,
    queue: QueueId,
    prefetch: u32,
    lease: Option<Duration>,
    next_tag: u64,
    held: HashMap<u64, Held>,
    /// Its node's receive arena had no room: skipped until the node releases memory.
    stalled: bool,
    /// Deliveries to it.
    delivered: u64,
    /// Of which it acknowledged.
    acked: u64,
}

/// Every queue, producer and consumer.
#[derive(Debug)]
pub(crate) struct Queues {
    config: QueuesConfig,
    queues: IdMap<QueueId, Queue>,
    by_name: HashMap<String, QueueId>,
    next_queue: QueueId,
    consumers: IdMap<ConsumerId, Consumer>,
    producers: IdMap<ProducerId, (NodeId, QueueId)>,
    /// Bytes of payloads kept, all queues together.
    bytes: u64,
    /// Lease deadlines, earliest first; an entry whose delivery was settled or renewed since
    /// is skipped when it comes up (lazy deletion).
    leases: BinaryHeap<Reverse<(Instant, ConsumerId, u64)>>,
    /// Queues whose ready messages may go to a consumer now.
    dirty: Vec<QueueId>,
    /// Queues with producers held back.
    blocked: IdSet<QueueId>,
    /// Nodes with a consumer waiting for room in their receive arena.
    stalled_nodes: IdSet<NodeId>,
    /// Every queue's counts together.
    totals: QueueCounts,
    /// Messages kept, all queues together: ready, and delivered not settled.
    kept: usize,
    /// Of which delivered and not settled.
    held: usize,
}

impl Queues {
    pub(crate) fn new(config: QueuesConfig) -> Self {
        Self {
            config,
            queues: IdMap::default(),
            by_name: HashMap::new(),
            next_queue: 1,
            consumers: IdMap::default(),
            producers: IdMap::default(),
            bytes: 0,
            leases: BinaryHeap::new(),
            dirty: Vec::new(),
            blocked: IdSet::default(),
            stalled_nodes: IdSet::default(),
            totals: QueueCounts::default(),
            kept: 0,
            held: 0,
        }
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Bytes of payloads the engine keeps.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages in queue `name`: ready, and delivered but not settled.
    #[cfg(test)]
    pub(crate) fn depth(&self, name: &str) -> Option<(usize, usize)> {
        let q = &self.queues[self.by_name.get(name)?];
        Some((q.ready.len(), q.held))
    }

    /// Messages ready for delivery, all queues together.
    pub(crate) fn ready_count(&self) -> usize {
        debug_assert_eq!(
            self.kept - self.held,
            self.queues.values().map(|q| q.ready.len()).sum::<usize>()
        );
        self.kept - self.held
    }

    /// Messages delivered and not yet settled, all queues together.
    pub(crate) fn unacked_count(&self) -> usize {
        self.held
    }

    /// Every queue's counts together, since the engine started.
    pub(crate) fn totals(&self) -> QueueCounts {
        self.totals
    }

    /// Every queue and consumer, for the inspector: O(queues + consumers + producers +
    /// messages held), on request only.
    pub(crate) fn views(&self) -> (Vec<QueueView>, Vec<ConsumerView>) {
        let mut producers: HashMap<QueueId, u64> = HashMap::new();
        for (_, queue) in self.producers.values() {
            *producers.entry(*queue).or_default() += 1;
        }
        let mut held_bytes: HashMap<QueueId, u64> = HashMap::new();
        for c in self.consumers.values() {
            let bytes: u64 = c.held.values().map(|h| h.msg.payload.len() as u64).sum();
            *held_bytes.entry(c.queue).or_default() += bytes;
        }
        let queues = self
            .queues
            .iter()
            .map(|(id, q)| QueueView {
                name: q.name.clone(),
                spec: q.spec.clone(),
                ty: q.ty.clone(),
                ready: q.ready.len() as u64,
                unacked: q.held as u64,
                bytes: q.ready.iter().map(|m| m.payload.len() as u64).sum::<u64>()
                    + held_bytes.get(id).copied().unwrap_or(0),
                producers: producers.get(id).copied().unwrap_or(0),
                consumers: q.consumers.len() as u64,
                counts: q.counts,
            })
            .collect();
        let consumers = self
            .consumers
            .iter()
            .map(|(id, c)| ConsumerView {
                id: *id,
                node: c.node,
                queue: self
                    .queues
                    .get(&c.queue)
                    .map(|q| q.name.clone())
                    .unwrap_or_default(),
                prefetch: c.prefetch,
                lease: c.lease,
                unacked: c.held.len() as u64,
                delivered: c.delivered,
                acked: c.acked,
                stalled: c.stalled,
            })
            .collect();
        (queues, consumers)
    }

    /// When the router must wake to expire a lease.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leases.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn is_producer(&self, id: ProducerId) -> bool {
        self.producers.contains_key(&id)
    }

    pub(crate) fn producer(&self, id: ProducerId) -> Option<(NodeId, QueueId)> {
        self.producers.get(&id).copied()
    }

    /// The producer and consumer ids of `node`.
    pub(crate) fn ids_of(&self, node: NodeId) -> Vec<u32> {
        let producers = self.producers.iter().filter(|(_, (n, _))| *n == node);
        let consumers = self.consumers.iter().filter(|(_, c)| c.node == node);
        producers
            .map(|(id, _)| *id)
            .chain(consumers.map(|(id, _)| *id))
            .collect()
    }

    // ===== setup =====

    /// Declares `name`: a new queue, or the same settings again. A dead-letter queue that
    /// does not exist yet is declared with it (same durability, default settings).
    pub(crate) fn declare(
        &mut self,
        name: &str,
        spec: &QueueSpec,
    ) -> Result<(QueueId, Vec<Action>), QueueError> {
        if let Some(&id) = self.by_name.get(name) {
            return if self.queues[&id].spec == *spec {
                Ok((id, Vec::new()))
            } else {
                Err(QueueError::Mismatch(name.to_owned()))
            };
        }
        if spec.dead_letter == name {
            return Err(QueueError::SelfDeadLetter(name.to_owned()));
        }
        if spec.durable && !self.config.durable {
            return Err(QueueError::NotDurable(name.to_owned()));
        }
        let mut actions = Vec::new();
        if !spec.dead_letter.is_empty() && !self.by_name.contains_key(&spec.dead_letter) {
            let dead = QueueSpec {
                durable: spec.durable,
                ..QueueSpec::default()
            };
            let (_, more) = self.declare(&spec.dead_letter.clone(), &dead)?;
            actions.extend(more);
        }
        let id = self.insert_queue(name, spec.clone());
        if spec.durable {
            actions.push(Action::Store(StoreOp::Declare {
                queue: name.to_owned(),
                options: encode_spec(spec),
            }));
        }
        Ok((id, actions))
    }

    fn insert_queue(&mut self, name: &str, spec: QueueSpec) -> QueueId {
        let id = self.next_queue;
        self.next_queue += 1;
        self.queues.insert(
            id,
            Queue {
                name: name.to_owned(),
                spec,
                ty: None,
                ready: VecDeque::new(),
                held: 0,
                next_id: 1,
                consumers: Vec::new(),
                rr: 0,
                counts: QueueCounts::default(),
            },
        );
        self.by_name.insert(name.to_owned(), id);
        id
    }

    /// A queue found in the store at start: every message in it is marked redelivered (it
    /// may have been delivered before the engine stopped).
    #[cfg_attr(not(test), allow(dead_code))] // the store's recovery calls it once the store lands
    pub(crate) fn recover(
        &mut self,
        name: &str,
        spec: QueueSpec,
        messages: Vec<(u64, Bytes, u32)>,
    ) -> QueueId {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => self.insert_queue(name, spec),
        };
        let q = self.queues.get_mut(&id).expect("inserted");
        for (msg_id, payload, deliveries) in messages {
            self.bytes += payload.len() as u64;
            self.kept += 1;
            q.next_id = q.next_id.max(msg_id + 1);
            q.ready.push_back(Msg {
                id: msg_id,
                payload,
                deliveries,
                redelivered: true,
            });
        }
        id
    }

    fn typed(&mut self, name: &str, ty: &MessageType) -> Result<QueueId, QueueError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| QueueError::NoQueue(name.to_owned()))?;
        let q = self.queues.get_mut(&id).expect("indexed");
        if *ty == MessageType::bytes() {
            return Ok(id);
        }
        match &q.ty {
            Some(t) if t != ty => Err(QueueError::SchemaMismatch {
                queue: name.to_owned(),
                queue_type: t.clone(),
                wanted: ty.clone(),
            }),
            Some(_) => Ok(id),
            None => {
                q.ty = Some(ty.clone());
                Ok(id)
            }
        }
    }

    /// Adds producer `id` (allocated by the registry) of `node` to queue `name`.
    pub(crate) fn add_producer(
        &mut self,
        node: NodeId,
        id: ProducerId,
        name: &str,
        ty: &MessageType,
    ) -> Result<(), QueueError> {
        let queue = self.typed(name, ty)?;
        self.producers.insert(id, (node, queue));
        Ok(())
    }

    pub(crate) fn remove_producer(&mut self, id: ProducerId) -> Option<NodeId> {
        self.producers.remove(&id).map(|(node, _)| node)
    }

    /// Adds consumer `id` of `node` to queue `name`; `lease_ms` 0 takes the queue's default.
    pub(crate) fn add_consumer(
        &mut self,
        node: NodeId,
        id: ConsumerId,
        name: &str,
        ty: &MessageType,
        prefetch: u32,
        lease_ms: u64,
    ) -> Result<(), QueueError> {
        let queue = self.typed(name, ty)?;
        let q = self.queues.get_mut(&queue).expect("typed");
        let lease_ms = if lease_ms == 0 {
            q.spec.lease_ms
        } else {
            lease_ms
        };
        q.consumers.push(id);
        self.consumers.insert(
            id,
            Consumer {
                node,
                queue,
                prefetch: prefetch.max(1),
                lease: (lease_ms > 0).then(|| Duration::from_millis(lease_ms)),
                next_tag: 1,
                held: HashMap::new(),
                stalled: false,
                delivered: 0,
                acked: 0,
            },
        );
        self.dirty.push(queue);
        Ok(())
    }

    /// Whether `id` is a consumer of `node`.
    pub(crate) fn owns_consumer(&self, node: NodeId, id: ConsumerId) -> bool {
        self.consumers.get(&id).is_some_and(|c| c.node == node)
    }

    /// Removes consumer `id`: everything it held returns to its queue's head at once,
    /// marked redelivered, in the order it was delivered. `ended` adds its `Ended` entry.
    pub(crate) fn remove_consumer(&mut self, id: ConsumerId, ended: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(c) = self.consumers.remove(&id) else {
            return actions;
        };
        if let Some(q) = self.queues.get_mut(&c.queue) {
            q.consumers.retain(|&x| x != id);
            q.held -= c.held.len();
            self.held -= c.held.len();
        }
        let mut held: Vec<(u64, Held)> = c.held.into_iter().collect();
        held.sort_unstable_by_key(|(tag, _)| Reverse(*tag));
        for (_, h) in held {
            self.give_back(c.queue, h.msg, &mut actions);
        }
        if ended {
            actions.push(Action::Ended {
                node: c.node,
                consumer: id,
            });
        }
        actions
    }

    /// `node` is gone: its producers and consumers go; every delivery it held returns.
    pub(crate) fn node_gone(&mut self, node: NodeId) -> Vec<Action> {
        self.producers.retain(|_, (n, _)| *n != node);
        let mut ids: Vec<ConsumerId> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.node == node)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let mut actions = Vec::new();
        for id in ids {
            actions.extend(self.remove_consumer(id, false));
        }
        actions
    }
}
