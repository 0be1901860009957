//! The server: any `tower::Service<Req, Response = Resp>` behind a served name.
//!
//! One task accepts sessions; per session a reader decodes requests and spawns one task per
//! request (a clone of the service, bounded by a semaphore shared by the whole server), and a
//! writer encodes replies into loans. Reading and writing run apart, so a client that is slow
//! to read replies never stops this server from reading requests.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::message::{Codec, Message, shared_bytes};
use crate::node::{Listener, NodeHandle};
use crate::service::envelope::{self, Envelope, Kind};
use crate::session::{Session, SessionSink};

/// Settings of a server.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Requests handled at once, across all sessions of the server (default 64).
    pub concurrency: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { concurrency: 64 }
    }
}

impl ServeConfig {
    /// Sets [`ServeConfig::concurrency`] (at least 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// A running server. [`Server::shutdown`] stops serving the name, answers what is in flight,
/// then closes; dropping it does the same in the background.
///
/// Both queue the engine's `Unserve` at once, with the ordering of a dropped
/// [`Listener`](crate::Listener): later opens of the same node see the name unserved.
/// `shutdown().await` also waits for the engine's acknowledgement, so once it returns an open
/// of the name by any node fails with [`OpenError::NotServed`](crate::OpenError::NotServed).
pub struct Server {
    name: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// The node and the service id, to unserve without waiting for the accept task.
    service: (Arc<NodeHandle>, u32),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("name", &self.name).finish()
    }
}

impl Server {
    pub(crate) fn start<Req, Resp, S, C>(
        listener: Listener<Bytes, C>,
        service: S,
        config: ServeConfig,
    ) -> Self
    where
        Req: Message,
        Resp: Message,
        S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: fmt::Display + Send + 'static,
        C: Codec,
    {
        let (stop, stopped) = watch::channel(false);
        let name = listener.name().to_owned();
        let served = listener.service();
        let task = tokio::spawn(accept_loop::<Req, Resp, S, C>(
            listener, service, config, stopped,
        ));
        Self {
            name,
            stop,
            task: Some(task),
            service: served,
        }
    }

    /// The served name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops serving the name and waits until the engine has removed it, stops accepting
    /// requests, answers every request already received, then closes every session.
    pub async fn shutdown(mut self) {
        let (node, id) = &self.service;
        let acked = node.shared.unserve(*id);
        let _ = self.stop.send(true);
        if let Some(acked) = acked {
            // A closed channel means the node is gone: nothing is served any more either.
            let _ = acked.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    /// Queues the `Unserve` now (see the type's docs), and lets the server finish in the
    /// background.
    fn drop(&mut self) {
        let (node, id) = &self.service;
        node.shared.remove_listener(*id);
        let _ = self.stop.send(true);
    }
}

async fn accept_loop<Req, Resp, S, C>(
    mut listener: Listener<Bytes, C>,
    service: S,
    config: ServeConfig,
    mut stop: watch::Receiver<bool>,
) where
    Req: Message,
    Resp: Message,
    S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    C: Codec,
{
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut sessions = JoinSet::new();
    let for_sessions = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            session = listener.accept() => match session {
                Some(session) => {
                    sessions.spawn(serve_session::<Req, Resp, S, C>(session, service.clone(), permits.clone(), for_sessions.clone()));
                }
                None => break, // the engine is gone
            },
            // Reap finished sessions as we go.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener); // stop serving the name: no new sessions
    while sessions.join_next().await.is_some() {}
}

/// What a request task hands to the writer.
enum Outcome<Resp> {
    Reply(Resp),
    Error(String),
    Panic(String),
}

async fn serve_session<Req, Resp, S, C>(
    session: Session<Bytes, C>,
    service: S,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) where
    Req: Message,
    Resp: Message,
    S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    C: Codec,
{
    let (sink, mut stream) = session.split();
    let (replies, rx) = mpsc::unbounded_channel::<(u64, Outcome<Resp>)>();
    let writer = tokio::spawn(write_replies::<Resp, C>(sink, rx));
    let mut handlers = JoinSet::new();
    let client_gone = loop {
        let message = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break false,
            // Reap finished handlers as we go.
            Some(_) = handlers.join_next(), if !handlers.is_empty() => continue,
            message = stream.next() => message,
        };
        let bytes = match message {
            Some(Ok(bytes)) => bytes,
            // The client's process or the engine died: nobody will read the replies.
            Some(Err(crate::SessionError::Disconnected)) => break true,
            // The client finished sending (it still reads the replies in flight).
            _ => break false,
        };
        let Some(envelope) = Envelope::parse(bytes) else {
            tracing::warn!("malformed request envelope; ignored");
            continue;
        };
        let id = envelope.id;
        if envelope.kind != Kind::Request {
            continue;
        }
        let request =
            match shared_bytes::with_owner(&envelope.body, || C::decode::<Req>(&envelope.body)) {
                Ok(request) => request,
                Err(e) => {
                    let _ = replies.send((
                        id,
                        Outcome::Error(format!("cannot decode the request: {e}")),
                    ));
                    continue;
                }
            };
        // The request's shared memory goes back before the handler runs (unless the request
        // keeps a view of it: a `shared_bytes` field holds it, and a credit, while it lives).
        drop(envelope);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break false;
        };
        let service = service.clone();
        let replies = replies.clone();
        handlers.spawn(async move {
            let outcome = match AssertUnwindSafe(service.oneshot(request))
                .catch_unwind()
                .await
            {
                Ok(Ok(reply)) => Outcome::Reply(reply),
                Ok(Err(e)) => Outcome::Error(e.to_string()),
                Err(panic) => Outcome::Panic(panic_message(panic.as_ref())),
            };
            let _ = replies.send((id, outcome));
            drop(permit);
        });
    };
    // In-flight handlers hold clones of `replies`: the writer ends after the last one answers.
    drop(replies);
    // Answer what is in flight, unless the client goes away meanwhile (or already has): its
    // replies could never be delivered, so its handlers are stopped and their permits freed.
    let mut watching = true;
    if client_gone {
        handlers.abort_all();
        watching = false;
    }
    loop {
        tokio::select! {
            done = handlers.join_next() => if done.is_none() { break },
            _ = stream.closed(), if watching => {
                handlers.abort_all();
                watching = false;
            }
        }
    }
    let _ = writer.await;
}

async fn write_replies<Resp: Message, C: Codec>(
    mut sink: SessionSink<Bytes, C>,
    mut replies: mpsc::UnboundedReceiver<(u64, Outcome<Resp>)>,
) {
    // Replies already queued are fed; the sink is flushed once the queue is empty.
    loop {
        let next = match replies.try_recv() {
            Ok(next) => Some(next),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                if SessionSink::flush(&mut sink).await.is_err() {
                    break;
                }
                replies.recv().await
            }
        };
        let Some((id, outcome)) = next else { break };
        // Encoded in place into the sink's open frame: queued replies travel as one frame.
        let sent = match outcome {
            Outcome::Reply(reply) => {
                match envelope::feed_encoded::<C, Resp>(&mut sink, id, Kind::Reply, reply).await {
                    // The reply can never fit: tell the caller so, with the figures.
                    Err(crate::SessionError::TooLarge { len, max }) => {
                        let mut figures = [0u8; 16];
                        figures[..8].copy_from_slice(&len.to_le_bytes());
                        figures[8..].copy_from_slice(&max.to_le_bytes());
                        envelope::feed_raw(&mut sink, id, Kind::TooLarge, &figures).await
                    }
                    // The reply cannot be encoded: tell the caller so.
                    Err(e @ crate::SessionError::Codec(_)) => {
                        let text = format!("cannot send the reply: {e}");
                        envelope::feed_raw(&mut sink, id, Kind::Error, text.as_bytes()).await
                    }
                    other => other,
                }
            }
            Outcome::Error(text) => {
                envelope::feed_raw(&mut sink, id, Kind::Error, text.as_bytes()).await
            }
            Outcome::Panic(text) => {
                envelope::feed_raw(&mut sink, id, Kind::Panic, text.as_bytes()).await
            }
        };
        if sent.is_err() {
            break; // the client is gone
        }
    }
    let _ = sink.close().await;
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}
