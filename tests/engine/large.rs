//! Payloads of any size (issue 15): a payload too large for the arenas travels in a hand-off
//! segment of its own, lent by the engine, sealed against writing once sent and handed to
//! the receiver as it is. Every byte is checked, and the engine's memory and descriptors go
//! back to where they were.

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{Message, SessionError};

use crate::support::{self, TestDir, check_pattern, pattern, within};

const MIB: usize = 1 << 20;

/// Open descriptors of this process that are hand-off segments.
fn segment_fds() -> usize {
    support::open_fds()
        .iter()
        .filter(|(_, target)| target.starts_with("/memfd:shmlink-seg-"))
        .count()
}

/// Mappings of hand-off segments in this process.
fn segment_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.contains("memfd:shmlink-seg-"))
        .count()
}

/// 0 B, 33 MiB (past the 4 MiB arenas of the test blocks), 256 MiB and 1 GiB, there and
/// back: each checked byte for byte on both sides; afterwards no segment is left open or
/// mapped and the engine's memory is back to the two blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_payloads_of_any_size_round_trip() {
    let dir = TestDir::new("large-raw");
    let engine = support::engine(&dir);
    let pair = support::pair(&engine, "large").await;
    let baseline = engine.stats().memory_used;
    let (mut opened, mut accepted) = (pair.opened, pair.accepted);
    for (i, len) in [0, 33 * MIB, 256 * MIB, 1024 * MIB].into_iter().enumerate() {
        // Made and checked once (a clone of `Bytes` shares it); compared with `==` below.
        let want = Bytes::from(pattern(15, i as u64, len));
        within("send", opened.send(want.clone()))
            .await
            .unwrap_or_else(|e| panic!("send {len} bytes: {e}"));
        let got = within("receive", accepted.next())
            .await
            .expect("the stream goes on")
            .expect("a payload");
        assert!(got == want, "the payload of {len} bytes arrives intact");
        // Back: the received payload itself (in place, in its sealed segment) is sent on.
        within("echo", accepted.send(got)).await.expect("echo");
        let back = within("receive the echo", opened.next())
            .await
            .expect("the stream goes on")
            .expect("the echo");
        assert!(back == want, "the echo of {len} bytes arrives intact");
    }
    within(
        "every segment's bytes return to the budget",
        engine.wait_for_stats(|s| s.memory_used == baseline),
    )
    .await;
    assert_eq!(segment_mappings(), 0, "no segment stays mapped");
    assert_eq!(segment_fds(), 0, "no segment stays open");
    drop((opened, accepted, pair.listener, pair.client, pair.server));
    support::all_gone(engine).await;
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Blob {
    id: u64,
    #[serde(with = "shmlink::message::shared_bytes")]
    data: Bytes,
}

/// A typed message with a `Bytes` field of 0 B, 33 MiB, 256 MiB (bincode's former limit) and
/// 1 GiB, there and back, every byte checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_of_any_size_round_trip() {
    let dir = TestDir::new("large-typed");
    let engine = support::engine(&dir);
    let server = within("connect", shmlink::Node::connect(dir.socket(), "srv"))
        .await
        .expect("connect");
    let client = within("connect", shmlink::Node::connect(dir.socket(), "cli"))
        .await
        .expect("connect");
    let mut listener = within("listen", server.listen::<Blob>("blobs"))
        .await
        .expect("listen");
    let mut opened = within("open", client.open::<Blob>("blobs"))
        .await
        .expect("open");
    let mut accepted = within("accept", listener.accept()).await.expect("accept");
    for (i, len) in [0, 33 * MIB, 256 * MIB, 1024 * MIB].into_iter().enumerate() {
        let blob = Blob {
            id: i as u64,
            data: Bytes::from(pattern(16, i as u64, len)),
        };
        within("send", opened.send(blob.clone()))
            .await
            .unwrap_or_else(|e| panic!("send a blob of {len} bytes: {e}"));
        let got: Blob = within("receive", accepted.next())
            .await
            .expect("the stream goes on")
            .expect("a blob");
        assert!(got == blob, "the blob of {len} bytes arrives intact");
        within("echo", accepted.send(got)).await.expect("echo");
        let back: Blob = within("receive the echo", opened.next())
            .await
            .expect("the stream goes on")
            .expect("the echo");
        assert!(back == blob, "the echo of {len} bytes arrives intact");
    }
    assert_eq!(segment_fds(), 0, "no segment stays open");
    drop((opened, accepted, listener, client, server));
    support::all_gone(engine).await;
}

/// A payload past the node's memory budget is refused with `Budget` naming it, and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_past_the_node_budget_is_refused_and_the_session_goes_on() {
    let dir = TestDir::new("large-budget");
    let block = ipc_core::Layout::compute(&support::small_block())
        .expect("layout")
        .total_size;
    let node_budget = block + 64 * MIB as u64;
    let engine = support::engine_builder(&dir)
        .node_memory_budget(node_budget)
        .spawn()
        .expect("engine");
    let pair = support::pair(&engine, "budget").await;
    let (mut opened, mut accepted) = (pair.opened, pair.accepted);
    let too_large = Bytes::from(vec![1u8; 65 * MIB]);
    match within("send past the budget", opened.send(too_large)).await {
        Err(SessionError::Budget { limit, max }) => {
            assert_eq!(limit, shmlink::Limit::NodeMemoryBudget);
            assert_eq!(max, node_budget);
        }
        other => panic!("a payload past the node's budget: {other:?}"),
    }
    let fits = Bytes::from(pattern(17, 0, 63 * MIB));
    within("send within the budget", opened.send(fits))
        .await
        .expect("the session goes on");
    let got = within("receive", accepted.next())
        .await
        .expect("the stream goes on")
        .expect("a payload");
    check_pattern(17, 0, 63 * MIB, &got).expect("intact");
    drop(got);
    drop((opened, accepted, pair.listener, pair.client, pair.server));
    support::all_gone(engine).await;
}

/// A burst of large payloads takes a segment each, and the segments go as the receiver
/// drops its payloads: none is left once the node is idle again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_come_with_a_burst_and_go_when_it_is_read() {
    const BURST: usize = 8;
    const LEN: usize = 5 * MIB;
    let dir = TestDir::new("large-burst");
    // A window that holds the whole burst, so that all of it is in flight at once.
    let engine = support::engine_builder(&dir)
        .window_bytes((BURST * 8 * MIB) as u64)
        .spawn()
        .expect("engine");
    let pair = support::pair(&engine, "burst").await;
    let baseline = engine.stats().memory_used;
    let (mut opened, mut accepted) = (pair.opened, pair.accepted);
    for i in 0..BURST {
        within("feed", opened.feed(Bytes::from(pattern(18, i as u64, LEN))))
            .await
            .expect("feed");
    }
    within("flush", opened.flush()).await.expect("flush");
    let stats = within(
        "a segment for each payload of the burst",
        engine.wait_for_stats(|s| s.segments == BURST as u64),
    )
    .await;
    assert!(
        stats.memory_used >= baseline + (BURST * LEN) as u64,
        "{stats:?}"
    );
    let mut got = Vec::new();
    for i in 0..BURST {
        let payload = within("receive", accepted.next())
            .await
            .expect("the stream goes on")
            .expect("a payload");
        check_pattern(18, i as u64, LEN, &payload).expect("intact");
        got.push(payload);
    }
    // Held by the receiver until it lets go.
    assert_eq!(engine.stats().segments, BURST as u64);
    drop(got);
    within(
        "the segments go once the payloads are dropped",
        engine.wait_for_stats(|s| s.segments == 0 && s.memory_used == baseline),
    )
    .await;
    assert_eq!(segment_fds(), 0, "no segment stays open");
    assert_eq!(segment_mappings(), 0, "no segment stays mapped");
    drop((opened, accepted, pair.listener, pair.client, pair.server));
    support::all_gone(engine).await;
}

/// A large loan given up (its future dropped before the segment came, then its sink dropped)
/// gives its segment back, and one truncated to nothing goes as an empty payload: no segment
/// or byte of budget is left behind either way, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_loan_given_up_or_emptied_leaves_no_segment() {
    let dir = TestDir::new("large-given-up");
    let engine = support::engine(&dir);
    let pair = support::pair(&engine, "given-up").await;
    let baseline = engine.stats().memory_used;
    let (mut opened, mut accepted) = (pair.opened, pair.accepted);
    let big = 5 * MIB;

    // Emptied: an empty payload arrives, the segment goes back.
    let mut loan = within("loan", opened.loan(big)).await.expect("a segment");
    loan.truncate(0);
    within("send", opened.send(loan)).await.expect("send");
    let got = within("receive", accepted.next())
        .await
        .expect("the stream goes on")
        .expect("a payload");
    assert!(got.is_empty());

    // Given up: the loan's future is polled once (it asks the engine) and dropped, then the
    // whole session.
    let asked = opened.loan(big).now_or_never();
    assert!(asked.is_none(), "a segment cannot have come without a wait");
    // The engine lent it; its answer is on its way to the sink, or there already.
    within(
        "the segment lent",
        engine.wait_for_stats(|s| s.segments == 1),
    )
    .await;
    let settle = async {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    };
    settle.await;
    drop((opened, accepted));
    within(
        "every segment given back",
        engine.wait_for_stats(|s| s.segments == 0 && s.memory_used == baseline),
    )
    .await;
    drop((pair.listener, pair.client, pair.server));
    support::all_gone(engine).await;
}
