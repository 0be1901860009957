//! Inspecting from another uid is refused by the engine's policy, with a clear error.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use shmlink::Engine;

use crate::CTL;
use crate::support::{self, TestDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_from_another_uid_is_refused() {
    if !rustix::process::getuid().is_root() {
        eprintln!(
            "SKIP inspect_from_another_uid_is_refused: needs root to run a client as uid 65534"
        );
        return;
    }
    let dir = TestDir::new("inspect-uid");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");
    // Let the other uid reach the socket: only the engine's policy stands in its way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let socket_for_child = socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(CTL)
            .args(["nodes", "--json"])
            .env("SHMLINK_SOCKET", &socket_for_child)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run shmlinkctl as uid 65534")
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("65534"),
        "{stderr}"
    );
    // The refused inspection left nothing behind.
    let stats = engine.stats();
    assert_eq!((stats.nodes, stats.services), (0, 0));
    engine.shutdown().await;
}
