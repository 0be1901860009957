//! [`Subscription`]: a `Stream` of a topic's (or a prefix's) messages.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::Stream;
use ipc_core::descriptor::topic_close_reason;

use super::SubscribeError;
use crate::error::SessionError;
use crate::message::Bincode;
use crate::node::NodeHandle;
use crate::session::Payload;

/// What the driver hands a subscription.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message, read in place.
    Data(Bytes),
    /// Messages dropped just before the next one.
    Lagged(u64),
    /// The engine ended the subscription (a `topic_close_reason`).
    Closed(u64),
    /// The node lost its engine.
    Disconnected,
}

/// A subscription's inbox, shared by the driver and the [`Subscription`].
#[derive(Debug, Default)]
pub(crate) struct SubCore {
    inner: Mutex<Inbox>,
}

#[derive(Debug, Default)]
struct Inbox {
    events: VecDeque<Event>,
    waker: Option<Waker>,
}

impl SubCore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&self, event: Event) {
        let waker = {
            let mut inbox = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inbox.events.push_back(event);
            inbox.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A subscription: a `Stream<Item = Result<T, SubscribeError>>` of every message published
/// on the topics its pattern matches, in order per publisher.
///
/// Messages are read in place from the topic's read-only broadcast segment (zero-copy for
/// [`Bytes`]); each one's slot goes back to the engine when its last handle is dropped.
/// Dropping the subscription ends it.
pub struct Subscription<T, C = Bincode> {
    node: Arc<NodeHandle>,
    id: u32,
    core: Arc<SubCore>,
    finished: bool,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T, C> fmt::Debug for Subscription<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<T, C> Subscription<T, C> {
    pub(crate) fn new(node: Arc<NodeHandle>, id: u32, core: Arc<SubCore>) -> Self {
        Self {
            node,
            id,
            core,
            finished: false,
            _types: PhantomData,
        }
    }

    /// The subscription's id (what the engine's statistics name).
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl<T: Payload<C>, C> Stream for Subscription<T, C> {
    type Item = Result<T, SubscribeError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let event = {
            let mut inbox = this.core.inner.lock().unwrap_or_else(|e| e.into_inner());
            match inbox.events.pop_front() {
                Some(event) => event,
                None => {
                    if this.node.shared.is_dead() {
                        drop(inbox);
                        this.finished = true;
                        return Poll::Ready(Some(Err(SubscribeError::Disconnected)));
                    }
                    inbox.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        Poll::Ready(match event {
            Event::Data(bytes) => Some(T::decode(bytes).map_err(|e| match e {
                SessionError::Codec(c) => SubscribeError::Codec(c),
                _ => SubscribeError::Disconnected,
            })),
            Event::Lagged(n) => Some(Err(SubscribeError::Lagged(n))),
            Event::Closed(reason) => {
                this.finished = true;
                (reason == topic_close_reason::UNTETHERED)
                    .then_some(Err(SubscribeError::Untethered))
            }
            Event::Disconnected => {
                this.finished = true;
                Some(Err(SubscribeError::Disconnected))
            }
        })
    }
}

impl<T, C> Drop for Subscription<T, C> {
    fn drop(&mut self) {
        if !self.finished {
            super::unsubscribe(&self.node.shared, self.id);
        }
        // Messages not read yet hand their slots back as they drop.
        let events = std::mem::take(
            &mut self
                .core
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .events,
        );
        drop(events);
    }
}
