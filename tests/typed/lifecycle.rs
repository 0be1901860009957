//! Ends of calls: a server killed with requests in flight, response futures dropped before
//! the reply, a graceful `Server::shutdown`, and a server that stops answering by
//! half-closing.

use futures::future::join_all;
use shmlink::{CallError, OpenError};
use tower::ServiceExt;

use crate::harness::{World, stats_until, within};
use crate::messages::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_requests_in_flight_fails_every_caller() {
    // Four handlers at once: four requests are in handlers, sixteen more wait in the server.
    let world = World::start("kill-in-flight", 64, "ops", &["4"], 1).await;
    let node = world.node("parent").await;
    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");
    let before = world.engine.stats().messages;

    let calls: Vec<_> = (0..20)
        .map(|id| tokio::spawn(client.clone().oneshot(Op::Hang { id })))
        .collect();
    let World {
        engine,
        mut child,
        dir,
    } = world;
    child.expect_line("entered hang 4").await;
    stats_until(&engine, "all twenty requests delivered", |s| {
        s.messages >= before + 20
    })
    .await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "no call can finish before the kill"
    );

    child.kill_and_reap().await;
    for (id, call) in calls.into_iter().enumerate() {
        let result = within("a caller after the kill", call).await.expect("task");
        assert_eq!(result, Err(CallError::Disconnected), "call {id}");
    }
    // Later calls fail too, at once.
    for id in 0..3 {
        let result = within("a call after the kill", client.clone().oneshot(echo(id))).await;
        assert_eq!(result, Err(CallError::Disconnected), "later call {id}");
    }
    // The engine reclaimed the dead node: its name is free.
    stats_until(&engine, "the dead node reclaimed", |s| {
        s.nodes == 1 && s.services == 0
    })
    .await;
    let refused = within("client after the kill", node.client::<Op, OpReply>("ops")).await;
    assert!(
        matches!(refused, Err(OpenError::NotServed { .. })),
        "{refused:?}"
    );
    // Dropping the client closes its end of the dead session.
    drop(client);
    stats_until(&engine, "the client's session end closed", |s| {
        s.session_ends == 0
    })
    .await;

    drop(node);
    within("engine shutdown", engine.shutdown()).await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_response_futures_free_their_replies() {
    // Eight credits per session end: if withdrawn replies were never released, the server
    // could send only eight of the sixteen, and nothing after them.
    const CREDITS: u32 = 8;
    const WITHDRAWN: u64 = 2 * CREDITS as u64;
    let mut world = World::start("drop-response", CREDITS, "ops", &["64"], 1).await;
    let node = world.node("parent").await;
    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");
    let before = world.engine.stats().messages;

    let calls: Vec<_> = (0..WITHDRAWN)
        .map(|id| tokio::spawn(client.clone().oneshot(Op::Gate { id, gate: 0 })))
        .collect();
    world
        .child
        .expect_line(&format!("entered 0 {WITHDRAWN}"))
        .await;
    // Every request reached a handler; now the callers give up.
    for call in calls {
        call.abort();
        let aborted = within("an aborted caller", call).await;
        assert!(
            aborted.is_err_and(|e| e.is_cancelled()),
            "the caller was still waiting"
        );
    }

    // The server still answers all of them...
    world.child.send("release 0").await;
    stats_until(&world.engine, "every withdrawn request answered", |s| {
        s.messages >= before + 2 * WITHDRAWN
    })
    .await;
    // ...and the client freed those replies: many times the credits still flow both ways.
    for id in 0..5 * u64::from(CREDITS) {
        assert_eq!(
            within(
                "a call after the withdrawn ones",
                client.clone().oneshot(echo(id))
            )
            .await,
            Ok(echo_reply(id))
        );
    }
    let calls = (100..300).map(|id| client.clone().oneshot(echo(id)));
    for (id, reply) in (100..).zip(within("concurrent calls", join_all(calls)).await) {
        assert_eq!(reply, Ok(echo_reply(id)));
    }

    // The same with futures dropped before they were ever polled to the end, many at once.
    let before = world.engine.stats().messages;
    let mut pending: Vec<_> = (0..WITHDRAWN)
        .map(|id| Box::pin(client.clone().oneshot(Op::Gate { id, gate: 1 })))
        .collect();
    // Poll each once so it is queued, then drop them all before the handlers answer.
    for call in &mut pending {
        assert!(
            futures::poll!(call).is_pending(),
            "a gated call cannot be answered yet"
        );
    }
    world
        .child
        .expect_line(&format!("entered 1 {WITHDRAWN}"))
        .await;
    drop(pending);
    world.child.send("release 1").await;
    stats_until(&world.engine, "every dropped request answered", |s| {
        s.messages >= before + 2 * WITHDRAWN
    })
    .await;
    let calls = (300..400).map(|id| client.clone().oneshot(echo(id)));
    for (id, reply) in (300..).zip(within("calls after the dropped ones", join_all(calls)).await) {
        assert_eq!(reply, Ok(echo_reply(id)));
    }

    drop((client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_answered_after_every_client_clone_is_dropped() {
    let mut world = World::start("client-dropped", 64, "ops", &["64"], 1).await;
    let node = world.node("parent").await;
    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");

    let in_flight: Vec<_> = (0..5)
        .map(|id| tokio::spawn(client.clone().oneshot(Op::Gate { id, gate: 0 })))
        .collect();
    world.child.expect_line("entered 0 5").await;
    // The response futures hold no client: this was the last clone. The request direction
    // ends; the replies must still come.
    drop(client);
    world.child.send("release 0").await;
    for (id, call) in (0..).zip(in_flight) {
        let reply = within("a call whose client was dropped", call)
            .await
            .expect("task");
        assert_eq!(reply, Ok(OpReply::Value(id * 7)), "call {id}");
    }
    // Then the session closes on both sides, and the server takes new clients.
    stats_until(&world.engine, "the session closed", |s| s.session_ends == 0).await;
    let client = within("a new client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");
    assert_eq!(
        within("a call", client.clone().oneshot(echo(1))).await,
        Ok(echo_reply(1))
    );

    drop((client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_requests_in_flight_then_refuses_opens() {
    let mut world = World::start("graceful-shutdown", 64, "ops", &["64"], 1).await;
    let node = world.node("parent").await;
    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");

    let in_flight: Vec<_> = (0..5)
        .map(|id| tokio::spawn(client.clone().oneshot(Op::Gate { id, gate: 0 })))
        .collect();
    world.child.expect_line("entered 0 5").await;

    world.child.send("shutdown").await;
    // The name goes at once: new opens are refused...
    stats_until(&world.engine, "the name unserved", |s| s.services == 0).await;
    let refused = within("client during shutdown", node.client::<Op, OpReply>("ops")).await;
    assert!(
        matches!(refused, Err(OpenError::NotServed { .. })),
        "{refused:?}"
    );
    let refused = within("open during shutdown", node.open::<bytes::Bytes>("ops")).await;
    assert!(
        matches!(refused, Err(OpenError::NotServed { .. })),
        "{refused:?}"
    );
    // ...a new request on the existing session is not taken (it fails once the session
    // closes, below)...
    let before = world.engine.stats().messages;
    let late = tokio::spawn(client.clone().oneshot(echo(99)));
    stats_until(&world.engine, "the late request delivered", |s| {
        s.messages > before
    })
    .await;
    // ...and the requests in flight still wait for their handlers.
    assert!(
        in_flight.iter().all(|c| !c.is_finished()),
        "in-flight calls answered before their handlers"
    );

    world.child.send("release 0").await;
    for (id, call) in (0..).zip(in_flight) {
        let reply = within("an in-flight call", call).await.expect("task");
        assert_eq!(
            reply,
            Ok(OpReply::Value(id * 7)),
            "in-flight call {id} is answered"
        );
    }
    world.child.expect_line("stopped").await;
    let late = within("the call made during shutdown", late)
        .await
        .expect("task");
    assert_eq!(
        late,
        Err(CallError::Disconnected),
        "a request the stopping server did not take"
    );
    drop(client);
    stats_until(&world.engine, "every session end closed", |s| {
        s.session_ends == 0 && s.services == 0
    })
    .await;

    drop(node);
    world.finish().await;
}

/// The client's reply reader (`read_replies`, ipc-tokio/src/service/client.rs) stops at the
/// end of the peer's stream and fails the calls waiting then, but the writer (`write_calls`)
/// goes on sending new calls on the still-open send direction and parks their reply senders
/// in the shared `waiting` map, which nobody reads or clears any more: such a call hangs
/// forever, even after the peer dies. A real `Server` half-closes (FIN) just before it closes
/// its session end, so a call made in between hangs the same way; this peer holds that
/// window open to make it deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_the_server_half_closed_fails_and_never_hangs() {
    let mut world = World::start("half-closed", 64, "half", &[], 1).await;
    let node = world.node("parent").await;
    let client = within("client", node.client::<Unit, Unit>("half"))
        .await
        .expect("client");

    // The peer reads one request and half-closes without answering: that caller fails.
    let first = tokio::spawn(client.clone().oneshot(Unit));
    world.child.expect_line("request 1").await;
    world.child.expect_line("half-closed").await;
    let first = within("the call the peer dropped", first)
        .await
        .expect("task");
    assert_eq!(first, Err(CallError::Disconnected));

    // The peer will never answer on this session again, so a new call must fail too...
    let second = tokio::spawn(client.clone().oneshot(Unit));
    // ...at the latest when the peer dies.
    let World { engine, child, dir } = world;
    child.kill_and_reap().await;
    stats_until(&engine, "the dead node reclaimed", |s| s.nodes == 1).await;
    let second = within("a call after the half-close", second)
        .await
        .expect("task");
    assert_eq!(second, Err(CallError::Disconnected));

    drop((client, node));
    within("engine shutdown", engine.shutdown()).await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_hung_handler_is_stopped_and_frees_its_slot() {
    // This process serves "ops" one request at a time; a client process starts a call whose
    // handler never answers, and is SIGKILLed. Its reply could never be delivered, so the
    // server stops that handler (dropping its future), and the one slot serves the next client.
    let dir = crate::harness::TestDir::new("killed-caller");
    let engine = crate::harness::engine(&dir, 64);
    let node = within("connect", shmlink::Node::connect(dir.socket(), "server"))
        .await
        .expect("connect");
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel::<()>();
    struct OnDrop(tokio::sync::mpsc::UnboundedSender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let service = tower::service_fn(move |op: Op| {
        let (entered, dropped) = (entered_tx.clone(), dropped_tx.clone());
        async move {
            match op {
                Op::Hang { id } => {
                    let _guard = OnDrop(dropped);
                    let _ = entered.send(id);
                    futures::future::pending::<()>().await;
                    unreachable!()
                }
                Op::Echo { id, text } => Ok::<_, String>(echoed(id, &text)),
                other => Err(format!("unexpected {other:?}")),
            }
        }
    });
    let server = within(
        "serve",
        node.serve_with::<Op, OpReply, _, shmlink::Bincode>(
            "ops",
            service,
            shmlink::ServeConfig::default().concurrency(1),
        ),
    )
    .await
    .expect("serve");

    let mut caller = crate::harness::spawn_child("caller", &dir.socket(), &[]);
    caller.expect_line("called").await;
    assert_eq!(
        within("the hung handler to start", entered.recv()).await,
        Some(1)
    );
    caller.kill_and_reap().await;
    within("the hung handler to be stopped", dropped.recv())
        .await
        .expect("handler dropped");

    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");
    let reply = within(
        "a call after the killed client (hangs if the slot was never freed)",
        client.clone().oneshot(Op::Echo {
            id: 5,
            text: echo_text(5),
        }),
    )
    .await;
    assert_eq!(reply, Ok(echoed(5, &echo_text(5))));
    drop(client);
    within("server shutdown", server.shutdown()).await;
    drop(node);
    within("engine shutdown", engine.shutdown()).await;
}
