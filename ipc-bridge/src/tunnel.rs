//! One local session carried over Zenoh to a session on another host: two pumps, credits
//! both ways.
//!
//! ```text
//!   local node ── session ── bridge A ══ Data / Credit / Fin ══ bridge B ── session ── server
//! ```
//!
//! Each side may have at most `window` messages of a session in flight: a message is sent
//! only with a credit, and the receiving bridge returns credits as its local session accepts
//! the messages. A slow receiver so stalls its own session and no other: the Zenoh link
//! never holds more than the windows of the sessions it carries, and nothing is dropped.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_tokio::{Session, SessionError};
use tokio::sync::{Semaphore, mpsc};

use crate::bridge::Shared;
use crate::wire::{Answer, Wire};

/// What the dispatcher hands a tunnel.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// The exporting side opened its session (to the opener only).
    Opened,
    /// The exporting side could not open its session (to the opener only).
    Refused(Answer),
    /// A message of the session.
    Data(Bytes),
    /// The other side finished sending.
    Fin,
    /// The other bridge is gone (its liveliness token went, or its link).
    Gone,
}

/// A tunnel as the dispatcher knows it: where its messages go, and its send credits.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) inbound: mpsc::UnboundedSender<Inbound>,
    pub(crate) credits: Arc<Semaphore>,
}

/// Names a tunnel on one bridge: the peer bridge, the opener's tunnel id, and whether the
/// peer is the opener (both bridges of a pair may open tunnels with the same id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TunnelKey {
    pub(crate) peer: String,
    pub(crate) id: u64,
    pub(crate) peer_is_opener: bool,
}

/// Removes the tunnel from the dispatcher's table when its pumps are done, however they end.
struct Registered {
    shared: Arc<Shared>,
    key: TunnelKey,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.forget_tunnel(&self.key);
    }
}

/// Registers a tunnel with the dispatcher before anything about it can arrive.
pub(crate) fn register(
    shared: &Arc<Shared>,
    key: TunnelKey,
) -> (
    mpsc::UnboundedReceiver<Inbound>,
    Arc<Semaphore>,
    RegisteredKey,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let credits = Arc::new(Semaphore::new(shared.window as usize));
    shared.insert_tunnel(
        key.clone(),
        Entry {
            inbound: tx,
            credits: credits.clone(),
        },
    );
    let guard = Registered {
        shared: shared.clone(),
        key,
    };
    (rx, credits, RegisteredKey(guard))
}

/// Keeps a tunnel registered while held.
pub(crate) struct RegisteredKey(Registered);

impl std::fmt::Debug for RegisteredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegisteredKey").field(&self.0.key).finish()
    }
}

impl RegisteredKey {
    fn key(&self) -> &TunnelKey {
        &self.0.key
    }
}

/// Runs both pumps of an open tunnel until the session is over on both sides, or the peer
/// bridge is gone (the local session is then dropped: a tower client's pending calls end
/// with `Disconnected`).
pub(crate) async fn pump(
    shared: Arc<Shared>,
    session: Session<Bytes>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    credits: Arc<Semaphore>,
    registered: RegisteredKey,
) {
    let key = registered.key().clone();
    // Messages this side sends carry `from_opener = true` on the opener's side.
    let from_opener = !key.peer_is_opener;
    let (mut sink, mut stream) = session.split();
    let window = shared.window;

    let outbound = async {
        loop {
            match stream.next().await {
                Some(Ok(payload)) => {
                    let Ok(permit) = credits.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let data = Wire::Data {
                        tunnel: key.id,
                        from_opener,
                        payload,
                    };
                    if shared.send(&key.peer, &data).await.is_err() {
                        return;
                    }
                }
                Some(Err(SessionError::Codec(_) | SessionError::MalformedFrame(_))) => {
                    // Byte sessions never decode; a malformed frame lost its own records
                    // only (and was logged by the node).
                    continue;
                }
                Some(Err(_)) | None => break,
            }
        }
        let fin = Wire::Fin {
            tunnel: key.id,
            from_opener,
        };
        let _ = shared.send(&key.peer, &fin).await;
    };

    let deliver = async {
        let mut owed: u32 = 0;
        // Once the local end refuses (its node closed it), the rest is drained and credited
        // so the other side's sender never waits for credits that cannot come.
        let mut broken = false;
        loop {
            let next = match inbound.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Credits go back a quarter window at a time (not per message: a credit
                    // is a Zenoh message too); the sender never waits on fewer than
                    // three quarters of its window.
                    if !broken && sink.flush().await.is_err() {
                        broken = true;
                    }
                    match inbound.recv().await {
                        Some(next) => next,
                        None => return true,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            };
            match next {
                Inbound::Data(payload) => {
                    if !broken && sink.feed(payload).await.is_err() {
                        broken = true;
                    }
                    owed += 1;
                    if owed >= window.div_ceil(4) {
                        if !broken && sink.flush().await.is_err() {
                            broken = true;
                        }
                        shared.credit(&key, from_opener, &mut owed).await;
                    }
                }
                Inbound::Fin => {
                    let _ = sink.close().await;
                    return true;
                }
                Inbound::Gone => return false,
                Inbound::Opened | Inbound::Refused(_) => {
                    tracing::warn!(tunnel = key.id, peer = %key.peer, "unexpected open answer on an open tunnel");
                }
            }
        }
    };

    tokio::pin!(deliver);
    tokio::pin!(outbound);
    let mut out_done = false;
    let mut in_done = false;
    while !(out_done && in_done) {
        tokio::select! {
            () = &mut outbound, if !out_done => out_done = true,
            alive = &mut deliver, if !in_done => {
                in_done = true;
                if !alive {
                    tracing::debug!(tunnel = key.id, peer = %key.peer, "peer bridge gone: the tunnelled session ends");
                    break;
                }
            }
        }
    }
    drop(registered);
}
