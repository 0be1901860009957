//! Helpers of the typed tests: temp dirs and engines, and child processes that are this test
//! binary re-executed.
//!
//! A child runs `--exact child_entry --nocapture --test-threads=1` with its role and the
//! engine's socket in [`CHILD_ENV`]. It talks to the parent through stdout lines that contain
//! [`MARK`] (libtest may print its own text before it on the same line), takes commands on
//! stdin, ends when its stdin closes, and reports failures on stderr with a non-zero exit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shmlink::{BlockConfig, Engine, EngineStats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Carries `role|socket|arg…` to a child.
pub(crate) const CHILD_ENV: &str = "SHMLINK_TYPED_TEST_CHILD";
/// The name of the child entry test of this binary.
pub(crate) const CHILD_TEST: &str = "child_entry";
/// Marks a protocol line on a child's stdout.
pub(crate) const MARK: &str = "@@ ";

/// Generous bound on any single step: catches hangs, never expected to fire.
pub(crate) const STEP: Duration = Duration::from_secs(60);

/// Awaits `fut`, panicking with `what` if it takes longer than [`STEP`] (a hang).
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hang: no result after {STEP:?}: {what}"),
    }
}

/// Small blocks: 16 MiB arenas (room for one message of several MiB each way), 256 B classes.
pub(crate) fn block() -> BlockConfig {
    BlockConfig {
        tx_arena: 16 << 20,
        rx_arena: 16 << 20,
        min_block: 256,
        ..Default::default()
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub(crate) fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("shmlink-typed-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self { path }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.path.join("engine.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An engine embedded in this process, on `dir`'s socket, with small blocks and `credits`.
pub(crate) fn engine(dir: &TestDir, credits: u32) -> Engine {
    Engine::builder()
        .socket(dir.socket())
        .block(block())
        .credits(credits)
        .spawn()
        .expect("spawn engine")
}

/// Waits (bounded) until `pred` holds for `engine`'s counts.
pub(crate) async fn stats_until(
    engine: &Engine,
    what: &str,
    pred: impl FnMut(&EngineStats) -> bool,
) -> EngineStats {
    match tokio::time::timeout(STEP, engine.wait_for_stats(pred)).await {
        Ok(stats) => stats,
        Err(_) => panic!("hang: {what}; engine counts now {:?}", engine.stats()),
    }
}

/// A child process running one role of this binary.
#[derive(Debug)]
pub(crate) struct ChildProc {
    role: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    seen: Vec<String>,
}

impl ChildProc {
    /// Starts this binary as a child in `role`, connected to the engine at `socket`.
    pub(crate) fn spawn(role: &str, socket: &Path, args: &[&str]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let socket = socket.to_str().expect("utf-8 socket path");
        let mut spec = format!("{role}|{socket}");
        for a in args {
            spec.push('|');
            spec.push_str(a);
        }
        let mut child = tokio::process::Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &spec)
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
        Self {
            role: role.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            stderr_task: Some(stderr_task),
            seen: Vec::new(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "child {:?}: stdout so far {:?}\n--- its stderr ---\n{}",
            self.role,
            self.seen,
            self.stderr.lock().unwrap()
        )
    }

    /// The next protocol line (the text after [`MARK`]); panics if the child ends first.
    async fn line(&mut self) -> String {
        loop {
            let mut line = String::new();
            match tokio::time::timeout(STEP, self.stdout.read_line(&mut line)).await {
                Err(_) => panic!("hang: no line from the child; {}", self.describe()),
                Ok(Err(e)) => panic!("reading the child's stdout: {e}; {}", self.describe()),
                Ok(Ok(0)) => {
                    let status = self.child.wait().await;
                    self.drain_stderr().await;
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

    /// Reads protocol lines until one equals `text` (others are skipped).
    pub(crate) async fn expect(&mut self, text: &str) {
        while self.line().await != text {}
    }

    /// Sends a command line to the child.
    pub(crate) async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write child stdin");
        stdin.flush().await.expect("flush child stdin");
    }

    /// Kills the child with a real SIGKILL and reaps it; asserts it died of that signal.
    pub(crate) async fn sigkill(mut self) {
        let pid = self.child.id().expect("child still running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
        let status = within("the killed child to exit", self.child.wait())
            .await
            .expect("wait child");
        self.drain_stderr().await;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "expected death by SIGKILL, got {status}; {}",
            self.describe()
        );
    }

    /// Closes the child's stdin (its signal to finish), waits for it and checks it succeeded.
    pub(crate) async fn finish(mut self) {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = tokio::time::timeout(STEP, self.stdout.read_to_string(&mut rest)).await;
        self.seen.extend(rest.lines().map(str::to_owned));
        let status = match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(status) => status.expect("wait child"),
            Err(_) => panic!("hang: the child did not exit; {}", self.describe()),
        };
        self.drain_stderr().await;
        assert!(
            status.success(),
            "child failed with {status}; {}",
            self.describe()
        );
    }

    async fn drain_stderr(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(STEP, task).await;
        }
    }
}

/// One test's world: its temp dir, its engine, and a child serving in `role`.
pub(crate) struct World {
    pub(crate) engine: Engine,
    pub(crate) child: ChildProc,
    pub(crate) dir: TestDir,
}

impl World {
    /// Starts an engine with `credits`, then the child, and waits until it serves `services`
    /// names (the child prints `ready` after that too).
    pub(crate) async fn start(
        test: &str,
        credits: u32,
        role: &str,
        args: &[&str],
        services: usize,
    ) -> Self {
        let dir = TestDir::new(test);
        let engine = engine(&dir, credits);
        let mut child = ChildProc::spawn(role, &dir.socket(), args);
        child.expect("ready").await;
        stats_until(&engine, "the child's services", |s| s.services == services).await;
        Self { engine, child, dir }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    /// A node of this (the parent) process.
    pub(crate) async fn node(&self, name: &str) -> shmlink::Node {
        within("connect", shmlink::Node::connect(self.socket(), name))
            .await
            .expect("connect")
    }

    /// Lets the child finish, checks it succeeded, and shuts the engine down.
    pub(crate) async fn finish(self) {
        self.child.finish().await;
        within("engine shutdown", self.engine.shutdown()).await;
    }
}
