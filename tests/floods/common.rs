//! What every flood test checks: a bystander pair that keeps exchanging, raw connections,
//! and the engine process's resources.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::{self, EngineFrame, Limit};
use shmlink::{Engine, Node};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::support::{self, Pair, check_pattern, pattern, within};

/// Two nodes of this process and a session between them, exchanging checked payloads.
pub(crate) struct Bystander {
    pair: Pair,
    seq: u64,
}

impl Bystander {
    pub(crate) async fn new(engine: &Engine) -> Self {
        Self {
            pair: support::pair(engine, "bystander").await,
            seq: 0,
        }
    }

    /// `n` round trips: client to server and back, every payload checked.
    pub(crate) async fn exchange(&mut self, n: u64) {
        for _ in 0..n {
            exchange_once(
                &mut self.pair.opened,
                &mut self.pair.accepted,
                self.seq,
                "bystander",
            )
            .await;
            self.seq += 1;
        }
    }
}

/// One checked round trip on an open session pair.
pub(crate) async fn exchange_once(
    a: &mut shmlink::Session,
    b: &mut shmlink::Session,
    seq: u64,
    what: &str,
) {
    let len = 64 + (seq as usize % 512);
    within(what, a.send(Bytes::from(pattern(1, seq, len))))
        .await
        .unwrap_or_else(|e| panic!("{what}: send {seq}: {e}"));
    let got = within(what, b.next())
        .await
        .unwrap_or_else(|| panic!("{what}: stream ended at {seq}"))
        .unwrap_or_else(|e| panic!("{what}: receive {seq}: {e}"));
    check_pattern(1, seq, len, &got).unwrap_or_else(|e| panic!("{what}: {e}"));
    within(what, b.send(got)).await.expect("echo");
    let back = within(what, a.next())
        .await
        .expect("echo stream")
        .expect("echo");
    check_pattern(1, seq, len, &back).unwrap_or_else(|e| panic!("{what} echo: {e}"));
}

/// A fresh node connects, serves, opens to itself through the engine and exchanges.
pub(crate) async fn fresh_node_exchanges(engine: &Engine, name: &str) {
    fresh_node_exchanges_at(engine.socket_path(), name).await;
}

/// [`fresh_node_exchanges`] with the engine's socket path (an engine in another process).
pub(crate) async fn fresh_node_exchanges_at(socket: &std::path::Path, name: &str) {
    let node = within("fresh connect", Node::connect(socket, name))
        .await
        .unwrap_or_else(|e| panic!("a fresh node connects after the flood: {e}"));
    let mut listener = within("fresh listen", support::listen(&node, name))
        .await
        .expect("listen");
    let mut opened = within("fresh open", support::open(&node, name))
        .await
        .expect("open");
    let mut accepted = within("fresh accept", listener.accept())
        .await
        .expect("accept");
    for seq in 0..20 {
        exchange_once(&mut opened, &mut accepted, seq, "fresh node").await;
    }
}

/// Reads what the engine says on a raw connection until it closes it, and returns the
/// first frame (panics if it closed without one).
pub(crate) async fn first_frame(stream: &mut (impl AsyncRead + Unpin)) -> EngineFrame {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some((frame, _)) = control::decode_engine_frame(&buf).expect("valid engine frame") {
            return frame;
        }
        let n = within("the engine's answer", stream.read(&mut chunk))
            .await
            .expect("read the engine's answer");
        assert!(n > 0, "the engine closed without a frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asserts `frame` is the refusal naming `limit` with `max`.
pub(crate) fn assert_limit(frame: &EngineFrame, limit: Limit, max: u64) {
    assert_eq!(
        frame,
        &EngineFrame::Limit {
            req: 0,
            limit: limit as u16,
            max,
        },
        "the refusal names the limit"
    );
}

/// Resident memory of this process, in KiB.
pub(crate) fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Open descriptors of this process.
pub(crate) fn fd_count() -> usize {
    support::open_fds().len()
}

/// Memory an engine may keep after a flood (allocator caches, grown tables): generous, but
/// far below what the floods cost without their limits.
pub(crate) const RSS_SLACK_KIB: u64 = 16 * 1024;

/// Asserts this process's descriptors are back at `fds` and its memory near `rss`.
pub(crate) fn assert_near_baseline(what: &str, fds: usize, rss: u64) {
    let (now_fds, now_rss) = (fd_count(), rss_kib());
    println!("{what}: fds {fds} -> {now_fds}, rss {rss} KiB -> {now_rss} KiB");
    assert_eq!(now_fds, fds, "{what}: descriptors back to baseline");
    assert!(
        now_rss <= rss + RSS_SLACK_KIB,
        "{what}: resident memory {now_rss} KiB, baseline {rss} KiB"
    );
}
