//! A connection flood of one uid, and half-open handshakes.

use std::time::Duration;

use ipc_core::control::NodeFrame;
use shmlink::{ConnectError, Limit, Node};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::common::{
    Bystander, assert_limit, assert_near_baseline, fd_count, first_frame, fresh_node_exchanges,
    rss_kib,
};
use crate::support::{self, TestDir, within};

const MAX_CONNECTIONS: usize = 24;
/// Refused attempts per flood: each must get the typed refusal.
const REFUSED: usize = 200;

/// One uid opens connections until its limit: the surplus is refused at once with
/// `Limit::ConnectionsPerUid` (a raw connection reads the frame, `Node::connect` returns
/// `ConnectError::LimitReached`), the bystanders exchange throughout, and once the flood
/// leaves a fresh node connects and the engine's descriptors are back where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_of_one_uid_is_refused_by_its_limit() {
    if !support::isolate("connections::a_connection_flood_of_one_uid_is_refused_by_its_limit") {
        return;
    }
    let dir = TestDir::new("flood-connections");
    let engine = support::engine_builder(&dir)
        .max_connections_per_uid(MAX_CONNECTIONS)
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;
    let (fds, rss) = (fd_count(), rss_kib());

    // The bystanders hold two connections; silent ones take the rest.
    let mut silent = Vec::new();
    for _ in 2..MAX_CONNECTIONS {
        silent.push(
            within("connect", UnixStream::connect(dir.socket()))
                .await
                .expect("connect"),
        );
    }
    within(
        "the silent connections are counted",
        engine.wait_for_stats(|s| s.connections == MAX_CONNECTIONS),
    )
    .await;
    for i in 0..REFUSED {
        let mut stream = within("connect", UnixStream::connect(dir.socket()))
            .await
            .expect("connect");
        let frame = first_frame(&mut stream).await;
        assert_limit(&frame, Limit::ConnectionsPerUid, MAX_CONNECTIONS as u64);
        if i % 20 == 0 {
            bystander.exchange(2).await;
        }
    }
    match within("connect", Node::connect(dir.socket(), "late")).await {
        Err(ConnectError::LimitReached { limit, max }) => {
            assert_eq!(limit, Limit::ConnectionsPerUid);
            assert_eq!(max, MAX_CONNECTIONS as u64);
        }
        other => panic!("a node over the limit is refused with the limit, got {other:?}"),
    }
    let stats = engine.stats();
    assert!(
        stats.refused_connections > REFUSED as u64,
        "refusals counted: {stats:?}"
    );
    bystander.exchange(10).await;

    drop(silent);
    within(
        "the flood's connections are closed",
        engine.wait_for_stats(|s| s.connections == 2),
    )
    .await;
    assert_near_baseline("after the connection flood", fds, rss);
    bystander.exchange(10).await;
    fresh_node_exchanges(&engine, "fresh-after-connections").await;
    drop(bystander);
    support::all_gone(engine).await;
}

const MAX_HANDSHAKES: usize = 8;

/// Connections that say hello and never ready (or say nothing) hold a handshake slot each,
/// at most `MAX_HANDSHAKES` of one uid: the next is refused with `Limit::HandshakesPerUid`,
/// the handshake timeout frees the slots (and the blocks made for them), and then a fresh
/// node connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_bounded_per_uid_and_time_out() {
    if !support::isolate("connections::half_open_handshakes_are_bounded_per_uid_and_time_out") {
        return;
    }
    let dir = TestDir::new("flood-handshakes");
    let engine = support::engine_builder(&dir)
        .max_handshakes_per_uid(MAX_HANDSHAKES)
        .handshake_timeout(Duration::from_secs(2))
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;
    let (fds, rss) = (fd_count(), rss_kib());

    let mut half_open = Vec::new();
    for i in 0..MAX_HANDSHAKES {
        let mut stream = within("connect", UnixStream::connect(dir.socket()))
            .await
            .expect("connect");
        if i % 2 == 0 {
            let hello = NodeFrame::Hello {
                name: format!("half-open-{i}"),
            };
            stream.write_all(&hello.encode()).await.expect("hello");
        }
        half_open.push(stream);
    }
    within(
        "the half-open connections are counted",
        engine.wait_for_stats(|s| s.handshakes == MAX_HANDSHAKES),
    )
    .await;
    for i in 0..REFUSED {
        let mut stream = within("connect", UnixStream::connect(dir.socket()))
            .await
            .expect("connect");
        assert_limit(
            &first_frame(&mut stream).await,
            Limit::HandshakesPerUid,
            MAX_HANDSHAKES as u64,
        );
        if i % 20 == 0 {
            bystander.exchange(2).await;
        }
    }
    match within("connect", Node::connect(dir.socket(), "late")).await {
        Err(ConnectError::LimitReached { limit, max }) => {
            assert_eq!(limit, Limit::HandshakesPerUid);
            assert_eq!(max, MAX_HANDSHAKES as u64);
        }
        other => panic!("a node over the limit is refused with the limit, got {other:?}"),
    }
    // The handshake timeout ends them, whether they said hello or nothing.
    within(
        "the handshake timeout frees the slots",
        engine.wait_for_stats(|s| s.handshakes == 0 && s.connections == 2),
    )
    .await;
    assert_eq!(
        engine.stats().nodes,
        2,
        "no half-open connection registered"
    );
    bystander.exchange(10).await;
    drop(half_open);
    assert_near_baseline("after the half-open flood", fds, rss);
    fresh_node_exchanges(&engine, "fresh-after-handshakes").await;
    drop(bystander);
    support::all_gone(engine).await;
}
