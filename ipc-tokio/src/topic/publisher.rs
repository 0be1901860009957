//! [`Publisher`]: a `Sink` of a topic's messages.

use std::fmt;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use ipc_core::control::NodeFrame;
use ipc_core::{RawDescriptor, TxBuf};

use super::PublishError;
use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::{LoanError, NodeHandle};
use crate::session::{Loan, Payload};

/// Where the message being sent stands.
enum Stage<T> {
    /// Not yet encoded (waiting for a loan of the transmit arena).
    Item(T),
    /// Encoded into the transmit arena; its entry waits for room in the submit ring.
    Entry(RawDescriptor),
}

/// A publisher of a topic: a `Sink<T>` (`send`, `feed`, `flush` from `SinkExt`); a publisher
/// of raw bytes is also a `Sink<Loan>` ([`Publisher::loan`]: write the message in place,
/// no copy on the publishing side).
///
/// A message is encoded into this node's transmit arena and named on its submit ring; the
/// engine copies it once into the topic's broadcast segment. `poll_ready` pends while the
/// transmit arena is full, which is how a `Block` subscriber holds publishers back: the engine
/// keeps their messages (and so their loans) until the subscriber has room, or is cut loose.
/// Dropping the publisher ends it, after the messages already sent.
pub struct Publisher<T, C = Bincode> {
    node: Arc<NodeHandle>,
    id: u32,
    topic: String,
    /// The topic's largest message (its segment's size), as the engine said.
    max_message: u64,
    stage: Option<Stage<T>>,
    _codec: PhantomData<fn() -> C>,
}

// The pending item is only ever moved, never pinned.
impl<T, C> Unpin for Publisher<T, C> {}

impl<T, C> fmt::Debug for Publisher<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<T, C> Publisher<T, C> {
    pub(crate) fn new(node: Arc<NodeHandle>, id: u32, topic: String, max_message: u64) -> Self {
        Self {
            node,
            id,
            topic,
            max_message,
            stage: None,
            _codec: PhantomData,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The largest message this publisher can send: the lower of the topic's segment size
    /// (the engine's setting, [`MAX_TOPIC_MESSAGE`](super::MAX_TOPIC_MESSAGE) by default)
    /// and this node's largest payload.
    pub fn max_message(&self) -> u64 {
        self.max_message.min(self.node.shared.max_payload)
    }
}

fn codec_error(e: SessionError) -> PublishError {
    match e {
        SessionError::Codec(c) => PublishError::Codec(c),
        SessionError::TooLarge { len, max } => PublishError::TooLarge { len, max },
        _ => PublishError::Disconnected,
    }
}

impl<T, C> Publisher<T, C> {
    /// A loan of `len` bytes, or `Pending` (woken by a `TX_DONE`).
    fn poll_loan(&self, len: usize, cx: &mut Context<'_>) -> Poll<Result<TxBuf, PublishError>> {
        let shared = &self.node.shared;
        let max = self.max_message();
        let len32 = match u32::try_from(len) {
            Ok(l) if u64::from(l) <= max => l,
            _ => {
                return Poll::Ready(Err(PublishError::TooLarge {
                    len: len as u64,
                    max,
                }));
            }
        };
        match ready!(shared.poll_loan(len32, cx)) {
            Ok(buf) => Poll::Ready(Ok(buf)),
            Err(LoanError::Disconnected) => Poll::Ready(Err(PublishError::Disconnected)),
            Err(LoanError::TooLarge) => Poll::Ready(Err(PublishError::TooLarge {
                len: len as u64,
                max,
            })),
        }
    }

    /// Stages a loan written in place: its entry goes on the submit ring like an encoded
    /// message's.
    fn stage_loan(&mut self, loan: Loan) -> Result<(), PublishError> {
        if self.stage.is_some() {
            return Err(PublishError::NotReady);
        }
        // A session's hand-off segment is no loan of this arena either.
        let Some(buf) = loan.into_arena() else {
            return Err(PublishError::ForeignLoan);
        };
        if !buf.is_from(&self.node.shared.tx) {
            // Dropping it frees it in its own node's arena.
            return Err(PublishError::ForeignLoan);
        }
        let sent = buf.submit();
        self.stage = Some(Stage::Entry(RawDescriptor::data(
            self.id,
            sent.offset,
            sent.len,
        )));
        Ok(())
    }
}

impl<T: Payload<C>, C> Publisher<T, C> {
    /// Pushes the message sent last to the engine (what `SinkExt::flush` does; an inherent
    /// method because a byte publisher accepts several item types).
    ///
    /// # Errors
    ///
    /// [`PublishError`] if the message could not be sent.
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        poll_fn(|cx| self.poll_stage(cx)).await
    }

    /// Flushes (what `SinkExt::close` does); the publisher ends when dropped.
    ///
    /// # Errors
    ///
    /// [`PublishError`] if the message could not be sent.
    pub async fn close(&mut self) -> Result<(), PublishError> {
        self.flush().await
    }

    /// Moves the staged message through its loan onto the submit ring.
    fn poll_stage(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        loop {
            match self.stage.take() {
                None => return Poll::Ready(Ok(())),
                Some(Stage::Item(item)) => {
                    let len = match item.encoded_len() {
                        Ok(len) => len,
                        Err(e) => return Poll::Ready(Err(codec_error(e))),
                    };
                    let mut buf = match self.poll_loan(len, cx) {
                        Poll::Ready(Ok(buf)) => buf,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.stage = Some(Stage::Item(item));
                            return Poll::Pending;
                        }
                    };
                    let written = match item.encode_into(&mut buf) {
                        Ok(n) => n,
                        Err(e) => return Poll::Ready(Err(codec_error(e))),
                    };
                    buf.truncate(written);
                    let sent = buf.submit();
                    self.stage = Some(Stage::Entry(RawDescriptor::data(
                        self.id,
                        sent.offset,
                        sent.len,
                    )));
                }
                Some(Stage::Entry(entry)) => match self.node.shared.poll_submit(entry, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(PublishError::Disconnected)),
                    Poll::Pending => {
                        self.stage = Some(Stage::Entry(entry));
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}

impl<T: Payload<C>, C> futures::Sink<T> for Publisher<T, C> {
    type Error = PublishError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), PublishError> {
        let this = self.get_mut();
        if this.stage.is_some() {
            return Err(PublishError::NotReady);
        }
        this.stage = Some(Stage::Item(item));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }
}

impl<C> Publisher<Bytes, C> {
    /// Borrows `len` bytes of this node's transmit arena to write a message in place, then
    /// send it with this publisher (`SinkExt::send(loan)`): the engine's copy into the topic's
    /// segment is then the only copy. A message sent earlier and still waiting goes first;
    /// this then waits while the arena is full (the engine holds messages back for a `Block`
    /// subscriber that has no room). Dropping the loan unsent returns the memory.
    ///
    /// # Errors
    ///
    /// [`PublishError::TooLarge`] at once if `len` exceeds [`Publisher::max_message`];
    /// [`PublishError::Disconnected`] if the engine is gone.
    pub async fn loan(&mut self, len: usize) -> Result<Loan, PublishError> {
        poll_fn(|cx| {
            ready!(self.poll_stage(cx))?;
            self.poll_loan(len, cx).map_ok(Loan::new)
        })
        .await
    }
}

/// Byte publishers also take [`Loan`]s from [`Publisher::loan`] (written in place).
impl<C> futures::Sink<Loan> for Publisher<Bytes, C> {
    type Error = PublishError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }

    fn start_send(self: Pin<&mut Self>, loan: Loan) -> Result<(), PublishError> {
        self.get_mut().stage_loan(loan)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.get_mut().poll_stage(cx)
    }
}

impl<T, C> Drop for Publisher<T, C> {
    fn drop(&mut self) {
        let shared = &self.node.shared;
        if let Some(Stage::Entry(entry)) = self.stage.take() {
            // Encoded already: goes without waiting.
            shared.submit_now(entry);
        }
        // The engine publishes everything this node pushed before it ends the publisher.
        let id = self.id;
        shared.send_oneway(|req| NodeFrame::Unpublish { req, publisher: id });
    }
}
