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

use ipc_core::control::{self, EngineFrame, MAX_NAME, NodeFrame, Schema};
use ipc_core::{Block, Doorbell, Producer};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::control::{FrameBuf, WELCOME_FDS, recv_with_fds, write_frame};
use crate::error::{ConnectError, OpenError};
use crate::session::Session;

pub(crate) use shared::{NodeShared, Reply};

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

impl Node {
    /// Connects to the engine listening on `path` and registers as `name`.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Io`] if the socket cannot be reached, [`ConnectError::Refused`] if the
    /// engine refuses (credentials, version, resources), [`ConnectError::Block`] if the block
    /// it hands over fails validation, [`ConnectError::Protocol`] on an unexpected answer.
    pub async fn connect(path: impl AsRef<Path>, name: &str) -> Result<Self, ConnectError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(ConnectError::Name);
        }
        let mut stream = UnixStream::connect(path.as_ref()).await?;
        write_frame(
            &mut stream,
            &NodeFrame::Hello {
                name: name.to_owned(),
            }
            .encode(),
        )
        .await?;

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
            let n = recv_with_fds(&stream, &mut chunk, &mut fds).await?;
            if n == 0 {
                return Err(ConnectError::Protocol(
                    "the engine closed the connection during rendezvous".into(),
                ));
            }
            bytes.extend_from_slice(&chunk[..n]);
        };
        let (node_id, credits) = match welcome {
            EngineFrame::Welcome { node, credits } => (node, credits),
            EngineFrame::Error { message, .. } => return Err(ConnectError::Refused { message }),
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
        let mut frames = FrameBuf::default();
        frames.extend(&bytes[used..]);
        write_frame(&mut stream, &NodeFrame::Ready.encode()).await?;

        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(NodeShared::new(
            name.to_owned(),
            node_id,
            credits,
            block.clone(),
            tx,
            Producer::new(block.submit_ring()),
            Producer::new(block.release_ring()),
            engine_bell,
            out_tx,
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
    pub fn name(&self) -> &str {
        &self.handle.shared.name
    }

    /// The largest payload a session of this node can carry.
    pub fn max_payload(&self) -> u64 {
        self.handle.shared.max_payload
    }

    fn check_name(service: &str) -> Result<(), OpenError> {
        if service.is_empty() || service.len() > MAX_NAME {
            return Err(OpenError::Name);
        }
        Ok(())
    }

    /// Opens a byte session to the node serving `service`.
    ///
    /// # Errors
    ///
    /// [`OpenError::NotServed`] if nobody serves it, [`OpenError::SchemaMismatch`] if the
    /// server is typed, [`OpenError::Disconnected`] if the engine is gone.
    pub async fn open(&self, service: &str) -> Result<Session, OpenError> {
        self.open_with(service, Schema::bytes()).await
    }

    pub(crate) async fn open_with(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<Session, OpenError> {
        Self::check_name(service)?;
        let reply = self
            .handle
            .shared
            .request(|req| NodeFrame::Open {
                req,
                service: service.to_owned(),
                schema,
            })
            .await?;
        match reply {
            Reply::Session(core) => Ok(Session::new(self.handle.clone(), core)),
            other => Err(other.into_error(service)),
        }
    }

    /// Serves `service`: sessions opened to it arrive on the returned [`Listener`].
    ///
    /// # Errors
    ///
    /// [`OpenError::AlreadyServed`] if another node serves the name,
    /// [`OpenError::Disconnected`] if the engine is gone.
    pub async fn listen(&self, service: &str) -> Result<Listener, OpenError> {
        self.listen_with(service, Schema::bytes()).await
    }

    pub(crate) async fn listen_with(
        &self,
        service: &str,
        schema: Schema,
    ) -> Result<Listener, OpenError> {
        Self::check_name(service)?;
        let (accept_tx, accept_rx) = mpsc::unbounded_channel();
        let shared = &self.handle.shared;
        let reply = shared
            .request(|req| NodeFrame::Serve {
                req,
                service: service.to_owned(),
                schema,
            })
            .await?;
        match reply {
            Reply::Served(id) => {
                shared.add_listener(id, accept_tx);
                Ok(Listener {
                    node: self.handle.clone(),
                    id,
                    name: service.to_owned(),
                    accept: accept_rx,
                })
            }
            other => Err(other.into_error(service)),
        }
    }
}

/// Sessions opened to a served name, in the order they were opened. Dropping it stops
/// serving the name (sessions already accepted go on).
#[derive(Debug)]
pub struct Listener {
    node: Arc<NodeHandle>,
    id: u32,
    name: String,
    accept: mpsc::UnboundedReceiver<Arc<crate::session::SessionCore>>,
}

impl Listener {
    /// The next session opened to this name; `None` when the connection to the engine is gone.
    pub async fn accept(&mut self) -> Option<Session> {
        let core = self.accept.recv().await?;
        Some(Session::new(self.node.clone(), core))
    }

    /// Polls for the next session (for use in hand-written futures and streams).
    pub fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Session>> {
        self.accept
            .poll_recv(cx)
            .map(|core| core.map(|core| Session::new(self.node.clone(), core)))
    }

    /// The served name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.node.shared.remove_listener(self.id);
    }
}

impl futures::Stream for Listener {
    type Item = Session;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Session>> {
        self.poll_accept(cx)
    }
}
