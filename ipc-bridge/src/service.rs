//! Services across hosts: the importing bridge serves the name locally with the remote
//! server's schema and tunnels each accepted session to the exporting bridge, which opens a
//! session to the real server.
//!
//! The schema check stays the engine's: the importing bridge declares exactly the remote
//! server's schema, so a local node opening with other types gets the engine's own
//! `OpenError::SchemaMismatch`, naming the remote server's types and fingerprints.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipc_tokio::{Listener, OpenError, Schema, Session};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use zenoh::sample::SampleKind;

use crate::bridge::{ImportState, Shared, key_chunk, register};
use crate::config::BridgeError;
use crate::tunnel::{Inbound, TunnelKey, pump};
use crate::wire::{Answer, Wire};

/// The longest wait between two describes of an export whose server is not up yet.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What an import's task hears.
#[derive(Debug)]
enum ImportEvent {
    /// A bridge exporting the name appeared.
    Up(String),
    /// A bridge exporting the name went.
    Down(String),
    /// Describe the current or a candidate exporter again (a refused open, a retry).
    Retry,
}

/// Starts importing `name`: watches the bridges that export it and serves it locally while
/// one does (and no local node serves it).
pub(crate) async fn import(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    name: &str,
    state: watch::Sender<ImportState>,
) -> Result<zenoh::pubsub::Subscriber<()>, BridgeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = tx.clone();
    let subscriber = shared
        .session
        .liveliness()
        .declare_subscriber(format!("{}/export/{}/*", shared.ns, key_chunk(name)))
        .history(true)
        .callback(move |sample| {
            let zid = sample.key_expr().as_str().rsplit('/').next().unwrap_or("");
            let event = match sample.kind() {
                SampleKind::Put => ImportEvent::Up(zid.to_owned()),
                SampleKind::Delete => ImportEvent::Down(zid.to_owned()),
            };
            let _ = events.send(event);
        })
        .await
        .map_err(BridgeError::zenoh)?;
    tasks.spawn(run_import(shared.clone(), name.to_owned(), rx, tx, state));
    Ok(subscriber)
}

/// The local serving of an import, while it lasts.
struct Serving {
    exporter: String,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Aborting drops the listener: the name is unserved.
        self.accept.abort();
    }
}

async fn run_import(
    shared: Arc<Shared>,
    name: String,
    mut events: mpsc::UnboundedReceiver<ImportEvent>,
    retry: mpsc::UnboundedSender<ImportEvent>,
    state: watch::Sender<ImportState>,
) {
    let mut exporters: BTreeSet<String> = BTreeSet::new();
    let mut serving: Option<Serving> = None;
    let mut backoff = Duration::from_millis(50);
    let mut retry_armed = false;
    while let Some(event) = events.recv().await {
        match event {
            ImportEvent::Up(zid) => {
                exporters.insert(zid);
            }
            ImportEvent::Down(zid) => {
                exporters.remove(&zid);
                if serving.as_ref().is_some_and(|s| s.exporter == zid) {
                    tracing::info!(service = %name, exporter = %zid, "exporter gone: the import stops serving");
                    serving = None;
                    state.send_modify(|s| s.exporter = None);
                }
            }
            ImportEvent::Retry => {
                retry_armed = false;
                if let Some(s) = &serving {
                    // A refused open: the remote server changed or went; describe again.
                    let zid = s.exporter.clone();
                    serving = None;
                    state.send_modify(|s| s.exporter = None);
                    exporters.insert(zid);
                }
            }
        }
        if serving.is_some() {
            continue;
        }
        let mut pending = false;
        for zid in exporters.clone() {
            match shared.describe(&zid, &name).await {
                Some(Answer::Served(schema)) => {
                    match shared.node.listen_as(&name, schema.clone()).await {
                        Ok(listener) => {
                            let accept = tokio::spawn(accept_loop(
                                shared.clone(),
                                listener,
                                zid.clone(),
                                mirror(&schema),
                                retry.clone(),
                            ));
                            tracing::info!(service = %name, exporter = %zid, "import served locally");
                            serving = Some(Serving {
                                exporter: zid.clone(),
                                accept,
                            });
                            state.send_modify(|s| {
                                s.exporter = Some(zid.clone());
                                s.served += 1;
                            });
                            backoff = Duration::from_millis(50);
                        }
                        Err(OpenError::AlreadyServed { .. }) => {
                            tracing::info!(service = %name, "served by a local node: the import stands by");
                        }
                        Err(e) => {
                            tracing::warn!(service = %name, error = %e, "cannot serve the import locally");
                        }
                    }
                    break;
                }
                Some(Answer::NotServed) => pending = true,
                Some(answer) => {
                    tracing::warn!(service = %name, exporter = %zid, ?answer, "exporter cannot serve the import");
                }
                None => {}
            }
        }
        if serving.is_none() && pending && !retry_armed {
            // The exporting bridge is up before its server: ask again, less and less often,
            // while it exports the name and serves nothing.
            retry_armed = true;
            let retry = retry.clone();
            let wait = backoff;
            backoff = (backoff * 2).min(RETRY_MAX);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = retry.send(ImportEvent::Retry);
            });
        }
    }
}

/// The schema of the end that opens a session to a server declaring `server`.
fn mirror(server: &Schema) -> Schema {
    Schema {
        send: server.recv.clone(),
        recv: server.send.clone(),
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    mut listener: Listener<Bytes>,
    exporter: String,
    schema: Schema,
    retry: mpsc::UnboundedSender<ImportEvent>,
) {
    let service = listener.name().to_owned();
    while let Some(session) = listener.accept().await {
        tokio::spawn(open_remote(
            shared.clone(),
            session,
            exporter.clone(),
            service.clone(),
            schema.clone(),
            retry.clone(),
        ));
    }
}

/// Tunnels a locally accepted session to the exporting bridge.
async fn open_remote(
    shared: Arc<Shared>,
    session: Session<Bytes>,
    exporter: String,
    service: String,
    schema: Schema,
    retry: mpsc::UnboundedSender<ImportEvent>,
) {
    let id = shared.next_id();
    let key = TunnelKey {
        peer: exporter.clone(),
        id,
        peer_is_opener: false,
    };
    let (mut inbound, credits, registered) = register(&shared, key);
    let open = Wire::Open {
        tunnel: id,
        service: service.clone(),
        schema,
    };
    if shared.send(&exporter, &open).await.is_err() {
        return;
    }
    match inbound.recv().await {
        Some(Inbound::Opened) => pump(shared, session, inbound, credits, registered).await,
        Some(Inbound::Refused(answer)) => {
            tracing::warn!(service = %service, exporter = %exporter, ?answer, "remote open refused: the local session is closed");
            let _ = retry.send(ImportEvent::Retry);
        }
        Some(other) => {
            tracing::debug!(service = %service, ?other, "tunnel ended before it opened");
        }
        None => {}
    }
}

/// Opens a session to the local `service` for the bridge `peer`, and tunnels it.
pub(crate) async fn accept_remote(
    shared: Arc<Shared>,
    peer: String,
    tunnel: u64,
    service: String,
    schema: Schema,
) {
    if !shared.exports.contains(&service) {
        tracing::warn!(peer = %peer, service = %service, "open of a service not exported, refused");
        let refused = Wire::Refused {
            tunnel,
            answer: Answer::NotExported,
        };
        let _ = shared.send(&peer, &refused).await;
        return;
    }
    let session = match shared.node.open_as(&service, schema).await {
        Ok(session) => session,
        Err(e) => {
            let answer = match e {
                OpenError::NotServed { .. } => Answer::NotServed,
                OpenError::SchemaMismatch { server, .. } => Answer::Mismatch(*server),
                other => Answer::Other(other.to_string()),
            };
            let _ = shared.send(&peer, &Wire::Refused { tunnel, answer }).await;
            return;
        }
    };
    let key = TunnelKey {
        peer: peer.clone(),
        id: tunnel,
        peer_is_opener: true,
    };
    let (inbound, credits, registered) = register(&shared, key);
    if shared.send(&peer, &Wire::Opened { tunnel }).await.is_err() {
        return;
    }
    pump(shared, session, inbound, credits, registered).await;
}
