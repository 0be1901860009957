//! Test 2: ten nodes in ten processes, each serving a name and opening sessions to three
//! others at once; every message carries a sequence number checked on both sides.

use crate::support::{self, TestDir, ok_field, spawn_child, within};

const NODES: usize = 10;
const SESSIONS: usize = 3;
const MESSAGES: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_many_sessions_no_loss_no_duplicate_in_order() {
    let dir = TestDir::new("mesh");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();

    let mut children: Vec<_> = (0..NODES)
        .map(|i| {
            spawn_child(
                "mesh",
                &[
                    socket.clone(),
                    i.to_string(),
                    NODES.to_string(),
                    SESSIONS.to_string(),
                    MESSAGES.to_string(),
                ],
            )
        })
        .collect();
    for child in &mut children {
        child.expect("LISTENING").await;
    }
    let stats = within(
        "every node serves",
        engine.wait_for_stats(|s| s.services == NODES),
    )
    .await;
    assert_eq!(stats.nodes, NODES);
    // Everyone starts at once: sessions open and traffic flows concurrently.
    for child in &mut children {
        child.send("GO").await;
    }
    // Every node reports before any leaves (a node's last echoes may still be on their way
    // to the others when it reports).
    for (i, child) in children.iter_mut().enumerate() {
        let ok = child.ok().await;
        let want = SESSIONS as u64 * MESSAGES;
        assert_eq!(ok_field(&ok, "served"), want, "node {i}: {ok}");
        assert_eq!(ok_field(&ok, "echoed"), want, "node {i}: {ok}");
    }
    for child in children {
        child.exit().await;
    }
    let stats = within(
        "all nodes gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0 && s.services == 0),
    )
    .await;
    assert_eq!(
        stats.messages,
        2 * (NODES * SESSIONS) as u64 * MESSAGES,
        "each message crosses once each way: {stats:?}"
    );
    assert_eq!(stats.violations, 0, "{stats:?}");
    engine.shutdown().await;
}
