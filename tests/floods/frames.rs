//! Many connections each sending a 64 KiB control frame in part.

use shmlink::Limit;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::common::{
    Bystander, assert_limit, assert_near_baseline, fd_count, first_frame, fresh_node_exchanges,
    rss_kib,
};
use crate::support::{self, TestDir, within};

const CONNECTIONS: usize = 200;
/// What each connection announces: the largest frame the protocol allows.
const ANNOUNCED: usize = 64 * 1024;

/// Each connection announces a 64 KiB hello and sends all of it but its last byte. The
/// engine buffers at most `max_partial_frame_bytes` (4 KiB by default) per connection, so
/// it never holds 200 × 64 KiB: each is refused with `Limit::PartialFrameBytes` as soon as
/// its buffer is full, and closed. Without the bound the engine waits for the rest of each
/// frame until the handshake timeout and then closes without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_are_bounded_per_connection() {
    if !support::isolate("frames::partial_frames_are_bounded_per_connection") {
        return;
    }
    let dir = TestDir::new("flood-frames");
    let engine = support::engine_builder(&dir)
        .max_handshakes_per_uid(CONNECTIONS + 8)
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;
    let (fds, rss) = (fd_count(), rss_kib());

    let mut frame = (ANNOUNCED as u32).to_le_bytes().to_vec();
    frame.push(ipc_core::control::PROTOCOL_VERSION);
    frame.push(1); // hello
    frame.resize(4 + ANNOUNCED - 1, b'x');
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = within("connect", UnixStream::connect(dir.socket()))
            .await
            .expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        let bytes = frame.clone();
        // The engine stops reading (and closes) before the end: the write may fail.
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes).await;
            wr
        });
        streams.push((writer, async move { first_frame(&mut rd).await }));
    }
    let mut refused = 0;
    for (i, (writer, answer)) in streams.into_iter().enumerate() {
        assert_limit(&answer.await, Limit::PartialFrameBytes, 4096);
        refused += 1;
        drop(within("writer", writer).await.expect("writer task"));
        if i % 20 == 0 {
            bystander.exchange(2).await;
        }
    }
    assert_eq!(refused, CONNECTIONS);
    within(
        "the refused connections are closed",
        engine.wait_for_stats(|s| s.connections == 2 && s.handshakes == 0),
    )
    .await;
    assert_near_baseline("after the partial frames", fds, rss);
    bystander.exchange(10).await;
    fresh_node_exchanges(&engine, "fresh-after-frames").await;
    drop(bystander);
    support::all_gone(engine).await;
}
