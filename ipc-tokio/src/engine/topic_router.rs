//! The router's topic plane: carries out what the [`Topics`] state machine decides.
//!
//! - Setup (`Publish`, `Unpublish`, `Subscribe`, `Unsubscribe`) arrives as commands; a topic's
//!   broadcast segment is created when the state machine says so, and its fd travels to each
//!   attached subscriber with a `TopicAttach` frame.
//! - A publisher's `DATA` entry names its publisher id in the session field. Publisher ids are
//!   allocated by the [`Registry`](crate::engine::registry::Registry) from the session-end id
//!   space, so an id names either a session end or a publisher, never both, and the registry
//!   knows which node owns it.
//! - Publishing: `reserve` → one copy from the publisher's transmit arena into the slot
//!   (`copy_to_broadcast`) → `publish` → `TX_DONE`. While `reserve` answers `Blocked`, the
//!   publisher's entries wait here, in order, until an `Unblock` action; the publisher's own
//!   transmit arena bounds how many.
//! - `TOPIC_RELEASE` entries of a node's release ring are validated against the engine's own
//!   tables; a lying release closes that node only.
//! - Untether clocks: [`Router::topic_tick`] runs on every pass, and the router's park wakes
//!   at [`TopicPlane::next_deadline`] only when a clock is running (idle stays free).

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::Instant;

use ipc_core::broadcast::{BroadcastSegment, copy_to_broadcast};
use ipc_core::control::{EngineFrame, ErrorCode, MessageType, SubscribeOptions};
use ipc_core::descriptor::ArenaBounds;
use ipc_core::{IdMap, RawDescriptor, validate_topic_release};

use crate::engine::command::{EndId, NodeId, Outbound};
use crate::engine::memory::Charge;
use crate::engine::router::Router;
use crate::engine::topic::{
    Action, PubKey, Reserve, SubOptions, SubView, TopicError, TopicId, TopicView, Topics,
    TopicsConfig,
};
use crate::engine::violation::{Violation, ViolationKind};

/// A publisher's entry waiting for room: its transmit offset and length.
type Parked = (u64, u32);

/// The router's topic state.
#[derive(Debug)]
pub(crate) struct TopicPlane {
    state: Topics,
    config: TopicsConfig,
    /// Each with its bytes in the memory budgets.
    segments: IdMap<TopicId, (BroadcastSegment, Charge)>,
    /// Publisher id (as `DATA` entries name it) → the state machine's key.
    publishers: IdMap<EndId, PubKey>,
    /// The other way.
    wire: std::collections::HashMap<PubKey, EndId>,
    /// Entries of blocked publishers, in order.
    parked: IdMap<EndId, VecDeque<Parked>>,
}

impl TopicPlane {
    pub(crate) fn new(config: TopicsConfig) -> Self {
        Self {
            state: Topics::new(config),
            config,
            segments: IdMap::default(),
            publishers: IdMap::default(),
            wire: std::collections::HashMap::new(),
            parked: IdMap::default(),
        }
    }

    /// When the router must wake to run [`Router::topic_tick`], if an untether clock runs.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.state.next_deadline()
    }

    /// Live topics.
    pub(crate) fn topic_count(&self) -> usize {
        self.state.topic_count()
    }

    /// Broadcast segments alive (one per topic).
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Every topic and every subscription, for the inspector.
    pub(crate) fn views(&mut self) -> (Vec<TopicView>, Vec<SubView>) {
        (self.state.topic_views(), self.state.sub_views())
    }

    /// The size of every topic's segment.
    pub(crate) fn segment_size(&self) -> u64 {
        self.config.segment_size
    }

    fn bounds(&self, topic: TopicId) -> Option<ArenaBounds> {
        self.segments.get(&topic).map(|_| ArenaBounds {
            size: self.config.segment_size,
            align: self.config.min_block,
        })
    }
}

impl Router {
    // ===== setup =====

    pub(super) fn topic_publish(
        &mut self,
        node: NodeId,
        req: u32,
        topic: &str,
        ty: &MessageType,
        history: u32,
    ) {
        if !self.links.contains_key(&node) {
            return;
        }
        match self.topics.state.add_publisher(node, topic, ty, history) {
            Ok((key, topic_id, actions)) => {
                let wire = self.registry.add_publisher(node);
                self.topics.publishers.insert(wire, key);
                self.topics.wire.insert(key, wire);
                self.topic_actions(actions);
                tracing::debug!(node, %topic, publisher = wire, "publishing");
                self.send_frame(
                    node,
                    EngineFrame::PublishOk {
                        req,
                        publisher: wire,
                        topic: topic_id,
                        max_message: self.topics.config.segment_size,
                    }
                    .into(),
                );
            }
            Err(e) => self.topic_refuse(node, req, &e),
        }
    }

    pub(super) fn topic_unpublish(&mut self, node: NodeId, req: u32, publisher: u32) {
        // The node pushed its last messages before it sent this frame: they are published
        // first (an entry naming a publisher that is gone would be a violation).
        self.last_drain(node);
        match self.remove_publisher(node, publisher) {
            Ok(()) => self.send_frame(node, EngineFrame::TopicDone { req }.into()),
            Err(e) => self.topic_refuse(node, req, &e),
        }
    }

    fn remove_publisher(&mut self, node: NodeId, wire: EndId) -> Result<(), TopicError> {
        let key = match self.topics.publishers.get(&wire) {
            Some(key) if key.node == node => *key,
            _ => {
                return Err(TopicError::NoPublisher(PubKey { node, id: wire }));
            }
        };
        // Entries still parked were accepted: they go out before the publisher ends, if
        // there is room now; the rest are returned to the publisher (it is told by the
        // TopicDone that follows its own Unpublish).
        self.retry_parked(wire);
        if let Some(parked) = self.topics.parked.remove(&wire) {
            for (offset, len) in parked {
                self.tx_done(node, len, offset);
            }
        }
        self.topics.publishers.remove(&wire);
        self.topics.wire.remove(&key);
        self.registry.remove_publisher(wire);
        let actions = self.topics.state.remove_publisher(key)?;
        self.topic_actions(actions);
        Ok(())
    }

    pub(super) fn topic_subscribe(
        &mut self,
        node: NodeId,
        req: u32,
        pattern: &str,
        ty: &MessageType,
        options: SubscribeOptions,
    ) {
        if !self.links.contains_key(&node) {
            return;
        }
        match self
            .topics
            .state
            .subscribe(node, pattern, ty, SubOptions::from(options))
        {
            Ok((key, actions)) => {
                tracing::debug!(node, %pattern, subscription = key.id, "subscribed");
                // SubscribeOk first: the node knows the subscription before its attaches.
                self.send_frame(
                    node,
                    EngineFrame::SubscribeOk {
                        req,
                        subscription: key.id,
                    }
                    .into(),
                );
                self.topic_actions(actions);
            }
            Err(e) => self.topic_refuse(node, req, &e),
        }
    }

    pub(super) fn topic_unsubscribe(&mut self, node: NodeId, req: u32, subscription: u32) {
        let key = crate::engine::topic::SubKey {
            node,
            id: subscription,
        };
        match self.topics.state.unsubscribe(key) {
            Ok(actions) => {
                self.topic_actions(actions);
                self.send_frame(node, EngineFrame::TopicDone { req }.into());
            }
            Err(e) => self.topic_refuse(node, req, &e),
        }
    }

    fn topic_refuse(&self, node: NodeId, req: u32, e: &TopicError) {
        let code = match e {
            TopicError::SchemaMismatch { .. } => ErrorCode::SchemaMismatch,
            _ => ErrorCode::BadTopic,
        };
        self.send_frame(
            node,
            EngineFrame::Error {
                req,
                code: code as u16,
                message: e.to_string(),
            }
            .into(),
        );
    }

    fn send_frame(&self, node: NodeId, out: Outbound) {
        if let Some(link) = self.links.get(&node) {
            let _ = link.frames.send(out);
        }
    }

    // ===== the data path =====

    /// The owner of publisher id `id`, if it is one (else `id` names a session end).
    pub(super) fn is_publisher(&self, id: EndId) -> bool {
        self.topics.publishers.contains_key(&id)
    }

    /// A `DATA` entry of publisher `wire`, owned by `node`: published now, or parked behind
    /// its earlier entries until the topic has room.
    pub(super) fn topic_data(
        &mut self,
        node: NodeId,
        wire: EndId,
        offset: u64,
        len: u32,
    ) -> Result<(), Violation> {
        match self.topics.publishers.get(&wire) {
            Some(key) if key.node == node => {}
            _ => {
                return Err(Violation::new(
                    ViolationKind::Descriptor,
                    format!("data for publisher {wire}, which is not its own"),
                ));
            }
        }
        if let Some(queue) = self.topics.parked.get_mut(&wire) {
            queue.push_back((offset, len));
            return Ok(());
        }
        if !self.try_publish(node, wire, offset, len)? {
            self.topics
                .parked
                .insert(wire, VecDeque::from([(offset, len)]));
        }
        Ok(())
    }

    /// Publishes one entry if the topic has room. False: blocked (nothing changed).
    fn try_publish(
        &mut self,
        node: NodeId,
        wire: EndId,
        offset: u64,
        len: u32,
    ) -> Result<bool, Violation> {
        let key = self.topics.publishers[&wire];
        let (reserve, actions) = match self.topics.state.reserve(Instant::now(), key, len) {
            Ok(r) => r,
            Err(e) => {
                // The node checks sizes against the segment before sending.
                return Err(Violation::new(ViolationKind::Payload, e.to_string()));
            }
        };
        self.topic_actions(actions);
        let slot = match reserve {
            Reserve::Blocked => return Ok(false),
            Reserve::Slot(slot) => slot,
        };
        let topic = self.topics.state.topic_of(key).expect("a live publisher");
        let copied = match (self.links.get(&node), self.topics.segments.get(&topic)) {
            (Some(link), Some((segment, _))) => {
                copy_to_broadcast(&link.block, offset, segment, slot.offset, len)
                    .map_err(|e| e.to_string())
            }
            _ => Err("no segment".to_owned()),
        };
        let actions = self
            .topics
            .state
            .publish(key, slot)
            .expect("a live publisher");
        if let Err(e) = copied {
            // Bounds were validated with the entry: unreachable for a block the engine
            // laid out. The slot was published (the state machine has no abort) but the
            // node is closed.
            return Err(Violation::new(
                ViolationKind::Payload,
                format!("topic payload outside its arena: {e}"),
            ));
        }
        self.stats.topic_published += 1;
        self.topic_actions(actions);
        self.tx_done(node, len, offset);
        Ok(true)
    }

    /// Publishes what publisher `wire` parked, in order, as far as the topic has room.
    fn retry_parked(&mut self, wire: EndId) {
        let Some(mut queue) = self.topics.parked.remove(&wire) else {
            return;
        };
        let Some(node) = self.topics.publishers.get(&wire).map(|k| k.node) else {
            return;
        };
        while let Some((offset, len)) = queue.pop_front() {
            match self.try_publish(node, wire, offset, len) {
                Ok(true) => {}
                Ok(false) => {
                    queue.push_front((offset, len));
                    break;
                }
                Err(v) => {
                    self.doom(node, v);
                    return;
                }
            }
        }
        if !queue.is_empty() {
            self.topics.parked.insert(wire, queue);
        }
    }

    /// A `TOPIC_RELEASE` entry of `node`'s release ring. A lying release is a violation of
    /// that node alone.
    pub(super) fn topic_release(
        &mut self,
        node: NodeId,
        raw: &RawDescriptor,
    ) -> Result<(), Violation> {
        let release =
            validate_topic_release(raw, |topic| self.topics.bounds(topic)).map_err(|e| {
                Violation::new(ViolationKind::Descriptor, format!("topic release: {e}"))
            })?;
        let key = crate::engine::topic::SubKey {
            node,
            id: release.subscription,
        };
        let actions = self
            .topics
            .state
            .release(key, release.topic, release.offset)
            .map_err(|e| Violation::new(ViolationKind::Release, format!("topic release: {e}")))?;
        self.topic_actions(actions);
        Ok(())
    }

    /// Runs the untether clocks. Returns whether anything happened.
    pub(super) fn topic_tick(&mut self, now: Instant) -> bool {
        match self.topics.state.next_deadline() {
            Some(deadline) if deadline <= now => {}
            _ => return false,
        }
        let actions = self.topics.state.tick(now);
        let moved = !actions.is_empty();
        self.topic_actions(actions);
        moved
    }

    /// `node` is being buried: its publishers and subscriptions go, every slot it held is
    /// released, publishers it held back are woken.
    pub(super) fn topic_node_gone(&mut self, node: NodeId) {
        let wires: Vec<EndId> = self
            .topics
            .publishers
            .iter()
            .filter(|(_, k)| k.node == node)
            .map(|(w, _)| *w)
            .collect();
        for wire in wires {
            let key = self.topics.publishers.remove(&wire).expect("listed");
            self.topics.wire.remove(&key);
            self.topics.parked.remove(&wire);
            self.registry.remove_publisher(wire);
        }
        let actions = self.topics.state.node_gone(node);
        self.topic_actions(actions);
    }

    // ===== actions =====

    fn topic_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.topic_action(action);
        }
    }

    fn topic_action(&mut self, action: Action) {
        if let Some((node, entry)) = action.descriptor() {
            match action {
                Action::Deliver { .. } => self.stats.topic_delivered += 1,
                Action::Lagged { count, .. } => self.stats.topic_lagged += count,
                _ => {}
            }
            self.push_out(node, entry);
            return;
        }
        match action {
            Action::CreateSegment { topic, name, size } => {
                let charge = match self.config.memory.charge(size) {
                    Ok(charge) => charge,
                    Err((limit, max)) => {
                        // As below: its subscribers get no attach, its publishers' data
                        // cannot be copied, and the error log says why.
                        tracing::error!(topic, %name, size, %limit, max, "no topic segment: the memory budget is reached");
                        return;
                    }
                };
                // Named by id: a topic name may be longer than a memfd name can be.
                match BroadcastSegment::create(size, &format!("shmlink-topic-{topic}")) {
                    Ok(segment) => {
                        self.topics.segments.insert(topic, (segment, charge));
                    }
                    Err(e) => {
                        // Subscribers of this topic then get no attach, and its publishers'
                        // data cannot be copied: they are told by the error log only.
                        tracing::error!(topic, %name, error = %e, "cannot create a topic segment");
                    }
                }
            }
            Action::RemoveSegment { topic } => {
                self.topics.segments.remove(&topic);
            }
            Action::Attach { sub, topic } => {
                let Some((segment, _)) = self.topics.segments.get(&topic) else {
                    return;
                };
                let Some((name, ty)) = self.topics.state.topic_info(topic) else {
                    return;
                };
                let fd = match segment.as_fd().try_clone_to_owned() {
                    Ok(fd) => fd,
                    Err(e) => {
                        tracing::error!(topic, error = %e, "cannot duplicate a topic segment");
                        return;
                    }
                };
                let frame = EngineFrame::TopicAttach {
                    subscription: sub.id,
                    topic,
                    name: name.to_owned(),
                    segment_size: segment.size(),
                    ty: ty.cloned().unwrap_or_else(MessageType::bytes),
                };
                self.send_frame(
                    sub.node,
                    Outbound {
                        frame,
                        fd: Some(fd),
                    },
                );
            }
            Action::Mismatch {
                sub,
                topic,
                topic_type,
                wanted,
            } => {
                tracing::debug!(node = sub.node, subscription = sub.id, topic, %topic_type, %wanted, "a matched topic has another type: not attached");
            }
            Action::Unblock { publisher } => {
                if let Some(&wire) = self.topics.wire.get(&publisher) {
                    self.retry_parked(wire);
                }
            }
            Action::Deliver { .. } | Action::Lagged { .. } | Action::Closed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node-side default limit is the default segment size (an engine set otherwise
    /// tells each publisher its own in `PublishOk`).
    #[test]
    fn the_node_side_limit_is_the_segment_size() {
        assert_eq!(
            crate::topic::MAX_TOPIC_MESSAGE,
            TopicsConfig::default().segment_size
        );
        assert_eq!(
            crate::engine::config::DEFAULT_TOPIC_SEGMENT,
            TopicsConfig::default().segment_size
        );
        let plane = TopicPlane::new(TopicsConfig::default());
        assert_eq!(plane.topic_count(), 0);
        assert!(plane.next_deadline().is_none(), "idle: no timer");
    }
}
