//! Blocks have no name: the socket is private, blocks are memfds that appear in no
//! filesystem (nothing new in `/dev/shm`, no path among the engine's descriptors or
//! mappings), and each block is held by exactly two processes: the engine and its node.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use shmlink::Engine;

use crate::procfs;
use crate::support::{self, TestDir, spawn_child, within};

/// Child nodes of the naming test.
const NODES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_and_the_directory_the_engine_creates_are_private() {
    let dir = TestDir::new("private");
    let me = rustix::process::getuid().as_raw();
    // A directory the engine creates is 0700; the socket and its lock file are 0600.
    let made = dir.path().join("made-by-the-engine");
    let socket = made.join("engine.sock");
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");
    let meta = std::fs::metadata(&made).expect("stat dir");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "created directory"
    );
    assert_eq!(meta.uid(), me);
    let meta = std::fs::metadata(&socket).expect("stat socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket");
    assert_eq!(meta.uid(), me);
    let lock = made.join("engine.sock.lock");
    let meta = std::fs::metadata(&lock).expect("stat lock");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "lock file");
    engine.shutdown().await;

    // In a directory that exists already (the test's, 0755), the socket is still 0600 and
    // the directory is left alone.
    let engine = support::engine(&dir);
    let mode = std::fs::metadata(dir.socket())
        .expect("stat socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600, "socket in an existing directory");
    engine.shutdown().await;
}

#[test]
fn blocks_have_no_name_and_exactly_two_holders() {
    // Counts this process's descriptors: run alone.
    support::run_isolated(
        "names::blocks_have_no_name_and_exactly_two_holders",
        no_name_body,
    );
}

async fn no_name_body() {
    let shm_before = procfs::dev_shm();
    let fds_before: BTreeSet<(i32, String)> = procfs::fds("self")
        .into_iter()
        .map(|f| (f.fd, f.target))
        .collect();
    let dir = TestDir::new("no-name");
    let engine = support::engine(&dir);
    let socket = dir.socket().display().to_string();
    let lock = format!("{socket}.lock");
    let mut children = Vec::new();
    for i in 0..NODES {
        let mut child = spawn_child("idle-node", &[socket.clone(), format!("idle-{i}")]);
        child.expect("CONNECTED").await;
        children.push(child);
    }
    within("registered", engine.wait_for_stats(|s| s.nodes == NODES)).await;

    // The engine's process: a block is a memfd descriptor, one per node, and the only
    // filesystem path it holds open is its lock file.
    let new: Vec<procfs::Fd> = procfs::fds("self")
        .into_iter()
        .filter(|f| !fds_before.contains(&(f.fd, f.target.clone())))
        .collect();
    for f in &new {
        let named = f.target.contains("/dev/shm") || f.target.contains("shmlink-node");
        assert!(
            procfs::is_block(&f.target) || !named,
            "a block reachable by name: {f:?}"
        );
        // (Besides the directory handle listing /proc/self/fd itself.)
        if f.target.starts_with('/')
            && !f.target.starts_with("/memfd:")
            && !f.target.starts_with("/proc/")
        {
            assert_eq!(f.target, lock, "a file the engine opened: {f:?}");
        }
    }
    let engine_blocks: BTreeSet<u64> = new
        .iter()
        .filter(|f| procfs::is_block(&f.target))
        .map(|f| f.ino.expect("stat a block"))
        .collect();
    assert_eq!(
        engine_blocks.len(),
        NODES,
        "one distinct memfd per node in the engine: {new:?}"
    );
    for line in procfs::shared_mappings("self") {
        assert!(
            line.contains("/memfd:shmlink-node-") && !line.contains("/dev/shm"),
            "the engine maps a shared file by name: {line}"
        );
    }

    // Each node's process holds exactly one block, a memfd too, and a different one: every
    // block has exactly two holders, the engine and its node.
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    for child in &children {
        let pid = child.pid().to_string();
        let blocks: Vec<procfs::Fd> = procfs::fds(&pid)
            .into_iter()
            .filter(|f| f.target.contains("shmlink") || f.target.contains("/dev/shm"))
            .collect();
        assert_eq!(blocks.len(), 1, "node {pid} holds one block: {blocks:?}");
        assert!(procfs::is_block(&blocks[0].target), "{blocks:?}");
        holders
            .entry(blocks[0].ino.expect("stat the node's block"))
            .or_default()
            .push(child.pid());
        for line in procfs::shared_mappings(&pid) {
            assert!(
                line.contains("/memfd:shmlink-node-"),
                "node {pid} maps a shared file by name: {line}"
            );
        }
    }
    assert_eq!(
        holders.keys().copied().collect::<BTreeSet<u64>>(),
        engine_blocks,
        "the nodes' blocks are the engine's blocks: {holders:?}"
    );
    assert!(
        holders.values().all(|pids| pids.len() == 1),
        "no block is shared by two nodes: {holders:?}"
    );

    // Nothing appeared in /dev/shm on our account. (Entries other processes of this machine
    // create meanwhile are not ours: no descriptor or mapping above points there.)
    let shm_new: Vec<String> = procfs::dev_shm().difference(&shm_before).cloned().collect();
    assert!(
        shm_new.iter().all(|n| !n.contains("shmlink")),
        "new entries in /dev/shm: {shm_new:?}"
    );
    if !shm_new.is_empty() {
        println!("note: /dev/shm entries created meanwhile by other processes: {shm_new:?}");
    }

    for child in children {
        child.exit().await;
    }
    within("all gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}
