//! Unserve is acknowledged (issue 9, item 2): once `Server::shutdown().await` or
//! `Listener::unserve().await` returns, an open of the name by *another* node is refused with
//! `NotServed`; once a `Listener` or `Server` is dropped, an open by the *same* node is. Before
//! the fix, `shutdown` returned before the engine had removed the name, so an open right after
//! it mostly succeeded and its first call failed with `Disconnected` instead.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{Message, Node, OpenError};
use tower::ServiceExt;

use crate::support::{self, TestDir, within};

const ROUNDS: u32 = 200;

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Ping(u32);

fn not_served(service: &str) -> Result<(), OpenError> {
    Err(OpenError::NotServed {
        service: service.into(),
    })
}

type Echo = tower::util::ServiceFn<fn(Ping) -> std::future::Ready<Result<Ping, String>>>;

fn echo() -> Echo {
    tower::service_fn(|ping| std::future::ready(Ok(ping)))
}

async fn nodes(socket: &std::path::Path) -> (Node, Node) {
    let server = within("connect", Node::connect(socket, "server"))
        .await
        .expect("connect server");
    let client = within("connect", Node::connect(socket, "client"))
        .await
        .expect("connect client");
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_server_shutdown_is_not_served_for_any_node() {
    let dir = TestDir::new("unserve-server");
    let engine = support::engine(&dir);
    let (server_node, client_node) = nodes(&dir.socket()).await;
    for round in 0..ROUNDS {
        let server = within("serve", server_node.serve("echo", echo()))
            .await
            .expect("serve");
        if round % 50 == 0 {
            // The name is really served in between: a call goes through.
            let client = within("client", client_node.client::<Ping, Ping>("echo"))
                .await
                .expect("client");
            let reply = within("call", client.oneshot(Ping(round))).await;
            assert_eq!(reply, Ok(Ping(round)), "round {round}");
        }
        within("shutdown", server.shutdown()).await;
        assert_eq!(
            within("client", client_node.client::<Ping, Ping>("echo"))
                .await
                .map(drop),
            not_served("echo"),
            "round {round}: typed client after shutdown"
        );
        assert_eq!(
            within("open", support::open(&client_node, "echo"))
                .await
                .map(drop),
            not_served("echo"),
            "round {round}: raw open after shutdown"
        );
    }
    drop((server_node, client_node));
    support::all_gone(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_listener_unserve_is_not_served_for_any_node() {
    let dir = TestDir::new("unserve-listener");
    let engine = support::engine(&dir);
    let (server_node, client_node) = nodes(&dir.socket()).await;
    for round in 0..ROUNDS {
        let mut listener = within("listen", support::listen(&server_node, "raw"))
            .await
            .expect("listen");
        if round % 50 == 0 {
            let mut opened = within("open", support::open(&client_node, "raw"))
                .await
                .expect("open");
            let mut accepted = within("accept", listener.accept()).await.expect("accept");
            within("send", opened.send(Bytes::from_static(b"hi")))
                .await
                .expect("send");
            let got = within("recv", accepted.next()).await;
            assert_eq!(got, Some(Ok(Bytes::from_static(b"hi"))), "round {round}");
        }
        within("unserve", listener.unserve()).await;
        assert_eq!(
            within("open", support::open(&client_node, "raw"))
                .await
                .map(drop),
            not_served("raw"),
            "round {round}: open after unserve"
        );
    }
    drop((server_node, client_node));
    support::all_gone(engine).await;
}

/// A drop cannot wait; it queues the `Unserve` before it returns, so a later open of the same
/// node (its requests are handled in order) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_after_a_drop_is_not_served_for_the_same_node() {
    let dir = TestDir::new("unserve-drop");
    let engine = support::engine(&dir);
    let node = within("connect", Node::connect(dir.socket(), "self"))
        .await
        .expect("connect");
    for round in 0..ROUNDS {
        let listener = within("listen", support::listen(&node, "dropped"))
            .await
            .expect("listen");
        drop(listener);
        assert_eq!(
            within("open", support::open(&node, "dropped"))
                .await
                .map(drop),
            not_served("dropped"),
            "round {round}: open after dropping the listener"
        );
        let server = within("serve", node.serve("dropped-rpc", echo()))
            .await
            .expect("serve");
        drop(server);
        assert_eq!(
            within("client", node.client::<Ping, Ping>("dropped-rpc"))
                .await
                .map(drop),
            not_served("dropped-rpc"),
            "round {round}: client after dropping the server"
        );
    }
    drop(node);
    support::all_gone(engine).await;
}
