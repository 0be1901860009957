//! The topic state machine: reserve, publish, release, the untether clock.

use super::*;

// ===== impl Topics: the data path =====

impl Topics {
    /// A publisher wants to send `len` bytes: a slot to copy them into, or `Blocked`; and
    /// the actions of making room (a `Lagged` for a subscription whose whole queue was shed).
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`], or [`TopicError::TooLarge`] for a message that can never
    /// fit the segment.
    pub(crate) fn reserve(
        &mut self,
        now: Instant,
        key: PubKey,
        len: u32,
    ) -> Result<(Reserve, Vec<Action>), TopicError> {
        let id = *self.pubs.get(&key).ok_or(TopicError::NoPublisher(key))?;
        let topic = self.topics.get_mut(&id).expect("a publisher's topic lives");
        // A full Block subscription holds every publisher of the topic back; its untether
        // clock starts now if it was not running.
        let mut blocked = false;
        for sub_key in &topic.subscribers {
            let sub = self.subs.get_mut(sub_key).expect("subscribers are live");
            if matches!(sub.options.policy, Policy::Block { .. })
                && sub.pending.len() >= sub.options.queue as usize
            {
                sub.full_since.get_or_insert(now);
                blocked = true;
            }
        }
        let mut actions = Vec::new();
        if blocked {
            topic.blocked.insert(key);
            return Ok((Reserve::Blocked, actions));
        }
        loop {
            match topic.slots.alloc(len) {
                Ok(slot) => return Ok((Reserve::Slot(slot), actions)),
                Err(AllocError::TooLarge { capacity, .. }) => {
                    return Err(TopicError::TooLarge { len, capacity });
                }
                Err(AllocError::Full { .. }) | Err(_) => {
                    if !Self::shed_one(id, topic, &mut self.subs, &mut actions) {
                        topic.blocked.insert(key);
                        return Ok((Reserve::Blocked, actions));
                    }
                }
            }
        }
    }

    /// Frees one message's hold to make room: the oldest history entry, else the oldest
    /// pending message of a `DropOldest` subscription (counted as its lag). False if there
    /// is nothing to shed.
    pub(super) fn shed_one(
        id: TopicId,
        topic: &mut Topic,
        subs: &mut BTreeMap<SubKey, Subscriber>,
        actions: &mut Vec<Action>,
    ) -> bool {
        if let Some(msg) = topic.history.pop_front() {
            let _ = topic.slots.release(Holder::History, msg.offset);
            return true;
        }
        // A prefix subscription's queue may hold other topics' messages first: look for the
        // oldest message of this topic in each queue.
        let victim = topic
            .subscribers
            .iter()
            .filter(|k| subs[*k].options.policy == Policy::DropOldest)
            .filter_map(|k| {
                let (at, msg) = subs[k]
                    .pending
                    .iter()
                    .enumerate()
                    .find(|(_, m)| m.topic == id)?;
                Some((msg.seq, at, *k))
            })
            .min();
        let Some((_, at, key)) = victim else {
            return false;
        };
        let sub = subs.get_mut(&key).expect("found above");
        let msg = sub.pending.remove(at).expect("found above");
        Self::drop_pending(topic, key, sub, msg);
        Self::flush_lag(key, sub, actions);
        true
    }

    /// A subscription with lag to report and nothing queued to report it before says so now:
    /// no later message may be coming (the publisher may be waiting for room), and a loss is
    /// never left unsaid.
    pub(super) fn flush_lag(key: SubKey, sub: &mut Subscriber, actions: &mut Vec<Action>) {
        if sub.pending.is_empty() && sub.unreported_lag > 0 {
            actions.push(Action::Lagged {
                sub: key,
                count: std::mem::take(&mut sub.unreported_lag),
            });
        }
    }

    /// Drops `msg` (already taken out of `sub`'s queue; `topic` is its topic) and counts it.
    pub(super) fn drop_pending(topic: &mut Topic, key: SubKey, sub: &mut Subscriber, msg: Msg) {
        let _ = topic.slots.release(Holder::Sub(key), msg.offset);
        sub.unreported_lag += 1;
        sub.stats.lagged += 1;
        topic.stats.lagged += 1;
    }

    /// The router copied the message into `slot`: hand it to every subscriber of the topic
    /// and to the history.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`].
    ///
    /// # Panics
    ///
    /// If `slot` did not come from [`Self::reserve`] for this publisher's topic (a router bug).
    pub(crate) fn publish(&mut self, key: PubKey, slot: Slot) -> Result<Vec<Action>, TopicError> {
        let id = *self.pubs.get(&key).ok_or(TopicError::NoPublisher(key))?;
        let mut actions = Vec::new();
        let topic = self.topics.get_mut(&id).expect("a publisher's topic lives");
        topic.seq += 1;
        topic.stats.published += 1;
        let msg = Msg {
            topic: id,
            offset: slot.offset,
            len: slot.len,
            seq: topic.seq,
        };
        let subscribers: Vec<SubKey> = topic.subscribers.iter().copied().collect();
        for sub_key in subscribers {
            let sub = self.subs.get_mut(&sub_key).expect("subscribers are live");
            let topic = self.topics.get_mut(&id).expect("live topic");
            topic
                .slots
                .hold(slot.offset, Holder::Sub(sub_key))
                .expect("a fresh slot is held once per subscriber");
            if sub.pending.len() >= sub.options.queue as usize
                && sub.options.policy == Policy::DropOldest
            {
                // The oldest pending message, perhaps of another topic (prefix subscription).
                let oldest = sub.pending.pop_front().expect("a full queue");
                let its_topic = self.topics.get_mut(&oldest.topic).expect("live topic");
                Self::drop_pending(its_topic, sub_key, sub, oldest);
                Self::wake(its_topic, &mut actions);
            }
            // A full Block queue refused `reserve`; a message already copied is never dropped.
            sub.pending.push_back(msg);
            let start = actions.len();
            Self::pump(&self.config, sub_key, sub, &mut actions);
            Self::count_deliveries(&mut self.topics, &actions[start..]);
        }
        let topic = self.topics.get_mut(&id).expect("live topic");
        if topic.history_depth > 0 {
            topic
                .slots
                .hold(slot.offset, Holder::History)
                .expect("a fresh slot");
            topic.history.push_back(msg);
            if topic.history.len() > topic.history_depth as usize {
                let old = topic.history.pop_front().expect("longer than its depth");
                let _ = topic.slots.release(Holder::History, old.offset);
            }
        }
        topic.slots.commit(slot.offset).expect("an open slot");
        Ok(actions)
    }

    /// Moves pending messages into the window, each preceded by the lag it follows.
    pub(super) fn pump(
        config: &TopicsConfig,
        key: SubKey,
        sub: &mut Subscriber,
        actions: &mut Vec<Action>,
    ) {
        while sub.in_flight < config.window {
            let Some(msg) = sub.pending.pop_front() else {
                break;
            };
            if sub.unreported_lag > 0 {
                actions.push(Action::Lagged {
                    sub: key,
                    count: std::mem::take(&mut sub.unreported_lag),
                });
            }
            sub.in_flight += 1;
            sub.stats.delivered += 1;
            actions.push(Action::Deliver {
                sub: key,
                topic: msg.topic,
                offset: msg.offset,
                len: msg.len,
                seq: msg.seq,
            });
        }
        if sub.pending.len() < sub.options.queue as usize {
            sub.full_since = None;
        }
    }

    /// Counts `Deliver` actions into their topics' counters.
    pub(super) fn count_deliveries(topics: &mut BTreeMap<TopicId, Topic>, actions: &[Action]) {
        for action in actions {
            if let Action::Deliver { topic, .. } = action
                && let Some(t) = topics.get_mut(topic)
            {
                t.stats.delivered += 1;
                t.stats.in_flight += 1;
            }
        }
    }

    /// Subscription `key` is done with slot `offset` of topic `topic`.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoTopic`] or [`TopicError::Release`]: a violation by that subscriber's
    /// node alone (the router closes it); nothing changed.
    pub(crate) fn release(
        &mut self,
        key: SubKey,
        topic_id: TopicId,
        offset: u64,
    ) -> Result<Vec<Action>, TopicError> {
        let topic = self
            .topics
            .get_mut(&topic_id)
            .ok_or(TopicError::NoTopic(topic_id))?;
        // A pending (queued, not delivered) slot is held too, but was never delivered: the
        // node cannot know its offset honestly, so releasing it is a violation.
        if let Some(sub) = self.subs.get(&key)
            && sub
                .pending
                .iter()
                .any(|m| m.topic == topic_id && m.offset == offset)
        {
            return Err(TopicError::Release(SlotError::NotHeld { offset }));
        }
        topic.slots.release(Holder::Sub(key), offset)?;
        topic.stats.in_flight = topic.stats.in_flight.saturating_sub(1);
        let mut actions = Vec::new();
        match self.subs.get_mut(&key) {
            Some(sub) => {
                sub.in_flight -= 1;
                let start = actions.len();
                Self::pump(&self.config, key, sub, &mut actions);
                Self::count_deliveries(&mut self.topics, &actions[start..]);
                // Room in its queue may let publishers of any of its topics go on.
                for id in &sub.topics {
                    if let Some(t) = self.topics.get_mut(id) {
                        Self::wake(t, &mut actions);
                    }
                }
            }
            None => {
                // A closed subscription returning what it was delivered.
                if topic.slots.held_by(Holder::Sub(key)) == 0 {
                    topic.holders.remove(&key);
                }
            }
        }
        let topic = self.topics.get_mut(&topic_id).expect("checked above");
        Self::wake(topic, &mut actions);
        self.collect(topic_id, &mut actions);
        Ok(actions)
    }

    /// Wakes every publisher blocked on `topic` (they retry `reserve`, which may block them
    /// again: simple, and never loses a wake-up).
    pub(super) fn wake(topic: &mut Topic, actions: &mut Vec<Action>) {
        for publisher in std::mem::take(&mut topic.blocked) {
            actions.push(Action::Unblock { publisher });
        }
    }

    /// Time passed: cuts loose every `Block` subscription that has held publishers back for
    /// its untether timeout.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Action> {
        let expired: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| match (s.options.policy, s.full_since) {
                (Policy::Block { untether }, Some(since)) => now.duration_since(since) >= untether,
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        let mut actions = Vec::new();
        for key in expired {
            self.close(key, CloseReason::Untethered, &mut actions)
                .expect("listed above");
        }
        actions
    }

    /// When [`Self::tick`] must next run, if any untether clock is running.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|s| match (s.options.policy, s.full_since) {
                (Policy::Block { untether }, Some(since)) => Some(since + untether),
                _ => None,
            })
            .min()
    }

    // ===== inspection =====

    /// A topic's counters.
    pub(crate) fn topic_stats(&mut self, id: TopicId) -> Option<TopicStats> {
        let topic = self.topics.get_mut(&id)?;
        let slots = topic.slots.stats();
        Some(TopicStats {
            slots: slots.live,
            history: topic.history.len(),
            ..topic.stats
        })
    }

    /// A subscription's counters.
    pub(crate) fn sub_stats(&self, key: SubKey) -> Option<SubStats> {
        let sub = self.subs.get(&key)?;
        Some(SubStats {
            in_flight: sub.in_flight,
            pending: sub.pending.len(),
            ..sub.stats
        })
    }

    /// Every topic, by id (for the inspector: O(topics), on request only).
    pub(crate) fn topic_views(&mut self) -> Vec<TopicView> {
        self.topics
            .iter_mut()
            .map(|(&id, topic)| {
                let slots = topic.slots.stats();
                TopicView {
                    id,
                    name: topic.name.clone(),
                    ty: topic.ty.clone(),
                    publishers: topic.publishers.len(),
                    subscribers: topic.subscribers.len(),
                    stats: TopicStats {
                        slots: slots.live,
                        history: topic.history.len(),
                        ..topic.stats
                    },
                    bytes_in_use: slots.arena.in_use,
                }
            })
            .collect()
    }

    /// Every live subscription, by node and id (for the inspector).
    pub(crate) fn sub_views(&self) -> Vec<SubView> {
        self.subs
            .iter()
            .map(|(&key, sub)| SubView {
                key,
                pattern: sub.pattern.text(),
                options: sub.options,
                topics: sub.topics.iter().copied().collect(),
                stats: SubStats {
                    in_flight: sub.in_flight,
                    pending: sub.pending.len(),
                    ..sub.stats
                },
            })
            .collect()
    }

    /// The topic publisher `key` publishes on.
    pub(crate) fn topic_of(&self, key: PubKey) -> Option<TopicId> {
        self.pubs.get(&key).copied()
    }

    /// A topic's name and type (none until a typed publisher or subscriber fixed it).
    pub(crate) fn topic_info(&self, id: TopicId) -> Option<(&str, Option<&MessageType>)> {
        let topic = self.topics.get(&id)?;
        Some((&topic.name, topic.ty.as_ref()))
    }

    /// The topic named `name`.
    pub(crate) fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// Number of topics alive.
    pub(crate) fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Bytes of segment in live slots of topic `id`.
    pub(crate) fn bytes_in_use(&mut self, id: TopicId) -> Option<u64> {
        Some(self.topics.get_mut(&id)?.slots.stats().arena.in_use)
    }
}
