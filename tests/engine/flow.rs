//! Test 3: flow control is per session. A receiver that never reads one session makes that
//! session's `poll_ready` pend after exactly `credits` messages, while the same sender's
//! other sessions (to the same receiver node and to another node) keep flowing.

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use shmlink::Node;

use crate::children::{DRAIN, FLOW_STREAM, STUCK_STREAM, send_and_check_echoes};
use crate::support::{
    self, TestDir, expect_seq, ok_field, seq_len, seq_message, spawn_child, within,
};

const CREDITS: u32 = 8;
const FLOWING: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_session_stalls_alone_after_exactly_its_credits() {
    let dir = TestDir::new("flow");
    let engine = support::engine_builder(&dir)
        .credits(CREDITS)
        .spawn()
        .expect("engine");
    let socket = dir.socket();

    let mut receiver = spawn_child("flow-rx", &[socket.display().to_string()]);
    receiver.expect("LISTENING").await;
    let other = within("connect", Node::connect(&socket, "flow-other"))
        .await
        .expect("connect other");
    let mut other_listener = support::listen(&other, "flow-other").await.expect("listen");
    let node = within("connect", Node::connect(&socket, "flow-tx"))
        .await
        .expect("connect sender");

    // The receiver accepts in open order: the first session is the one it will not read.
    let mut stuck = within("open", support::open(&node, "flow"))
        .await
        .expect("open stuck");
    let flowing = within("open", support::open(&node, "flow"))
        .await
        .expect("open flowing");
    let to_other = within("open", support::open(&node, "flow-other"))
        .await
        .expect("open other");
    let mut other_end = within("accept", other_listener.accept())
        .await
        .expect("accept");

    // Exactly `credits` sends complete without waiting; the next `poll_ready` pends.
    for seq in 0..u64::from(CREDITS) {
        let sent = stuck
            .send(Bytes::from(seq_message(STUCK_STREAM, seq, seq_len(seq))))
            .now_or_never();
        assert!(
            matches!(sent, Some(Ok(()))),
            "send {seq} of the first {CREDITS} should complete at once, got {sent:?}"
        );
    }
    assert_eq!(
        support::ready_now(&mut stuck),
        None,
        "poll_ready must pend after {CREDITS} unreleased messages"
    );

    // Meanwhile the other sessions of the same sender flow: 1000 messages to the same
    // receiver node (each acknowledged by its echo), 1000 to another node.
    let echo_other = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(m) = other_end.next().await {
            other_end
                .send(m.expect("other: receive"))
                .await
                .expect("other: echo");
            n += 1;
        }
        SinkExt::<Bytes>::close(&mut other_end)
            .await
            .expect("close");
        n
    });
    let (mut flow_tx, mut flow_rx) = flowing.split();
    let flow_send = async {
        for seq in 0..FLOWING {
            flow_tx
                .send(Bytes::from(seq_message(FLOW_STREAM, seq, seq_len(seq))))
                .await
                .expect("send on the flowing session");
        }
    };
    let flow_acks = async {
        for seq in 0..FLOWING {
            let ack = flow_rx
                .next()
                .await
                .expect("flowing session ended")
                .expect("ack");
            expect_seq(&ack, FLOW_STREAM, seq).expect("ack in order");
        }
    };
    let to_other = send_and_check_echoes(to_other, 3, FLOWING);
    let ((), (), other_result) = within("the other sessions flow", async {
        tokio::join!(flow_send, flow_acks, to_other)
    })
    .await;
    assert_eq!(other_result, Ok(FLOWING));
    assert_eq!(within("other echo", echo_other).await.unwrap(), FLOWING);

    // Still stalled: nothing of the stuck session was released.
    assert_eq!(
        support::ready_now(&mut stuck),
        None,
        "the stuck session must still pend"
    );

    // Once the receiver reads it, the stalled session resumes and loses nothing.
    flow_tx
        .send(Bytes::from_static(DRAIN))
        .await
        .expect("send DRAIN");
    within("the stuck session resumes", async {
        for seq in u64::from(CREDITS)..u64::from(3 * CREDITS) {
            stuck
                .send(Bytes::from(seq_message(STUCK_STREAM, seq, seq_len(seq))))
                .await
                .expect("send on the resumed session");
        }
        SinkExt::<Bytes>::close(&mut stuck)
            .await
            .expect("close stuck");
        SinkExt::<Bytes>::close(&mut flow_tx)
            .await
            .expect("close flowing");
    })
    .await;
    let ok = receiver.finish_ok().await;
    assert_eq!(ok_field(&ok, "stuck"), u64::from(3 * CREDITS), "{ok}");
    assert_eq!(ok_field(&ok, "flowing"), FLOWING, "{ok}");
    assert_eq!(engine.stats().violations, 0);
    drop((stuck, flow_tx, flow_rx, node, other_listener, other));
    within(
        "everything closed",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

/// A sink gathers fed payloads into a batch it pushes when full or on flush. A producer that
/// only feeds must still never wait on its own batch: not for credits (the batch is pushed
/// before `poll_ready` waits for one) and not for room in its transmit arena (pushed before a
/// loan waits: the batched loans hold that room until the engine copies them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeding_without_flushing_never_waits_on_its_own_batch() {
    const BIG: usize = 256 << 10; // 16 fill the 4 MiB transmit arena
    const SMALL: u64 = 300; // more than a batch, and than the credits
    let dir = TestDir::new("feed");
    let engine = support::engine_builder(&dir)
        .credits(64)
        .spawn()
        .expect("engine");
    let support::Pair {
        server,
        listener,
        client,
        opened: mut session,
        accepted: mut served,
    } = support::pair(&engine, "feed").await;

    // Large loans: the arena fills long before the 64 credits run out.
    let feed_big = async {
        for i in 0..40u8 {
            let mut loan = session.loan(BIG).await.expect("loan");
            loan.fill(i);
            session.feed(loan).await.expect("feed");
        }
        // Small ones with few credits left to the peer: more than a batch, never flushed.
        for seq in 0..SMALL {
            session
                .feed(Bytes::from(seq_message(3, seq, seq_len(seq))))
                .await
                .expect("feed");
        }
        session
    };
    let read = async {
        for i in 0..40u8 {
            let m = served.next().await.expect("open").expect("payload");
            assert!(m.len() == BIG && m.iter().all(|&b| b == i), "payload {i}");
        }
        // Without a flush, only the last payload fed (still held) and a partial batch (at
        // most 31) may be unpushed: read what must have arrived.
        let mut seq = 0;
        while seq < SMALL - 1 - 31 {
            let m = served.next().await.expect("open").expect("payload");
            expect_seq(&m, 3, seq).expect("in order");
            seq += 1;
        }
        seq
    };
    let (mut session, mut seq) = within(
        "feeding 340 payloads without a flush",
        futures::future::join(feed_big, read),
    )
    .await;
    within("flush", SinkExt::<Bytes>::flush(&mut session))
        .await
        .expect("flush");
    while seq < SMALL {
        let m = within("the rest after the flush", served.next())
            .await
            .expect("open")
            .expect("payload");
        expect_seq(&m, 3, seq).expect("in order");
        seq += 1;
    }
    drop((session, served, listener, server, client));
    support::all_gone(engine).await;
}

/// A fed loan holds arena memory until it is pushed: a loan that must wait for room pushes
/// it first (else a producer that feeds a small payload, then loans the whole arena, waits
/// on itself forever; the tower client and server feed like this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_waiting_for_room_first_pushes_the_loan_fed_before_it() {
    let dir = TestDir::new("fed-loan");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        listener,
        client,
        opened: mut session,
        accepted: mut served,
    } = support::pair(&engine, "whole").await;
    // The arenas' largest: larger ones would travel in a hand-off segment, not the arena.
    let max = client.max_payload() as usize;
    for round in 0..3u8 {
        let mut small = within("small loan", session.loan(100)).await.expect("loan");
        small.fill(round);
        within("feed", session.feed(small)).await.expect("feed");
        let mut whole = within(
            "a loan of the whole arena after a fed one",
            session.loan(max),
        )
        .await
        .expect("loan");
        whole[0] = round;
        whole[max - 1] = round;
        // The whole payload is larger than the session's window: it goes alone, once the
        // small one is released (it also needs the whole receive arena).
        let send = async { session.send(whole).await.expect("send") };
        let read_first = async {
            let first = served.next().await.unwrap().unwrap();
            assert!(first.len() == 100 && first.iter().all(|&b| b == round));
        };
        within("send while the small one is read", async {
            tokio::join!(send, read_first)
        })
        .await;
        let second = within("whole", served.next()).await.unwrap().unwrap();
        assert_eq!(
            (second.len(), second[0], second[max - 1]),
            (max, round, round)
        );
    }
    drop((session, served, listener, server, client));
    support::all_gone(engine).await;
}

/// A loan lent by one node's arena and sent on another node's session is refused with a
/// typed error before anything is submitted; both sessions go on, and the loan's memory
/// goes back to its own arena.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loan_of_another_node_is_refused_and_both_sessions_go_on() {
    let dir = TestDir::new("foreign-loan");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        listener,
        client,
        opened: mut session,
        accepted: mut served,
    } = support::pair(&engine, "foreign").await;
    for round in 0..3u8 {
        let mut loan = within("loan", session.loan(1000)).await.expect("loan");
        loan.fill(round);
        // Lent by the client's node, sent on the server's end of the session.
        let refused = within("send elsewhere", served.send(loan)).await;
        assert_eq!(refused, Err(shmlink::SessionError::ForeignLoan));
        // Both ways still flow.
        within("send", served.send(Bytes::from(vec![round; 10])))
            .await
            .expect("send");
        let got = within("receive", session.next()).await.unwrap().unwrap();
        assert_eq!(&got[..], &[round; 10]);
        let mut own = within("own loan", session.loan(1000)).await.expect("loan");
        own.fill(round);
        within("send own", session.send(own)).await.expect("send");
        let got = within("receive own", served.next()).await.unwrap().unwrap();
        assert!(got.len() == 1000 && got.iter().all(|&b| b == round));
    }
    let stats = engine.stats();
    assert_eq!(stats.violations, 0, "nothing reached the engine");
    drop((session, served, listener, server, client));
    support::all_gone(engine).await;
}

/// Loans fed and never flushed are not lost: dropping the sink pushes its batch and the loan
/// it holds, and the peer's stream ends after the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_dropped_unflushed_still_delivers_the_loans_it_was_fed() {
    const FED: u64 = 20; // fewer than a batch: only the drop pushes them
    let dir = TestDir::new("unflushed");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        listener,
        client,
        opened,
        accepted: mut served,
    } = support::pair(&engine, "unflushed").await;
    let (mut tx, rx) = opened.split();
    for seq in 0..FED {
        let message = seq_message(4, seq, seq_len(seq));
        let mut loan = within("loan", tx.loan(message.len())).await.expect("loan");
        loan.copy_from_slice(&message);
        within("feed", tx.feed(loan)).await.expect("feed");
    }
    drop(tx);
    for seq in 0..FED {
        let m = within("a fed payload", served.next())
            .await
            .expect("open")
            .expect("payload");
        expect_seq(&m, 4, seq).expect("in order");
    }
    assert_eq!(within("the end", served.next()).await, None);
    drop((rx, served, listener, server, client));
    support::all_gone(engine).await;
}
