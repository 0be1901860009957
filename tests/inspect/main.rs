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

/// A `shmlinkd` child serving `socket`; killed (SIGKILL) on drop. Its stdout stays open.
pub(crate) struct Daemon {
    child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
}

impl Daemon {
    /// Starts `shmlinkd --socket SOCKET ARGS…` and waits for its "listening on" line.
    pub(crate) async fn start(socket: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmlinkd"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("shmlinkd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        loop {
            let line = support::within("shmlinkd to listen", lines.next_line())
                .await
                .expect("read")
                .expect("shmlinkd exited early");
            if line.starts_with("shmlinkd: listening on") {
                break;
            }
        }
        Self {
            child,
            _lines: lines,
        }
    }

    /// Kills it (SIGKILL) and waits for it to end.
    pub(crate) async fn kill(mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Starts one serving metrics on a free loopback port (no data directory); returns the
    /// daemon and the metrics address.
    pub(crate) async fn metered(socket: &Path) -> (Self, String) {
        // A free port: bound, read and released (the daemon binds it again at once).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let daemon = Self::start(socket, &["--metrics-addr", &addr, "--no-data-dir"]).await;
        (daemon, addr)
    }
}
