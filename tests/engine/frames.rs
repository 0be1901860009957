//! Frames (issue 14): a sink packs consecutive small messages of a session into one sub-block;
//! the engine copies, delivers and releases it as one, and the receiving stream yields each
//! record again, as its own `Bytes`.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use crate::support::{
    self, Commands, TestDir, check_pattern, connect, ctx, ok_field, pattern, say, spawn_child,
    within,
};

/// Seed of the frames tests' contents.
const SEED: u64 = 0xF7A3_E500;
/// A large message every this many: it keeps a sub-block of its own, between frames.
const LARGE_EVERY: u64 = 500;
/// A flush every this many: it splits the frame being filled.
const FLUSH_EVERY: u64 = 1000;

/// The length of message `i`: mostly small (0 B every 7th), a large one now and then.
fn frame_len(i: u64) -> usize {
    if i % LARGE_EVERY == LARGE_EVERY - 1 {
        100_000
    } else if i.is_multiple_of(7) {
        0
    } else {
        ((i * 37) % 300) as usize
    }
}

/// Child: feeds `n` messages of [`frame_len`] without flushing but every [`FLUSH_EVERY`]
/// (as `Bytes`, and every odd one written in place), then half-closes.
pub(crate) async fn frames_tx(socket: &str, n: &str, cmds: Commands) -> Result<(), String> {
    let n: u64 = n.parse().map_err(ctx("count"))?;
    let node = connect(socket, "frames-tx").await?;
    let session = support::open(&node, "frames").await.map_err(ctx("open"))?;
    let (mut tx, _rx) = session.split();
    let frame_size = tx.frame_size();
    for i in 0..n {
        let payload = pattern(SEED, i, frame_len(i));
        if i % 2 == 1 {
            tx.feed_in_place(payload.len(), |buf| {
                buf.copy_from_slice(&payload);
                payload.len()
            })
            .await
        } else {
            tx.feed(Bytes::from(payload)).await
        }
        .map_err(ctx(format!("feed {i}")))?;
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            tx.flush().await.map_err(ctx(format!("flush after {i}")))?;
        }
    }
    SinkExt::<Bytes>::close(&mut tx)
        .await
        .map_err(ctx("close"))?;
    cmds.done(format!("sent={n} frame={frame_size}")).await
}

/// Child: receives and checks every message of a [`frames_tx`] in order.
pub(crate) async fn frames_rx(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "frames-rx").await?;
    let mut listener = support::listen(&node, "frames")
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut session = listener.accept().await.ok_or("engine went away")?;
    let mut i = 0u64;
    while let Some(message) = session.next().await {
        let message = message.map_err(ctx(format!("receiving message {i}")))?;
        check_pattern(SEED, i, frame_len(i), &message)?;
        i += 1;
    }
    cmds.done(format!("received={i}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_and_some_large_messages_cross_in_frames() {
    let dir = TestDir::new("frames-many");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let n = 5000u64;

    let mut rx = spawn_child("frames-rx", std::slice::from_ref(&socket));
    rx.expect("LISTENING").await;
    within(
        "the receiver serves",
        engine.wait_for_stats(|s| s.services == 1),
    )
    .await;
    let tx = spawn_child("frames-tx", &[socket, n.to_string()]);

    let sent = tx.finish_ok().await;
    let received = rx.finish_ok().await;
    assert_eq!(ok_field(&sent, "sent"), n, "sender: {sent}");
    assert!(ok_field(&sent, "frame") > 0, "frames are on: {sent}");
    assert_eq!(ok_field(&received, "received"), n, "receiver: {received}");

    let stats = within(
        "both nodes gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    // Every message counts once, whether it travelled in a frame or alone; the small ones
    // went in frames of many.
    assert_eq!(stats.messages, n, "{stats:?}");
    assert!(stats.frames > 0 && stats.frames < n / 10, "{stats:?}");
    assert_eq!(stats.violations, 0, "{stats:?}");
    assert_eq!(stats.rx_in_use, 0, "{stats:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_record_keeps_its_frame_until_it_drops() {
    let dir = TestDir::new("frames-hold");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    // No large message, no flush: frames only (the first one holds message 3).
    let n = LARGE_EVERY - 1;

    let node = within("connect", connect(&socket, "frames-holder"))
        .await
        .expect("connect");
    let mut listener = within("listen", support::listen(&node, "frames"))
        .await
        .expect("listen");
    let tx = spawn_child("frames-tx", &[socket, n.to_string()]);
    let mut session = within("accept", listener.accept())
        .await
        .expect("a session");

    let mut held = None;
    for i in 0..n {
        let message = within("a message", session.next())
            .await
            .expect("not the end yet")
            .expect("a message");
        check_pattern(SEED, i, frame_len(i), &message).expect("intact");
        if i == 3 {
            held = Some(message); // every other record of its frame drops
        }
    }
    assert!(within("the end", session.next()).await.is_none());
    let sent = tx.finish_ok().await;
    assert_eq!(ok_field(&sent, "sent"), n, "sender: {sent}");

    // Every other message was dropped and the sender is gone; the held record's frame is
    // still this node's, untouched by the frames that came after it.
    let held = held.expect("held");
    check_pattern(SEED, 3, frame_len(3), &held).expect("the held record is intact");
    let stats = within(
        "the sender gone",
        engine.wait_for_stats(|s| s.nodes == 1 && s.frames > 0),
    )
    .await;
    assert!(stats.rx_in_use > 0, "{stats:?}");
    // A slice of it, cloned, keeps it too; dropping the last one releases it.
    let slice = held.slice(1..);
    drop(held);
    assert_eq!(slice.len(), frame_len(3) - 1);
    drop(slice);
    let stats = within(
        "the frame released",
        engine.wait_for_stats(|s| s.rx_in_use == 0),
    )
    .await;
    assert_eq!(stats.violations, 0, "{stats:?}");
    drop((session, listener, node));
    within("the receiver gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}

/// Feeds message `i` (64 B of the frames tests' pattern) in place, without a flush.
async fn feed_64(tx: &mut shmlink::Session, i: u64) {
    let payload = pattern(SEED, i, 64);
    within(
        "feed",
        tx.sink().feed_in_place(64, |buf| {
            buf[..64].copy_from_slice(&payload);
            64
        }),
    )
    .await
    .expect("feed");
}

/// Receives message `i` and checks it.
async fn recv_64(rx: &mut shmlink::Session, i: u64) {
    let got = within("a message", rx.next())
        .await
        .expect("open")
        .expect("ok");
    check_pattern(SEED, i, 64, &got).expect("intact");
}

/// A message fed and flushed on its own goes alone: a round trip never pays for a frame of
/// one record. A frame opens for the second message fed before a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flushed_alone_takes_no_frame() {
    let dir = TestDir::new("frames-alone");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let server = within("connect", connect(&socket, "frames-server"))
        .await
        .expect("connect");
    let client = within("connect", connect(&socket, "frames-client"))
        .await
        .expect("connect");
    let mut listener = within("listen", support::listen(&server, "frames"))
        .await
        .expect("listen");
    let (opened, accepted) = tokio::join!(support::open(&client, "frames"), listener.accept());
    let (mut tx, mut rx) = (opened.expect("open"), accepted.expect("a session"));

    // Fed and flushed one at a time: each alone.
    for i in 0..20u64 {
        feed_64(&mut tx, i).await;
        within("flush", tx.flush()).await.expect("flush");
        recv_64(&mut rx, i).await;
    }
    let stats = within("counted", engine.wait_for_stats(|s| s.messages >= 20)).await;
    assert_eq!(stats.frames, 0, "{stats:?}");

    // Ten fed, then one flush: the first alone, the nine others in one frame.
    for i in 20..30u64 {
        feed_64(&mut tx, i).await;
    }
    within("flush", tx.flush()).await.expect("flush");
    for i in 20..30u64 {
        recv_64(&mut rx, i).await;
    }
    let stats = within("counted", engine.wait_for_stats(|s| s.messages >= 30)).await;
    assert_eq!((stats.frames, stats.violations), (1, 0), "{stats:?}");
    drop((tx, rx, listener, client, server));
    within("all gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}
