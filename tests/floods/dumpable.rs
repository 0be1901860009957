//! The non-dumpable options: `EngineBuilder::non_dumpable` and `NodeOptions::non_dumpable`.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{CHILD_ENV, CHILD_TEST, ISOLATED_ENV, MARK, TestDir, ok_field, within};

/// The uid the processes run as when this test runs as root (root ignores the dumpable flag
/// for its own access, so the same-uid route is shown between two unprivileged processes).
const NOBODY: u32 = 65534;

/// A command running child `role` as [`NOBODY`] when this process is root, as itself
/// otherwise.
fn command(role: &str, args: &[String]) -> tokio::process::Command {
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
        .kill_on_drop(true);
    if rustix::process::getuid().is_root() {
        command.uid(NOBODY).gid(NOBODY);
    }
    command
}

/// Starts a holder in `mode`, then a second process of the same uid that tries to open the
/// holder's block through `/proc/<pid>/fd`. Returns the holder's dumpable flag and what the
/// probe saw.
async fn probe(dir: &TestDir, mode: &str) -> (u64, String) {
    let mut holder = command(
        "dumpable",
        &[mode.to_owned(), dir.path().display().to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn the holder");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let ready = loop {
        let line = within("the holder's READY", lines.next_line())
            .await
            .expect("read the holder")
            .unwrap_or_else(|| panic!("the holder ({mode}) ended before READY"));
        if let Some(at) = line.find(&format!("{MARK}READY")) {
            break line[at + MARK.len() + "READY".len()..].trim().to_owned();
        }
    };
    let (pid, fd) = (ok_field(&ready, "pid"), ok_field(&ready, "fd"));
    let out = within(
        "the probe",
        command("probe", &[pid.to_string(), fd.to_string()])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen = stdout
        .lines()
        .find_map(|l| l.find(MARK).map(|at| l[at + MARK.len()..].to_owned()))
        .unwrap_or_else(|| panic!("the probe said nothing: {stdout}"));
    drop(holder.stdin.take());
    let status = within("the holder exits", holder.wait())
        .await
        .expect("wait");
    assert!(status.success(), "the holder ({mode}) failed: {status}");
    (ok_field(&ready, "dumpable"), seen)
}

/// With either option the holder's dumpable flag is 0 and another process of its uid is
/// refused `/proc/<pid>/fd/<block>` (EACCES); without, the flag is 1 and it opens the block
/// (the route the options close). When the test runs as root both processes run as uid
/// 65534, since root itself bypasses the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_dumpable_processes_close_proc_fd_to_their_own_uid() {
    let dir = TestDir::new("flood-dumpable");
    // Sticky and open to all: the unprivileged holders create their sockets here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the test dir");
    let eacces = format!("DENIED {}", rustix::io::Errno::ACCESS.raw_os_error());
    let (flag, seen) = probe(&dir, "off").await;
    assert_eq!((flag, seen.as_str()), (1, "OPENED"), "without the option");
    for mode in ["engine", "node"] {
        let (flag, seen) = probe(&dir, mode).await;
        assert_eq!(
            (flag, seen.as_str()),
            (0, eacces.as_str()),
            "with the {mode}'s non_dumpable option"
        );
    }
}

/// Runs `shmlinkd` with `args` (as [`NOBODY`] when root), waits until it listens, and
/// returns what a probe of its uid saw opening its `/proc/<pid>/fd/0`.
async fn probe_daemon(dir: &TestDir, name: &str, args: &[&str]) -> String {
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_shmlinkd"));
    daemon
        .arg("--socket")
        .arg(dir.path().join(format!("{name}.sock")))
        .arg("--no-data-dir")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if rustix::process::getuid().is_root() {
        daemon.uid(NOBODY).gid(NOBODY);
    }
    let mut daemon = daemon.spawn().expect("spawn shmlinkd");
    let mut lines = BufReader::new(daemon.stdout.take().expect("stdout")).lines();
    let listening = within("shmlinkd listens", lines.next_line())
        .await
        .expect("read shmlinkd")
        .expect("shmlinkd said nothing");
    assert!(listening.contains("listening"), "{listening}");
    let pid = daemon.id().expect("shmlinkd runs");
    let out = within(
        "the probe",
        command("probe", &[pid.to_string(), "0".to_owned()])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("run the probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    daemon.start_kill().expect("stop shmlinkd");
    let _ = within("shmlinkd exits", daemon.wait()).await;
    stdout
        .lines()
        .find_map(|l| l.find(MARK).map(|at| l[at + MARK.len()..].to_owned()))
        .unwrap_or_else(|| panic!("the probe said nothing: {stdout}"))
}

/// `shmlinkd` is non-dumpable unless started with `--dumpable`: another process of its uid
/// cannot open its descriptors (every node's block) through `/proc/<pid>/fd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shmlinkd_is_non_dumpable_unless_asked() {
    let dir = TestDir::new("flood-dumpable-daemon");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the test dir");
    let eacces = format!("DENIED {}", rustix::io::Errno::ACCESS.raw_os_error());
    assert_eq!(
        probe_daemon(&dir, "default", &[]).await,
        eacces,
        "by default"
    );
    assert_eq!(
        probe_daemon(&dir, "dumpable", &["--dumpable"]).await,
        "OPENED",
        "with --dumpable"
    );
}
