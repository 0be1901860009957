//! The parent side: an engine embedded in this process, the well-behaved nodes around it,
//! and the checks made after every attack.
//!
//! A [`World`] holds:
//! - the engine (small blocks, a 16-entry deliver ring, [`CREDITS`] credits per session);
//! - the *good stream*: two nodes of this process, opened first (so their session ends are
//!   1 and 2), one sending numbered messages ([`support::seq_message`]) paced at about eight
//!   per millisecond, the other checking each and echoing it, the first checking each echo:
//!   every sequence number, in order, both ways;
//! - the *target*: a node serving [`TARGET`] and [`TARGET_HELLO`], which reads every
//!   session a hostile node opens, checks every payload byte for byte, and reports how many
//!   messages it got and how the session ended.
//!
//! After each attack ([`World::attack`]): the engine's verdict (the child's report, and
//! `EngineStats::violations`), the registry back to its baseline, the target's report, the
//! good stream moved on, two fresh nodes connect and exchange, and this process's descriptors
//! and `memfd:shmlink-node-*` mappings are back to their baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::ErrorCode;
use shmlink::{BlockConfig, Engine, EngineStats, Listener, Node, Session};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::attacks::{Outcome, TARGET, TARGET_HELLO};
use crate::raw::{HOSTILE_SEED, PAYLOAD_MAX};
use crate::support::{
    self, STEP, TestDir, block_mappings, expect_seq, open_fds, pattern, seq_len, seq_message,
    spawn_child, within,
};

/// Credits per session end.
pub(crate) const CREDITS: u32 = 8;
/// Stream id of the good stream's messages.
const STREAM: u32 = 42;
/// Seed of the message the target sends on every `TARGET_HELLO` session.
const HELLO_SEED: u64 = 0x4E11_0000;
/// How long a stalled engine may take to serve the good stream again before the hang
/// check of [`World::attack_holding`] gives up (never expected to matter for a sound engine).
const HANG: Duration = Duration::from_secs(10);

/// The message the target sends first on every `TARGET_HELLO` session.
pub(crate) fn hello_payload() -> Vec<u8> {
    pattern(HELLO_SEED, 0, 300)
}

/// What the engine must do about an attack.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// The router closes the node for what it found in its block: `violations` goes up by
    /// one, and the engine's last frame to the node ("closed by the engine: <reason>", the
    /// reason it logs) contains this text.
    Violation(&'static str),
    /// The connection task closes the node for a bad control frame: an `Error` frame with
    /// this code and a message containing this text. `violations` may or may not count it.
    BadFrame(ErrorCode, &'static str),
    /// As `BadFrame`, and `violations` must count it (`EngineStats::violations`: "nodes
    /// closed for breaking the protocol").
    CountedBadFrame(ErrorCode, &'static str),
    /// Nothing to punish: the node is served on and leaves on its own.
    Survives,
    /// The engine may serve the node on or close it, as long as it serves everyone else.
    Either,
}

// ===== the good stream =====

/// Two nodes exchanging a numbered stream both ways, checked message by message.
struct GoodStream {
    progress: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Result<u64, String>>,
    echo: JoinHandle<Result<u64, String>>,
    checker: JoinHandle<Result<u64, String>>,
    _keep: (Node, Node, Listener),
}

impl GoodStream {
    async fn start(socket: &str) -> Self {
        let a = within("connect good-a", Node::connect(socket, "good-a"))
            .await
            .expect("connect good-a");
        let mut listener = within("listen", support::listen(&a, "good-stream"))
            .await
            .expect("listen");
        let b = within("connect good-b", Node::connect(socket, "good-b"))
            .await
            .expect("connect good-b");
        let session = within("open", support::open(&b, "good-stream"))
            .await
            .expect("open");
        let mut served = within("accept", listener.accept()).await.expect("accept");
        let echo = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(m) = served.next().await {
                let m = m.map_err(|e| format!("echo side: receiving {n}: {e}"))?;
                expect_seq(&m, STREAM, n).map_err(|e| format!("echo side: {e}"))?;
                served
                    .send(m)
                    .await
                    .map_err(|e| format!("echo side: echoing {n}: {e}"))?;
                n += 1;
            }
            SinkExt::<Bytes>::close(&mut served)
                .await
                .map_err(|e| format!("echo side: close: {e}"))?;
            Ok(n)
        });
        let (mut tx, mut rx) = session.split();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sender = tokio::spawn(async move {
            let mut seq = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                for _ in 0..8 {
                    tx.send(Bytes::from(seq_message(STREAM, seq, seq_len(seq))))
                        .await
                        .map_err(|e| format!("stream sender: sending {seq}: {e}"))?;
                    seq += 1;
                }
                // Pacing only (about 8 messages per millisecond), so the stream leaves CPU
                // to the attacks on a small machine; nothing waits on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            SinkExt::<Bytes>::close(&mut tx)
                .await
                .map_err(|e| format!("stream sender: close: {e}"))?;
            Ok(seq)
        });
        let (progress_tx, progress) = watch::channel(0u64);
        let checker = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(m) = rx.next().await {
                let m = m.map_err(|e| format!("stream checker: echo {n}: {e}"))?;
                expect_seq(&m, STREAM, n).map_err(|e| format!("stream checker: {e}"))?;
                n += 1;
                progress_tx.send_replace(n);
            }
            Ok(n)
        });
        Self {
            progress,
            stop,
            sender,
            echo,
            checker,
            _keep: (a, b, listener),
        }
    }

    /// Echoes checked so far.
    fn progress(&self) -> u64 {
        *self.progress.borrow()
    }

    /// Waits until at least `n` echoes have been checked; `Err` if the stream broke.
    async fn reach(&mut self, n: u64) -> Result<(), String> {
        let reached = self.progress.wait_for(|p| *p >= n).await.is_ok();
        match reached {
            true => Ok(()),
            false => Err(format!(
                "the good stream ended at {} echoes: {:?}",
                self.progress(),
                (&mut self.checker).await
            )),
        }
    }

    /// Stops the stream and checks that every message sent came back, in order.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let sent = within("stream sender ends", self.sender)
            .await
            .expect("task")
            .expect("sender");
        let echoed = within("stream echo ends", self.echo)
            .await
            .expect("task")
            .expect("echo");
        let checked = within("stream checker ends", self.checker)
            .await
            .expect("task")
            .expect("checker");
        assert_eq!(
            (echoed, checked),
            (sent, sent),
            "the good stream lost or duplicated messages"
        );
        sent
    }
}

// ===== the target =====

/// What the target saw on one session a hostile node opened.
#[derive(Debug)]
struct Report {
    service: &'static str,
    peer: String,
    count: u64,
    bad: Option<String>,
    end: String,
}

/// A node serving the hostile nodes' sessions.
struct Target {
    reports: mpsc::UnboundedReceiver<Report>,
    _keep: (Node, Vec<JoinHandle<()>>),
}

/// Checks a payload a hostile node sent validly: a prefix of its pattern.
fn check_hostile_payload(m: &[u8]) -> Result<(), String> {
    if m.is_empty() || m.len() > PAYLOAD_MAX {
        return Err(format!("a payload of {} bytes", m.len()));
    }
    support::check_pattern(HOSTILE_SEED, 0, m.len(), m)
}

async fn serve_hostile(
    mut session: Session,
    service: &'static str,
    reports: mpsc::UnboundedSender<Report>,
) {
    let peer = session.peer().to_owned();
    if service == TARGET_HELLO {
        // The hostile node may be closed at once: a failed send is fine.
        let _ = session.send(Bytes::from(hello_payload())).await;
    }
    let (mut count, mut bad) = (0u64, None);
    let end = loop {
        match session.next().await {
            Some(Ok(m)) => {
                if let (None, Err(e)) = (&bad, check_hostile_payload(&m)) {
                    bad = Some(format!("message {count}: {e}"));
                }
                count += 1;
            }
            Some(Err(e)) => break format!("{e:?}"),
            None => break "end of stream".to_owned(),
        }
    };
    let _ = reports.send(Report {
        service,
        peer,
        count,
        bad,
        end,
    });
}

impl Target {
    async fn start(socket: &str) -> Self {
        let node = within("connect target", Node::connect(socket, "target"))
            .await
            .expect("connect target");
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for service in [TARGET, TARGET_HELLO] {
            let mut listener = within("target listens", support::listen(&node, service))
                .await
                .expect("listen");
            let reports_tx = reports_tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(session) = listener.accept().await {
                    tokio::spawn(serve_hostile(session, service, reports_tx.clone()));
                }
            }));
        }
        Self {
            reports,
            _keep: (node, tasks),
        }
    }
}

// ===== fresh nodes =====

/// Two new nodes connect, serve, open and exchange numbered messages both ways.
async fn fresh_pair(engine: &Engine, tag: &str) {
    let socket = engine.socket_path();
    let a = within("fresh connect", Node::connect(socket, "fresh-a"))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: a new node cannot connect: {e}"));
    let b = within("fresh connect", Node::connect(socket, "fresh-b"))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: a new node cannot connect: {e}"));
    let service = format!("fresh-{tag}");
    let mut listener = within("fresh listen", support::listen(&a, &service))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: listen: {e}"));
    let mut opened = within("fresh open", support::open(&b, &service))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: open: {e}"));
    let mut accepted = within("fresh accept", listener.accept())
        .await
        .expect("accept");
    for seq in 0..10 {
        within(
            "fresh send",
            opened.send(Bytes::from(seq_message(9, seq, 100))),
        )
        .await
        .expect("send");
        let m = within("fresh recv", accepted.next())
            .await
            .expect("message")
            .expect("message");
        expect_seq(&m, 9, seq).unwrap_or_else(|e| panic!("after {tag}: {e}"));
        within("fresh reply", accepted.send(m))
            .await
            .expect("reply");
        let r = within("fresh recv reply", opened.next())
            .await
            .expect("reply")
            .expect("reply");
        expect_seq(&r, 9, seq).unwrap_or_else(|e| panic!("after {tag}: {e}"));
    }
}

// ===== the world =====

/// Waits until this process has as many descriptors as `fds` and `maps` block mappings
/// (what the engine's and the nodes' tasks release, they release on their own schedule).
async fn settle(after: &str, fds: &[(i32, String)], maps: usize) {
    let deadline = Instant::now() + STEP;
    loop {
        let (now_fds, now_maps) = (open_fds(), block_mappings());
        if now_fds.len() == fds.len() && now_maps == maps {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{after}: resources not back to baseline after {STEP:?}: {now_maps} block mappings \
             (expected {maps})\nfds before {fds:?}\nfds after  {now_fds:?}"
        );
        // Polling: nothing here waits for a particular moment, only for the count.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Counts the registry returns to between attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Registry {
    nodes: usize,
    session_ends: usize,
    services: usize,
}

impl From<&EngineStats> for Registry {
    fn from(s: &EngineStats) -> Self {
        Self {
            nodes: s.nodes,
            session_ends: s.session_ends,
            services: s.services,
        }
    }
}

/// An engine, its well-behaved nodes, and the baselines attacks are checked against.
pub(crate) struct World {
    engine: Engine,
    socket: String,
    stream: GoodStream,
    target: Target,
    base: Registry,
    base_fds: Vec<(i32, String)>,
    base_maps: usize,
    /// Violations the engine must have counted so far (at least; exactly, but for
    /// `BadFrame` and `Either` attacks, which may count one).
    violations: u64,
    /// How many more it may have counted.
    slack: u64,
    /// Attacks run, with what the engine did (printed at the end).
    log: Vec<String>,
    _dir: TestDir,
}

impl World {
    pub(crate) async fn new(name: &str) -> Self {
        let dir = TestDir::new(name);
        let engine = support::engine_builder(&dir)
            .block(BlockConfig {
                deliver_capacity: 16,
                ..support::small_block()
            })
            .credits(CREDITS)
            .spawn()
            .expect("spawn engine");
        let socket = dir.socket().display().to_string();
        // First, on a fresh engine: the stream's session ends are 1 and 2.
        let mut stream = GoodStream::start(&socket).await;
        let target = Target::start(&socket).await;
        // Warm up what is created lazily (child reaping; a node's connect/serve/open/close
        // cycle), then take the baselines once what the warm-up node held is released (the
        // registry forgets a node before its own tasks in this process have let go).
        spawn_child("noop", &[]).finish_ok().await;
        let before_warm_up = open_fds();
        fresh_pair(&engine, "warm-up").await;
        within("the stream runs", stream.reach(32))
            .await
            .expect("good stream");
        let want = Registry {
            nodes: 3,
            session_ends: 2,
            services: 3,
        };
        within(
            "the warm-up nodes are gone",
            engine.wait_for_stats(|s| Registry::from(s) == want),
        )
        .await;
        // Three blocks, each mapped by the engine and by its node.
        settle("the warm-up", &before_warm_up, 6).await;
        let base_maps = block_mappings();
        Self {
            engine,
            socket,
            stream,
            target,
            base: want,
            base_fds: open_fds(),
            base_maps,
            violations: 0,
            slack: 0,
            log: Vec::new(),
            _dir: dir,
        }
    }

    /// Runs the attack `name` in a hostile child and checks everything after it.
    pub(crate) async fn attack(&mut self, name: &str, expect: Expect) {
        println!("attack {name}");
        let before = self.engine.stats();
        let from = self.stream.progress();
        let child = spawn_child("hostile", &[self.socket.clone(), name.to_owned()]);
        self.check(child, name, expect, before, from).await;
    }

    /// As [`World::attack`], for an attack that may stall the engine until the child lets
    /// go: the child says `ATTACKED`, the good stream must move on meanwhile, then the child
    /// is told `UNBLOCK`. Fails at the end if the engine stalled.
    pub(crate) async fn attack_holding(&mut self, name: &str, expect: Expect) {
        let before = self.engine.stats();
        let from = self.stream.progress();
        let mut child = spawn_child("hostile", &[self.socket.clone(), name.to_owned()]);
        child.expect("ATTACKED").await;
        let served = tokio::time::timeout(HANG, self.stream.reach(from + 64)).await;
        child.send("UNBLOCK").await;
        self.check(child, name, expect, before, from).await;
        match served {
            Ok(r) => r.unwrap_or_else(|e| panic!("{name}: {e}")),
            Err(_) => panic!(
                "{name}: the engine stopped serving the good stream while the hostile node held \
                 its doorbell (no progress in {HANG:?}; it resumed when the node let go)"
            ),
        }
    }

    async fn check(
        &mut self,
        mut child: support::ChildProc,
        name: &str,
        expect: Expect,
        before: EngineStats,
        from: u64,
    ) {
        let out = Outcome::parse(&child.ok().await);
        child.exit().await;

        // 1. The engine's verdict, as the hostile node saw it.
        let (counted, may_count) = match expect {
            Expect::Violation(reason) => {
                assert!(
                    out.closed,
                    "{name}: the engine did not close the node: {out:?}"
                );
                assert!(
                    out.reason.starts_with("closed by the engine: ") && out.reason.contains(reason),
                    "{name}: expected a reason containing {reason:?}, got {:?}",
                    out.reason
                );
                (1, 0)
            }
            Expect::BadFrame(code, reason) | Expect::CountedBadFrame(code, reason) => {
                assert!(
                    out.closed,
                    "{name}: the engine did not close the node: {out:?}"
                );
                assert_eq!(
                    ErrorCode::from_u16(out.code),
                    Some(code),
                    "{name}: error code of {:?}",
                    out.reason
                );
                assert!(
                    out.reason.contains(reason),
                    "{name}: expected a message containing {reason:?}, got {:?}",
                    out.reason
                );
                match expect {
                    Expect::CountedBadFrame(..) => (1, 0),
                    _ => (0, 1),
                }
            }
            Expect::Survives => {
                assert!(!out.closed, "{name}: the engine closed the node: {out:?}");
                (0, 0)
            }
            Expect::Either => (0, 1),
        };
        let (low, high) = (
            before.violations + counted,
            before.violations + counted + may_count,
        );
        let base = self.base;
        // The router removes a node and counts its violation in the same step, and publishes
        // both at once: once the registry is back, the count is final.
        let stats = within(
            &format!("{name}: the registry returns to its baseline"),
            self.engine.wait_for_stats(|s| Registry::from(s) == base),
        )
        .await;
        assert!(
            (low..=high).contains(&stats.violations),
            "{name}: violations went from {} to {}, expected {low}..={high} ({out:?})",
            before.violations,
            stats.violations
        );
        self.violations += counted;
        self.slack += stats.violations - low;
        let mut line = format!(
            "{name}: {} (violations {} -> {})",
            if out.closed {
                format!("closed, {:?}", out.reason)
            } else {
                "served on".to_owned()
            },
            before.violations,
            stats.violations
        );

        // 2. The target got exactly what the node sent validly, intact.
        if out.opened != "none" {
            let report = within(
                &format!("{name}: the target's report"),
                self.target.reports.recv(),
            )
            .await
            .expect("the target runs");
            assert_eq!(
                (report.service, report.peer.as_str()),
                (out.opened.as_str(), format!("hostile-{name}").as_str()),
                "{name}: a report for another session: {report:?}"
            );
            assert_eq!(report.bad, None, "{name}: a garbled payload: {report:?}");
            if out.exact {
                assert_eq!(
                    report.count, out.sent,
                    "{name}: messages delivered: {report:?}"
                );
            } else {
                assert!(
                    report.count <= out.sent,
                    "{name}: messages delivered: {report:?}"
                );
            }
            assert!(
                report.end == "Disconnected" || report.end == "end of stream",
                "{name}: the session ended with {:?}",
                report.end
            );
            line.push_str(&format!(
                "; the target got {} of {} valid messages, intact",
                report.count, out.sent
            ));
        }
        self.log.push(line);

        // 3. The good stream moved on, lossless (it checks every number itself).
        within(
            &format!("{name}: the good stream moves on"),
            self.stream.reach(from + 16),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

        // 4. The engine still registers new nodes and routes their messages.
        fresh_pair(&self.engine, name).await;
        within(
            &format!("{name}: the fresh nodes are gone"),
            self.engine.wait_for_stats(|s| Registry::from(s) == base),
        )
        .await;

        // 5. Descriptors and block mappings of this process are back to the baseline.
        self.resources_back(name).await;
    }

    async fn resources_back(&self, name: &str) {
        settle(name, &self.base_fds, self.base_maps).await;
    }

    /// Stops the good stream and the engine; checks the counts of the whole run.
    pub(crate) async fn finish(mut self) {
        let stats = self.engine.stats();
        assert!(
            (self.violations..=self.violations + self.slack).contains(&stats.violations),
            "violations counted: {stats:?}, expected {} (+{})",
            self.violations,
            self.slack
        );
        let sent = self.stream.finish().await;
        assert!(sent > 0);
        assert!(
            self.target.reports.try_recv().is_err(),
            "the target reported a session no attack opened"
        );
        drop(self.target);
        self.engine.shutdown().await;
        for line in &self.log {
            println!("{line}");
        }
        println!("good stream: {sent} messages sent, echoed and checked in order");
    }
}
