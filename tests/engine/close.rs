//! Test 8: ending sessions. `close()` half-closes: the peer's stream ends after all data,
//! and the other direction goes on. Dropping a session ends the peer's stream after all
//! data and makes its sends fail with `Closed`. Dropping the sending half of a split session
//! half-closes; the session closes when both halves are gone.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, SessionError};

use crate::support::{
    self, TestDir, expect_seq, ok_field, seq_len, seq_message, spawn_child, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_close_across_processes() {
    let dir = TestDir::new("close");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let mut child = spawn_child("closer", &[socket.display().to_string()]);
    child.expect("LISTENING").await;
    let node = within("connect", Node::connect(&socket, "parent"))
        .await
        .unwrap();

    // 1. We send 100 and half-close: the child reads exactly those then the end (it
    //    checks); its 50 replies still reach us, then its own close ends our stream.
    let mut s = within("open", support::open(&node, "closer-svc"))
        .await
        .unwrap();
    for seq in 0..100 {
        within(
            "send",
            s.send(Bytes::from(seq_message(1, seq, seq_len(seq)))),
        )
        .await
        .unwrap();
    }
    within("close", SinkExt::<Bytes>::close(&mut s))
        .await
        .unwrap();
    assert_eq!(
        s.send(Bytes::from_static(b"after close")).await,
        Err(SessionError::Closed),
        "sending after our own close fails"
    );
    for seq in 0..50 {
        let m = within("reply", s.next())
            .await
            .expect("reply")
            .expect("reply ok");
        expect_seq(&m, 2, seq).unwrap();
    }
    assert_eq!(within("end", s.next()).await, None);
    assert_eq!(within("still the end", s.next()).await, None);
    drop(s);

    // 2. We send 100 and drop the session: the child reads them all, then the end, then
    //    its sends fail with Closed (it checks).
    let mut s = within("open", support::open(&node, "closer-svc"))
        .await
        .unwrap();
    for seq in 0..100 {
        within(
            "send",
            s.send(Bytes::from(seq_message(3, seq, seq_len(seq)))),
        )
        .await
        .unwrap();
    }
    drop(s);

    // 3. The child sends 100 and drops its session: we read them all, then the end, and our
    //    sends fail with Closed.
    let mut s = within("open", support::open(&node, "closer-svc"))
        .await
        .unwrap();
    for seq in 0..100 {
        let m = within("recv", s.next())
            .await
            .expect("message")
            .expect("ok");
        expect_seq(&m, 4, seq).unwrap();
    }
    assert_eq!(within("end", s.next()).await, None);
    assert_eq!(
        s.send(Bytes::from_static(b"to nobody")).await,
        Err(SessionError::Closed)
    );
    assert_eq!(
        s.send(vec![1u8, 2, 3]).await,
        Err(SessionError::Closed),
        "and again"
    );
    drop(s);

    child.finish_ok().await;
    assert_eq!(engine.stats().violations, 0);
    drop(node);
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_close_the_session_only_together() {
    let dir = TestDir::new("split");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let a = within("connect", Node::connect(&socket, "a"))
        .await
        .unwrap();
    let b = within("connect", Node::connect(&socket, "b"))
        .await
        .unwrap();
    let mut listener = within("listen", support::listen(&a, "split"))
        .await
        .unwrap();
    let mut opened = within("open", support::open(&b, "split")).await.unwrap();
    let accepted = within("accept", listener.accept()).await.unwrap();
    let (a_tx, mut a_rx) = accepted.split();

    // Dropping the sending half half-closes (like Tokio's `OwnedWriteHalf`): the peer's
    // stream ends, and the other direction goes on.
    drop(a_tx);
    assert_eq!(within("end after the sink drop", opened.next()).await, None);
    for seq in 0..20 {
        within("send", opened.send(Bytes::from(seq_message(1, seq, 64))))
            .await
            .unwrap();
    }
    for seq in 0..20 {
        let m = within("recv", a_rx.next()).await.unwrap().unwrap();
        expect_seq(&m, 1, seq).unwrap();
    }

    // Half-closing from the other side ends the last direction; neither end is gone yet.
    within("close", SinkExt::<Bytes>::close(&mut opened))
        .await
        .unwrap();
    assert_eq!(within("end", a_rx.next()).await, None);
    assert_eq!(engine.stats().session_ends, 2);

    // Unread data, then the last half is dropped: the peer's stream ends and its sends
    // fail with Closed; the engine forgets both ends.
    let mut c = within("open", support::open(&b, "split")).await.unwrap();
    let d = within("accept", listener.accept()).await.unwrap();
    for seq in 0..10 {
        within("send", c.send(Bytes::from(seq_message(2, seq, 1000))))
            .await
            .unwrap();
    }
    drop(d);
    assert_eq!(within("end after drop", c.next()).await, None);
    assert_eq!(
        c.send(Bytes::from_static(b"x")).await,
        Err(SessionError::Closed)
    );
    drop((c, a_rx, opened, listener));
    within(
        "every end closed",
        engine.wait_for_stats(|s| s.session_ends == 0 && s.services == 0),
    )
    .await;

    // The unread payloads were released: a payload as large as the receive arena fits.
    let mut listener = within("listen", support::listen(&a, "split"))
        .await
        .unwrap();
    let mut e = within("open", support::open(&b, "split")).await.unwrap();
    let mut f = within("accept", listener.accept()).await.unwrap();
    let max = b.max_payload() as usize;
    within("send max", e.send(Bytes::from(vec![7u8; max])))
        .await
        .unwrap();
    let got = within("recv max", f.next()).await.unwrap().unwrap();
    assert_eq!(got.len(), max);
    drop((got, e, f, listener, a, b));
    within("all gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}

/// A node that sends, half-closes and exits at once: its last messages and its FIN were
/// queued in its submit ring before its socket closed, so they must reach the peer
/// (docs/ARCHITECTURE.md, invariant 5: nothing is lost silently; its `send` and `close`
/// succeeded).
///
/// The engine runs on this test's current-thread runtime, and the test blocks that thread
/// until the child has exited: the child queues everything while the engine is paused,
/// then leaves, and the engine then sees the doorbell and the closed socket together.
#[tokio::test(flavor = "current_thread")]
async fn data_queued_before_a_clean_exit_is_delivered() {
    const COUNT: u64 = 200;
    let dir = TestDir::new("quit");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let node = within("connect", Node::connect(&socket, "receiver"))
        .await
        .unwrap();
    let mut listener = within("listen", support::listen(&node, "quit-svc"))
        .await
        .unwrap();
    let mut quitter = spawn_child(
        "quitter",
        &[socket.display().to_string(), COUNT.to_string()],
    );
    quitter.expect("READY").await;
    let mut session = within("accept", listener.accept()).await.unwrap();

    quitter.send("GO").await;
    // The engine cannot run until the child is gone (nothing the child does needs it: 200
    // messages fit its credits, its transmit arena and its submit ring).
    quitter.block_until_exited();

    let mut received = 0u64;
    let end = loop {
        match within("receive", session.next()).await {
            Some(Ok(m)) => {
                expect_seq(&m, 6, received).unwrap();
                received += 1;
            }
            other => break other,
        }
    };
    assert_eq!(
        (received, end),
        (COUNT, None),
        "every message the child sent before closing and exiting, then the end of the stream"
    );
    let ok = quitter.finish_ok().await;
    assert_eq!(ok_field(&ok, "sent"), COUNT);
    drop((session, listener, node));
    engine.shutdown().await;
}
