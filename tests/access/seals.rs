//! A node cannot resize or reseal its block, and no two nodes ever get the same block: the
//! descriptor a node receives names a file of its own, sealed, and linked nowhere.

use std::os::fd::OwnedFd;
use std::path::Path;

use ipc_core::control::NodeFrame;
use rustix::fs::SealFlags;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::echo;
use crate::support::{self, TestDir, spawn_child, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_resize_or_reseal_its_block() {
    let dir = TestDir::new("resize");
    let engine = support::engine(&dir);
    let _echo = echo::start(&dir.socket()).await;
    // The child checks every attempt (EPERM, size unchanged) and that it is still served.
    let ok = spawn_child("resizer", &[dir.socket().display().to_string()])
        .finish_ok()
        .await;
    assert!(ok.contains("size="), "{ok}");
    within(
        "the resizer is gone",
        engine.wait_for_stats(|s| s.nodes == 1),
    )
    .await;
    assert_eq!(engine.stats().violations, 0);
    engine.shutdown().await;
}

/// A rendezvous by hand: hello, then the welcome frame and its descriptors (block, engine
/// doorbell, node doorbell). Returns the connection, the node id and the descriptors.
async fn hand_made_rendezvous(socket: &Path, name: &str) -> (UnixStream, u32, Vec<OwnedFd>) {
    let welcomed = within("welcome", support::hello_and_welcome(socket, name))
        .await
        .expect("hello and welcome");
    (welcomed.stream, welcomed.node, welcomed.fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_its_own_sealed_unlinked_block() {
    let dir = TestDir::new("own-block");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let (mut a, node_a, fds_a) = hand_made_rendezvous(&socket, "hand-a").await;
    let (mut b, node_b, fds_b) = hand_made_rendezvous(&socket, "hand-b").await;
    assert_ne!(node_a, node_b);
    let stat_a = rustix::fs::fstat(&fds_a[0]).expect("fstat a");
    let stat_b = rustix::fs::fstat(&fds_b[0]).expect("fstat b");
    // Two different files: a descriptor of one maps that file only, never the other's.
    assert_eq!(stat_a.st_dev, stat_b.st_dev, "both memfds");
    assert_ne!(
        stat_a.st_ino, stat_b.st_ino,
        "two nodes were handed the same block"
    );
    for (who, fd, stat) in [("a", &fds_a[0], &stat_a), ("b", &fds_b[0], &stat_b)] {
        // Linked in no directory: no name anyone could open.
        assert_eq!(stat.st_nlink, 0, "block {who} has a name");
        let seals = rustix::fs::fcntl_get_seals(fd).expect("F_GET_SEALS");
        assert!(
            seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL),
            "block {who} seals {seals:?}"
        );
        assert!(stat.st_size > 0);
    }
    // Both complete their rendezvous and are registered as two nodes.
    for stream in [&mut a, &mut b] {
        stream
            .write_all(&NodeFrame::Ready.encode())
            .await
            .expect("ready");
    }
    within("both registered", engine.wait_for_stats(|s| s.nodes == 2)).await;
    drop((a, b, fds_a, fds_b));
    within("both gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    assert_eq!(engine.stats().violations, 0);
    engine.shutdown().await;
}
