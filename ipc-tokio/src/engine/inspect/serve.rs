//! The engine side of the inspector: the router builds a [`Snapshot`] from its registry,
//! links, topics and queues, and the connection task encodes it as chunk frames.

use ipc_core::control::{self, EngineFrame, MAX_INSPECT};

use super::{
    ConsumerInfo, Counters, EndInfo, EngineInfo, NodeInfo, QueueInfo, SNAPSHOT_VERSION,
    ServiceInfo, SessionInfo, Snapshot, SubscriptionInfo, TopicInfo,
};
use crate::engine::config::Policy;
use crate::engine::router::Router;
use crate::engine::topic::Policy as TopicPolicy;

impl Router {
    /// The registry, links, topics and queues as a [`Snapshot`]: O(nodes + ends + services +
    /// topics + subscriptions + queues + consumers + held deliveries), on request only.
    pub(in crate::engine) fn snapshot(&mut self) -> Snapshot {
        let (topic_views, sub_views) = self.topics.views();
        let config = &self.config;
        let layout = ipc_core::Layout::compute(&config.block).ok();
        let l = &config.limits;
        let limits = [
            ("connections_per_uid", l.connections_per_uid),
            ("handshakes_per_uid", l.handshakes_per_uid),
            ("nodes_per_uid", l.nodes_per_uid),
            ("sessions_per_uid", l.sessions_per_uid),
            ("sessions_per_opener", l.sessions_per_opener),
            ("queued_sessions", l.queued_sessions),
            ("requests_per_connection", l.requests_per_connection),
            ("partial_frame_bytes", l.partial_frame_bytes),
            ("queued_frames", l.queued_frames),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v as u64))
        .collect();
        let policy = match &config.policy {
            Policy::SameUid => "same-uid".to_owned(),
            Policy::AllowUids(uids) => format!(
                "uids:{}",
                uids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let engine = EngineInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            policy,
            socket: config.socket.display().to_string(),
            window_messages: config.credits,
            window_bytes: config.window_bytes,
            orphan_budget: config.orphan_budget,
            orphaned_bytes: self.orphaned,
            rx_arena_bytes: layout.as_ref().map_or(0, |l| l.rx.size),
            tx_arena_bytes: layout.as_ref().map_or(0, |l| l.tx.size),
            max_sessions_per_node: config.max_sessions_per_node as u64,
            limits,
            topic_segment_bytes: self.topics.segment_size(),
            data_dir: config.data_dir.as_ref().map(|d| d.display().to_string()),
            queue_memory_budget: config.queue_memory,
            queue_memory_in_use: self.queues.state.bytes(),
        };
        let name_of = |id: u32| {
            self.registry
                .node(id)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        let mut nodes: Vec<NodeInfo> = self
            .registry
            .nodes()
            .map(|(id, n)| {
                let link = self.links.get(&id);
                NodeInfo {
                    id,
                    name: n.name.clone(),
                    pid: n.pid,
                    uid: n.uid,
                    rx_in_use: link.map_or(0, |l| l.rx.in_use()),
                    rx_size: link.map_or(0, |l| l.rx.size()),
                    active: link.is_some_and(|l| l.active),
                    sessions: n.ends.len() as u64,
                    services: n.services.len() as u64,
                }
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        let mut services: Vec<ServiceInfo> = self
            .registry
            .services()
            .map(|(id, s)| ServiceInfo {
                id,
                name: s.name.clone(),
                node: s.node,
                node_name: name_of(s.node),
                send_type: s.schema.send.name.clone(),
                recv_type: s.schema.recv.name.clone(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let end_info = |id: u32| {
            self.registry.end(id).map(|e| EndInfo {
                end: id,
                node: e.node,
                node_name: name_of(e.node),
                sent_messages: e.sent_messages,
                sent_bytes: e.sent_bytes,
                in_flight: e.in_flight,
                in_flight_bytes: e.in_flight_bytes,
                waiting: self
                    .links
                    .get(&e.node)
                    .and_then(|l| l.waiting.get(&id))
                    .map_or(0, |q| q.len() as u64),
                fin: e.fin,
            })
        };
        let mut sessions: Vec<SessionInfo> = self
            .registry
            .ends()
            .filter(|(id, e)| e.peer.is_none_or(|p| *id < p))
            .filter_map(|(id, e)| {
                Some(SessionInfo {
                    a: end_info(id)?,
                    b: e.peer.and_then(end_info),
                })
            })
            .collect();
        sessions.sort_by_key(|s| s.a.end);
        let mut topics: Vec<TopicInfo> = topic_views
            .into_iter()
            .map(|t| TopicInfo {
                id: t.id,
                name: t.name,
                message_type: t.ty.map(|ty| ty.name),
                publishers: t.publishers as u64,
                subscribers: t.subscribers as u64,
                published: t.stats.published,
                delivered: t.stats.delivered,
                lagged: t.stats.lagged,
                in_flight: t.stats.in_flight,
                slots: t.stats.slots as u64,
                history: t.stats.history as u64,
                segment_in_use: t.bytes_in_use,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let subscriptions = sub_views
            .into_iter()
            .map(|s| {
                let (policy, untether_ms) = match s.options.policy {
                    TopicPolicy::DropOldest => ("drop-oldest", None),
                    TopicPolicy::Block { untether } => (
                        "block",
                        Some(u64::try_from(untether.as_millis()).unwrap_or(u64::MAX)),
                    ),
                };
                SubscriptionInfo {
                    id: s.key.id,
                    node: s.key.node,
                    node_name: name_of(s.key.node),
                    pattern: s.pattern,
                    policy: policy.to_owned(),
                    untether_ms,
                    queue: s.options.queue,
                    topics: s.topics,
                    delivered: s.stats.delivered,
                    lagged: s.stats.lagged,
                    in_flight: s.stats.in_flight,
                    pending: s.stats.pending as u64,
                }
            })
            .collect();
        let (queue_views, consumer_views) = self.queues.state.views();
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut queues: Vec<QueueInfo> = queue_views
            .into_iter()
            .map(|q| QueueInfo {
                name: q.name,
                durable: q.spec.durable,
                message_type: q.ty.map(|ty| ty.name),
                depth: q.ready + q.unacked,
                ready: q.ready,
                unacked: q.unacked,
                bytes: q.bytes,
                producers: q.producers,
                consumers: q.consumers,
                max_length: q.spec.max_length,
                reject_when_full: q.spec.reject_when_full,
                max_deliveries: q.spec.max_deliveries,
                dead_letter: (!q.spec.dead_letter.is_empty()).then_some(q.spec.dead_letter),
                lease_ms: (q.spec.lease_ms > 0).then_some(q.spec.lease_ms),
                enqueued: q.counts.enqueued,
                delivered: q.counts.delivered,
                redelivered: q.counts.redelivered,
                acked: q.counts.acked,
                dead_lettered: q.counts.dead_lettered,
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut consumers: Vec<ConsumerInfo> = consumer_views
            .into_iter()
            .map(|c| ConsumerInfo {
                id: c.id,
                node: c.node,
                node_name: name_of(c.node),
                queue: c.queue,
                prefetch: c.prefetch,
                lease_ms: c.lease.map(ms),
                unacked: c.unacked,
                delivered: c.delivered,
                acked: c.acked,
                stalled: c.stalled,
            })
            .collect();
        consumers.sort_by_key(|c| c.id);
        // The counters as of now, not of the last pass that moved.
        self.publish();
        let stats = *self.stats_tx.borrow();
        Snapshot {
            version: SNAPSHOT_VERSION,
            engine,
            nodes,
            services,
            sessions,
            topics,
            subscriptions,
            queues,
            consumers,
            counters: Counters::from(&stats),
        }
    }
}

/// Encodes a snapshot as the engine sends it: JSON, then split into chunk frames. `None`
/// when it exceeds [`MAX_INSPECT`].
pub(crate) fn chunk_frames(req: u32, snapshot: &Snapshot) -> Option<Vec<Vec<u8>>> {
    let json = serde_json::to_vec(snapshot).ok()?;
    if json.len() > MAX_INSPECT {
        return None;
    }
    let mut frames: Vec<Vec<u8>> = json
        .chunks(control::INSPECT_CHUNK)
        .map(|c| {
            EngineFrame::InspectChunk {
                req,
                last: false,
                bytes: c.to_vec(),
            }
            .encode()
        })
        .collect();
    frames.push(
        EngineFrame::InspectChunk {
            req,
            last: true,
            bytes: Vec::new(),
        }
        .encode(),
    );
    Some(frames)
}
