//! Windows in bytes: a session end may have at most `window_bytes` of payload in flight
//! (each payload counted as the arena memory it takes), besides its `credits` messages; one
//! message larger than the window still goes, alone. The sender's node keeps to it, so the
//! engine never sees a violation.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Session, SessionError};

use crate::support::{self, TestDir, within};

const WINDOW: u64 = 256 << 10;
const MESSAGE: usize = 64 << 10;

fn message(tag: u8) -> Bytes {
    Bytes::from(vec![tag; MESSAGE])
}

/// Reads the next payload and checks it is `len` bytes of `tag`.
async fn expect_next(session: &mut Session, tag: u8, len: usize) {
    let m = within("a payload", session.next())
        .await
        .expect("the session ended")
        .expect("a payload");
    assert!(
        m.len() == len && m.iter().all(|&b| b == tag),
        "expected {len} bytes of {tag}, got {} bytes starting {:?}",
        m.len(),
        m.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_session_has_exactly_its_window_of_bytes_in_flight() {
    let dir = TestDir::new("window");
    let engine = support::engine_builder(&dir)
        .window_bytes(WINDOW)
        .spawn()
        .expect("engine");
    let support::Pair {
        server,
        listener,
        client,
        opened: mut sender,
        accepted: mut receiver,
    } = support::pair(&engine, "window").await;

    // Four 64 KiB payloads fill the 256 KiB window (far below the 256 credits)...
    for tag in 0..4u8 {
        within("a send within the window", sender.send(message(tag)))
            .await
            .expect("send");
    }
    within(
        "the engine delivered the four",
        engine.wait_for_stats(|s| s.messages == 4),
    )
    .await;
    // ...so the fifth pends: nothing of the window comes back while the receiver holds them.
    {
        let mut fifth = sender.send(message(4));
        assert!(
            futures::poll!(&mut fifth).is_pending(),
            "the fifth payload must wait for the window"
        );
        // Reading one gives its 64 KiB back: the fifth goes.
        expect_next(&mut receiver, 0, MESSAGE).await;
        within("the fifth after a release", fifth)
            .await
            .expect("send");
    }
    // Four in flight again: the sixth pends until the next release.
    {
        let mut sixth = sender.send(message(5));
        assert!(
            futures::poll!(&mut sixth).is_pending(),
            "the sixth payload must wait for the window"
        );
        expect_next(&mut receiver, 1, MESSAGE).await;
        within("the sixth after a release", sixth)
            .await
            .expect("send");
    }
    for tag in 2..6u8 {
        expect_next(&mut receiver, tag, MESSAGE).await;
    }
    assert_eq!(engine.stats().violations, 0);
    drop((sender, receiver, listener, server, client));
    support::all_gone(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_larger_than_the_window_goes_alone() {
    let dir = TestDir::new("window-big");
    let engine = support::engine_builder(&dir)
        .window_bytes(WINDOW)
        .spawn()
        .expect("engine");
    let support::Pair {
        server,
        listener,
        client,
        opened: mut sender,
        accepted: mut receiver,
    } = support::pair(&engine, "window-big").await;
    let big = 2 * WINDOW as usize;

    // One small payload in flight: a payload twice the window waits for it...
    within("a small send", sender.send(message(1)))
        .await
        .expect("send");
    {
        let mut alone = sender.send(Bytes::from(vec![2u8; big]));
        assert!(
            futures::poll!(&mut alone).is_pending(),
            "a payload beyond the window waits until nothing else is in flight"
        );
        expect_next(&mut receiver, 1, MESSAGE).await;
        within("the big payload, alone", alone).await.expect("send");
    }
    // ...and while it is in flight, nothing else goes.
    {
        let mut after = sender.send(message(3));
        assert!(
            futures::poll!(&mut after).is_pending(),
            "nothing joins a payload that overflows the window"
        );
        expect_next(&mut receiver, 2, big).await;
        within("a small send after the big one", after)
            .await
            .expect("send");
    }
    expect_next(&mut receiver, 3, MESSAGE).await;

    // A payload no arena can ever hold still fails at once, window or not.
    let too_large = sender.max_payload() as usize + 1;
    assert!(matches!(
        within("too large", sender.send(Bytes::from(vec![0u8; too_large]))).await,
        Err(SessionError::TooLarge { .. })
    ));
    // And the session goes on.
    within("a send after the error", sender.send(message(4)))
        .await
        .expect("send");
    expect_next(&mut receiver, 4, MESSAGE).await;

    assert_eq!(engine.stats().violations, 0);
    drop((sender, receiver, listener, server, client));
    support::all_gone(engine).await;
}

/// A sink waiting for its window is woken by the credit that brings enough bytes back, even
/// when the bytes come back one release at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_waiting_for_bytes_is_woken_by_releases() {
    const ROUNDS: u8 = 50;
    let dir = TestDir::new("window-wake");
    let engine = support::engine_builder(&dir)
        .window_bytes(WINDOW)
        .spawn()
        .expect("engine");
    let support::Pair {
        server,
        listener,
        client,
        opened,
        accepted: mut receiver,
    } = support::pair(&engine, "window-wake").await;
    let (mut tx, rx) = opened.split();
    // The writer keeps the window full; the reader reads each payload, so every send past the
    // fourth waits for a release.
    let writer = tokio::spawn(async move {
        for tag in 0..ROUNDS {
            tx.send(message(tag)).await.expect("send");
        }
        tx
    });
    for tag in 0..ROUNDS {
        expect_next(&mut receiver, tag, MESSAGE).await;
    }
    let tx = within("the writer", writer).await.expect("writer");
    assert_eq!(engine.stats().violations, 0);
    drop((tx, rx, receiver, listener, server, client));
    support::all_gone(engine).await;
}
