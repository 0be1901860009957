//! Test 7: service names. A name is served once; opening an unserved name fails; dropping
//! the `Listener` frees the name (for its own node at once, for any node once the engine
//! has processed it) while sessions already accepted go on.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{NameError, Node, OpenError};

use crate::support::{self, TestDir, ok_field, spawn_child, within};

fn already(service: &str) -> Result<(), OpenError> {
    Err(OpenError::AlreadyServed {
        service: service.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_served_once_and_freed_by_dropping_the_listener() {
    let dir = TestDir::new("names");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let a = within("connect", Node::connect(&socket, "a"))
        .await
        .unwrap();
    let b = within("connect", Node::connect(&socket, "b"))
        .await
        .unwrap();

    // Served twice: by another node, and by the same node.
    let mut listener = within("listen", support::listen(&a, "names"))
        .await
        .expect("first listen");
    assert_eq!(
        within("listen", support::listen(&b, "names"))
            .await
            .map(drop),
        already("names")
    );
    assert_eq!(
        within("listen", support::listen(&a, "names"))
            .await
            .map(drop),
        already("names")
    );
    let err = within("listen", support::listen(&b, "names"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("names"), "{err}");

    // Nobody serves it.
    assert_eq!(
        within("open", support::open(&b, "nobody")).await.map(drop),
        Err(OpenError::NotServed {
            service: "nobody".into()
        })
    );
    // Names must be 1..=255 bytes.
    assert_eq!(
        within("open", support::open(&b, "")).await.map(drop),
        Err(OpenError::Name {
            name: String::new(),
            reason: NameError::Empty
        })
    );
    let long = "n".repeat(256);
    let too_long = Err(OpenError::Name {
        name: long.clone(),
        reason: NameError::TooLong { len: 256 },
    });
    assert_eq!(
        within("open", support::open(&b, &long)).await.map(drop),
        too_long
    );
    assert_eq!(
        within("listen", support::listen(&b, &long)).await.map(drop),
        too_long
    );
    let longest = "n".repeat(255);
    drop(
        within("listen", support::listen(&b, &longest))
            .await
            .expect("255 bytes is fine"),
    );

    // A session accepted before the listener is dropped goes on afterwards.
    let mut opened = within("open", support::open(&b, "names"))
        .await
        .expect("open");
    let mut accepted = within("accept", listener.accept()).await.expect("accept");
    assert_eq!(accepted.peer(), "b");
    assert_eq!(opened.peer(), "a");
    drop(listener);
    within("send", opened.send(Bytes::from_static(b"still here")))
        .await
        .unwrap();
    assert_eq!(
        &within("recv", accepted.next()).await.unwrap().unwrap()[..],
        b"still here"
    );

    // The same node can serve the name again at once (its frames are ordered)...
    let again = within("listen again", support::listen(&a, "names"))
        .await
        .expect("the serving node can serve a name again after dropping its listener");
    drop(again);
    // ...and another node once the engine has processed the drop.
    within("unserved", engine.wait_for_stats(|s| s.services == 0)).await;
    assert_eq!(
        within("open", support::open(&a, "names")).await.map(drop),
        Err(OpenError::NotServed {
            service: "names".into()
        })
    );
    let mut taken = within("listen", support::listen(&b, "names"))
        .await
        .expect("another node can serve a freed name");
    let mut s = within("open", support::open(&a, "names"))
        .await
        .expect("open");
    let mut t = within("accept", taken.accept()).await.expect("accept");
    within("send", s.send(Bytes::from_static(b"new owner")))
        .await
        .unwrap();
    assert_eq!(
        &within("recv", t.next()).await.unwrap().unwrap()[..],
        b"new owner"
    );
    drop((s, t, taken, opened, accepted));
    within(
        "clean",
        engine.wait_for_stats(|s| s.session_ends == 0 && s.services == 0),
    )
    .await;
    drop((a, b));
    within("all gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_served_by_another_process_is_taken() {
    let dir = TestDir::new("names-proc");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let mut child = spawn_child(
        "count-rx",
        &[socket.display().to_string(), "proc-name".into(), "1".into()],
    );
    child.expect("LISTENING").await;
    within("served", engine.wait_for_stats(|s| s.services == 1)).await;
    let node = within("connect", Node::connect(&socket, "me"))
        .await
        .unwrap();
    assert_eq!(
        within("listen", support::listen(&node, "proc-name"))
            .await
            .map(drop),
        already("proc-name")
    );
    let mut session = within("open", support::open(&node, "proc-name"))
        .await
        .expect("open");
    within(
        "send",
        session.send(Bytes::from(support::seq_message(1, 0, 64))),
    )
    .await
    .unwrap();
    within("close", SinkExt::<Bytes>::close(&mut session))
        .await
        .unwrap();
    let ok = child.finish_ok().await;
    assert_eq!(ok_field(&ok, "received"), 1);
    // The child exited: its name is free again.
    within("unserved", engine.wait_for_stats(|s| s.services == 0)).await;
    drop(
        within("listen", support::listen(&node, "proc-name"))
            .await
            .expect("free after exit"),
    );
    drop((session, node));
    engine.shutdown().await;
}

/// A session opened to a name and not yet accepted when the server drops its `Listener`
/// must end for the opener (`Closed`), and its ends must leave the registry. The session
/// sits in the listener's queue (the server's node has adopted its end); dropping the
/// listener drops the queue without closing those ends, so the opener waits for ever and
/// the engine keeps both ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_never_accepted_end_when_the_listener_is_dropped() {
    let dir = TestDir::new("names-queued");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let server = within("connect", Node::connect(&socket, "server"))
        .await
        .unwrap();
    let client = within("connect", Node::connect(&socket, "client"))
        .await
        .unwrap();
    let listener = within("listen", support::listen(&server, "queued"))
        .await
        .unwrap();
    let mut fence = within("listen", support::listen(&server, "fence"))
        .await
        .unwrap();
    let mut queued = within("open", support::open(&client, "queued"))
        .await
        .unwrap();
    // The engine announces sessions to the server in open order on one socket: once the
    // fence session is accepted, the first one waits in `listener`'s queue.
    let _fenced = within("open", support::open(&client, "fence"))
        .await
        .unwrap();
    let _f = within("accept", fence.accept()).await.unwrap();
    within("send", queued.send(Bytes::from_static(b"anyone?")))
        .await
        .unwrap();
    drop(listener);

    // Bounded wait for something that, once fixed, happens at once.
    let end = tokio::time::timeout(std::time::Duration::from_secs(20), queued.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the opener's stream must end when its session is refused, got {end:?} (stats {:?})",
        engine.stats()
    );
    assert_eq!(
        queued.send(Bytes::from_static(b"x")).await,
        Err(shmlink::SessionError::Closed)
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_per_node_and_sessions_to_oneself() {
    let dir = TestDir::new("names-limit");
    let engine = support::engine_builder(&dir)
        .max_sessions_per_node(4)
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "self"))
        .await
        .unwrap();
    let mut listener = within("listen", support::listen(&node, "me"))
        .await
        .unwrap();

    // A node may open a session to its own service: both ends live in the same node.
    let mut opened = within("open", support::open(&node, "me")).await.unwrap();
    let mut accepted = within("accept", listener.accept()).await.unwrap();
    within("send", opened.send(Bytes::from_static(b"to myself")))
        .await
        .unwrap();
    assert_eq!(
        &within("recv", accepted.next()).await.unwrap().unwrap()[..],
        b"to myself"
    );
    within("send", accepted.send(Bytes::from_static(b"from myself")))
        .await
        .unwrap();
    assert_eq!(
        &within("recv", opened.next()).await.unwrap().unwrap()[..],
        b"from myself"
    );

    // Two self-sessions hold four ends of this node: the limit.
    let second = within("open", support::open(&node, "me")).await.unwrap();
    let second_accepted = within("accept", listener.accept()).await.unwrap();
    match within("open", support::open(&node, "me")).await {
        Err(OpenError::Refused(message)) => assert!(message.contains('4'), "{message}"),
        other => panic!("expected Refused at the limit, got {:?}", other.map(drop)),
    }
    // Closing one frees room.
    drop((second, second_accepted));
    within("ends freed", engine.wait_for_stats(|s| s.session_ends == 2)).await;
    let _third = within("open", support::open(&node, "me"))
        .await
        .expect("room again after a close");
    drop((opened, accepted, listener, node));
    engine.shutdown().await;
}

/// Thousands of `open`s in flight at once from one node all complete, and the node's
/// control channel and data path still work after (issue 10: 5,000 concurrent opens once
/// wedged a node's control channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_opens_all_complete() {
    const OPENS: usize = 5000;
    let dir = TestDir::new("many-opens");
    let engine = support::engine_builder(&dir)
        .max_sessions_per_node(4 * OPENS)
        .max_sessions_per_opener(OPENS + 1)
        .spawn()
        .expect("engine");
    let server = within("connect", Node::connect(dir.socket(), "many-srv"))
        .await
        .expect("connect");
    let mut listener = within("listen", support::listen(&server, "many"))
        .await
        .expect("listen");
    let client = within("connect", Node::connect(dir.socket(), "many-cli"))
        .await
        .expect("connect");
    let accepting = tokio::spawn(async move {
        let mut accepted = Vec::with_capacity(OPENS);
        while accepted.len() < OPENS {
            accepted.push(listener.accept().await.expect("accept"));
        }
        (listener, accepted)
    });
    let opens = futures::future::join_all((0..OPENS).map(|_| support::open(&client, "many")));
    let sessions: Vec<_> = within("every open completes", opens)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("open");
    let (listener, mut accepted) = within("every session accepted", accepting)
        .await
        .expect("accept task");
    assert_eq!(sessions.len(), OPENS);
    // The data path still works on the last session, and a new open still succeeds.
    let mut last = sessions.into_iter().last().expect("sessions");
    let mut served = accepted.pop().expect("accepted");
    within("send", last.send(Bytes::from_static(b"ping")))
        .await
        .expect("send");
    let got = within("receive", served.next())
        .await
        .expect("open")
        .expect("payload");
    assert_eq!(&got[..], b"ping");
    within("another open", support::open(&client, "many"))
        .await
        .expect("open after the storm");
    drop((last, served, accepted, listener, client, server));
    support::all_gone(engine).await;
}

/// Names with NUL or control characters are refused by `listen`, `serve`, `open` and `client`
/// before anything is sent: the engine's registry is untouched and the node stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_control_characters_are_refused_before_anything_is_sent() {
    #[derive(shmlink::Message, serde::Serialize, serde::Deserialize)]
    struct Unit;

    let dir = TestDir::new("names-control");
    let engine = support::engine(&dir);
    let node = within("connect", Node::connect(dir.socket(), "n"))
        .await
        .unwrap();
    let cases = [
        ("a\0b", NameError::Control { ch: '\0', at: 1 }),
        ("\tquotes", NameError::Control { ch: '\t', at: 0 }),
        (
            "q\u{1b}]0;x\u{7}",
            NameError::Control {
                ch: '\u{1b}',
                at: 1,
            },
        ),
        (
            "c1\u{9b}",
            NameError::Control {
                ch: '\u{9b}',
                at: 2,
            },
        ),
    ];
    for (name, reason) in cases {
        let want = Err(OpenError::Name {
            name: name.to_owned(),
            reason,
        });
        assert_eq!(
            within("listen", support::listen(&node, name))
                .await
                .map(drop),
            want
        );
        assert_eq!(
            within("open", support::open(&node, name)).await.map(drop),
            want
        );
        let echo = tower::service_fn(|u: Unit| async move { Ok::<_, String>(u) });
        assert_eq!(
            within("serve", node.serve(name, echo)).await.map(drop),
            want
        );
        assert_eq!(
            within("client", node.client::<Unit, Unit>(name))
                .await
                .map(drop),
            want
        );
    }
    // Had any of them reached the engine, it would have closed this node for a bad frame:
    // a valid name still works, and the registry holds only that.
    let _listener = within("listen", support::listen(&node, "ok"))
        .await
        .expect("a valid name");
    let stats = within(
        "registered",
        engine.wait_for_stats(|s| s.nodes == 1 && s.services == 1),
    )
    .await;
    assert_eq!((stats.session_ends, stats.violations), (0, 0));
    drop((_listener, node));
    support::all_gone(engine).await;
}

/// A client that hoards sessions to one server is refused at its own limit with a typed
/// error naming it, while another client still opens to that server (issue 10: the
/// per-node limit used to be counted against the server, locking everyone out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hoarder_is_refused_at_its_own_limit_and_others_still_get_in() {
    const PER_OPENER: usize = 5;
    let dir = TestDir::new("hoarder");
    let engine = support::engine_builder(&dir)
        .max_sessions_per_opener(PER_OPENER)
        .spawn()
        .expect("engine");
    let server = within("connect", Node::connect(dir.socket(), "hoard-srv"))
        .await
        .expect("connect");
    let mut listener = within("listen", support::listen(&server, "hoard"))
        .await
        .expect("listen");
    let hoarder = within("connect", Node::connect(dir.socket(), "hoarder"))
        .await
        .expect("connect");
    let mut held = Vec::new();
    for _ in 0..PER_OPENER {
        held.push(
            within("open", support::open(&hoarder, "hoard"))
                .await
                .expect("open"),
        );
    }
    let refused = within("one more", support::open(&hoarder, "hoard")).await;
    assert_eq!(
        refused.err(),
        Some(OpenError::LimitReached {
            limit: shmlink::Limit::SessionsPerOpener,
            max: PER_OPENER as u64
        })
    );
    let other = within("connect", Node::connect(dir.socket(), "polite"))
        .await
        .expect("connect");
    let mut session = within("another client opens", support::open(&other, "hoard"))
        .await
        .expect("the other client is not locked out");
    let mut accepted = Vec::new();
    for _ in 0..=PER_OPENER {
        accepted.push(within("accept", listener.accept()).await.expect("accept"));
    }
    let mut served = accepted.pop().expect("the polite session");
    within("send", session.send(Bytes::from_static(b"hi")))
        .await
        .expect("send");
    let got = within("receive", served.next()).await.unwrap().unwrap();
    assert_eq!(&got[..], b"hi");
    // A closed session gives the hoarder its slot back.
    drop(held.pop());
    within("the slot comes back", async {
        loop {
            match support::open(&hoarder, "hoard").await {
                Ok(s) => break s,
                Err(OpenError::LimitReached { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    })
    .await;
    drop((
        held, session, served, accepted, listener, server, hoarder, other,
    ));
    support::all_gone(engine).await;
}

/// An unserve storm: a node serving 2,000 names unserves them all from 20 tasks at once
/// while a bystander pair exchanges; every unserve completes, the pair never stops, and a
/// fresh node connects and exchanges afterwards (issue 10: unserve was a linear scan and an
/// unserve storm froze the engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserve_storm_leaves_the_engine_serving_everyone() {
    const NAMES: usize = 2000;
    const TASKS: usize = 20;
    let dir = TestDir::new("unserve-storm");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        listener,
        client,
        mut opened,
        mut accepted,
    } = support::pair(&engine, "bystander").await;
    // Two nodes: one may serve at most 1,024 names.
    let mut storm = Vec::new();
    for n in 0..2 {
        let node = within(
            "connect",
            Node::connect(dir.socket(), &format!("storm-{n}")),
        )
        .await
        .expect("connect");
        storm.push(node);
    }
    let mut listeners = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        let l = within(
            "listen",
            support::listen(&storm[i % 2], &format!("storm-{i}")),
        )
        .await
        .expect("listen");
        listeners.push(l);
    }
    assert!(engine.stats().services > NAMES);
    let mut chunks: Vec<Vec<_>> = (0..TASKS).map(|_| Vec::new()).collect();
    for (i, l) in listeners.into_iter().enumerate() {
        chunks[i % TASKS].push(l);
    }
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            tokio::spawn(async move {
                for l in chunk {
                    l.unserve().await;
                }
            })
        })
        .collect();
    // The bystander keeps exchanging during the storm.
    let mut seq = 0u64;
    let storming = futures::future::join_all(tasks);
    tokio::pin!(storming);
    loop {
        let message = Bytes::from(seq.to_le_bytes().to_vec());
        within("bystander send", opened.send(message.clone()))
            .await
            .expect("send");
        let got = within("bystander receive", accepted.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, message);
        seq += 1;
        if futures::FutureExt::now_or_never(&mut storming).is_some() {
            break;
        }
    }
    within(
        "every name unserved",
        engine.wait_for_stats(|s| s.services == 1),
    )
    .await;
    // A fresh node after the storm.
    let fresh = within("connect", Node::connect(dir.socket(), "fresh"))
        .await
        .expect("connect after the storm");
    let mut session = within("open", support::open(&fresh, "bystander-srv-free"))
        .await
        .err();
    assert!(matches!(session.take(), Some(OpenError::NotServed { .. })));
    drop((opened, accepted, listener, server, client, storm, fresh));
    support::all_gone(engine).await;
}
