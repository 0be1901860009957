//! Test 5: engine shutdown and restart. Nodes see their engine go (sessions, opens, listens,
//! accepts all report it); a new engine takes over the same socket path, whether the old
//! one shut down cleanly or was SIGKILLed and left a stale socket; nodes reconnect and
//! exchange again. A second engine on a live engine's path is refused and harms nothing.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{ConnectError, Node, OpenError, SessionError, SpawnError};

use crate::children::send_and_check_echoes;
use crate::support::{self, TestDir, ok_field, spawn_child, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_nodes_and_a_new_engine_takes_over() {
    let dir = TestDir::new("restart");
    let socket = dir.socket();
    let engine = support::engine(&dir);

    // A second engine on the live engine's path is refused, and the live one goes on.
    match support::engine_builder(&dir).spawn() {
        Err(SpawnError::InUse { path }) => assert_eq!(path, socket.display().to_string()),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(
        socket.exists(),
        "the refused engine must not remove the live socket"
    );

    let mut survivor = spawn_child("survivor", &[socket.display().to_string()]);
    survivor.expect("LISTENING").await;
    within("served", engine.wait_for_stats(|s| s.services == 1)).await;
    let node = within("connect", Node::connect(&socket, "client"))
        .await
        .expect("connect after the refused second engine");
    let mut session = within("open", support::open(&node, "survivor-svc"))
        .await
        .expect("open");
    for i in 0..10u8 {
        within("echo", session.send(Bytes::from(vec![i; 100])))
            .await
            .unwrap();
        let echo = within("echo", session.next()).await.unwrap().unwrap();
        assert_eq!(&echo[..], &[i; 100][..]);
    }

    engine.shutdown().await;

    // Our node: the session, opens and listens report the disconnection.
    assert_eq!(
        within("disconnection", session.next()).await,
        Some(Err(SessionError::Disconnected))
    );
    assert_eq!(within("end", session.next()).await, None);
    assert_eq!(
        session.send(Bytes::from_static(b"x")).await,
        Err(SessionError::Disconnected)
    );
    assert_eq!(
        within("open", support::open(&node, "survivor-svc"))
            .await
            .map(drop),
        Err(OpenError::Disconnected)
    );
    assert_eq!(
        within("listen", support::listen(&node, "mine"))
            .await
            .map(drop),
        Err(OpenError::Disconnected)
    );
    // The child's node too (it checks the same and reports).
    let line = survivor.expect("DISCONNECTED").await;
    assert_eq!(ok_field(&line, "echoed"), 10, "{line}");
    // A clean shutdown removes its socket: nobody can connect until a new engine starts.
    assert!(!socket.exists(), "shutdown removes the socket");
    assert!(matches!(
        Node::connect(&socket, "early").await,
        Err(ConnectError::Unreachable { path, source })
            if path == socket && source.kind() == std::io::ErrorKind::NotFound
    ));
    drop((session, node));

    let engine = support::engine(&dir);
    survivor.send("RECONNECT").await;
    survivor.expect("LISTENING").await;
    within("served again", engine.wait_for_stats(|s| s.services == 1)).await;
    let node = within("reconnect", Node::connect(&socket, "client"))
        .await
        .expect("reconnect");
    let session = within("open", support::open(&node, "survivor-svc"))
        .await
        .expect("open");
    assert_eq!(
        within("exchange", send_and_check_echoes(session, 1, 200)).await,
        Ok(200)
    );
    let ok = survivor.finish_ok().await;
    assert_eq!(ok_field(&ok, "echoed"), 200, "{ok}");
    drop(node);
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_engine_leaves_a_stale_socket_that_a_new_engine_replaces() {
    let dir = TestDir::new("stale");
    let socket = dir.socket();
    let mut host = spawn_child("engine-host", &[socket.display().to_string()]);
    host.expect("READY").await;

    let server = within("connect", Node::connect(&socket, "server"))
        .await
        .expect("connect to the child's engine");
    let mut listener = within("listen", support::listen(&server, "svc"))
        .await
        .expect("listen");
    let client = within("connect", Node::connect(&socket, "client"))
        .await
        .expect("connect");
    let mut opened = within("open", support::open(&client, "svc"))
        .await
        .expect("open");
    let mut accepted = within("accept", listener.accept()).await.expect("accept");
    within("send", opened.send(Bytes::from_static(b"before")))
        .await
        .unwrap();
    assert_eq!(
        &within("recv", accepted.next()).await.unwrap().unwrap()[..],
        b"before"
    );

    host.sigkill();
    host.reap_killed().await;

    for (what, session) in [("opened", &mut opened), ("accepted", &mut accepted)] {
        assert_eq!(
            within("disconnection", session.next()).await,
            Some(Err(SessionError::Disconnected)),
            "{what}"
        );
        assert_eq!(
            session.send(Bytes::from_static(b"x")).await,
            Err(SessionError::Disconnected),
            "{what}"
        );
    }
    assert!(within("accept", listener.accept()).await.is_none());
    assert_eq!(
        within("open", support::open(&client, "svc"))
            .await
            .map(drop),
        Err(OpenError::Disconnected)
    );
    // The dead engine's socket file is still there, and nobody answers on it.
    assert!(
        socket.exists(),
        "a SIGKILLed engine leaves its socket file behind"
    );
    assert!(matches!(
        Node::connect(&socket, "nobody-home").await,
        Err(ConnectError::Unreachable { path, source })
            if path == socket && source.kind() == std::io::ErrorKind::ConnectionRefused
    ));
    drop((opened, accepted, listener, server, client));

    // A new engine replaces the stale socket; nodes reconnect and exchange.
    let engine = support::engine(&dir);
    let server = within("reconnect", Node::connect(&socket, "server"))
        .await
        .expect("reconnect server");
    let mut listener = within("listen", support::listen(&server, "svc"))
        .await
        .expect("listen");
    let client = within("reconnect", Node::connect(&socket, "client"))
        .await
        .expect("reconnect client");
    let session = within("open", support::open(&client, "svc"))
        .await
        .expect("open");
    let mut served = within("accept", listener.accept()).await.expect("accept");
    let echo = async {
        while let Some(m) = served.next().await {
            served.send(m.expect("receive")).await.expect("echo");
        }
        SinkExt::<Bytes>::close(&mut served).await.expect("close");
    };
    let (echoed, ()) = within(
        "exchange on the new engine",
        futures::future::join(send_and_check_echoes(session, 2, 200), echo),
    )
    .await;
    assert_eq!(echoed, Ok(200));
    drop((served, listener, server, client));
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}
