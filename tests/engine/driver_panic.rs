//! A node's driver dying is structural: when it panics (here through the test-only fault
//! hook), every task waiting on that node gets `Disconnected`: a receive, sends waiting for
//! the session's window (messages and bytes), and a control request in flight.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, OpenError, SessionError};

use crate::support::{self, TestDir, within};

const WINDOW: u64 = 256 << 10;
const BIG: usize = 128 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_driver_disconnects_every_waiter() {
    let dir = TestDir::new("driver-panic");
    let engine = support::engine_builder(&dir)
        .credits(4)
        .window_bytes(WINDOW)
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let peer = within("connect", Node::connect(&socket, "peer"))
        .await
        .expect("connect peer");
    let mut listener = within("listen", support::listen(&peer, "svc"))
        .await
        .expect("listen");
    let victim = within("connect", Node::connect(&socket, "victim"))
        .await
        .expect("connect victim");

    // Session 1: small payloads up to the 4 credits; the fifth waits for a message credit.
    // Its receiving half waits for a payload the peer never sends.
    let by_count = within("open", support::open(&victim, "svc"))
        .await
        .expect("open 1");
    let mut peer_count = within("accept", listener.accept()).await.expect("accept 1");
    // Session 2: 128 KiB payloads, two fill the 256 KiB window; the third waits for bytes.
    let mut by_bytes = within("open", support::open(&victim, "svc"))
        .await
        .expect("open 2");
    let mut peer_bytes = within("accept", listener.accept()).await.expect("accept 2");

    let (mut count_tx, mut count_rx) = by_count.split();
    for i in 0..4u8 {
        within(
            "a send within the credits",
            count_tx.send(Bytes::from(vec![i])),
        )
        .await
        .expect("send");
    }
    for i in 0..2u8 {
        within(
            "a send within the window",
            by_bytes.send(Bytes::from(vec![i; BIG])),
        )
        .await
        .expect("send");
    }

    // Each waiter is polled once here, so it is known to be waiting before the panic.
    let mut waiting_for_credit = Box::pin(async move {
        let result = count_tx.send(Bytes::from_static(b"5th")).await;
        (result, count_tx)
    });
    assert!(futures::poll!(&mut waiting_for_credit).is_pending());
    let mut waiting_for_bytes = Box::pin(async move {
        let result = by_bytes.send(Bytes::from(vec![9u8; BIG])).await;
        (result, by_bytes)
    });
    assert!(futures::poll!(&mut waiting_for_bytes).is_pending());
    let mut receiving = Box::pin(async move {
        let result = count_rx.next().await;
        (result.map(|r| r.map(|b| b.len())), count_rx)
    });
    assert!(futures::poll!(&mut receiving).is_pending());
    let waiting_for_credit = tokio::spawn(waiting_for_credit);
    let waiting_for_bytes = tokio::spawn(waiting_for_bytes);
    let receiving = tokio::spawn(receiving);

    // The driver panics on the engine's answer to this open: the open is waiting for it.
    victim.__panic_driver_on_next_frame();
    let open = within(
        "an open whose answer kills the driver",
        support::open(&victim, "svc"),
    )
    .await;
    assert!(
        matches!(open, Err(OpenError::Disconnected)),
        "the open in flight fails: {open:?}"
    );

    let (sent, _tx) = within("the send waiting for a credit", waiting_for_credit)
        .await
        .expect("task");
    assert_eq!(sent, Err(SessionError::Disconnected));
    let (sent, _tx) = within("the send waiting for bytes", waiting_for_bytes)
        .await
        .expect("task");
    assert_eq!(sent, Err(SessionError::Disconnected));
    let (received, mut count_rx) = within("the receive", receiving).await.expect("task");
    assert_eq!(received, Some(Err(SessionError::Disconnected)));
    assert!(within("the stream's end", count_rx.next()).await.is_none());

    // Later requests fail at once; the peer sees the victim's sessions end.
    assert!(matches!(
        within("an open after the death", support::open(&victim, "svc")).await,
        Err(OpenError::Disconnected)
    ));
    assert_eq!(
        within("peer's first session", peer_count.stream().closed()).await,
        SessionError::Disconnected
    );
    assert_eq!(
        within("peer's second session", peer_bytes.stream().closed()).await,
        SessionError::Disconnected
    );
    within(
        "the victim is gone from the engine",
        engine.wait_for_stats(|s| s.nodes == 1),
    )
    .await;
    drop((count_rx, peer_count, peer_bytes, listener, peer, victim));
    support::all_gone(engine).await;
}
