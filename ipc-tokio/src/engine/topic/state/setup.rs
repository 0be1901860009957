//! The topic state machine: publishers, subscriptions, nodes that go.

use super::*;

// ===== impl Topics: setup =====

impl Topics {
    /// No topics yet.
    pub(crate) fn new(config: TopicsConfig) -> Self {
        Self {
            config,
            topics: BTreeMap::new(),
            by_name: HashMap::new(),
            subs: BTreeMap::new(),
            pubs: BTreeMap::new(),
            next_topic: 1,
            next_id: 1,
        }
    }

    pub(super) fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The topic named `name`, created (with its `CreateSegment` and the attachment of every
    /// matching prefix subscription) if it does not exist.
    pub(super) fn topic_for(
        &mut self,
        name: &str,
        ty: Option<&MessageType>,
        actions: &mut Vec<Action>,
    ) -> TopicId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.next_topic;
        self.next_topic += 1;
        let slots = Slots::new(self.config.segment_size, self.config.min_block)
            .expect("the engine validated its topic configuration");
        self.topics.insert(
            id,
            Topic {
                name: name.to_owned(),
                ty: ty.cloned(),
                slots,
                history_depth: 0,
                history: VecDeque::new(),
                subscribers: BTreeSet::new(),
                publishers: BTreeSet::new(),
                blocked: BTreeSet::new(),
                holders: BTreeSet::new(),
                seq: 0,
                stats: TopicStats::default(),
            },
        );
        self.by_name.insert(name.to_owned(), id);
        actions.push(Action::CreateSegment {
            topic: id,
            name: name.to_owned(),
            size: self.config.segment_size,
        });
        let matching: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, s)| s.pattern.matches(name))
            .map(|(k, _)| *k)
            .collect();
        for sub in matching {
            self.attach(sub, id, actions);
        }
        id
    }

    /// Attaches `sub` to `topic` if the types agree; replays history.
    pub(super) fn attach(&mut self, key: SubKey, id: TopicId, actions: &mut Vec<Action>) {
        let sub = self.subs.get_mut(&key).expect("attach a live subscription");
        let topic = self.topics.get_mut(&id).expect("attach to a live topic");
        if sub.ty != MessageType::bytes() {
            match &topic.ty {
                None => topic.ty = Some(sub.ty.clone()),
                Some(ty) if *ty == sub.ty => {}
                Some(ty) => {
                    actions.push(Action::Mismatch {
                        sub: key,
                        topic: id,
                        topic_type: ty.clone(),
                        wanted: sub.ty.clone(),
                    });
                    return;
                }
            }
        }
        sub.topics.insert(id);
        topic.subscribers.insert(key);
        topic.holders.insert(key);
        actions.push(Action::Attach {
            sub: key,
            topic: id,
        });
        // History: the last `history` kept messages, oldest first, before anything new.
        let skip = topic
            .history
            .len()
            .saturating_sub(sub.options.history as usize);
        let replay: Vec<Msg> = topic.history.iter().skip(skip).copied().collect();
        for msg in replay {
            topic
                .slots
                .hold(msg.offset, Holder::Sub(key))
                .expect("a history slot is live and new to a new subscription");
            sub.pending.push_back(msg);
        }
        let start = actions.len();
        Self::pump(&self.config, key, sub, actions);
        // More history than the window and queue take: a DropOldest subscription loses the
        // oldest of it, counted (a Block one holds publishers back until it has read it).
        while sub.options.policy == Policy::DropOldest
            && sub.pending.len() > sub.options.queue as usize
        {
            let oldest = sub.pending.pop_front().expect("longer than its queue");
            Self::drop_pending(topic, key, sub, oldest);
        }
        Self::count_deliveries(&mut self.topics, &actions[start..]);
    }

    /// Registers a publisher of `name` with type `ty`, asking the topic to keep `history`
    /// messages.
    ///
    /// # Errors
    ///
    /// [`TopicError::BadName`], [`TopicError::SchemaMismatch`].
    pub(crate) fn add_publisher(
        &mut self,
        node: u32,
        name: &str,
        ty: &MessageType,
        history: u32,
    ) -> Result<(PubKey, TopicId, Vec<Action>), TopicError> {
        if !valid_topic_name(name) {
            return Err(TopicError::BadName(name.to_owned()));
        }
        if let Some(topic) = self.by_name.get(name).and_then(|id| self.topics.get(id))
            && let Some(existing) = &topic.ty
            && existing != ty
        {
            return Err(TopicError::SchemaMismatch {
                topic: name.to_owned(),
                topic_type: existing.clone(),
                requested: ty.clone(),
            });
        }
        let mut actions = Vec::new();
        let id = self.topic_for(name, Some(ty), &mut actions);
        let key = PubKey {
            node,
            id: self.fresh_id(),
        };
        let max_history = self.config.max_history;
        let topic = self.topics.get_mut(&id).expect("just made");
        topic.ty.get_or_insert_with(|| ty.clone());
        topic.history_depth = topic.history_depth.max(history.min(max_history));
        topic.publishers.insert(key);
        self.pubs.insert(key, id);
        Ok((key, id, actions))
    }

    /// Removes a publisher.
    ///
    /// # Errors
    ///
    /// [`TopicError::NoPublisher`] when the node has no such publisher.
    pub(crate) fn remove_publisher(&mut self, key: PubKey) -> Result<Vec<Action>, TopicError> {
        let id = self.pubs.remove(&key).ok_or(TopicError::NoPublisher(key))?;
        let mut actions = Vec::new();
        if let Some(topic) = self.topics.get_mut(&id) {
            topic.publishers.remove(&key);
            topic.blocked.remove(&key);
        }
        self.collect(id, &mut actions);
        Ok(actions)
    }

    /// Subscribes `node` to `pattern`: attaches every existing topic it matches (and creates
    /// the topic an exact pattern names, so that its type and segment exist from now on).
    ///
    /// # Errors
    ///
    /// [`TopicError::BadName`]; for an exact pattern, [`TopicError::SchemaMismatch`].
    pub(crate) fn subscribe(
        &mut self,
        node: u32,
        pattern: &str,
        ty: &MessageType,
        options: SubOptions,
    ) -> Result<(SubKey, Vec<Action>), TopicError> {
        let parsed = Pattern::parse(pattern).ok_or_else(|| TopicError::BadName(pattern.into()))?;
        if let Some(name) = parsed.exact()
            && *ty != MessageType::bytes()
            && let Some(topic) = self.by_name.get(name).and_then(|id| self.topics.get(id))
            && let Some(existing) = &topic.ty
            && existing != ty
        {
            return Err(TopicError::SchemaMismatch {
                topic: name.to_owned(),
                topic_type: existing.clone(),
                requested: ty.clone(),
            });
        }
        let key = SubKey {
            node,
            id: self.fresh_id(),
        };
        let options = SubOptions {
            queue: options.queue.max(1),
            ..options
        };
        self.subs.insert(
            key,
            Subscriber {
                pattern: parsed.clone(),
                ty: ty.clone(),
                options,
                topics: BTreeSet::new(),
                in_flight: 0,
                pending: VecDeque::new(),
                unreported_lag: 0,
                full_since: None,
                stats: SubStats::default(),
            },
        );
        let mut actions = Vec::new();
        if let Some(name) = parsed.exact() {
            let existed = self.by_name.contains_key(name);
            let typed = (*ty != MessageType::bytes()).then_some(ty);
            let id = self.topic_for(name, typed, &mut actions);
            if existed {
                self.attach(key, id, &mut actions);
            }
            // A new topic attached its matching subscriptions, this one included.
        } else {
            let matching: Vec<TopicId> = self
                .topics
                .iter()
                .filter(|(_, t)| parsed.matches(&t.name))
                .map(|(id, _)| *id)
                .collect();
            for id in matching {
                self.attach(key, id, &mut actions);
            }
        }
        Ok((key, actions))
    }

    /// Ends a subscription: its pending messages are dropped, slots it was delivered stay
    /// held until the node releases them (or goes away).
    ///
    /// # Errors
    ///
    /// [`TopicError::NoSubscription`] when the node has no such subscription.
    pub(crate) fn unsubscribe(&mut self, key: SubKey) -> Result<Vec<Action>, TopicError> {
        let mut actions = Vec::new();
        self.close(key, CloseReason::Unsubscribed, &mut actions)?;
        Ok(actions)
    }

    pub(super) fn close(
        &mut self,
        key: SubKey,
        reason: CloseReason,
        actions: &mut Vec<Action>,
    ) -> Result<(), TopicError> {
        let sub = self
            .subs
            .remove(&key)
            .ok_or(TopicError::NoSubscription(key))?;
        for msg in &sub.pending {
            let topic = self
                .topics
                .get_mut(&msg.topic)
                .expect("pending of a live topic");
            topic
                .slots
                .release(Holder::Sub(key), msg.offset)
                .expect("a pending message is held by its subscription");
        }
        actions.push(Action::Closed { sub: key, reason });
        for id in &sub.topics {
            let topic = self.topics.get_mut(id).expect("attached to a live topic");
            topic.subscribers.remove(&key);
            if topic.slots.held_by(Holder::Sub(key)) == 0 {
                topic.holders.remove(&key);
            }
            Self::wake(topic, actions);
        }
        for id in sub.topics {
            self.collect(id, actions);
        }
        Ok(())
    }

    /// A node went away: every publisher and subscription it had is removed, every slot it
    /// held released, every publisher it held back woken.
    pub(crate) fn node_gone(&mut self, node: u32) -> Vec<Action> {
        let mut actions = Vec::new();
        let pubs: Vec<PubKey> = self
            .pubs
            .keys()
            .filter(|k| k.node == node)
            .copied()
            .collect();
        for key in pubs {
            actions.extend(self.remove_publisher(key).expect("listed above"));
        }
        let subs: Vec<SubKey> = self
            .subs
            .keys()
            .filter(|k| k.node == node)
            .copied()
            .collect();
        for key in subs {
            self.close(key, CloseReason::Unsubscribed, &mut actions)
                .expect("listed above");
        }
        // Slots delivered to its subscriptions (live until now, or closed before) go back.
        let ids: Vec<TopicId> = self.topics.keys().copied().collect();
        for id in ids {
            let Some(topic) = self.topics.get_mut(&id) else {
                continue; // collected by an earlier step
            };
            let gone: Vec<SubKey> = topic
                .holders
                .iter()
                .filter(|k| k.node == node)
                .copied()
                .collect();
            if gone.is_empty() {
                continue;
            }
            for key in gone {
                topic.holders.remove(&key);
                let held = topic.slots.held_by(Holder::Sub(key)) as u64;
                topic.stats.in_flight = topic.stats.in_flight.saturating_sub(held);
                topic.slots.release_all(Holder::Sub(key));
            }
            Self::wake(topic, &mut actions);
            self.collect(id, &mut actions);
        }
        // Nothing goes to the dead node itself.
        actions.retain(|a| match a {
            Action::Closed { sub, .. } => sub.node != node,
            Action::Unblock { publisher } => publisher.node != node,
            _ => true,
        });
        actions
    }

    /// Removes a topic nobody uses any more.
    pub(super) fn collect(&mut self, id: TopicId, actions: &mut Vec<Action>) {
        let Some(topic) = self.topics.get_mut(&id) else {
            return;
        };
        if !topic.publishers.is_empty() || !topic.subscribers.is_empty() {
            return;
        }
        // Nobody can join to read the history any more... until someone does: history
        // lives while the topic has a publisher or a subscriber.
        while let Some(msg) = topic.history.pop_front() {
            let _ = topic.slots.release(Holder::History, msg.offset);
        }
        if !topic.holders.is_empty() {
            return;
        }
        debug_assert_eq!(topic.slots.stats().live, 0, "no holder, no live slot");
        let name = topic.name.clone();
        self.topics.remove(&id);
        self.by_name.remove(&name);
        actions.push(Action::RemoveSegment { topic: id });
    }
}
