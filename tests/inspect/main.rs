//! `shmlinkctl` and the engine's inspector and metrics (issue 16), against a real engine
//! with real child nodes (`shmlinkctl recv` and `send` processes, run as the built binary).
//!
//! No test sleeps to synchronise or asserts on time: each waits for a state (the engine's
//! counts, a child's output, a scrape's values) under a generous timeout that only catches
//! hangs.

#[path = "../support/mod.rs"]
mod support;

#[path = "../../src/bin/shmlinkctl/top.rs"]
mod top;

mod garbage;
mod listings;
mod metrics;
mod pipeline;
mod queues;
mod screen;
mod topics;
mod uid;

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The entry point of child processes ([`support::spawn_child`]): returns at once unless
/// this process is such a child.
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        queues::run(spec);
    }
}

/// The built `shmlinkctl`.
pub(crate) const CTL: &str = env!("CARGO_BIN_EXE_shmlinkctl");

/// Runs `shmlinkctl ARGS` against `socket` to completion: (exit code, stdout, stderr).
pub(crate) async fn ctl(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = support::within(
        "shmlinkctl",
        Command::new(CTL)
            .args(args)
            .env("SHMLINK_SOCKET", socket)
            .output(),
    )
    .await
    .expect("run shmlinkctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `shmlinkctl ARGS --json`, parsed.
pub(crate) async fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = ctl(socket, &all).await;
    assert_eq!(code, Some(0), "shmlinkctl {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

/// A `shmlinkctl recv SERVICE` child node; killed (SIGKILL) on drop.
pub(crate) struct Receiver {
    pub(crate) child: Child,
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
}

impl Receiver {
    pub(crate) fn spawn(socket: &Path, service: &str) -> Self {
        let mut child = Command::new(CTL)
            .args(["recv", service])
            .env("SHMLINK_SOCKET", socket)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn shmlinkctl recv");
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    pub(crate) async fn line(&mut self) -> String {
        support::within("a line from shmlinkctl recv", self.lines.next_line())
            .await
            .expect("read")
            .expect("shmlinkctl recv ended early")
    }
}
