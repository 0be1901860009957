//! [`Queues`] as messages move: produced, offered to consumers, settled, expired, given back,
//! dead-lettered.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Queues {
    // ===== producing =====

    /// Whether a message of `len` bytes from `producer` may come in now.
    pub(crate) fn admit(&mut self, producer: ProducerId, len: u32) -> Produced {
        let Some(&(_, queue)) = self.producers.get(&producer) else {
            return Produced::Refused;
        };
        let q = &self.queues[&queue];
        let over_length = q.spec.max_length > 0 && q.len() >= q.spec.max_length;
        // One message always fits an empty engine: the budget never refuses for good.
        let over_budget = self.bytes > 0 && self.bytes + u64::from(len) > self.config.memory_budget;
        if !(over_length || over_budget) {
            return Produced::Room;
        }
        if q.spec.reject_when_full {
            Produced::Refused
        } else {
            self.blocked.insert(queue);
            Produced::Blocked
        }
    }

    /// Takes a message admitted by [`Queues::admit`].
    pub(crate) fn accept(&mut self, producer: ProducerId, payload: Bytes) -> Vec<Action> {
        let Some(&(node, queue)) = self.producers.get(&producer) else {
            return Vec::new();
        };
        let q = self.queues.get_mut(&queue).expect("a producer's queue");
        let id = q.next_id;
        q.next_id += 1;
        self.bytes += payload.len() as u64;
        self.kept += 1;
        let durable = q.spec.durable;
        let mut actions = Vec::with_capacity(2);
        if durable {
            actions.push(Action::Store(StoreOp::Put {
                queue: q.name.clone(),
                id,
                payload: payload.clone(),
            }));
        }
        q.ready.push_back(Msg {
            id,
            payload,
            deliveries: 0,
            redelivered: false,
        });
        q.counts.enqueued += 1;
        self.totals.enqueued += 1;
        actions.push(Action::Confirm {
            node,
            producer,
            outcome: queue_outcome::OK,
            durable,
        });
        self.mark_dirty(queue);
        actions
    }

    pub(super) fn mark_dirty(&mut self, queue: QueueId) {
        if self.dirty.last() != Some(&queue) {
            self.dirty.push(queue);
        }
    }

    // ===== delivering =====

    /// Hands ready messages of the queues that changed to consumers with room, round-robin.
    /// `deliver` places an [`Offer`] in the consumer's node and says whether it could
    /// (false: no room in that node's receive arena now; the consumer is skipped until
    /// [`Queues::node_released`]).
    pub(crate) fn pump(
        &mut self,
        mut deliver: impl FnMut(&Offer<'_>) -> bool,
        now: Instant,
    ) -> usize {
        let mut delivered = 0;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for queue in dirty.drain(..) {
            delivered += self.pump_queue(queue, &mut deliver, now);
        }
        self.dirty = dirty;
        delivered
    }

    pub(super) fn pump_queue(
        &mut self,
        queue: QueueId,
        deliver: &mut impl FnMut(&Offer<'_>) -> bool,
        now: Instant,
    ) -> usize {
        let Some(q) = self.queues.get_mut(&queue) else {
            return 0;
        };
        let n = q.consumers.len();
        let mut delivered = 0;
        let mut misses = 0;
        while !q.ready.is_empty() && misses < n {
            let id = q.consumers[q.rr % n];
            q.rr = q.rr.wrapping_add(1);
            let c = self.consumers.get_mut(&id).expect("a queue's consumer");
            if c.stalled || c.held.len() >= c.prefetch as usize {
                misses += 1;
                continue;
            }
            let mut msg = q.ready.pop_front().expect("not empty");
            let count = msg.deliveries.saturating_add(1);
            let tag = c.next_tag;
            let offer = Offer {
                node: c.node,
                consumer: id,
                payload: &msg.payload,
                tag,
                count,
                redelivered: msg.redelivered,
            };
            if !deliver(&offer) {
                q.ready.push_front(msg);
                c.stalled = true;
                self.stalled_nodes.insert(c.node);
                misses += 1;
                continue;
            }
            misses = 0;
            delivered += 1;
            let redelivered = u64::from(msg.redelivered);
            q.counts.delivered += 1;
            q.counts.redelivered += redelivered;
            self.totals.delivered += 1;
            self.totals.redelivered += redelivered;
            c.delivered += 1;
            msg.deliveries = count;
            c.next_tag += 1;
            let deadline = c.lease.map(|lease| now + lease);
            if let Some(at) = deadline {
                self.leases.push(Reverse((at, id, tag)));
            }
            c.held.insert(tag, Held { msg, deadline });
            q.held += 1;
            self.held += 1;
        }
        delivered
    }

    /// `node` released receive memory: its stalled consumers are tried again.
    pub(crate) fn node_released(&mut self, node: NodeId) {
        if !self.stalled_nodes.remove(&node) {
            return;
        }
        for c in self.consumers.values_mut() {
            if c.node == node && c.stalled {
                c.stalled = false;
                if self.dirty.last() != Some(&c.queue) {
                    self.dirty.push(c.queue);
                }
            }
        }
    }

    // ===== settling =====

    /// Consumer `consumer` of `node` settles delivery `tag`.
    ///
    /// # Errors
    ///
    /// [`Hostile`] when the consumer is not the node's or the tag was never delivered to it:
    /// an honest node never sends either. A tag delivered and no longer held (its lease
    /// expired, or settled already) is answered `NOT_HELD` and changes nothing.
    pub(crate) fn settle(
        &mut self,
        node: NodeId,
        consumer: ConsumerId,
        tag: u64,
        how: QueueSettle,
        now: Instant,
    ) -> Result<(SettleOutcome, Vec<Action>), Hostile> {
        let c = match self.consumers.get_mut(&consumer) {
            Some(c) if c.node == node => c,
            _ => return Err(Hostile::NotOwner(consumer)),
        };
        if tag == 0 || tag >= c.next_tag {
            return Err(Hostile::NeverDelivered { consumer, tag });
        }
        let queue = c.queue;
        let durable = self.queues[&queue].spec.durable;
        let mut actions = Vec::with_capacity(2);
        let settled = |outcome, durable| Action::Settled {
            node,
            consumer,
            tag,
            outcome,
            durable,
        };
        if how == QueueSettle::Extend {
            let Some(held) = c.held.get_mut(&tag) else {
                actions.push(settled(queue_outcome::NOT_HELD, false));
                return Ok((SettleOutcome::NotHeld, actions));
            };
            if let Some(lease) = c.lease {
                held.deadline = Some(now + lease);
                self.leases.push(Reverse((now + lease, consumer, tag)));
            }
            actions.push(settled(queue_outcome::OK, false));
            return Ok((SettleOutcome::Done, actions));
        }
        let Some(held) = c.held.remove(&tag) else {
            actions.push(settled(queue_outcome::NOT_HELD, false));
            return Ok((SettleOutcome::NotHeld, actions));
        };
        self.queues.get_mut(&queue).expect("consumer's queue").held -= 1;
        self.held -= 1;
        match how {
            QueueSettle::Ack => {
                c.acked += 1;
                self.queues
                    .get_mut(&queue)
                    .expect("consumer's queue")
                    .counts
                    .acked += 1;
                self.totals.acked += 1;
                self.drop_msg(queue, held.msg, &mut actions);
            }
            QueueSettle::Nack => self.give_back(queue, held.msg, &mut actions),
            QueueSettle::Reject | QueueSettle::Extend => {
                self.dead_letter(queue, held.msg, &mut actions);
            }
        }
        self.mark_dirty(queue);
        actions.push(settled(queue_outcome::OK, durable));
        Ok((SettleOutcome::Done, actions))
    }

    /// Expires the leases due by `now`: those deliveries return to their queue's head.
    /// Returns how many expired.
    pub(crate) fn tick(&mut self, now: Instant) -> (usize, Vec<Action>) {
        let mut actions = Vec::new();
        let mut expired = 0;
        while let Some(&Reverse((at, consumer, tag))) = self.leases.peek() {
            if at > now {
                break;
            }
            self.leases.pop();
            let Some(c) = self.consumers.get_mut(&consumer) else {
                continue;
            };
            let current = c.held.get(&tag).and_then(|h| h.deadline);
            if current != Some(at) {
                continue; // settled or renewed since
            }
            let held = c.held.remove(&tag).expect("found");
            let queue = c.queue;
            self.queues.get_mut(&queue).expect("consumer's queue").held -= 1;
            self.held -= 1;
            self.give_back(queue, held.msg, &mut actions);
            expired += 1;
        }
        (expired, actions)
    }

    // ===== where a message goes =====

    /// To the head of its queue, marked redelivered; to the dead-letter queue once it was
    /// delivered `max_deliveries` times.
    pub(super) fn give_back(&mut self, queue: QueueId, mut msg: Msg, actions: &mut Vec<Action>) {
        let q = self.queues.get_mut(&queue).expect("live queue");
        if msg.deliveries >= q.spec.max_deliveries {
            self.dead_letter(queue, msg, actions);
            return;
        }
        if q.spec.durable {
            actions.push(Action::Store(StoreOp::Deliveries {
                queue: q.name.clone(),
                id: msg.id,
                count: msg.deliveries,
            }));
        }
        msg.redelivered = true;
        q.ready.push_front(msg);
        self.mark_dirty(queue);
    }

    /// Gone for good (acknowledged, or rejected without a dead-letter queue).
    pub(super) fn drop_msg(&mut self, queue: QueueId, msg: Msg, actions: &mut Vec<Action>) {
        let q = &self.queues[&queue];
        if q.spec.durable {
            actions.push(Action::Store(StoreOp::Ack {
                queue: q.name.clone(),
                id: msg.id,
            }));
        }
        self.bytes -= msg.payload.len() as u64;
        self.kept -= 1;
        self.unblock(queue, actions);
    }

    pub(super) fn dead_letter(&mut self, queue: QueueId, msg: Msg, actions: &mut Vec<Action>) {
        let q = self.queues.get_mut(&queue).expect("live queue");
        q.counts.dead_lettered += 1;
        self.totals.dead_lettered += 1;
        let (from, from_durable) = (q.name.clone(), q.spec.durable);
        let Some(&to) = self.by_name.get(&q.spec.dead_letter) else {
            tracing::debug!(queue = %from, id = msg.id, "dropped: no dead-letter queue");
            return self.drop_msg(queue, msg, actions);
        };
        let dl = self.queues.get_mut(&to).expect("indexed");
        let new_id = dl.next_id;
        dl.next_id += 1;
        match (from_durable, dl.spec.durable) {
            (true, true) => actions.push(Action::Store(StoreOp::DeadLetter {
                from,
                id: msg.id,
                to: dl.name.clone(),
                new_id,
            })),
            (true, false) => actions.push(Action::Store(StoreOp::Ack {
                queue: from,
                id: msg.id,
            })),
            (false, true) => actions.push(Action::Store(StoreOp::Put {
                queue: dl.name.clone(),
                id: new_id,
                payload: msg.payload.clone(),
            })),
            (false, false) => {}
        }
        // A dead letter is always taken (the dead-letter queue's limit holds its producers).
        dl.ready.push_back(Msg {
            id: new_id,
            payload: msg.payload,
            deliveries: 0,
            redelivered: false,
        });
        dl.counts.enqueued += 1;
        self.totals.enqueued += 1;
        self.mark_dirty(to);
        self.unblock(queue, actions);
    }

    pub(super) fn unblock(&mut self, queue: QueueId, actions: &mut Vec<Action>) {
        if self.blocked.is_empty() {
            return;
        }
        // The budget is engine-wide: memory freed by one queue may let another go on.
        let mut ids: Vec<QueueId> = if self.blocked.contains(&queue) {
            vec![queue]
        } else {
            Vec::new()
        };
        ids.extend(self.blocked.iter().copied().filter(|&q| q != queue));
        self.blocked.clear();
        actions.extend(ids.into_iter().map(|queue| Action::Unblock { queue }));
    }
}
