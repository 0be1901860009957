//! Child processes that are the current test binary re-executed, and running one test body
//! alone in a copy of the binary.
//!
//! Children: [`spawn_child`] re-runs the current test binary with
//! `--exact child_entry --nocapture --test-threads=1` and the role in [`CHILD_ENV`]. The
//! binary's `child_entry` test returns at once when that variable is absent. A child talks
//! to its parent through lines on stdout that start with [`MARK`] (libtest may print its own
//! text on the same line, so the marker is searched anywhere in the line), and reads
//! commands from stdin. It reports failures on stderr and exits non-zero. On success it
//! prints `OK …` and stays connected until the parent closes its stdin ([`ChildProc::exit`]),
//! so no child leaves while its peers still wait for what it sent last.
//!
//! Tests that count process-wide resources (descriptors, mappings) run their body alone in
//! a copy of the binary ([`isolate`]), since `cargo test` runs tests as threads of one
//! process.

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::setup::{STEP, within};

/// Carries `role|arg|arg…` to a child.
pub const CHILD_ENV: &str = "SHMLINK_TEST_CHILD";
/// Set (to the test's name) in a process that runs one test body alone.
pub const ISOLATED_ENV: &str = "SHMLINK_TEST_ISOLATED";
/// The name of the child entry test in every test binary that uses this module.
pub const CHILD_TEST: &str = "child_entry";
/// Prefix of protocol lines on a child's stdout.
pub const MARK: &str = "@@ ";

/// A child process running one role of this test binary.
#[derive(Debug)]
pub struct ChildProc {
    pub role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    /// Every stdout line read so far (for diagnostics).
    seen: Vec<String>,
}

/// Set (to a number of seconds) in a child's environment to give its role longer than the
/// default 120 s before it counts as hung: for tests scaled up by a knob.
pub const CHILD_TIMEOUT_ENV: &str = "SHMLINK_TEST_CHILD_TIMEOUT_S";

/// The default bound on a child's whole role: catches hangs, never expected to fire.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts this test binary as a child in `role` with `args`.
pub fn spawn_child(role: &str, args: &[String]) -> ChildProc {
    spawn_child_test(CHILD_TEST, role, args, &[])
}

/// [`spawn_child`], with `env` added to the child's environment (for example
/// [`CHILD_TIMEOUT_ENV`]).
pub fn spawn_child_with_env(role: &str, args: &[String], env: &[(&str, String)]) -> ChildProc {
    spawn_child_test(CHILD_TEST, role, args, env)
}

/// [`spawn_child_with_env`] for a binary whose child entry test has another path than
/// [`CHILD_TEST`] (a unit-test binary, where tests are named by module path:
/// `engine::queue::store::tests::child_entry`).
pub fn spawn_child_test(
    test: &str,
    role: &str,
    args: &[String],
    env: &[(&str, String)],
) -> ChildProc {
    let exe = std::env::current_exe().expect("current_exe");
    let mut spec = role.to_owned();
    for a in args {
        assert!(!a.contains('|'), "child arguments must not contain '|'");
        spec.push('|');
        spec.push_str(a);
    }
    let mut child = tokio::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &spec)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove(ISOLATED_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let stderr_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match err.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    ChildProc {
        role: role.to_owned(),
        child,
        stdin,
        stdout,
        stderr,
        stderr_task: Some(stderr_task),
        seen: Vec::new(),
    }
}

impl ChildProc {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    fn describe(&self) -> String {
        format!(
            "child {:?}: stdout so far {:?}\n--- its stderr ---\n{}",
            self.role,
            self.seen,
            self.stderr.lock().unwrap()
        )
    }

    /// The next protocol line (text after [`MARK`]); panics if the child ends first.
    pub async fn line(&mut self) -> String {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(STEP, self.stdout.read_line(&mut line)).await;
            match read {
                Err(_) => panic!("timed out waiting for a line; {}", self.describe()),
                Ok(Err(e)) => panic!("reading stdout: {e}; {}", self.describe()),
                Ok(Ok(0)) => {
                    let status = self.child.wait().await;
                    panic!(
                        "child ended ({status:?}) before the expected line; {}",
                        self.describe()
                    );
                }
                Ok(Ok(_)) => {}
            }
            let line = line.trim_end().to_owned();
            self.seen.push(line.clone());
            if let Some(at) = line.find(MARK) {
                return line[at + MARK.len()..].to_owned();
            }
        }
    }

    /// Reads protocol lines until one starts with `prefix`; returns the rest of that line.
    pub async fn expect(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
            if line.starts_with("FAIL") {
                panic!("child reported {line:?}; {}", self.describe());
            }
        }
    }

    /// Reads protocol lines until one equals `text` exactly (others are skipped; a `FAIL`
    /// line panics).
    pub async fn expect_line(&mut self, text: &str) {
        loop {
            let line = self.line().await;
            if line == text {
                return;
            }
            if line.starts_with("FAIL") {
                panic!("child reported {line:?}; {}", self.describe());
            }
        }
    }

    /// Sends a command line to the child's stdin.
    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write child stdin");
        stdin.flush().await.expect("flush child stdin");
    }

    /// SIGKILLs the child (the real signal, by pid).
    pub fn sigkill(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
    }

    /// Sends SIGSTOP and waits until the child is really stopped (signals are asynchronous).
    pub async fn stop(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
        let waited = tokio::task::spawn_blocking(move || {
            rustix::process::waitid(
                rustix::process::WaitId::Pid(pid),
                rustix::process::WaitIdOptions::STOPPED | rustix::process::WaitIdOptions::NOWAIT,
            )
        });
        within("the child stops", waited)
            .await
            .expect("task")
            .expect("waitid");
    }

    /// Sends SIGCONT.
    pub fn resume(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    }

    /// Reads up to the child's `OK` line and returns the rest of it. The child stays alive
    /// (its nodes connected) until [`ChildProc::exit`].
    pub async fn ok(&mut self) -> String {
        self.expect("OK").await
    }

    /// Lets the child go (closes its stdin), waits for it to exit and checks that it succeeded.
    pub async fn exit(mut self) {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = tokio::time::timeout(STEP, self.stdout.read_to_string(&mut rest)).await;
        self.seen.extend(rest.lines().map(str::to_owned));
        let status = match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(status) => status.expect("wait child"),
            Err(_) => panic!("child did not exit; {}", self.describe()),
        };
        self.drain_stderr().await;
        assert!(
            status.success(),
            "failed with {status}; {}",
            self.describe()
        );
    }

    /// [`ChildProc::ok`], then [`ChildProc::exit`].
    pub async fn finish_ok(mut self) -> String {
        let ok = self.ok().await;
        self.exit().await;
        ok
    }

    /// Blocks this thread (and so a current-thread runtime, with any engine on it) until the
    /// child has exited, without reaping it.
    pub fn block_until_exited(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::waitid(
            rustix::process::WaitId::Pid(pid),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        )
        .expect("waitid");
    }

    /// Waits until the stderr pipe is at its end (after the child exited) and closed.
    async fn drain_stderr(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(STEP, task).await;
        }
    }

    /// [`ChildProc::sigkill`], then [`ChildProc::reap_killed`].
    pub async fn kill_and_reap(self) {
        self.sigkill();
        self.reap_killed().await;
    }

    /// Waits for the child after a kill; asserts it died by SIGKILL. Every descriptor the
    /// parent held for it (pipes, pidfd) is closed when this returns.
    pub async fn reap_killed(mut self) {
        let status = match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(status) => status.expect("wait child"),
            Err(_) => panic!("killed child did not exit; {}", self.describe()),
        };
        self.drain_stderr().await;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "expected death by SIGKILL, got {status}; {}",
            self.describe()
        );
    }
}

/// Parses `key=value` words of an OK line.
pub fn ok_field(ok: &str, key: &str) -> u64 {
    ok.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {ok:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {ok:?}: {e}"))
}

/// Turns an error into a diagnostic with context: `.map_err(ctx("what"))`.
pub fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Connects a node named `name` to the engine at `socket` (a child's first step); the error
/// names both.
///
/// # Errors
///
/// The connect's error, as text.
pub async fn connect(socket: &str, name: &str) -> Result<ipc_tokio::Node, String> {
    ipc_tokio::Node::connect(socket, name)
        .await
        .map_err(ctx(format!("connect {name:?} to {socket}")))
}

/// What a child was asked to do.
#[derive(Debug)]
pub struct ChildSpec {
    pub role: String,
    pub args: Vec<String>,
}

/// The spec in [`CHILD_ENV`], if this process is a child.
pub fn child_spec() -> Option<ChildSpec> {
    let spec = std::env::var(CHILD_ENV).ok()?;
    let mut parts = spec.split('|').map(str::to_owned);
    let role = parts.next().unwrap_or_default();
    Some(ChildSpec {
        role,
        args: parts.collect(),
    })
}

/// Prints a protocol line for the parent.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK}{line}");
    let _ = out.flush();
}

/// Runs a child role on a current-thread runtime; prints diagnostics and exits non-zero on
/// failure or after a hang.
pub fn run_child<F, Fut>(spec: ChildSpec, run: F)
where
    F: FnOnce(ChildSpec, Commands) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let timeout = std::env::var(CHILD_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(CHILD_TIMEOUT, Duration::from_secs);
    run_child_on(&runtime, timeout, spec, run);
}

/// [`run_child`] on a runtime of the caller's (a multi-thread one, for a library that needs
/// it) with its own deadline.
pub fn run_child_on<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    spec: ChildSpec,
    run: F,
) where
    F: FnOnce(ChildSpec, Commands) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let role = spec.role.clone();
    let result =
        runtime.block_on(async { tokio::time::timeout(timeout, run(spec, Commands::new())).await });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("child {role} (pid {}) failed: {e}", std::process::id());
            say(format!("FAIL {e}"));
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("child {role} (pid {}) timed out", std::process::id());
            say("FAIL timeout");
            std::process::exit(2);
        }
    }
}

/// Reads command lines from stdin (on a plain thread: the tests' tokio has no `io-std`).
#[derive(Debug)]
pub struct Commands {
    lines: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<String>>,
}

impl Commands {
    pub fn new() -> Self {
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// The next command; `None` at end of input (the parent's signal to finish) or on a read
    /// error.
    pub async fn recv(&mut self) -> Option<String> {
        self.lines.recv().await.and_then(Result::ok)
    }

    /// The next command; an error at end of input.
    pub async fn next(&mut self) -> Result<String, String> {
        match self.lines.recv().await {
            Some(Ok(line)) => Ok(line),
            None => Err("stdin closed before the next command".into()),
            Some(Err(e)) => Err(format!("stdin: {e}")),
        }
    }

    /// Reports success, then waits until the parent lets go (closes stdin). A role calls this
    /// while its nodes are still connected: a node that leaves at once could otherwise take
    /// with it what it queued last (see `close::data_queued_before_a_clean_exit_is_delivered`).
    pub async fn done(mut self, ok: impl std::fmt::Display) -> Result<(), String> {
        say(format!("OK {ok}"));
        while self.lines.recv().await.is_some() {}
        Ok(())
    }

    /// Waits for exactly `want`.
    pub async fn expect(&mut self, want: &str) -> Result<(), String> {
        let got = self.next().await?;
        if got == want {
            Ok(())
        } else {
            Err(format!("expected command {want:?}, got {got:?}"))
        }
    }
}

/// Prefix of the lines an isolated body prints for its caller ([`report`]); [`isolate`]
/// forwards them to the caller's output, so the seed and the numbers of a passing run are
/// visible too.
pub const REPORT: &str = "testkit-report: ";

/// Prints a report line, forwarded by [`isolate`] to the caller's output.
pub fn report(line: impl std::fmt::Display) {
    println!("{REPORT}{line}");
}

impl Default for Commands {
    fn default() -> Self {
        Self::new()
    }
}

/// [`isolate`], then, in the copy, `body` on a two-thread runtime: the whole of a test that
/// counts this process's resources.
pub fn run_isolated<F: Future>(name: &str, body: impl FnOnce() -> F) {
    if !isolate(name) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body());
}

/// Runs the test `name` alone in a fresh copy of this binary (so process-wide counts such as
/// open file descriptors belong to it only, even under `cargo test`'s threads). Returns true
/// in that copy, where the caller runs the body; returns false in the caller after checking
/// that the copy passed and forwarding its [`report`] lines.
///
/// The copy runs the test even if it is ignored: one selected with `--ignored` or
/// `--run-ignored` must really run in the copy, not be skipped there.
pub fn isolate(name: &str) -> bool {
    if std::env::var(ISOLATED_ENV).as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(ISOLATED_ENV, name)
        .env_remove(CHILD_ENV)
        .stdin(Stdio::null())
        .output()
        .expect("run isolated test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines() {
        if let Some(at) = line.find(REPORT) {
            println!("{}", &line[at + REPORT.len()..]);
        }
    }
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "isolated run of {name} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    false
}
