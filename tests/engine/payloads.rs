//! Test 1: payloads of every size class cross two real processes intact and in order, and an
//! oversized payload is a clear error at once that leaves the session usable.

use crate::children::payload_sizes;
use crate::support::{self, TestDir, ok_field, spawn_child, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_sizes_across_every_size_class() {
    let dir = TestDir::new("sizes");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();

    let mut echo = spawn_child("sizes-echo", std::slice::from_ref(&socket));
    echo.expect("LISTENING").await;
    within("echo serves", engine.wait_for_stats(|s| s.services == 1)).await;
    let sender = spawn_child("sizes-sender", &[socket]);

    let sent = sender.finish_ok().await;
    let received = echo.finish_ok().await;

    // The block is 4 MiB each way, so the arenas' largest payload is 4 MiB, and the list
    // runs from 0 B through every power of two and its neighbours up to it, then past it
    // (hand-off segments).
    let max = 4u64 << 20;
    let sizes = payload_sizes(max);
    assert_eq!(sizes[..3], [0, 1, 2]);
    assert!(sizes.contains(&255) && sizes.contains(&256) && sizes.contains(&257));
    assert!(sizes.contains(&(max as usize)) && sizes.contains(&(max as usize + 1)));
    assert_eq!(*sizes.iter().max().unwrap() as u64, 2 * max + 3);
    assert_eq!(ok_field(&sent, "max"), max, "sender: {sent}");
    assert_eq!(ok_field(&received, "max"), max, "echo: {received}");
    assert_eq!(ok_field(&sent, "largest"), 2 * max + 3, "sender: {sent}");
    assert_eq!(
        ok_field(&sent, "sent"),
        sizes.len() as u64,
        "sender: {sent}"
    );
    assert_eq!(
        ok_field(&received, "received"),
        sizes.len() as u64,
        "echo: {received}"
    );

    let stats = within(
        "both nodes gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0 && s.services == 0),
    )
    .await;
    // Every payload crossed the engine twice; the refused ones never did.
    assert_eq!(stats.messages, 2 * sizes.len() as u64, "{stats:?}");
    assert_eq!(stats.violations, 0, "{stats:?}");
    engine.shutdown().await;
}
