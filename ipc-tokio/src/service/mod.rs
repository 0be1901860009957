//! Request/response over sessions, as `tower` services.
//!
//! [`Node::client`](crate::Node::client) gives a [`Client`]: a cheap-to-clone
//! `tower::Service<Req, Response = Resp>` with many requests in flight on one session (each
//! carries an id; replies are matched in any order). [`Node::serve`](crate::Node::serve)
//! serves any `tower::Service<Req, Response = Resp>`: cloned per request, with at most
//! [`ServeConfig::concurrency`] requests running at once per server; a handler's error comes
//! back to the caller as [`CallError::Remote`], a panicking handler as [`CallError::Panicked`]
//! (never a hang).
//!
//! `poll_ready` reserves a slot and `call` consumes it (tower's `ConcurrencyLimit` pattern),
//! so the client composes with `ServiceBuilder` layers: timeout, concurrency limit, rate limit,
//! load shed, retry. Dropping a response future withdraws interest: the reply is freed when it
//! arrives.
//!
//! On the wire each message is an envelope (request id and kind) followed by the body
//! encoded with the session's codec, written straight into a loan.

mod client;
mod envelope;
mod future;
mod server;

pub use client::Client;
pub use future::ResponseFuture;
pub use server::{ServeConfig, Server};

use std::fmt;

use bytes::Bytes;
use ipc_core::control::{MessageType, Schema};
use thiserror::Error;

use crate::error::{CodecError, OpenError};
use crate::message::{Bincode, Codec, Message};
use crate::node::{Listener, Node};
use crate::session::Session;

/// How a request/response end names its types: distinct from a plain typed session of the
/// same types, whose bytes have no envelope.
fn rpc_type<T: Message, C: Codec>() -> MessageType {
    MessageType {
        name: format!("rpc:{}/{}", T::NAME, C::NAME),
        fingerprint: T::FINGERPRINT,
    }
}

// ===== impl Node (request/response) =====

impl Node {
    /// A client of the node serving `service` with [`Node::serve`]: a
    /// `tower::Service<Req, Response = Resp>`, cheap to clone, many requests in flight on one
    /// session.
    ///
    /// # Errors
    ///
    /// [`OpenError::NotServed`] if nobody serves it, [`OpenError::SchemaMismatch`] (naming
    /// both sides' types and fingerprints) if the server's types differ.
    pub async fn client<Req: Message, Resp: Message>(
        &self,
        service: &str,
    ) -> Result<Client<Req, Resp>, OpenError> {
        self.client_with_codec::<Req, Resp, Bincode>(service).await
    }

    /// As [`Node::client`], with the codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Node::client`].
    pub async fn client_with_codec<Req: Message, Resp: Message, C: Codec>(
        &self,
        service: &str,
    ) -> Result<Client<Req, Resp, C>, OpenError> {
        let schema = Schema {
            send: rpc_type::<Req, C>(),
            recv: rpc_type::<Resp, C>(),
        };
        let core = self.open_core(service, schema).await?;
        let session: Session<Bytes, C> = Session::new(self.handle().clone(), core);
        Ok(Client::start(session, 1024))
    }

    /// Serves `service` with a `tower::Service<Req, Response = Resp>`, cloned per request,
    /// at most 64 requests at once (see [`Node::serve_with`]).
    ///
    /// # Errors
    ///
    /// [`OpenError::AlreadyServed`] if another node serves the name.
    pub async fn serve<Req, Resp, S>(&self, service: &str, handler: S) -> Result<Server, OpenError>
    where
        Req: Message,
        Resp: Message,
        S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: fmt::Display + Send + 'static,
    {
        self.serve_with::<Req, Resp, S, Bincode>(service, handler, ServeConfig::default())
            .await
    }

    /// As [`Node::serve`], with settings and the codec `C`.
    ///
    /// # Errors
    ///
    /// As [`Node::serve`].
    pub async fn serve_with<Req, Resp, S, C>(
        &self,
        service: &str,
        handler: S,
        config: ServeConfig,
    ) -> Result<Server, OpenError>
    where
        Req: Message,
        Resp: Message,
        S: tower::Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: fmt::Display + Send + 'static,
        C: Codec,
    {
        let schema = Schema {
            send: rpc_type::<Resp, C>(),
            recv: rpc_type::<Req, C>(),
        };
        let (id, accept) = self.listen_core(service, schema).await?;
        let listener: Listener<Bytes, C> =
            Listener::from_parts(self.handle().clone(), id, service.to_owned(), accept);
        Ok(Server::start::<Req, Resp, S, C>(listener, handler, config))
    }
}

/// Why a call failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The handler returned an error; this is its message.
    #[error("the service failed: {0}")]
    Remote(String),
    /// The handler panicked; this is the panic message.
    #[error("the service panicked: {0}")]
    Panicked(String),
    /// The server or the engine went away before the reply.
    #[error("disconnected before the reply")]
    Disconnected,
    /// The request could not be encoded, or the reply could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The request can never fit the session: nothing was sent.
    #[error("request of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Encoded size of the request (without the 9-byte envelope header).
        len: u64,
        /// The largest request the session carries: the lower of the codec's limit and the
        /// session's maximum payload, less the envelope header.
        max: u64,
    },
    /// The handler's reply can never fit the session: the server could not send it.
    #[error("reply of {len} bytes exceeds the maximum of {max} bytes")]
    ReplyTooLarge {
        /// Encoded size of the reply (without the envelope header).
        len: u64,
        /// The largest reply the session carries, as for [`CallError::TooLarge`].
        max: u64,
    },
    /// The server answered with an envelope a reply cannot be (a request, or a malformed
    /// one): a server speaking another protocol.
    #[error("the server sent an unexpected envelope: {0}")]
    UnexpectedReply(&'static str),
}
