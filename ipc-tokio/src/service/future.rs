//! The future of one call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use crate::service::CallError;

/// Resolves to the reply of one call. Dropping it withdraws interest: the reply is freed
/// when it arrives.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<Resp> {
    state: State<Resp>,
}

#[derive(Debug)]
enum State<Resp> {
    Waiting(oneshot::Receiver<Result<Resp, CallError>>),
    Failed(Option<CallError>),
}

impl<Resp> ResponseFuture<Resp> {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<Resp, CallError>>) -> Self {
        Self {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn failed(error: CallError) -> Self {
        Self {
            state: State::Failed(Some(error)),
        }
    }
}

impl<Resp> Future for ResponseFuture<Resp> {
    type Output = Result<Resp, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Waiting(rx) => {
                Poll::Ready(ready!(Pin::new(rx).poll(cx)).unwrap_or(Err(CallError::Disconnected)))
            }
            State::Failed(error) => {
                Poll::Ready(Err(error.take().unwrap_or(CallError::Disconnected)))
            }
        }
    }
}
