//! Isolation (issue 9): a session whose receiver never reads stalls that session alone, with
//! the engine's default settings and real processes.
//!
//! The slow-reader matrix: the test process is the sender `S`; a child `R` serves "iso",
//! accepts `K` *stuck* sessions it never reads and echoes every later one; a child `R2`
//! serves "iso2" and echoes; a child `S2` is a second sender. Once every stuck session has
//! used its whole window (seen in the engine's stats: the messages it copied), three other
//! sessions must each complete 1,000 checked round trips: (a) `S` to `R`, (b) `S2` to `R`,
//! (c) `S` to `R2`. The stuck senders stay stalled throughout: their window never returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node, Session};

use crate::support::{TestDir, ok_field, spawn_child, within};

/// Round trips each bystander session completes.
pub(crate) const ROUND_TRIPS: u64 = 1000;

/// The message a round trip or a stuck send carries: its sequence number, then a filler
/// derived from it (memset-cheap, so debug builds stay fast).
pub(crate) fn iso_message(seq: u64, len: usize) -> Bytes {
    let mut m = vec![seq as u8 ^ 0x5A; len.max(8)];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m.truncate(len.max(8));
    Bytes::from(m)
}

/// Sends `count` messages of `len` bytes on `session` one at a time and checks that each
/// echo equals what was sent, byte for byte.
pub(crate) async fn round_trips(
    session: &mut Session,
    len: usize,
    count: u64,
) -> Result<(), String> {
    for seq in 0..count {
        let message = iso_message(seq, len);
        session
            .send(message.clone())
            .await
            .map_err(|e| format!("round trip {seq}: send: {e}"))?;
        let echo = session
            .next()
            .await
            .ok_or_else(|| format!("round trip {seq}: the session ended"))?
            .map_err(|e| format!("round trip {seq}: receive: {e}"))?;
        if echo != message {
            return Err(format!(
                "round trip {seq}: the echo differs ({} bytes, sent {})",
                echo.len(),
                message.len()
            ));
        }
    }
    Ok(())
}

/// How many messages of `len` bytes one session may have in flight: its window in messages
/// and in bytes (each message charged its size class).
fn window_messages(node: &Node, len: usize) -> u64 {
    let window = node.window();
    let charge = shmlink::window_charge(len as u32, window.min_block);
    let by_bytes = window
        .bytes
        .checked_div(charge)
        .map_or(u64::MAX, |n| n.max(1));
    u64::from(window.messages).min(by_bytes)
}

async fn matrix(name: &str, len: usize, stuck_sessions: usize) {
    let dir = TestDir::new(name);
    // The engine's defaults: only the socket is chosen.
    let engine = Engine::builder()
        .socket(dir.socket())
        .spawn()
        .expect("engine");
    let socket = dir.socket().display().to_string();

    let mut r = spawn_child(
        "iso-rx",
        &[socket.clone(), "iso".into(), stuck_sessions.to_string()],
    );
    r.expect("LISTENING").await;
    let mut r2 = spawn_child("iso-rx", &[socket.clone(), "iso2".into(), "0".into()]);
    r2.expect("LISTENING").await;

    let node = within("connect", Node::connect(dir.socket(), "iso-tx"))
        .await
        .expect("connect");
    let window = window_messages(&node, len);

    // The stuck sessions, opened first (R accepts in order), each fed until its window is
    // used up: the send after that waits for a release that never comes.
    let sent = Arc::new(AtomicU64::new(0));
    let mut stuck = Vec::new();
    for i in 0..stuck_sessions {
        let mut session = within("open stuck", node.open::<Bytes>("iso"))
            .await
            .unwrap_or_else(|e| panic!("open stuck session {i}: {e}"));
        let sent = sent.clone();
        stuck.push(tokio::spawn(async move {
            for seq in 0.. {
                if session.send(iso_message(seq, len)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let stalled = window * stuck_sessions as u64;
    within(
        "every stuck session uses its whole window",
        engine.wait_for_stats(|s| s.messages >= stalled),
    )
    .await;

    // (a) the same sender's other session to the same receiver.
    let mut a = within("open a", node.open::<Bytes>("iso"))
        .await
        .expect("open a");
    // (b) another sender's session to that receiver (a child process).
    let mut s2 = spawn_child("iso-tx", &[socket.clone(), "iso".into(), len.to_string()]);
    // (c) the same sender's session to another receiver.
    let mut c = within("open c", node.open::<Bytes>("iso2"))
        .await
        .expect("open c");
    let (ra, rc, ok) = within("the bystander sessions complete their round trips", async {
        tokio::join!(
            round_trips(&mut a, len, ROUND_TRIPS),
            round_trips(&mut c, len, ROUND_TRIPS),
            s2.ok(),
        )
    })
    .await;
    ra.expect("(a) same sender, same receiver");
    rc.expect("(c) same sender, other receiver");
    assert_eq!(ok_field(&ok, "round_trips"), ROUND_TRIPS, "(b) {ok}");

    // Still stalled, and never past their window.
    assert_eq!(
        sent.load(Ordering::SeqCst),
        stalled,
        "each stuck session sent exactly its window of {window} messages"
    );
    assert_eq!(engine.stats().violations, 0);

    for task in &stuck {
        task.abort();
    }
    for task in stuck {
        let _ = task.await;
    }
    drop((a, c));
    s2.exit().await;
    r.send("done").await;
    let ok = r.finish_ok().await;
    assert_eq!(ok_field(&ok, "stuck"), stuck_sessions as u64, "{ok}");
    r2.send("done").await;
    r2.finish_ok().await;
    drop(node);
    within(
        "everything closed",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unread_session_of_1_mib_messages_stalls_alone() {
    matrix("iso-1m", 1 << 20, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unread_session_of_4_kib_messages_stalls_alone() {
    matrix("iso-4k", 4 << 10, 1).await;
}

/// The number of stalled sessions the documentation promises leave the others flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promised_number_of_unread_sessions_stall_alone() {
    matrix("iso-max", 1 << 20, shmlink::STALLED_SESSIONS_AT_DEFAULTS).await;
}

/// A sender that dies while its payloads still wait for room in a receiver that does not
/// read: the engine keeps the payloads in its own memory and releases the dead node's block
/// and descriptors at once (issue 10: no pinned dead blocks); the receiver, once it reads,
/// gets every payload intact and then learns that the peer is gone.
#[test]
fn a_dead_senders_block_is_released_while_its_payloads_wait() {
    crate::support::run_isolated(
        "isolation::a_dead_senders_block_is_released_while_its_payloads_wait",
        dead_sender_body,
    );
}

async fn dead_sender_body() {
    const FILL: usize = 1 << 20; // 4 fill the 4 MiB receive arena
    const ORPHAN: usize = 512 << 10;
    const ORPHANS: u64 = 3;
    let dir = TestDir::new("iso-dead");
    let engine = crate::support::engine(&dir);
    let rx_node = within("connect", Node::connect(dir.socket(), "dead-rx"))
        .await
        .expect("connect");
    let mut listener = within("listen", crate::support::listen(&rx_node, "dead"))
        .await
        .expect("listen");
    let filler = within("connect", Node::connect(dir.socket(), "filler"))
        .await
        .expect("connect");
    let mut fill = within("open", filler.open::<Bytes>("dead"))
        .await
        .expect("open");
    let mut filled = within("accept", listener.accept()).await.expect("accept");
    for seq in 0..4 {
        within("fill", fill.send(iso_message(seq, FILL)))
            .await
            .expect("fill");
    }
    within("filled", engine.wait_for_stats(|s| s.messages == 4)).await;
    let base_fds = crate::support::open_fds();
    let base_maps = crate::support::block_mappings();

    let mut sender = spawn_child(
        "iso-dead-tx",
        &[
            dir.socket().display().to_string(),
            ORPHAN.to_string(),
            ORPHANS.to_string(),
        ],
    );
    let mut orphaned = within("accept", listener.accept()).await.expect("accept");
    sender.expect("SENT").await;
    within(
        "the payloads wait in the engine",
        engine.wait_for_stats(|s| s.waiting == ORPHANS as usize),
    )
    .await;
    sender.sigkill();
    sender.reap_killed().await;
    within(
        "the dead node is gone, its payloads still wait",
        engine.wait_for_stats(|s| s.nodes == 2 && s.waiting == ORPHANS as usize),
    )
    .await;
    let mut fds = crate::support::open_fds();
    // The engine closes the node's descriptors as it buries it; nothing else may remain.
    assert_eq!(
        fds.len(),
        base_fds.len(),
        "fds now {fds:?}, before {base_fds:?}"
    );
    fds.clear();
    assert_eq!(
        crate::support::block_mappings(),
        base_maps,
        "the dead block is unmapped"
    );

    // The receiver reads: the filler first (freeing its arena), then every orphan intact,
    // then the end of a peer that died.
    for seq in 0..4 {
        let m = within("filler", filled.next()).await.unwrap().unwrap();
        assert_eq!(m, iso_message(seq, FILL));
    }
    for seq in 0..ORPHANS {
        let m = within("orphan", orphaned.next()).await.unwrap().unwrap();
        assert_eq!(m, iso_message(seq, ORPHAN), "orphan {seq}");
    }
    assert_eq!(
        within("the end", orphaned.next()).await,
        Some(Err(shmlink::SessionError::Disconnected))
    );
    within("nothing waits", engine.wait_for_stats(|s| s.waiting == 0)).await;
    drop((orphaned, filled, fill, listener, filler, rx_node));
    crate::support::all_gone(engine).await;
}

/// Cost follows work (invariant 8): idle nodes leave the router's active list, and an
/// exchanging pair brings only itself back onto it, however many nodes are connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_leave_the_routers_active_list() {
    const IDLE: usize = 200;
    let dir = TestDir::new("iso-idle");
    let engine = crate::support::engine(&dir);
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let node = within("connect", Node::connect(dir.socket(), &format!("idle-{i}")))
            .await
            .expect("connect");
        idle.push(node);
    }
    let crate::support::Pair {
        server,
        listener,
        client,
        mut opened,
        mut accepted,
    } = crate::support::pair(&engine, "iso-busy").await;
    within(
        "every node goes idle",
        engine.wait_for_stats(|s| s.nodes == IDLE + 2 && s.active_nodes == 0),
    )
    .await;
    let mut most_active = 0;
    for seq in 0..200u64 {
        let message = iso_message(seq, 64);
        within("send", opened.send(message.clone()))
            .await
            .expect("send");
        let got = within("receive", accepted.next()).await.unwrap().unwrap();
        assert_eq!(got, message);
        most_active = most_active.max(engine.stats().active_nodes);
    }
    assert!(
        most_active <= 2,
        "only the exchanging pair may be active, saw {most_active} of {} nodes",
        IDLE + 2
    );
    drop((opened, accepted, listener, server, client, idle));
    crate::support::all_gone(engine).await;
}
