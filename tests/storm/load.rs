//! The load test: 64 nodes in 8 child processes (8 nodes each), every node serving one name
//! and opening 4 sessions to nodes of other processes, so 256 sessions carry a fixed number
//! of messages each way, of mixed sizes from 64 B to 256 KiB (mostly small), written both as
//! `Bytes` and in place through loans. Every message and every echo is checked (stream,
//! sequence number, length, every byte); the engine copied exactly the expected number of
//! messages, counted no violation, and forgets every node at the end.
//!
//! A fixed message count rather than a clock keeps the run deterministic.

use std::time::Instant;

use shmlink::BlockConfig;

use crate::children::load_len;
use crate::support::{self, TestDir, ok_field, spawn_child, within};

const PROCESSES: usize = 8;
const NODES_PER_PROCESS: usize = 8;
const NODES: usize = PROCESSES * NODES_PER_PROCESS;
/// Sessions each node opens (and, the targets being a permutation, serves).
const SESSIONS: usize = 4;
/// Messages each opened session sends (and gets back).
const MESSAGES: u64 = 800;
/// Node `g` opens sessions to `g + STRIDE·k`: with 8 nodes per process, a stride of 9 puts
/// every target in another process.
const STRIDE: usize = NODES_PER_PROCESS + 1;
/// Credits per session end.
const CREDITS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_nodes_four_sessions_mixed_sizes_every_message_checked() {
    let started = Instant::now();
    let dir = TestDir::new("load");
    // Each node has 8 session ends; each peer may have CREDITS messages of up to 256 KiB
    // unreleased in it: 8 × 8 × 256 KiB = 16 MiB of receive arena never runs short for
    // credits' sake. A smaller transmit arena makes senders wait for room now and then.
    let engine = support::engine_builder(&dir)
        .block(BlockConfig {
            tx_arena: 8 << 20,
            rx_arena: 16 << 20,
            min_block: 256,
            ..BlockConfig::default()
        })
        .credits(CREDITS)
        .spawn()
        .expect("engine");
    let socket = dir.socket().display().to_string();

    let mut children = Vec::new();
    for p in 0..PROCESSES {
        let args = [
            socket.clone(),
            (p * NODES_PER_PROCESS).to_string(),
            NODES_PER_PROCESS.to_string(),
            NODES.to_string(),
            SESSIONS.to_string(),
            MESSAGES.to_string(),
            STRIDE.to_string(),
        ];
        children.push(spawn_child("load", &args));
    }
    for child in &mut children {
        child.expect("LISTENING").await;
    }
    within(
        "every node registered and serving",
        engine.wait_for_stats(|s| s.nodes == NODES && s.services == NODES),
    )
    .await;
    let traffic = Instant::now();
    for child in &mut children {
        child.send("GO").await;
    }
    let (mut served, mut echoed) = (0, 0);
    for child in &mut children {
        let ok = child.ok().await;
        served += ok_field(&ok, "served");
        echoed += ok_field(&ok, "echoed");
    }
    let traffic = traffic.elapsed();
    let sessions = (NODES * SESSIONS) as u64;
    assert_eq!(served, sessions * MESSAGES, "messages served");
    assert_eq!(echoed, sessions * MESSAGES, "echoes checked");
    // The engine publishes its counts at the end of a pass, which may end after a child saw
    // its last echo: wait for them, then check nothing was copied twice.
    let expected = 2 * sessions * MESSAGES;
    let stats = within(
        "the engine's count of copies",
        engine.wait_for_stats(|s| s.messages >= expected),
    )
    .await;
    assert_eq!(
        stats.messages, expected,
        "the engine copied each message and each echo once: {stats:?}"
    );
    assert_eq!(stats.violations, 0, "{stats:?}");
    for child in children {
        child.exit().await;
    }
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0 && s.services == 0),
    )
    .await;
    engine.shutdown().await;

    let bytes: u64 = (0..NODES)
        .flat_map(|g| (1..=SESSIONS).map(move |k| crate::children::load_stream(g, k)))
        .flat_map(|stream| (0..MESSAGES).map(move |seq| load_len(stream, seq) as u64))
        .sum();
    println!(
        "load: {NODES} nodes in {PROCESSES} processes, {sessions} sessions × {MESSAGES} \
         messages each way ({} MiB each way, 64 B to 256 KiB), all checked; traffic {traffic:.1?}, \
         total {:.1?}",
        bytes >> 20,
        started.elapsed()
    );
}
