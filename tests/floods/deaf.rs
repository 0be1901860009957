//! A server that never reads its control socket while a peer opens sessions to it.

use shmlink::{Node, OpenError};

use crate::common::{Bystander, assert_near_baseline, fd_count, fresh_node_exchanges, rss_kib};
use crate::support::{self, TestDir, spawn_child, within};

const MAX_QUEUED_FRAMES: usize = 64;
/// Opens tried at most: far more than the socket's buffer and the queue hold together.
const MAX_OPENS: usize = 20_000;

/// A server process stops (SIGSTOP: it reads nothing any more) and a client opens session
/// after session to it. Each open queues an `Accept` frame for the server; once its socket
/// buffer is full, the engine queues at most `MAX_QUEUED_FRAMES` more and then closes the
/// server (it does not read its control socket): its name is freed, later opens fail with
/// `NotServed`, and the engine's memory and descriptors return to baseline. Before the
/// bound, every open succeeded and each cost the engine ~318 B without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_reads_its_control_socket_is_closed() {
    if !support::isolate("deaf::a_server_that_never_reads_its_control_socket_is_closed") {
        return;
    }
    let dir = TestDir::new("flood-deaf");
    let engine = support::engine_builder(&dir)
        .max_queued_frames(MAX_QUEUED_FRAMES)
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;
    let (fds, rss) = (fd_count(), rss_kib());

    let mut deaf = spawn_child("deaf", &[dir.socket().display().to_string()]);
    deaf.expect("LISTENING").await;
    deaf.stop().await;
    let opener = within("connect", Node::connect(dir.socket(), "opener"))
        .await
        .expect("connect opener");
    let mut sessions = Vec::new();
    let refused = loop {
        match within("open", support::open(&opener, "deaf")).await {
            Ok(session) => sessions.push(session),
            Err(e) => break e,
        }
        assert!(
            sessions.len() < MAX_OPENS,
            "{MAX_OPENS} sessions opened to a server that reads nothing: the engine queues without bound"
        );
        if sessions.len() % 100 == 0 {
            bystander.exchange(1).await;
        }
    };
    println!("the deaf server was closed after {} opens", sessions.len());
    assert_eq!(
        refused,
        OpenError::NotServed {
            service: "deaf".into()
        },
        "the closed server's name is free"
    );
    within(
        "the deaf node is gone",
        engine.wait_for_stats(|s| s.nodes == 3 && s.connections == 3),
    )
    .await;
    bystander.exchange(10).await;
    drop(sessions);
    drop(opener);
    within(
        "the opener is gone",
        engine.wait_for_stats(|s| s.nodes == 2 && s.session_ends == 2 && s.connections == 2),
    )
    .await;
    deaf.sigkill();
    deaf.reap_killed().await;
    assert_near_baseline("after the deaf server", fds, rss);
    fresh_node_exchanges(&engine, "fresh-after-deaf").await;
    drop(bystander);
    support::all_gone(engine).await;
}
