//! The client: a `tower::Service` over one session, many requests in flight.
//!
//! Calls go through a bounded channel to a writer task that encodes them into loans; a reader
//! task matches replies to waiting calls by id. The two run apart, so a client that waits for
//! credits to send never stops reading replies (which is what returns the server's credits).

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use ipc_core::IdMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::error::{CodecError, SessionError};
use crate::message::{Codec, Message, shared_bytes};
use crate::service::envelope::{self, Envelope, Kind};
use crate::service::{CallError, ResponseFuture};
use crate::session::{Session, SessionSink, SessionStream};

type Reply<Resp> = oneshot::Sender<Result<Resp, CallError>>;

/// How often (in calls) the writer purges abandoned calls from the waiting map.
const PURGE_EVERY: u64 = 1024;

struct Call<Req, Resp> {
    request: Req,
    reply: Reply<Resp>,
}

/// Replies waiting, by request id; `closed` once the reply stream ended, after which no
/// call may wait (nothing would ever answer it).
struct WaitingState<Resp> {
    replies: IdMap<u64, Reply<Resp>>,
    closed: bool,
}

type Waiting<Resp> = Arc<Mutex<WaitingState<Resp>>>;

fn lock<Resp>(waiting: &Waiting<Resp>) -> std::sync::MutexGuard<'_, WaitingState<Resp>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `tower::Service<Req, Response = Resp>` calling a node that serves `Req` with
/// [`Node::serve`](crate::Node::serve). Clones share one session.
pub struct Client<Req, Resp, C = crate::message::Bincode> {
    calls: PollSender<Call<Req, Resp>>,
    _codec: PhantomData<fn() -> C>,
}

impl<Req, Resp, C> Clone for Client<Req, Resp, C> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            _codec: PhantomData,
        }
    }
}

impl<Req, Resp, C> fmt::Debug for Client<Req, Resp, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("request", &std::any::type_name::<Req>())
            .field("response", &std::any::type_name::<Resp>())
            .finish()
    }
}

fn call_error(e: SessionError) -> CallError {
    match e {
        SessionError::TooLarge { len, max } => CallError::TooLarge { len, max },
        SessionError::Codec(e) => CallError::Codec(e),
        _ => CallError::Disconnected,
    }
}

impl<Req: Message, Resp: Message, C: Codec> Client<Req, Resp, C> {
    /// Starts the client's tasks on `session` (a byte session opened with the rpc schema).
    pub(crate) fn start(session: Session<Bytes, C>, in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(in_flight.max(1));
        let (sink, stream) = session.split();
        let waiting: Waiting<Resp> = Arc::new(Mutex::new(WaitingState {
            replies: IdMap::default(),
            closed: false,
        }));
        tokio::spawn(write_calls::<Req, Resp, C>(rx, sink, waiting.clone()));
        tokio::spawn(read_replies::<Resp, C>(stream, waiting));
        Self {
            calls: PollSender::new(tx),
            _codec: PhantomData,
        }
    }
}

async fn write_calls<Req: Message, Resp: Message, C: Codec>(
    mut calls: mpsc::Receiver<Call<Req, Resp>>,
    mut sink: SessionSink<Bytes, C>,
    waiting: Waiting<Resp>,
) {
    let mut next_id = 0u64;
    // Calls already queued are fed; the sink is flushed once the queue is empty, so a burst
    // of calls reaches the engine as one batch.
    while let Some(Call { request, reply }) = next_call(&mut calls, &mut sink).await {
        if reply.is_closed() {
            continue; // the caller gave up before we sent it
        }
        if lock(&waiting).closed {
            // The session is over: fail at once, without waiting on the sink for anything.
            let _ = reply.send(Err(CallError::Disconnected));
            break;
        }
        next_id += 1;
        let id = next_id;
        {
            let mut state = lock(&waiting);
            if state.closed {
                let _ = reply.send(Err(CallError::Disconnected));
                break;
            }
            state.replies.insert(id, reply);
            // Calls whose futures were dropped wait here until their reply arrives; purge
            // them now and then so a handler that never answers leaks nothing either.
            if id.is_multiple_of(PURGE_EVERY) {
                state.replies.retain(|_, reply| !reply.is_closed());
            }
        }
        // Encoded in place into the sink's open frame: queued calls travel as one frame.
        if let Err(e) =
            envelope::feed_encoded::<C, Req>(&mut sink, id, Kind::Request, request).await
        {
            let fatal = matches!(e, SessionError::Closed | SessionError::Disconnected);
            if let Some(reply) = lock(&waiting).replies.remove(&id) {
                let _ = reply.send(Err(call_error(e)));
            }
            if fatal {
                break;
            }
        }
    }
    // No call may wait from here on: later ones fail at `poll_ready`, queued ones as they
    // drop, before the sink's close (which may wait for room in the submit ring).
    calls.close();
    while let Ok(Call { reply, .. }) = calls.try_recv() {
        let _ = reply.send(Err(CallError::Disconnected));
    }
    // Every client clone dropped (or the session died): the server's request stream ends.
    let _ = sink.close().await;
}

/// The next queued call; when none is queued, flushes what was fed first, then waits.
async fn next_call<T, C>(
    calls: &mut mpsc::Receiver<T>,
    sink: &mut SessionSink<Bytes, C>,
) -> Option<T> {
    match calls.try_recv() {
        Ok(call) => Some(call),
        Err(mpsc::error::TryRecvError::Disconnected) => None,
        Err(mpsc::error::TryRecvError::Empty) => {
            SessionSink::flush(sink).await.ok()?;
            calls.recv().await
        }
    }
}

async fn read_replies<Resp: Message, C: Codec>(
    mut stream: SessionStream<Bytes, C>,
    waiting: Waiting<Resp>,
) {
    while let Some(message) = stream.next().await {
        let Ok(bytes) = message else { break };
        let Some(envelope) = Envelope::parse(bytes) else {
            tracing::warn!("malformed reply envelope; ignored");
            continue;
        };
        let Some(reply) = lock(&waiting).replies.remove(&envelope.id) else {
            continue; // the caller gave up: the reply is freed here
        };
        if reply.is_closed() {
            continue; // likewise, without decoding it
        }
        let text = || String::from_utf8_lossy(&envelope.body).into_owned();
        let result = match envelope.kind {
            Kind::Reply => {
                shared_bytes::with_owner(&envelope.body, || C::decode::<Resp>(&envelope.body))
                    .map_err(|e| CallError::Codec(CodecError::decode::<Resp, C>(e)))
            }
            Kind::Error => Err(CallError::Remote(text())),
            Kind::Panic => Err(CallError::Panicked(text())),
            Kind::TooLarge => Err(match envelope::parse_too_large(&envelope.body) {
                Some((len, max)) => CallError::ReplyTooLarge { len, max },
                None => CallError::UnexpectedReply("a malformed too-large notice"),
            }),
            Kind::Request => Err(CallError::UnexpectedReply("a request")),
        };
        let _ = reply.send(result);
    }
    // The session ended: every waiting call fails with Disconnected (its sender drops), and
    // so does every later one (the writer checks `closed` before it lets a call wait).
    let mut state = lock(&waiting);
    state.closed = true;
    state.replies.clear();
}

impl<Req, Resp, C> tower::Service<Req> for Client<Req, Resp, C>
where
    Req: Message,
    Resp: Message,
    C: Codec,
{
    type Response = Resp;
    type Error = CallError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.calls
            .poll_reserve(cx)
            .map_err(|_| CallError::Disconnected)
    }

    fn call(&mut self, request: Req) -> ResponseFuture<Resp> {
        let (reply, rx) = oneshot::channel();
        match self.calls.send_item(Call { request, reply }) {
            Ok(()) => ResponseFuture::waiting(rx),
            Err(_) => ResponseFuture::failed(CallError::Disconnected),
        }
    }
}
