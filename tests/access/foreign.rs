//! A process of another uid is refused at rendezvous. These tests run a child as uid 65534
//! (`nobody`); switching uid needs root, so without it they print
//! `SKIP: not root, cannot switch uid` and pass.
//!
//! Refusal comes in two layers: the socket file is 0600, so the kernel refuses another uid's
//! `connect(2)` outright; and if the socket is made reachable anyway (here by the test, with
//! chmod 0666: the engine never does that), the engine reads the peer's uid with
//! `SO_PEERCRED` and refuses it, naming the uid, before it reads a byte or creates any block.
//! A policy that allows the uid serves it normally (the control that proves the refusal is
//! the policy's doing), and another uid cannot reach the engine's descriptors or memory
//! through `/proc` either.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use shmlink::{Node, Policy};

use crate::echo;
use crate::procfs;
use crate::support::{self, CHILD_ENV, CHILD_TEST, ISOLATED_ENV, MARK, TestDir, within};

/// The uid (and gid) the foreign child runs as.
pub(crate) const FOREIGN: u32 = 65534;
/// Connection attempts per refusal test: every one must end the same way (the engine may
/// answer and close before the node's hello is written; the node must still say why).
const ATTEMPTS: u32 = 100;

/// A command that runs child `role` of this binary as uid/gid [`FOREIGN`]; `None` (after
/// printing why) when this process cannot switch uid.
pub(crate) fn foreign_command(role: &str, args: &[String]) -> Option<tokio::process::Command> {
    if !rustix::process::getuid().is_root() {
        println!("SKIP: not root, cannot switch uid");
        return None;
    }
    let mut spec = role.to_owned();
    for a in args {
        spec.push('|');
        spec.push_str(a);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &spec)
        .env_remove(ISOLATED_ENV)
        .uid(FOREIGN)
        .gid(FOREIGN)
        .kill_on_drop(true);
    Some(command)
}

/// Whether spawning as another uid failed for lack of privilege (printed as a SKIP).
pub(crate) fn cannot_switch(e: &std::io::Error) -> bool {
    let denied = e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error());
    if denied {
        println!("SKIP: not allowed to switch to uid {FOREIGN}: {e}");
    }
    denied
}

/// Runs child `role` as uid/gid [`FOREIGN`] to completion and returns its protocol lines;
/// `None` (after printing why) when this process cannot switch uid.
async fn run_as_foreign(role: &str, args: &[String]) -> Option<Vec<String>> {
    let mut command = foreign_command(role, args)?;
    let run = command.stdin(Stdio::null()).output();
    let out = match within("the foreign child", run).await {
        Ok(out) => out,
        Err(e) if cannot_switch(&e) => return None,
        Err(e) => panic!("spawn a child as uid {FOREIGN}: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "foreign child {role} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.find(MARK).map(|at| l[at + MARK.len()..].to_owned()))
        .collect();
    assert!(
        lines.contains(&format!("UID {FOREIGN}")) || role != "foreign-connect",
        "the child runs as uid {FOREIGN}: {lines:?}"
    );
    println!("foreign child {role}: {lines:?}");
    Some(lines)
}

/// The rest of the line that starts with `prefix` (exactly one such line).
fn field<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    let count = lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert!(
        count <= 1,
        "{count} different {prefix:?} outcomes: {lines:?}"
    );
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
        .trim()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_uid_is_refused_by_the_socket_mode() {
    let dir = TestDir::new("foreign-mode");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    // The test's directory lets everyone through (0755): only the socket's own mode stands
    // between the foreign uid and the engine.
    assert_eq!(
        mode(dir.path()) & 0o005,
        0o005,
        "the directory is traversable"
    );
    assert_eq!(mode(&socket), 0o600, "the engine's socket");
    let args = [socket.display().to_string(), ATTEMPTS.to_string()];
    let Some(lines) = run_as_foreign("foreign-connect", &args).await else {
        return;
    };
    let connect = field(&lines, "CONNECT");
    assert!(
        connect.starts_with("io PermissionDenied"),
        "Node::connect as uid {FOREIGN}: {connect}"
    );
    assert_eq!(field(&lines, "RAW"), "PermissionDenied", "connect(2)");
    let stats = engine.stats();
    assert_eq!((stats.nodes, stats.violations), (0, 0), "{stats:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_uid_is_refused_by_its_credentials_before_any_block() {
    let dir = TestDir::new("foreign-cred");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let _echo = echo::start(&socket).await;
    // For this test only: let every uid reach the socket, so the engine's own check decides.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let before = within(
        "the echo registered",
        engine.wait_for_stats(|s| s.nodes == 1),
    )
    .await;
    let args = [socket.display().to_string(), ATTEMPTS.to_string()];
    let Some(lines) = run_as_foreign("foreign-connect", &args).await else {
        return;
    };
    let connect = field(&lines, "CONNECT");
    let message = connect
        .strip_prefix("refused ")
        .unwrap_or_else(|| panic!("expected ConnectError::Refused, got {connect:?}"));
    assert!(
        message.contains(&FOREIGN.to_string()),
        "the refusal names the uid: {message:?}"
    );
    assert_eq!(
        field(&lines, "RAW"),
        "ok",
        "the socket itself was reachable"
    );
    // No node, so no block: the policy is checked before the hello is even read.
    let after = engine.stats();
    assert_eq!(after.nodes, before.nodes, "{after:?}");
    assert_eq!(after.violations, before.violations, "{after:?}");
    // The engine goes on serving its own uid.
    let me = within("connect as our uid", Node::connect(&socket, "me"))
        .await
        .expect("our own uid is served");
    drop(me);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_uid_allowed_by_the_policy_is_served() {
    let dir = TestDir::new("foreign-allowed");
    let me = rustix::process::getuid().as_raw();
    let engine = support::engine_builder(&dir)
        .policy(Policy::AllowUids(vec![me, FOREIGN]))
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let _echo = echo::start(&socket).await;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let args = [socket.display().to_string(), "1".to_owned()];
    let Some(lines) = run_as_foreign("foreign-connect", &args).await else {
        return;
    };
    assert_eq!(field(&lines, "CONNECT"), "ok", "{lines:?}");
    assert!(lines.iter().any(|l| l == "EXCHANGED"), "{lines:?}");
    within(
        "the foreign node is gone",
        engine.wait_for_stats(|s| s.nodes == 1),
    )
    .await;
    assert_eq!(engine.stats().violations, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_uid_cannot_reach_the_engines_blocks_through_proc() {
    let dir = TestDir::new("foreign-proc");
    let engine = support::engine(&dir);
    let _echo = echo::start(&dir.socket()).await;
    within("registered", engine.wait_for_stats(|s| s.nodes == 1)).await;
    let block = procfs::fds("self")
        .into_iter()
        .find(|f| procfs::is_block(&f.target))
        .expect("this process holds a block");
    let args = [std::process::id().to_string(), block.fd.to_string()];
    let Some(lines) = run_as_foreign("foreign-proc", &args).await else {
        return;
    };
    for what in [
        "list-fds",
        "readlink-fd",
        "open-fd",
        "read-maps",
        "open-mem",
    ] {
        assert_eq!(
            field(&lines, &format!("PROC {what}")),
            "PermissionDenied",
            "{what} of /proc/<engine>/… as uid {FOREIGN}: {lines:?}"
        );
    }
    engine.shutdown().await;
}
