//! The registry: the engine's administrative state, as plain data.
//!
//! Nodes, session ends, services (by id, with a name index) and each end's window in flight.
//! No I/O, no Tokio, no shared memory: the router drives it (the way quinn's `Endpoint` is
//! driven by its connection tasks), and its unit tests run without a socket or a runtime.
//! Every operation is O(1) in the number of nodes, ends and services (hash maps keyed by
//! ids the engine assigned, or by name).

use std::collections::HashMap;

use ipc_core::control::{ErrorCode, Limit, Schema};
use ipc_core::{IdMap, IdSet};

use crate::engine::command::{EndId, NodeId};
use crate::engine::violation::{Violation, ViolationKind};

/// A service's id (sent to the node in `ServeOk`, named by `Unserve`).
pub(crate) type ServiceId = u32;

/// Names one node may serve at once.
pub(crate) const MAX_SERVICES_PER_NODE: usize = 1024;

/// What the registry enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A session end's window in messages.
    pub(crate) credits: u32,
    /// A session end's window in bytes (size-class charges).
    pub(crate) window_bytes: u64,
    /// Session ends one node may hold.
    pub(crate) max_sessions_per_node: usize,
    /// Registered nodes of one uid.
    pub(crate) nodes_per_uid: usize,
    /// Session ends held by the nodes of one uid.
    pub(crate) sessions_per_uid: usize,
    /// Sessions one opener node may hold to one server node (so that one client cannot take
    /// every slot of a server).
    pub(crate) sessions_per_opener: usize,
}

/// A registered node.
#[derive(Debug)]
pub(crate) struct NodeEntry {
    pub(crate) name: String,
    pub(crate) pid: Option<i32>,
    pub(crate) uid: u32,
    pub(crate) ends: IdSet<EndId>,
    pub(crate) services: IdSet<ServiceId>,
}

/// One end of a session.
#[derive(Debug)]
pub(crate) struct End {
    pub(crate) node: NodeId,
    /// The other end, while it exists.
    pub(crate) peer: Option<EndId>,
    /// The node half-closed this end: no more data from it.
    pub(crate) fin: bool,
    /// Messages sent on this end and not yet released by the receiver.
    pub(crate) in_flight: u32,
    /// Their window charges.
    pub(crate) in_flight_bytes: u64,
    /// On the opener's end: the (opener, server) pair its session counts against.
    pub(crate) pair: Option<(NodeId, NodeId)>,
    /// Its node's uid (its `sessions_per_uid` count).
    pub(crate) uid: u32,
    /// Messages sent on this end since it opened (the inspector's counts).
    pub(crate) sent_messages: u64,
    /// Their payload bytes.
    pub(crate) sent_bytes: u64,
}

/// A served name.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) node: NodeId,
    pub(crate) schema: Schema,
}

/// A control request the registry refuses: the code and message the node gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Why the registry refuses an open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenRefusal {
    /// Refused with this code and message.
    Refused(Refusal),
    /// The ends' types disagree: the opener gets the server's schema.
    SchemaMismatch { server: Schema },
    /// An admission limit is reached.
    Limit { limit: Limit, max: u64 },
}

impl OpenRefusal {
    fn limit(limit: Limit, max: usize) -> Self {
        Self::Limit {
            limit,
            max: max as u64,
        }
    }
}

impl From<Refusal> for OpenRefusal {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

/// A session the registry opened.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) client_end: EndId,
    pub(crate) server_end: EndId,
    pub(crate) server_node: NodeId,
    pub(crate) service: ServiceId,
    pub(crate) client_name: String,
    pub(crate) server_name: String,
}

/// Where a message or control entry sent on an end goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The receiving end.
    pub(crate) end: EndId,
    /// Its node.
    pub(crate) node: NodeId,
}

/// The engine's administrative state.
#[derive(Debug)]
pub(crate) struct Registry {
    limits: Limits,
    nodes: IdMap<NodeId, NodeEntry>,
    ends: IdMap<EndId, End>,
    services: IdMap<ServiceId, Service>,
    /// Peers choose names: a keyed hash, not the id hash (collision floods).
    names: HashMap<String, ServiceId>,
    next_end: EndId,
    next_service: ServiceId,
    /// Per uid: registered nodes and session ends.
    per_uid: HashMap<u32, UidCounts>,
    /// Per (opener, server) node pair: sessions.
    pairs: HashMap<(NodeId, NodeId), usize>,
    /// Publisher ids and their nodes: allocated from the session-end id space, so a `DATA`
    /// entry's session field names exactly one of an end or a publisher.
    publishers: IdMap<EndId, NodeId>,
}

/// What one uid holds.
#[derive(Debug, Default, Clone, Copy)]
struct UidCounts {
    nodes: usize,
    ends: usize,
}

// ===== impl Registry =====

impl Registry {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            nodes: IdMap::default(),
            ends: IdMap::default(),
            services: IdMap::default(),
            names: HashMap::new(),
            next_end: 1,
            next_service: 1,
            per_uid: HashMap::new(),
            pairs: HashMap::new(),
            publishers: IdMap::default(),
        }
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn end_count(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn service_count(&self) -> usize {
        self.services.len()
    }

    pub(crate) fn node(&self, id: NodeId) -> Option<&NodeEntry> {
        self.nodes.get(&id)
    }

    pub(crate) fn end(&self, id: EndId) -> Option<&End> {
        self.ends.get(&id)
    }

    /// Every node, in no particular order (the inspector).
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (NodeId, &NodeEntry)> {
        self.nodes.iter().map(|(id, n)| (*id, n))
    }

    /// Every session end, in no particular order (the inspector).
    pub(crate) fn ends(&self) -> impl Iterator<Item = (EndId, &End)> {
        self.ends.iter().map(|(id, e)| (*id, e))
    }

    /// Every served name, in no particular order (the inspector).
    pub(crate) fn services(&self) -> impl Iterator<Item = (ServiceId, &Service)> {
        self.services.iter().map(|(id, s)| (*id, s))
    }

    // ===== nodes =====

    /// Registers a node, unless its uid already has `nodes_per_uid` of them.
    pub(crate) fn add_node(
        &mut self,
        id: NodeId,
        name: String,
        pid: Option<i32>,
        uid: u32,
    ) -> Result<(), (Limit, u64)> {
        let counts = self.per_uid.entry(uid).or_default();
        if counts.nodes >= self.limits.nodes_per_uid {
            return Err((Limit::NodesPerUid, self.limits.nodes_per_uid as u64));
        }
        counts.nodes += 1;
        self.nodes.insert(
            id,
            NodeEntry {
                name,
                pid,
                uid,
                ends: IdSet::default(),
                services: IdSet::default(),
            },
        );
        Ok(())
    }

    /// Removes a node and the names it serves. Its ends stay until the caller closes each
    /// ([`Registry::close_end`]), which tells it whom to notify.
    pub(crate) fn remove_node(&mut self, id: NodeId) -> Option<NodeEntry> {
        let entry = self.nodes.remove(&id)?;
        if let Some(counts) = self.per_uid.get_mut(&entry.uid) {
            counts.nodes = counts.nodes.saturating_sub(1);
            if counts.nodes == 0 && counts.ends == 0 {
                self.per_uid.remove(&entry.uid);
            }
        }
        for service in &entry.services {
            if let Some(s) = self.services.remove(service) {
                self.names.remove(&s.name);
            }
        }
        Some(entry)
    }

    // ===== services =====

    pub(crate) fn serve(
        &mut self,
        node: NodeId,
        name: String,
        schema: Schema,
    ) -> Result<ServiceId, Refusal> {
        let entry = self
            .nodes
            .get_mut(&node)
            .ok_or_else(|| Refusal::new(ErrorCode::Resources, "unknown node"))?;
        if entry.services.len() >= MAX_SERVICES_PER_NODE {
            return Err(Refusal::new(
                ErrorCode::Resources,
                format!("a node may serve at most {MAX_SERVICES_PER_NODE} names"),
            ));
        }
        if self.names.contains_key(&name) {
            return Err(Refusal::new(
                ErrorCode::AlreadyServed,
                format!("{name:?} is already served"),
            ));
        }
        let id = loop {
            let id = self.next_service;
            self.next_service = self.next_service.wrapping_add(1).max(1);
            if !self.services.contains_key(&id) {
                break id;
            }
        };
        entry.services.insert(id);
        self.names.insert(name.clone(), id);
        self.services.insert(id, Service { name, node, schema });
        Ok(id)
    }

    /// Removes service `id` if `node` serves it. O(1).
    pub(crate) fn unserve(&mut self, node: NodeId, id: ServiceId) -> Result<String, Refusal> {
        match self.services.get(&id) {
            Some(s) if s.node == node => {}
            _ => {
                return Err(Refusal::new(
                    ErrorCode::NotServed,
                    format!("service id {id} is not served by this node"),
                ));
            }
        }
        let service = self.services.remove(&id).expect("checked");
        self.names.remove(&service.name);
        if let Some(n) = self.nodes.get_mut(&node) {
            n.services.remove(&id);
        }
        Ok(service.name)
    }

    // ===== sessions =====

    fn alloc_end(&mut self) -> EndId {
        loop {
            let id = self.next_end;
            self.next_end = self.next_end.wrapping_add(1).max(1);
            if !self.ends.contains_key(&id) && !self.publishers.contains_key(&id) {
                return id;
            }
        }
    }

    /// A new publisher id for `node`, from the session-end id space.
    pub(crate) fn add_publisher(&mut self, node: NodeId) -> EndId {
        let id = self.alloc_end();
        self.publishers.insert(id, node);
        id
    }

    /// Gives a publisher id back.
    pub(crate) fn remove_publisher(&mut self, id: EndId) {
        self.publishers.remove(&id);
    }

    /// Opens a session from `node` to the server of `service`.
    pub(crate) fn open(
        &mut self,
        node: NodeId,
        service: &str,
        schema: &Schema,
    ) -> Result<Opened, OpenRefusal> {
        let client = self
            .nodes
            .get(&node)
            .ok_or_else(|| Refusal::new(ErrorCode::Resources, "unknown node"))?;
        let Some(&service_id) = self.names.get(service) else {
            return Err(
                Refusal::new(ErrorCode::NotServed, format!("no node serves {service:?}")).into(),
            );
        };
        let target = &self.services[&service_id];
        if !schema.matches(&target.schema) {
            return Err(OpenRefusal::SchemaMismatch {
                server: target.schema.clone(),
            });
        }
        let server_node = target.node;
        let limit = self.limits.max_sessions_per_node;
        let server_full = self
            .nodes
            .get(&server_node)
            .is_none_or(|s| s.ends.len() >= limit);
        if client.ends.len() >= limit || server_full {
            return Err(Refusal::new(
                ErrorCode::Resources,
                format!("session limit of {limit} per node reached"),
            )
            .into());
        }
        let opener_limit = self.limits.sessions_per_opener;
        if self.pairs.get(&(node, server_node)).copied().unwrap_or(0) >= opener_limit {
            return Err(OpenRefusal::limit(Limit::SessionsPerOpener, opener_limit));
        }
        let (client_uid, server_uid) = (client.uid, self.nodes[&server_node].uid);
        let uid_limit = self.limits.sessions_per_uid;
        let ends_of = |uid| self.per_uid.get(&uid).map_or(0, |c| c.ends);
        let wanted = if client_uid == server_uid { 2 } else { 1 };
        if ends_of(client_uid) + wanted > uid_limit || ends_of(server_uid) + wanted > uid_limit {
            return Err(OpenRefusal::limit(Limit::SessionsPerUid, uid_limit));
        }
        let client_name = client.name.clone();
        let server_name = self.nodes[&server_node].name.clone();
        let (c, s) = (self.alloc_end(), self.alloc_end());
        *self.pairs.entry((node, server_node)).or_default() += 1;
        for uid in [client_uid, server_uid] {
            self.per_uid.entry(uid).or_default().ends += 1;
        }
        for (end, owner, peer, uid) in [(c, node, s, client_uid), (s, server_node, c, server_uid)] {
            self.ends.insert(
                end,
                End {
                    node: owner,
                    peer: Some(peer),
                    fin: false,
                    in_flight: 0,
                    in_flight_bytes: 0,
                    pair: (end == c).then_some((node, server_node)),
                    uid,
                    sent_messages: 0,
                    sent_bytes: 0,
                },
            );
            self.nodes
                .get_mut(&owner)
                .expect("checked")
                .ends
                .insert(end);
        }
        Ok(Opened {
            client_end: c,
            server_end: s,
            server_node,
            service: service_id,
            client_name,
            server_name,
        })
    }

    fn owned_end(&mut self, node: NodeId, end: EndId) -> Result<&mut End, Violation> {
        match self.ends.get_mut(&end) {
            Some(e) if e.node == node => Ok(e),
            _ => Err(Violation::new(
                ViolationKind::ForeignSession,
                format!("session {end} does not belong to this node"),
            )),
        }
    }

    /// Checks that `node` owns `end`.
    pub(crate) fn check_owner(&mut self, node: NodeId, end: EndId) -> Result<(), Violation> {
        self.owned_end(node, end).map(|_| ())
    }

    /// A payload (`records` 0) or a frame of `records` records, of `len` bytes and window
    /// charge `charge`, sent by `node` on `end`: checked against the end's window and charged
    /// to it. A frame takes one message per record; its bytes are checked at its length, which
    /// is what its sender could check record by record (it adds the frame's rounding up to
    /// its size class when it seals it), and charged at its size class. `None` when the peer is gone (the sender
    /// was told).
    pub(crate) fn send(
        &mut self,
        node: NodeId,
        end: EndId,
        charge: u64,
        len: u32,
        records: u32,
    ) -> Result<Option<Route>, Violation> {
        let messages = records.max(1);
        let checked = if records == 0 { charge } else { u64::from(len) };
        let Limits {
            credits,
            window_bytes,
            ..
        } = self.limits;
        let state = self.owned_end(node, end)?;
        if state.fin {
            return Err(Violation::new(
                ViolationKind::DataAfterFin,
                format!("data on session {end} after it finished"),
            ));
        }
        if state.in_flight.saturating_add(messages) > credits
            || (state.in_flight_bytes > 0
                && state.in_flight_bytes.saturating_add(checked) > window_bytes)
        {
            return Err(Violation::new(
                ViolationKind::Window,
                format!(
                    "session {end} exceeded its window: {} messages and {} bytes in flight, \
                     {messages} more messages of {charge} bytes, window {credits} messages and \
                     {window_bytes} bytes",
                    state.in_flight, state.in_flight_bytes
                ),
            ));
        }
        let Some(peer) = state.peer else {
            return Ok(None);
        };
        state.in_flight += messages;
        state.in_flight_bytes += charge;
        state.sent_messages += u64::from(messages);
        state.sent_bytes += u64::from(len);
        let node = self.ends[&peer].node;
        Ok(Some(Route { end: peer, node }))
    }

    /// `node` half-closes `end`; returns where to tell it.
    pub(crate) fn fin(&mut self, node: NodeId, end: EndId) -> Result<Option<Route>, Violation> {
        let state = self.owned_end(node, end)?;
        state.fin = true;
        let Some(peer) = state.peer else {
            return Ok(None);
        };
        Ok(Some(Route {
            end: peer,
            node: self.ends[&peer].node,
        }))
    }

    /// Gives `messages` and `bytes` of window back to `end`; returns its node, if the end
    /// still exists.
    pub(crate) fn refund(&mut self, end: EndId, messages: u32, bytes: u64) -> Option<NodeId> {
        let state = self.ends.get_mut(&end)?;
        state.in_flight = state.in_flight.saturating_sub(messages);
        state.in_flight_bytes = state.in_flight_bytes.saturating_sub(bytes);
        Some(state.node)
    }

    /// Removes `end`; returns its peer (which must be told) if it had one.
    pub(crate) fn close_end(&mut self, end: EndId) -> Option<Route> {
        let state = self.ends.remove(&end)?;
        if let Some(n) = self.nodes.get_mut(&state.node) {
            n.ends.remove(&end);
        }
        if let Some(counts) = self.per_uid.get_mut(&state.uid) {
            counts.ends = counts.ends.saturating_sub(1);
            if counts.nodes == 0 && counts.ends == 0 {
                self.per_uid.remove(&state.uid);
            }
        }
        if let Some(pair) = state.pair
            && let Some(n) = self.pairs.get_mut(&pair)
        {
            *n -= 1;
            if *n == 0 {
                self.pairs.remove(&pair);
            }
        }
        let peer = state.peer?;
        let p = self.ends.get_mut(&peer)?;
        p.peer = None;
        Some(Route {
            end: peer,
            node: p.node,
        })
    }

    /// Forgets everything (engine shutdown: every node goes at once, nobody is told).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
        self.ends.clear();
        self.services.clear();
        self.names.clear();
    }
}

#[cfg(test)]
mod tests;
