//! Nodes: a process's connection to an engine.
//!
//! [`Node::connect`] performs the rendezvous (hello; block and doorbells received over
//! `SCM_RIGHTS` and validated; ready) and starts the node's *driver* task, which reads the
//! deliver ring and the control socket and dispatches to sessions. [`Node::open`] and
//! [`Node::listen`] give [`Session`]s.

mod driver;
mod shared;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipc_core::control::{self, EngineFrame, NodeFrame, Schema};
use ipc_core::{Block, Doorbell, Producer};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::control::{EngineFrames, WELCOME_FDS, recv_with_fds, write_frame};
use std::marker::PhantomData;

use bytes::Bytes;

use crate::error::{ConnectError, OpenError};
use crate::message::Bincode;
use crate::session::{Payload, Session, SessionCore};

pub(crate) use shared::{
    Batch, LoanError, NodeShared, OpenFrame, Reply, SharedBatch, State, WaitList, lock_batch,
};

/// A connection to an engine. Cheap to clone; the connection closes when the last `Node`,
/// [`Session`] and [`Listener`] of it are dropped.
#[derive(Clone, Debug)]
pub struct Node {
    handle: Arc<NodeHandle>,
}

/// Keeps the driver alive; dropping the last one stops it and closes the connection.
#[derive(Debug)]
pub(crate) struct NodeHandle {
    pub(crate) shared: Arc<NodeShared>,
    _stop: oneshot::Sender<()>,
}

/// A session end's window ([`Node::window`]): a sender may have `messages` messages and
/// `bytes` bytes in flight, each message counting [`ipc_core::window_charge`]`(len,
/// min_block)` bytes; one message larger than `bytes` may go alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Window {
    /// Messages in flight.
    pub messages: u32,
    /// Bytes in flight (size-class charges).
    pub bytes: u64,
    /// The smallest size class of the arenas.
    pub min_block: u64,
}

/// Settings of a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeOptions {
    /// How long the node's driver keeps polling its deliver ring after the last delivery or
    /// send before it parks on its doorbell (default 20 µs). While it polls, the engine needs
    /// no syscall to reach it; the polling yields to the runtime, so other tasks still run.
    /// Zero parks at once. Idle is free either way.
    pub spin: Duration,
    /// Users an engine may run as, besides this process's own user and root (checked with
    /// `SO_PEERCRED` before anything is sent: a node never talks to an engine someone else
    /// put on the socket path). Default: none.
    pub engine_uids: Vec<u32>,
    /// The longest the whole rendezvous may take: connecting to the socket, the hello, the
    /// engine's welcome with the block and doorbells, validating them and answering ready
    /// (default 5 s). Past it, [`Node::connect`] fails with [`ConnectError::Timeout`]: an
    /// engine that accepts and never answers (stopped with `SIGSTOP`, or not an engine at all)
    /// cannot make a node wait forever.
    pub connect_timeout: Duration,
    /// Make this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`) before connecting
    /// (default off): other processes of the same uid can then no longer open this node's
    /// block through `/proc/<pid>/fd`, read its memory or ptrace it. It applies to the
    /// whole process (core dumps too) and cannot be undone by the node; root still can.
    pub non_dumpable: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            spin: Duration::from_micros(20),
            engine_uids: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            non_dumpable: false,
        }
    }
}

impl NodeOptions {
    /// Sets [`NodeOptions::non_dumpable`].
    #[must_use]
    pub fn non_dumpable(mut self, yes: bool) -> Self {
        self.non_dumpable = yes;
        self
    }

    /// Sets [`NodeOptions::spin`].
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Sets [`NodeOptions::connect_timeout`].
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Also trusts an engine running as `uid` (see [`NodeOptions::engine_uids`]).
    #[must_use]
    pub fn trust_engine_uid(mut self, uid: u32) -> Self {
        self.engine_uids.push(uid);
        self
    }
}

impl Node {
    /// Connects to the engine listening on `path` and registers as `name`, with the default
    /// [`NodeOptions`].
    ///
    /// # Errors
    ///
    /// [`ConnectError::Name`] if `name` is not a valid node name (nothing is sent),
    /// [`ConnectError::Unreachable`] if nothing listens on `path`, [`ConnectError::Timeout`]
    /// if the rendezvous takes longer than [`NodeOptions::connect_timeout`],
    /// [`ConnectError::Io`] if the connection breaks, [`ConnectError::Refused`] if the
    /// engine refuses (credentials, version, resources), [`ConnectError::Block`] if the block
    /// it hands over fails validation, [`ConnectError::Protocol`] on an unexpected answer.
    pub async fn connect(path: impl AsRef<Path>, name: &str) -> Result<Self, ConnectError> {
        Self::connect_with(path, name, NodeOptions::default()).await
    }

    /// As [`Node::connect`], with `options`.
    ///
    /// # Errors
    ///
    /// As [`Node::connect`].
    pub async fn connect_with(
        path: impl AsRef<Path>,
        name: &str,
        options: NodeOptions,
    ) -> Result<Self, ConnectError> {
        if let Err(reason) = control::check_name(name) {
            return Err(ConnectError::Name {
                name: name.to_owned(),
                reason,
            });
        }
        let path = path.as_ref();
        if options.non_dumpable {
            set_non_dumpable()?;
        }
        let timeout = options.connect_timeout;
        match tokio::time::timeout(timeout, Self::rendezvous(path, name, options)).await {
            Ok(connected) => connected,
            Err(_) => Err(ConnectError::Timeout {
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    /// The rendezvous, from connecting to `Ready` (bounded by the caller).
    async fn rendezvous(
        path: &Path,
        name: &str,
        options: NodeOptions,
    ) -> Result<Self, ConnectError> {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ConnectError::Unreachable {
                    path: path.to_owned(),
                    source,
                })?;
        let engine_uid = stream.peer_cred()?.uid();
        let own = rustix::process::getuid().as_raw();
        if engine_uid != own && engine_uid != 0 && !options.engine_uids.contains(&engine_uid) {
            return Err(ConnectError::Refused {
                message: format!(
                    "the engine on {} runs as uid {engine_uid}, not as this user (uid {own}) or root",
                    path.display()
                ),
            });
        }
        // An engine that refuses us (credentials) may answer and close before reading the
        // hello: the write then fails, but its answer is waiting below. Read it either way.
        let hello = write_frame(
            &mut stream,
            &NodeFrame::Hello {
                name: name.to_owned(),
            }
            .encode(),
        )
        .await;

        // The welcome frame carries three descriptors; read until it is complete.
        let mut fds = Vec::new();
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 4096];
        let (welcome, used) = loop {
            if let Some(decoded) = control::decode_engine_frame(&bytes)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?
            {
                break decoded;
            }
            let n = match recv_with_fds(&stream, &mut chunk, &mut fds).await {
                Ok(n) => n,
                Err(e) => return Err(hello.err().unwrap_or(e).into()),
            };
            if n == 0 {
                if let Err(e) = hello {
                    return Err(e.into());
                }
                return Err(ConnectError::Protocol(
                    "the engine closed the connection during rendezvous".into(),
                ));
            }
            bytes.extend_from_slice(&chunk[..n]);
        };
        let (node_id, credits, window_bytes) = match welcome {
            EngineFrame::Welcome {
                node,
                credits,
                window_bytes,
            } => (node, credits, window_bytes),
            EngineFrame::Error { message, .. } => return Err(ConnectError::Refused { message }),
            EngineFrame::Limit { limit, max, .. } => {
                return Err(match control::Limit::from_u16(limit) {
                    Some(limit) if limit.is_budget() => ConnectError::Budget { limit, max },
                    Some(limit) => ConnectError::LimitReached { limit, max },
                    None => ConnectError::Refused {
                        message: format!("unknown engine limit {limit} of {max}"),
                    },
                });
            }
            other => {
                return Err(ConnectError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
        };
        if fds.len() != WELCOME_FDS {
            return Err(ConnectError::Protocol(format!(
                "expected {WELCOME_FDS} descriptors, got {}",
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let (block_fd, engine_fd, node_fd) = (fds.next(), fds.next(), fds.next());
        let block = Arc::new(Block::open(block_fd.expect("three fds"))?);
        let engine_bell = Doorbell::from_fd(engine_fd.expect("three fds"))?;
        let node_bell = Doorbell::from_fd(node_fd.expect("three fds"))?.into_async()?;
        let tx = block.take_tx_arena()?;
        let frames = EngineFrames::new(&bytes[used..], Vec::new());
        write_frame(&mut stream, &NodeFrame::Ready.encode()).await?;

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(NodeShared::new(
            name.to_owned(),
            node_id,
            credits,
            window_bytes,
            block.clone(),
            tx,
            Producer::new(block.submit_ring()),
            Producer::new(block.release_ring()),
            engine_bell,
            out_tx,
            options.spin,
        ));
        let (stop_tx, stop_rx) = oneshot::channel();
        let driver =
            driver::Driver::new(shared.clone(), stream, frames, node_bell, out_rx, stop_rx);
        tokio::spawn(driver.run());
        tracing::debug!(node = node_id, %name, "connected");
        Ok(Self {
            handle: Arc::new(NodeHandle {
                shared,
                _stop: stop_tx,
            }),
        })
    }

    /// This node's id in the engine's registry.
    pub fn id(&self) -> u32 {
        self.handle.shared.id
    }

    /// This node's name.
    #[allow(clippy::misnamed_getters)]
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// The largest payload this node's arenas carry: what topics and queues take, and up to
    /// which a session's payloads are copied. Sessions carry larger ones too, up to
    /// [`MAX_SESSION_PAYLOAD`](crate::MAX_SESSION_PAYLOAD), each in a hand-off segment of
    /// its own (see [`SessionSink::max_payload`](crate::SessionSink::max_payload)).
    pub fn max_payload(&self) -> u64 {
        self.handle.shared.max_payload
    }

    /// The window each of this node's session ends gets from the engine: what it may have in
    /// flight before its peer releases it.
    pub fn window(&self) -> Window {
        let shared = &self.handle.shared;
        Window {
            messages: shared.credits,
            bytes: shared.window_bytes,
            min_block: shared.block.layout().tx.min_block,
        }
    }

    fn check_name(service: &str) -> Result<(), OpenError> {
        control::check_name(service).map_err(|reason| OpenError::Name {
            name: service.to_owned(),
            reason,
        })
    }

    /// Opens a session to the node serving `service`, carrying `T`: [`Bytes`] for a raw
    /// session, or any [`Message`](crate::message::Message) encoded with bincode. Both ends
    /// must declare the same type.
    ///
    /// # Errors
    ///
    /// [`OpenError::NotServed`] if nobody serves it, [`OpenError::SchemaMismatch`] (naming both
    /// types and fingerprints) if the server declared another type,
    /// [`OpenError::Disconnected`] if the engine is gone.
    pub async fn open<T: Payload<Bincode>>(&self, service: &str) -> Result<Session<T>, OpenError> {
        self.open_with_codec::<T, Bincode>(service).await
    }

    /// As [`Node::open`], with the codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Node::open`].
    pub async fn open_with_codec<T: Payload<C>, C>(
        &self,
        service: &str,
    ) -> Result<Session<T, C>, OpenError> {
        let core = self.open_core(service, symmetric::<T, C>()).await?;
        Ok(Session::new(self.handle.clone(), core))
    }

    /// Opens a byte session to `service` declaring `schema` as this end's types, for code
    /// that forwards encoded messages without decoding them (a bridge to another host, a
    /// gateway): the engine checks `schema` against the server's exactly as for a typed open,
    /// and the session carries each message's encoding as [`Bytes`].
    ///
    /// # Errors
    ///
    /// As [`Node::open`].
    pub async fn open_as(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<Session<Bytes>, OpenError> {
        let core = self.open_core(service, schema).await?;
        Ok(Session::new(self.handle.clone(), core))
    }

    pub(crate) async fn open_core(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<Arc<SessionCore>, OpenError> {
        Self::check_name(service)?;
        let reply = self
            .handle
            .shared
            .request(
                |req| NodeFrame::Open {
                    req,
                    service: service.to_owned(),
                    schema: schema.clone(),
                },
                None,
            )
            .await?;
        match reply {
            Reply::Session(core) => Ok(core),
            other => Err(other.into_error(service, schema)),
        }
    }

    /// Serves `service` for sessions carrying `T` (see [`Node::open`]): sessions opened to it
    /// arrive on the returned [`Listener`].
    ///
    /// # Errors
    ///
    /// [`OpenError::AlreadyServed`] if another node serves the name,
    /// [`OpenError::Disconnected`] if the engine is gone.
    pub async fn listen<T: Payload<Bincode>>(
        &self,
        service: &str,
    ) -> Result<Listener<T>, OpenError> {
        self.listen_with_codec::<T, Bincode>(service).await
    }

    /// As [`Node::listen`], with the codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Node::listen`].
    pub async fn listen_with_codec<T: Payload<C>, C>(
        &self,
        service: &str,
    ) -> Result<Listener<T, C>, OpenError> {
        let (id, accept) = self.listen_core(service, symmetric::<T, C>()).await?;
        Ok(Listener::from_parts(
            self.handle.clone(),
            id,
            service.to_owned(),
            accept,
        ))
    }

    /// Serves `service` declaring `schema` as the serving end's types, carrying each
    /// message's encoding as [`Bytes`] (see [`Node::open_as`]).
    ///
    /// # Errors
    ///
    /// As [`Node::listen`].
    pub async fn listen_as(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<Listener<Bytes>, OpenError> {
        let (id, accept) = self.listen_core(service, schema).await?;
        Ok(Listener::from_parts(
            self.handle.clone(),
            id,
            service.to_owned(),
            accept,
        ))
    }

    pub(crate) async fn listen_core(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<(u32, mpsc::UnboundedReceiver<Arc<SessionCore>>), OpenError> {
        Self::check_name(service)?;
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let shared = &self.handle.shared;
        let reply = shared
            .request(
                |req| NodeFrame::Serve {
                    req,
                    service: service.to_owned(),
                    schema: schema.clone(),
                },
                Some(accept_tx),
            )
            .await?;
        match reply {
            Reply::Served(id) => Ok((id, accept_rx)),
            other => Err(other.into_error(service, schema)),
        }
    }

    /// Test-only fault: this node's driver panics when it reads the next frame from the
    /// engine (the answer to a request, say), as a bug in it would.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn __panic_driver_on_next_frame(&self) {
        self.handle
            .shared
            .panic_on_frame
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn handle(&self) -> &Arc<NodeHandle> {
        &self.handle
    }
}

/// The schema of a session that carries `T` both ways.
fn symmetric<T: Payload<C>, C>() -> Schema {
    Schema {
        send: T::message_type(),
        recv: T::message_type(),
    }
}

/// Sessions opened to a served name, in the order they were opened. Dropping it stops
/// serving the name (sessions already accepted go on); [`Listener::unserve`] does the same and
/// waits until the engine has removed the name.
///
/// # Ordering
///
/// Dropping a `Listener` queues the engine's `Unserve` on this node's control socket before
/// `drop` returns. The engine handles one node's requests in order, so any later
/// [`Node::open`] or [`Node::listen`] *of the same node* (or of a clone of it) sees the name
/// unserved. Another node's open travels on another socket and may reach the engine before the
/// `Unserve`: it then still succeeds, and its session is closed at once (its stream ends, its
/// first send fails with [`SessionError::Closed`](crate::SessionError::Closed)). To order an
/// unserve before what other nodes do, await [`Listener::unserve`] (or
/// [`Server::shutdown`](crate::Server::shutdown)): once it returns, every open the engine
/// receives fails with [`OpenError::NotServed`].
pub struct Listener<T = Bytes, C = Bincode> {
    node: Arc<NodeHandle>,
    id: u32,
    name: String,
    accept: mpsc::UnboundedReceiver<Arc<SessionCore>>,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T, C> std::fmt::Debug for Listener<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl<T: Payload<C>, C> Listener<T, C> {
    pub(crate) fn from_parts(
        node: Arc<NodeHandle>,
        id: u32,
        name: String,
        accept: mpsc::UnboundedReceiver<Arc<SessionCore>>,
    ) -> Self {
        Self {
            node,
            id,
            name,
            accept,
            _types: PhantomData,
        }
    }

    /// The next session opened to this name; `None` when the connection to the engine is gone.
    pub async fn accept(&mut self) -> Option<Session<T, C>> {
        let core = self.accept.recv().await?;
        Some(Session::new(self.node.clone(), core))
    }

    /// Polls for the next session (for use in hand-written futures and streams).
    pub fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Session<T, C>>> {
        self.accept
            .poll_recv(cx)
            .map(|core| core.map(|core| Session::new(self.node.clone(), core)))
    }

    /// The served name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops serving the name and returns once the engine has removed it (or the connection
    /// to the engine is gone): from then on every open of the name, by any node, fails with
    /// [`OpenError::NotServed`] until someone serves it again. Sessions opened but not yet
    /// accepted are closed, as on drop.
    pub async fn unserve(self) {
        let acked = self.node.shared.unserve(self.id);
        drop(self);
        if let Some(acked) = acked {
            // An error reply cannot happen for a name this node serves; a closed channel
            // means the node is gone, which unserves everything too.
            let _ = acked.await;
        }
    }

    /// The node and the service id, for a server that unserves on its own.
    pub(crate) fn service(&self) -> (Arc<NodeHandle>, u32) {
        (self.node.clone(), self.id)
    }
}

impl<T, C> Drop for Listener<T, C> {
    /// Stops serving the name; sessions opened but not yet accepted are closed (their
    /// openers' streams end).
    fn drop(&mut self) {
        self.node.shared.remove_listener(self.id);
        self.accept.close();
        while let Ok(core) = self.accept.try_recv() {
            self.node.shared.close_end(core.end);
        }
    }
}

impl<T: Payload<C>, C> futures::Stream for Listener<T, C> {
    type Item = Session<T, C>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx)
    }
}

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` 0): same-uid processes lose
/// `/proc/<pid>/fd`, `/proc/<pid>/mem` and ptrace access to it (root keeps them).
pub(crate) fn set_non_dumpable() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(Into::into)
}
