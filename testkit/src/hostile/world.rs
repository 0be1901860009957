//! The shared half of the harness: the runtime, the engine, the legitimate pair and the
//! checks that run after each hostile node.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::node::Hostile;
use super::{BLOCK, CREDITS, Op, SERVICE, STEP};
use ipc_tokio::{Engine, EngineStats, Listener, Node, Session};

pub(super) static HARNESS: OnceLock<Harness> = OnceLock::new();
static PANICKED: AtomicBool = AtomicBool::new(false);
static GENERATION: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Set while this thread runs an iteration: a panic then is the engine's or ours.
    pub(super) static IN_ENGINE: Cell<bool> = const { Cell::new(false) };
}

pub(super) struct OnDrop<F: FnMut()>(pub(super) F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

pub(super) struct Harness {
    pub(super) runtime: Runtime,
    pub(super) world: Mutex<Option<World>>,
}

impl Harness {
    pub(super) fn new() -> Self {
        remove_stale_dirs();
        // Tokio catches a panic in a task; the hook notes it, so the check at the end of the
        // iteration reports it (libFuzzer's own hook aborts first anyway).
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_ENGINE.get() {
                PANICKED.store(true, Ordering::SeqCst);
            }
            previous(info);
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        Self {
            runtime,
            world: Mutex::new(None),
        }
    }
}

/// Removes the directories of fuzz processes that are gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shmlink-fuzz-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Awaits `fut`, panicking with `what` (and the engine's counts) if it hangs.
pub(super) async fn within<F: Future>(engine: &Engine, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!(
            "engine fuzz: timed out after {STEP:?}: {what}; stats {:?}; a task panicked: {}",
            engine.stats(),
            PANICKED.load(Ordering::SeqCst)
        ),
    }
}

/// The engine and the legitimate pair, shared by every iteration of a process.
pub(super) struct World {
    dir: PathBuf,
    pub(super) socket: PathBuf,
    pub(super) engine: Engine,
    _a: Node,
    _b: Node,
    pub(super) listener: Listener,
    a: Session,
    b: Session,
    seq: u64,
    echoes: Vec<JoinHandle<()>>,
    baseline: EngineStats,
    resources: Resources,
    shm: Resources,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    pub(super) async fn new() -> Self {
        PANICKED.store(false, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "shmlink-fuzz-{}-{}",
            std::process::id(),
            GENERATION.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("engine.sock");
        let engine = Engine::builder()
            .socket(&socket)
            .block(BLOCK)
            .credits(CREDITS)
            .spin(Duration::ZERO)
            .spawn()
            .expect("engine fuzz: spawn the engine");
        let b = Node::connect(&socket, "fuzz-b")
            .await
            .expect("engine fuzz: connect fuzz-b");
        let mut listener = b.listen::<Bytes>(SERVICE).await.expect("serve");
        let a = Node::connect(&socket, "fuzz-a")
            .await
            .expect("engine fuzz: connect fuzz-a");
        let a_session = a.open::<Bytes>(SERVICE).await.expect("open");
        let b_session = within(&engine, "accept the pair's session", listener.accept())
            .await
            .expect("engine fuzz: fuzz-b's listener ended");
        let baseline = within(
            &engine,
            "the pair registered",
            engine.wait_for_stats(|s| s.nodes == 2 && s.session_ends == 2 && s.services == 1),
        )
        .await;
        let mut world = Self {
            dir,
            socket,
            engine,
            _a: a,
            _b: b,
            listener,
            a: a_session,
            b: b_session,
            seq: 0,
            echoes: Vec::new(),
            baseline,
            resources: Resources::default(),
            shm: Resources::default(),
        };
        world.ping("the pair's first message").await;
        world.resources = Resources::now();
        world.shm = shm_resources();
        world
    }

    pub(super) async fn iteration(&mut self, ops: &[Op]) {
        let mut hostile = Hostile::connect(self).await;
        for op in ops {
            hostile.run(op, self).await;
        }
        self.ping("after the operations").await;
        drop(hostile);
        self.settle_after_hostile(ops).await;
        self.ping("after the hostile node left").await;
        assert!(
            !PANICKED.swap(false, Ordering::SeqCst),
            "engine fuzz: a task panicked during {ops:?}"
        );
    }

    /// Takes a session `fuzz-b` was offered and echoes on it in the background.
    pub(super) fn echo(&mut self, session: Session) {
        self.echoes.retain(|task| !task.is_finished());
        self.echoes.push(tokio::spawn(echo(session)));
    }

    /// `fuzz-a` sends the next sequence number; `fuzz-b` must receive exactly it. Sessions
    /// offered to `fuzz-b` meanwhile are accepted, so none sits unread in its receive arena.
    pub(super) async fn ping(&mut self, when: &str) {
        self.seq += 1;
        let want = self.seq.to_le_bytes();
        let engine = &self.engine;
        let a = &mut self.a;
        let b = &mut self.b;
        let listener = &mut self.listener;
        let echoes = &mut self.echoes;
        echoes.retain(|task| !task.is_finished());
        let got = within(engine, &format!("the pair's message {when}"), async {
            a.send(Bytes::copy_from_slice(&want))
                .await
                .unwrap_or_else(|e| panic!("engine fuzz: fuzz-a cannot send {when}: {e}"));
            loop {
                tokio::select! {
                    biased;
                    got = b.next() => break got,
                    Some(session) = listener.accept() => echoes.push(tokio::spawn(echo(session))),
                }
            }
        })
        .await;
        match got {
            Some(Ok(bytes)) => assert_eq!(
                bytes.as_ref(),
                want,
                "engine fuzz: fuzz-b received another message {when}"
            ),
            other => panic!("engine fuzz: fuzz-b's session ended {when}: {other:?}"),
        }
    }

    /// The hostile node's socket is closed: the registry, the echoes and the process's
    /// descriptors return to the baseline.
    async fn settle_after_hostile(&mut self, ops: &[Op]) {
        let baseline = self.baseline;
        let settled = |s: &EngineStats| {
            s.nodes == baseline.nodes
                && s.session_ends == baseline.session_ends
                && s.services == baseline.services
        };
        let engine = &self.engine;
        let listener = &mut self.listener;
        let mut late = 0;
        let settling = async {
            loop {
                tokio::select! {
                    biased;
                    _ = engine.wait_for_stats(settled) => break,
                    // Offered late: its client is gone already. Dropping it closes the end.
                    Some(session) = listener.accept() => {
                        late += 1;
                        drop(session);
                    }
                }
            }
        };
        if tokio::time::timeout(STEP, settling).await.is_err() {
            let open = self.echoes.iter().filter(|t| !t.is_finished()).count();
            panic!(
                "engine fuzz: the registry is not back to {baseline:?} {STEP:?} after the \
                 hostile node left: {:?}; {open} of fuzz-b's {} echo sessions still open, \
                 {late} sessions offered late; a task panicked: {}; after {ops:?}",
                engine.stats(),
                self.echoes.len(),
                PANICKED.load(Ordering::SeqCst)
            );
        }
        for task in std::mem::take(&mut self.echoes) {
            within(engine, "fuzz-b's echoes end", task)
                .await
                .expect("engine fuzz: an echo task panicked");
        }
        // Engine memory and descriptors back to the baseline (invariant 6): nothing of the
        // hostile node may stay open or mapped. Cheap first: the process's totals. When they
        // differ, the blocks, doorbells and sockets themselves (the sanitizer's symbolizer, for
        // one, opens pipes). Process-wide: a test binary must run nothing else meanwhile
        // (tests/fuzz_regressions serialises its tests).
        if Resources::now() == self.resources {
            return;
        }
        let wait = async {
            while shm_resources() != self.shm {
                tokio::task::yield_now().await;
            }
        };
        if tokio::time::timeout(STEP, wait).await.is_err() {
            panic!(
                "engine fuzz: {:?} blocks, doorbells and sockets open, {:?} before the hostile \
                 node, after {ops:?}; descriptors: {:#?}; mappings: {:#?}",
                shm_resources(),
                self.shm,
                shm_fds(),
                shm_mappings(),
            );
        }
        self.resources = Resources::now();
    }
}

/// `fuzz-b`'s end of a session the hostile node opened: echoes each message if it can at
/// once, and drops it otherwise; never holds a receive sub-block or waits on the hostile node.
async fn echo(mut session: Session) {
    while let Some(Ok(message)) = session.next().await {
        let copy = Bytes::copy_from_slice(&message);
        drop(message);
        let ready =
            poll_fn(|cx| SinkExt::<Bytes>::poll_ready_unpin(&mut session, cx)).now_or_never();
        if let Some(Ok(())) = ready {
            if session.start_send_unpin(copy).is_err() {
                break;
            }
            let _ =
                poll_fn(|cx| SinkExt::<Bytes>::poll_flush_unpin(&mut session, cx)).now_or_never();
        }
    }
}

/// What a node costs the process: descriptors and file mappings (blocks are memfds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Resources {
    fds: usize,
    mappings: usize,
}

impl Resources {
    fn now() -> Self {
        let count = |dir| std::fs::read_dir(dir).map_or(0, Iterator::count);
        Self {
            fds: count("/proc/self/fd"),
            mappings: count("/proc/self/map_files"),
        }
    }
}

/// Descriptors of blocks, doorbells and sockets, and mappings of blocks.
fn shm_resources() -> Resources {
    Resources {
        fds: shm_fds().len(),
        mappings: shm_mappings().len(),
    }
}

/// Blocks, doorbells and sockets open.
fn shm_fds() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("/memfd:") || t.contains("eventfd") || t.starts_with("socket:"))
        .collect()
}

/// Blocks mapped.
fn shm_mappings() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("/memfd:"))
        .map(str::to_owned)
        .collect()
}
