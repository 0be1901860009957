//! A failed `Engine::spawn` leaves nothing behind (issue 9, item 5): the socket path's length
//! is checked before the filesystem is touched, and what a later failure finds created
//! (directories, the lock file) is removed again; what others own (a live engine's lock, a
//! directory that was there before) is left alone.

use std::path::{Path, PathBuf};

use shmlink::{Node, SpawnError};

use crate::support::{self, TestDir, within};

fn lock_of(socket: &Path) -> PathBuf {
    let mut lock = socket.as_os_str().to_owned();
    lock.push(".lock");
    PathBuf::from(lock)
}

/// A socket path of exactly `len` bytes: `dir/new/` and a name of `x`s.
fn socket_of_len(dir: &Path, len: usize) -> PathBuf {
    let base = dir.join("new").join("");
    let base_len = base.as_os_str().len();
    assert!(base_len < len, "the test dir's path is too long already");
    base.join("x".repeat(len - base_len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_over_the_sun_path_limit_is_refused_before_anything_is_created() {
    let dir = TestDir::new("spawn-long");
    let socket = socket_of_len(dir.path(), 108);
    assert_eq!(socket.as_os_str().len(), 108);
    match support::engine_builder(&dir).socket(&socket).spawn() {
        Err(SpawnError::PathTooLong { path, len, max }) => {
            assert_eq!(path, socket.display().to_string());
            assert_eq!((len, max), (108, 107));
        }
        other => panic!("expected PathTooLong, got {other:?}"),
    }
    assert!(
        !dir.path().join("new").exists(),
        "the directory was created"
    );
    assert!(!lock_of(&socket).exists());

    // 107 bytes is the longest that works: directory made, engine serving.
    let socket = socket_of_len(dir.path(), 107);
    let engine = support::engine_builder(&dir)
        .socket(&socket)
        .spawn()
        .expect("a 107-byte socket path");
    let node = within("connect", Node::connect(&socket, "n"))
        .await
        .expect("connect");
    drop(node);
    support::all_gone(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_that_fails_late_removes_the_directories_and_lock_it_created() {
    let dir = TestDir::new("spawn-late");
    // The socket path is taken by a directory: the spawn fails after it made the lock file
    // (and, through `new/..`, the directory `new`).
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).expect("mkdir");
    std::fs::write(taken.join("keep"), b"someone's file").expect("write");
    let socket = dir.path().join("new").join("..").join("taken");
    match support::engine_builder(&dir).socket(&socket).spawn() {
        Err(SpawnError::Io { path, .. }) => assert_eq!(path, socket.display().to_string()),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(
        !dir.path().join("new").exists(),
        "the directory it made stays"
    );
    assert!(!lock_of(&taken).exists(), "the lock file it made stays");
    assert!(taken.join("keep").exists(), "what was there before is gone");
    assert!(dir.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_refused_by_a_live_engine_leaves_its_lock_alone() {
    let dir = TestDir::new("spawn-in-use");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    assert!(matches!(
        support::engine_builder(&dir).spawn(),
        Err(SpawnError::InUse { .. })
    ));
    assert!(
        lock_of(&socket).exists(),
        "the live engine's lock was removed"
    );
    assert!(socket.exists(), "the live engine's socket was removed");
    let node = within("connect", Node::connect(&socket, "n"))
        .await
        .expect("the first engine still serves");
    drop(node);
    support::all_gone(engine).await;
}
