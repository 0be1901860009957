//! Test 4: a node SIGKILLed mid-traffic is cleaned up: its peer's stream ends with
//! `Disconnected` after everything delivered, its pending and later sends fail, the
//! engine's registry, the host process's descriptors and block mappings return to their
//! baseline, the loans sent into the dead node come back, and its name can be served again.
//! Also: a stopped (SIGSTOP) receiver stalls nothing but its own sessions.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node, SessionError};

use crate::children::{VICTIM_STREAM, send_and_check_echoes};
use crate::support::{
    self, TestDir, block_mappings, expect_seq, ok_field, open_fds, seq_len, seq_message,
    spawn_child, within,
};

const MIB: usize = 1 << 20;

/// A node pair in this process exchanging a few messages (proves the engine serves).
async fn exchange_in_process(engine: &Engine, service: &str, messages: u64) {
    let socket = engine.socket_path().to_owned();
    let server = within("connect", Node::connect(&socket, &format!("{service}-srv")))
        .await
        .expect("connect server");
    let mut listener = within("listen", support::listen(&server, service))
        .await
        .expect("listen");
    let client = within("connect", Node::connect(&socket, &format!("{service}-cli")))
        .await
        .expect("connect client");
    let session = within("open", support::open(&client, service))
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
        "in-process exchange",
        futures::future::join(send_and_check_echoes(session, 77, messages), echo),
    )
    .await;
    assert_eq!(echoed, Ok(messages));
}

#[test]
fn sigkill_mid_stream_cleans_everything_up() {
    // Counts of this process's descriptors must not see other tests' (cargo test threads).
    support::run_isolated(
        "kill::sigkill_mid_stream_cleans_everything_up",
        sigkill_body,
    );
}

async fn sigkill_body() {
    let dir = TestDir::new("kill");
    // A window of 8 MiB: the eight 1 MiB payloads below fit in it (and in the credits).
    let engine = support::engine_builder(&dir)
        .credits(8)
        .window_bytes(8 << 20)
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "peer"))
        .await
        .expect("connect");

    // Warm up what the runtime creates lazily (child reaping, signal handling) and one node
    // connect/serve/open/close cycle, then take the baselines.
    spawn_child("noop", &[]).finish_ok().await;
    exchange_in_process(&engine, "warm-up", 10).await;
    let base = within(
        "warm-up nodes gone",
        engine.wait_for_stats(|s| s.nodes == 1 && s.session_ends == 0 && s.services == 0),
    )
    .await;
    let base_fds = open_fds();
    let base_maps = block_mappings();
    assert_eq!(
        base_maps, 2,
        "the peer's block, mapped by the engine and the peer"
    );

    let mut victim = spawn_child("victim", &[socket.display().to_string()]);
    victim.expect("LISTENING").await;
    let mut from_victim = within("open", support::open(&node, "victim-svc"))
        .await
        .expect("open 1");
    let into_victim = within("open", support::open(&node, "victim-svc"))
        .await
        .expect("open 2");
    assert_eq!(engine.stats().nodes, 2);
    assert!(
        block_mappings() > base_maps,
        "the victim's block is mapped by the engine"
    );

    // Mid-traffic: the victim streams to us...
    let mut seq = 0u64;
    while seq < 200 {
        let m = within("victim streams", from_victim.next())
            .await
            .expect("stream ended early")
            .expect("stream error before the kill");
        expect_seq(&m, VICTIM_STREAM, seq).expect("in order");
        seq += 1;
    }
    // ...and we stream 1 MiB payloads into the session it never reads: 4 fill its receive
    // arena, 4 more wait in the engine holding our whole transmit arena, and the ninth
    // waits for a credit that will never come.
    let (mut in_tx, mut in_rx) = into_victim.split();
    for i in 0..8u8 {
        within(
            "send into the victim",
            in_tx.send(Bytes::from(vec![i; MIB])),
        )
        .await
        .expect("the first 8 fit in credits and arenas");
    }
    let pending = tokio::spawn(async move {
        let result = in_tx.send(Bytes::from(vec![9u8; MIB])).await;
        (result, in_tx)
    });

    victim.sigkill();

    // Everything delivered before the kill arrives intact and in order, then Disconnected.
    loop {
        match within("stream after the kill", from_victim.next()).await {
            Some(Ok(m)) => {
                expect_seq(&m, VICTIM_STREAM, seq).expect("in order after the kill");
                seq += 1;
            }
            Some(Err(SessionError::Disconnected)) => break,
            other => panic!("after {seq} messages: expected Disconnected, got {other:?}"),
        }
    }
    assert!(
        from_victim.next().await.is_none(),
        "the stream ends after Disconnected"
    );
    assert_eq!(
        from_victim.send(Bytes::from_static(b"late")).await,
        Err(SessionError::Disconnected),
        "sends to a dead peer fail"
    );
    let (pending_result, in_tx) = within("the pending send ends", pending)
        .await
        .expect("task");
    assert_eq!(pending_result, Err(SessionError::Disconnected));
    assert_eq!(
        within("other half", in_rx.next()).await,
        Some(Err(SessionError::Disconnected))
    );
    victim.reap_killed().await;

    // The registry forgets the node, its services and its session ends...
    let after = within(
        "the dead node is buried",
        engine.wait_for_stats(|s| s.nodes == base.nodes && s.services == base.services),
    )
    .await;
    assert_eq!(after.session_ends, 2, "only our two ends remain: {after:?}");
    assert_eq!(
        after.violations, 0,
        "a kill is not a protocol violation: {after:?}"
    );
    // ...and ours once we drop them.
    drop((from_victim, in_tx, in_rx));
    within(
        "our ends closed",
        engine.wait_for_stats(|s| s.session_ends == base.session_ends),
    )
    .await;

    // Descriptors and mappings are back to the baseline: the dead node's socket, memfd,
    // doorbells and mapping in the engine, and our pipes and pidfd for the child.
    let mut fds = open_fds();
    for _ in 0..10_000 {
        if fds.len() == base_fds.len() {
            break;
        }
        tokio::task::yield_now().await;
        fds = open_fds();
    }
    assert_eq!(
        fds.len(),
        base_fds.len(),
        "descriptors not back to baseline:\nbefore {base_fds:?}\nafter  {fds:?}"
    );
    assert_eq!(
        block_mappings(),
        base_maps,
        "block mappings not back to baseline"
    );

    // The dead node's name is free for a new node, and every loan we sent into the dead node
    // came back: a payload as large as our whole transmit arena can be loaned again.
    let heir = within("connect", Node::connect(&socket, "heir"))
        .await
        .expect("connect heir");
    let mut listener = within(
        "serve the dead node's name",
        support::listen(&heir, "victim-svc"),
    )
    .await
    .expect("the name of a dead node can be served again");
    let mut session = within("open", support::open(&node, "victim-svc"))
        .await
        .expect("open");
    let mut served = within("accept", listener.accept()).await.expect("accept");
    let max = node.max_payload() as usize;
    let mut loan = within("loan the whole transmit arena", session.sink().loan(max))
        .await
        .expect("loan");
    loan[0] = 0xAB;
    loan[max - 1] = 0xCD;
    within("send", session.send(loan)).await.expect("send");
    let got = within("receive", served.next()).await.unwrap().unwrap();
    assert_eq!((got.len(), got[0], got[max - 1]), (max, 0xAB, 0xCD));
    drop(got);
    within("reply", served.send(Bytes::from_static(b"welcome")))
        .await
        .unwrap();
    assert_eq!(
        &within("reply", session.next()).await.unwrap().unwrap()[..],
        b"welcome"
    );
    drop((session, served, listener, heir, node));
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_receiver_stalls_nothing_else() {
    const CREDITS: u32 = 64;
    let dir = TestDir::new("sigstop");
    // A deliver ring much smaller than the credits: the engine's queue for the stopped node
    // outgrows the ring, and the engine must wait for room without waiting on the node.
    let engine = support::engine_builder(&dir)
        .block(shmlink::BlockConfig {
            deliver_capacity: 16,
            ..support::small_block()
        })
        .credits(CREDITS)
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let mut stopped = spawn_child(
        "count-rx",
        &[
            socket.display().to_string(),
            "stopped-svc".into(),
            "5".into(),
        ],
    );
    stopped.expect("LISTENING").await;
    stopped.stop().await;

    let node = within("connect", Node::connect(&socket, "sender"))
        .await
        .expect("connect");
    let mut session = within(
        "open to a stopped node",
        support::open(&node, "stopped-svc"),
    )
    .await
    .expect("open");
    for seq in 0..u64::from(CREDITS) {
        within(
            "send to a stopped node",
            session.send(Bytes::from(seq_message(5, seq, seq_len(seq)))),
        )
        .await
        .expect("send");
    }
    assert_eq!(support::ready_now(&mut session), None, "credits exhausted");

    // Other nodes connect, serve, open and exchange meanwhile.
    exchange_in_process(&engine, "bystanders", 1000).await;

    // Once resumed, the stopped node gets everything, in order.
    stopped.resume();
    within("the stopped node catches up", async {
        for seq in u64::from(CREDITS)..u64::from(3 * CREDITS) {
            session
                .send(Bytes::from(seq_message(5, seq, seq_len(seq))))
                .await
                .expect("send after resume");
        }
        SinkExt::<Bytes>::close(&mut session).await.expect("close");
    })
    .await;
    let ok = stopped.finish_ok().await;
    assert_eq!(ok_field(&ok, "received"), u64::from(3 * CREDITS), "{ok}");
    assert_eq!(engine.stats().violations, 0);
    drop((session, node));
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}
