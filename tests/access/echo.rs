//! An in-process node that serves a name and echoes every message of every session: the
//! peer child nodes prove they are still served after what they tried.

use futures::{SinkExt, StreamExt};
use shmlink::Node;
use tokio::task::JoinHandle;

use crate::support::{self, within};

/// The name the echo serves.
pub(crate) const ECHO_SERVICE: &str = "access-echo";

/// A running echo; dropping it stops it.
#[derive(Debug)]
pub(crate) struct Echo {
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects a node to the engine at `socket` and echoes on [`ECHO_SERVICE`].
pub(crate) async fn start(socket: &std::path::Path) -> Echo {
    let node = within("connect echo", Node::connect(socket, "access-echo"))
        .await
        .expect("connect echo");
    let mut listener = within("listen echo", support::listen(&node, ECHO_SERVICE))
        .await
        .expect("listen echo");
    let task = tokio::spawn(async move {
        let _node = node;
        while let Some(mut session) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(Ok(m)) = session.next().await {
                    if session.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Echo { task }
}
