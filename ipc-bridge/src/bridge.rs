//! The bridge: a node of its local engine and a Zenoh session, and the dispatcher between.
//!
//! Zenoh keys (`ns` is the namespace, `zid` a bridge's Zenoh id, names hex-encoded so any
//! service or topic name is one key chunk):
//!
//! ```text
//! <ns>/alive/<zid>                  liveliness token: the bridge is up
//! <ns>/export/<name>/<zid>          liveliness token: that bridge exports service <name>
//! <ns>/bridge/<to>/in/<from>        one bridge's messages to another (crate::wire)
//! <ns>/topic/<name>                 an exported topic's messages
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ipc_tokio::{MessageType, Node, OpenError, Schema};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use zenoh::pubsub::Publisher;
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;

use crate::config::{BridgeConfig, BridgeError};
use crate::tunnel::{self, Entry, Inbound, TunnelKey};
use crate::wire::{Answer, Wire};
use crate::{service, topic};

/// What an imported service looks like on this side, for [`Bridge::watch_import`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportState {
    /// The Zenoh id of the bridge whose export is served here now, if any.
    pub exporter: Option<String>,
    /// How many times the import has started serving locally so far (it stops when its
    /// exporter goes, and serves again when one comes back).
    pub served: u64,
}

/// A running bridge. Dropping it stops it (as [`Bridge::shutdown`], without waiting).
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    imports: HashMap<String, watch::Receiver<ImportState>>,
    topics: HashMap<String, Arc<Publisher<'static>>>,
    _tokens: Vec<zenoh::liveliness::LivelinessToken>,
    _subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
}

impl Bridge {
    /// Connects a node to the engine listening on `socket`, joins Zenoh with the config's
    /// session settings, and starts exporting and importing what the config names. Call it
    /// inside a multi-thread Tokio runtime (the engine's, or any; one worker is enough):
    /// Zenoh does not run on a current-thread runtime.
    ///
    /// # Errors
    ///
    /// [`BridgeError`]: the config is inconsistent, the runtime is a current-thread one,
    /// the engine or Zenoh refused.
    pub async fn start(
        socket: impl AsRef<Path>,
        config: BridgeConfig,
    ) -> Result<Self, BridgeError> {
        config.validate()?;
        // Zenoh's own runtime panics inside a current-thread runtime: refuse first.
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(BridgeError::CurrentThreadRuntime);
        }
        let node = Node::connect(socket.as_ref(), &config.node_name).await?;
        let session = zenoh::open(config.zenoh)
            .await
            .map_err(BridgeError::zenoh)?;
        let me = session.zid().to_string();
        let ns = config.namespace;
        let shared = Arc::new(Shared {
            session: session.clone(),
            ns: ns.clone(),
            me: me.clone(),
            node,
            window: config.window,
            exports: config.export_services.iter().cloned().collect(),
            peers: tokio::sync::Mutex::new(HashMap::new()),
            tunnels: Mutex::new(HashMap::new()),
            describes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let mut tasks = JoinSet::new();
        let mut subscribers = Vec::new();
        let mut tokens = Vec::new();

        // The inbox and peers' deaths are dispatched in Zenoh's callbacks, in arrival order:
        // routing a message to its tunnel is a map look-up and a channel send, never a wait.
        let runtime = tokio::runtime::Handle::current();
        let weak = Arc::downgrade(&shared);
        let rt = runtime.clone();
        subscribers.push(
            session
                .declare_subscriber(format!("{ns}/bridge/{me}/in/*"))
                .callback(move |sample| {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    let from = sample.key_expr().as_str().rsplit('/').next().unwrap_or("");
                    let bytes = Bytes::from(sample.payload().to_bytes().into_owned());
                    dispatch(&shared, &rt, Event::Message(from.to_owned(), bytes));
                })
                .await
                .map_err(BridgeError::zenoh)?,
        );
        let weak = Arc::downgrade(&shared);
        let rt = runtime.clone();
        subscribers.push(
            session
                .liveliness()
                .declare_subscriber(format!("{ns}/alive/*"))
                .callback(move |sample| {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    if sample.kind() == SampleKind::Delete {
                        let zid = sample.key_expr().as_str().rsplit('/').next().unwrap_or("");
                        dispatch(&shared, &rt, Event::Gone(zid.to_owned()));
                    }
                })
                .await
                .map_err(BridgeError::zenoh)?,
        );

        let mut topics = HashMap::new();
        for (name, ty) in &config.export_topics {
            let publisher = topic::export(
                &shared,
                &mut tasks,
                name,
                ty.clone(),
                config.topic_subscription,
            )
            .await?;
            topics.insert(name.clone(), publisher);
        }
        for (name, ty) in &config.import_topics {
            subscribers.push(topic::import(&shared, &mut tasks, name, ty.clone()).await?);
        }
        let mut imports = HashMap::new();
        for name in &config.import_services {
            let (state_tx, state_rx) = watch::channel(ImportState::default());
            let sub = service::import(&shared, &mut tasks, name, state_tx).await?;
            subscribers.push(sub);
            imports.insert(name.clone(), state_rx);
        }
        // Last: peers learn of this bridge's exports only once it can answer for them.
        tokens.push(
            session
                .liveliness()
                .declare_token(format!("{ns}/alive/{me}"))
                .await
                .map_err(BridgeError::zenoh)?,
        );
        for name in &config.export_services {
            tokens.push(
                session
                    .liveliness()
                    .declare_token(format!("{ns}/export/{}/{me}", key_chunk(name)))
                    .await
                    .map_err(BridgeError::zenoh)?,
            );
        }
        tracing::info!(zid = %me, namespace = %ns, "bridge started");
        Ok(Self {
            shared,
            tasks,
            imports,
            topics,
            _tokens: tokens,
            _subscribers: subscribers,
        })
    }

    /// This bridge's Zenoh id.
    pub fn zid(&self) -> &str {
        &self.shared.me
    }

    /// The state of the imported service `name` (`None` if it is not imported), to wait
    /// until it is served locally: `watch_import("quotes")?.wait_for(|s| s.exporter.is_some())`.
    pub fn watch_import(&self, name: &str) -> Option<watch::Receiver<ImportState>> {
        self.imports.get(name).cloned()
    }

    /// Waits until some bridge imports the exported topic `topic` (a Zenoh subscriber
    /// matches it): what is published on it before then reaches no other host.
    ///
    /// # Errors
    ///
    /// [`BridgeError::NotExported`] if this bridge does not export `topic`,
    /// [`BridgeError::Zenoh`] if the Zenoh session closes first.
    pub async fn wait_topic_importers(&self, topic: &str) -> Result<(), BridgeError> {
        let Some(publisher) = self.topics.get(topic) else {
            return Err(BridgeError::NotExported(topic.to_owned()));
        };
        // The listener first, then the status: a match in between is not missed.
        let listener = publisher
            .matching_listener()
            .await
            .map_err(BridgeError::zenoh)?;
        let status = publisher
            .matching_status()
            .await
            .map_err(BridgeError::zenoh)?;
        if status.matching() {
            return Ok(());
        }
        while let Ok(status) = listener.recv_async().await {
            if status.matching() {
                return Ok(());
            }
        }
        Err(BridgeError::Zenoh("the Zenoh session closed".to_owned()))
    }

    /// Stops the bridge: its tasks end, its tunnelled sessions are dropped (their local
    /// peers see them end), its tokens go (peer bridges end their tunnels to it), and its
    /// Zenoh session closes.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        self.shared.end_all_tunnels();
        self._tokens.clear();
        self._subscribers.clear();
        let _ = self.shared.session.close().await;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.shared.end_all_tunnels();
    }
}

/// What the dispatcher hears, in order.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message from the bridge `from`.
    Message(String, Bytes),
    /// The bridge with that Zenoh id is gone.
    Gone(String),
}

/// State the bridge's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) session: zenoh::Session,
    pub(crate) ns: String,
    pub(crate) me: String,
    pub(crate) node: Node,
    pub(crate) window: u32,
    pub(crate) exports: HashSet<String>,
    /// One publisher per peer bridge, to its inbox.
    peers: tokio::sync::Mutex<HashMap<String, Arc<Publisher<'static>>>>,
    tunnels: Mutex<HashMap<TunnelKey, Entry>>,
    /// Describe requests awaiting their answer: peer and reply.
    describes: Mutex<HashMap<u64, (String, oneshot::Sender<Answer>)>>,
    next_id: AtomicU64,
}

/// Why a message could not be sent to a peer bridge.
#[derive(Debug)]
pub(crate) struct SendFailed;

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `wire` to the bridge `peer` (reliable, blocking on congestion: never dropped).
    pub(crate) async fn send(&self, peer: &str, wire: &Wire) -> Result<(), SendFailed> {
        let bytes = wire.encode().map_err(|e| {
            tracing::error!(error = %e, "cannot encode a bridge message");
            SendFailed
        })?;
        let publisher = self.publisher(peer).await?;
        publisher.put(bytes).await.map_err(|e| {
            tracing::warn!(peer, error = %e, "zenoh put failed");
            SendFailed
        })
    }

    async fn publisher(&self, peer: &str) -> Result<Arc<Publisher<'static>>, SendFailed> {
        let mut peers = self.peers.lock().await;
        if let Some(p) = peers.get(peer) {
            return Ok(p.clone());
        }
        let key = format!("{}/bridge/{peer}/in/{}", self.ns, self.me);
        let publisher = self
            .session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            .express(true)
            .await
            .map_err(|e| {
                tracing::warn!(peer, error = %e, "cannot declare a publisher to a peer bridge");
                SendFailed
            })?;
        let publisher = Arc::new(publisher);
        peers.insert(peer.to_owned(), publisher.clone());
        Ok(publisher)
    }

    /// Returns `owed` credits of the tunnel `key` to its peer.
    pub(crate) async fn credit(&self, key: &TunnelKey, from_opener: bool, owed: &mut u32) {
        let n = std::mem::take(owed);
        let credit = Wire::Credit {
            tunnel: key.id,
            from_opener,
            n,
        };
        let _ = self.send(&key.peer, &credit).await;
    }

    pub(crate) fn insert_tunnel(&self, key: TunnelKey, entry: Entry) {
        lock(&self.tunnels).insert(key, entry);
    }

    pub(crate) fn forget_tunnel(&self, key: &TunnelKey) {
        lock(&self.tunnels).remove(key);
    }

    fn end_all_tunnels(&self) {
        for (_, entry) in lock(&self.tunnels).drain() {
            let _ = entry.inbound.send(Inbound::Gone);
        }
        for (_, (_, reply)) in lock(&self.describes).drain() {
            drop(reply);
        }
    }

    /// Asks the bridge `peer` how it serves `service`; `None` if that bridge goes first.
    pub(crate) async fn describe(&self, peer: &str, service: &str) -> Option<Answer> {
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.describes).insert(req, (peer.to_owned(), tx));
        let ask = Wire::Describe {
            req,
            service: service.to_owned(),
        };
        if self.send(peer, &ask).await.is_err() {
            lock(&self.describes).remove(&req);
            return None;
        }
        rx.await.ok()
    }

    /// The peer bridge `peer` is gone: its tunnels end, its pending answers fail.
    fn peer_gone(&self, peer: &str) {
        lock(&self.tunnels).retain(|key, entry| {
            if key.peer == peer {
                let _ = entry.inbound.send(Inbound::Gone);
                false
            } else {
                true
            }
        });
        lock(&self.describes).retain(|_, (p, _)| p != peer);
    }

    fn route(&self, key: &TunnelKey, inbound: Inbound) {
        let tunnels = lock(&self.tunnels);
        match tunnels.get(key) {
            Some(entry) => {
                let _ = entry.inbound.send(inbound);
            }
            None => tracing::debug!(?key, "message for a tunnel that is over"),
        }
    }
}

/// Locks a mutex whose holders never panic while holding it (plain map operations).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The dispatcher: routes one peer message to its tunnel or handler (called in Zenoh's
/// callbacks, in arrival order; what may wait is spawned on the bridge's runtime).
fn dispatch(shared: &Arc<Shared>, runtime: &tokio::runtime::Handle, event: Event) {
    {
        let (from, bytes) = match event {
            Event::Message(from, bytes) => (from, bytes),
            Event::Gone(peer) => {
                tracing::info!(peer = %peer, "peer bridge gone");
                shared.peer_gone(&peer);
                let shared = shared.clone();
                runtime.spawn(async move {
                    shared.peers.lock().await.remove(&peer);
                });
                return;
            }
        };
        let wire = match Wire::decode(bytes) {
            Ok(wire) => wire,
            Err(e) => {
                tracing::warn!(peer = %from, error = %e, "malformed message from a peer bridge, dropped");
                return;
            }
        };
        match wire {
            Wire::Describe { req, service } => {
                let shared = shared.clone();
                runtime.spawn(async move {
                    let answer = describe_local(&shared, &service).await;
                    let _ = shared.send(&from, &Wire::Described { req, answer }).await;
                });
            }
            Wire::Described { req, answer } => {
                if let Some((_, reply)) = lock(&shared.describes).remove(&req) {
                    let _ = reply.send(answer);
                }
            }
            Wire::Open {
                tunnel,
                service,
                schema,
            } => {
                runtime.spawn(service::accept_remote(
                    shared.clone(),
                    from,
                    tunnel,
                    service,
                    schema,
                ));
            }
            Wire::Opened { tunnel } => {
                let key = TunnelKey {
                    peer: from,
                    id: tunnel,
                    peer_is_opener: false,
                };
                shared.route(&key, Inbound::Opened);
            }
            Wire::Refused { tunnel, answer } => {
                let key = TunnelKey {
                    peer: from,
                    id: tunnel,
                    peer_is_opener: false,
                };
                shared.route(&key, Inbound::Refused(answer));
            }
            Wire::Data {
                tunnel,
                from_opener,
                payload,
            } => {
                let key = TunnelKey {
                    peer: from,
                    id: tunnel,
                    peer_is_opener: from_opener,
                };
                shared.route(&key, Inbound::Data(payload));
            }
            Wire::Fin {
                tunnel,
                from_opener,
            } => {
                let key = TunnelKey {
                    peer: from,
                    id: tunnel,
                    peer_is_opener: from_opener,
                };
                shared.route(&key, Inbound::Fin);
            }
            Wire::Credit {
                tunnel,
                from_opener,
                n,
            } => {
                let key = TunnelKey {
                    peer: from,
                    id: tunnel,
                    peer_is_opener: from_opener,
                };
                if let Some(entry) = lock(&shared.tunnels).get(&key) {
                    entry.credits.add_permits(n as usize);
                }
            }
        }
    }
}

/// A type no server declares: opening with it makes the engine answer with the server's
/// schema (a `SchemaMismatch`), or `NotServed`.
fn probe_schema() -> Schema {
    let probe = MessageType {
        name: "shmlink-bridge-probe".to_owned(),
        fingerprint: 0x5348_4d4c_4b50_5242,
    };
    Schema {
        send: probe.clone(),
        recv: probe,
    }
}

/// How the local engine serves `service`, for a peer bridge that imports it.
async fn describe_local(shared: &Shared, service: &str) -> Answer {
    if !shared.exports.contains(service) {
        return Answer::NotExported;
    }
    match shared.node.open_as(service, probe_schema()).await {
        Err(OpenError::SchemaMismatch { server, .. }) => Answer::Served(*server),
        Err(OpenError::NotServed { .. }) => Answer::NotServed,
        Err(e) => Answer::Other(e.to_string()),
        Ok(_) => Answer::Other("the server declared the bridge's probe type".to_owned()),
    }
}

/// `name` as one Zenoh key chunk: lowercase hex of its bytes (service and topic names may
/// hold `/`, `*` and other characters Zenoh keys give a meaning).
pub(crate) fn key_chunk(name: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(name.len() * 2);
    for b in name.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub(crate) use tunnel::register;
