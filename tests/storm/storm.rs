//! The crash storm: 200 cycles of a child node that connects, sends and is SIGKILLed at a
//! random point (mid-rendezvous, welcomed but not ready, registered with a served name and
//! an unaccepted session, holding a loan, in a tight send loop, holding received messages it
//! never released), three cycles at a time, while a well-behaved pair of child nodes streams
//! numbered messages through the same engine the whole time. Each victim is killed as soon
//! as it reports reaching its point: no cycle waits on time.
//!
//! At the end: the pair's stream lost and duplicated nothing (every sequence number checked
//! both ways); every victim's stream arrived in order up to at least what it had sent before
//! the kill, then ended with `Disconnected`; the engine holds no node, session, service,
//! descriptor or block mapping of a dead node (its counts, this process's open descriptors and
//! `memfd:shmlink-node` mappings are back to the baseline taken before the storm); a kill is
//! never counted as a protocol violation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Listener, Node, Session, SessionError};
use tokio::sync::oneshot;

use crate::children::{BURST_FLAG, HELLO, HUB_SERVICE, storm_len};
use crate::payload;
use crate::support::{
    self, Rng, TestDir, block_mappings, ok_field, open_fds, report, seed_from_env, spawn_child,
    within,
};

/// Victims killed in the storm.
const CYCLES: u32 = 200;
/// Cycles run at the same time.
const LANES: u32 = 3;
/// Credits per session end: bursts never exceed them, so the hub's sends never wait.
const CREDITS: u32 = 32;
/// Cycle numbers of the warm-up victims (one per point), before the baselines.
const WARM_UP: u32 = 10_000;

/// Where a victim is killed (see `children::crasher`).
const POINTS: [(&str, u64); 6] = [
    ("welcomed", 8),
    ("rendezvous", 8),
    ("connected", 9),
    ("loan", 25),
    ("submit", 25),
    ("hold", 25),
];

/// One victim's random choices, a pure function of (seed, cycle).
#[derive(Debug, Clone)]
struct Plan {
    cycle: u32,
    point: &'static str,
    /// Messages sent before the point.
    before: u64,
    loan: u64,
    burst: u64,
}

impl Plan {
    fn new(seed: u64, cycle: u32) -> Self {
        let mut rng = Rng::derive(seed, 0x5707, u64::from(cycle));
        let total: u64 = POINTS.iter().map(|p| p.1).sum();
        let mut pick = rng.below(total);
        let mut point = POINTS[0].0;
        for (name, weight) in POINTS {
            if pick < weight {
                point = name;
                break;
            }
            pick -= weight;
        }
        Self::with_point(&mut rng, cycle, point)
    }

    fn with_point(rng: &mut Rng, cycle: u32, point: &'static str) -> Self {
        let before = rng.below(48);
        // Loans from 1 B to 1 MiB, spread over the size classes.
        let shift = rng.range(0, 20);
        let loan = rng.range(1, 1 << shift);
        let min_burst = u64::from(point == "hold");
        let burst = rng.range(min_burst, u64::from(CREDITS));
        Self {
            cycle,
            point,
            before,
            loan,
            burst,
        }
    }

    /// Whether the victim gets as far as opening a session to the hub.
    fn opens(&self) -> bool {
        !matches!(self.point, "welcomed" | "rendezvous" | "connected")
    }

    fn args(&self, socket: &str) -> Vec<String> {
        vec![
            socket.to_owned(),
            self.cycle.to_string(),
            self.point.to_owned(),
            self.before.to_string(),
            self.loan.to_string(),
            self.burst.to_string(),
        ]
    }
}

/// What the hub saw of one victim's session.
#[derive(Debug)]
struct HubReport {
    /// Messages received in order before `Disconnected`.
    received: u64,
    /// Burst messages sent successfully.
    burst_sent: u64,
    /// How the burst ended early, if it did.
    burst_error: Option<SessionError>,
}

/// The in-process node every victim opens a session to: reads and checks each victim's
/// stream to its end, and sends each the burst its hello asks for.
#[derive(Debug, Default)]
struct Hub {
    waiting: Mutex<HashMap<u32, oneshot::Sender<HubReport>>>,
    errors: Mutex<Vec<String>>,
}

impl Hub {
    fn expect(&self, cycle: u32) -> oneshot::Receiver<HubReport> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(cycle, tx);
        rx
    }

    fn fail(&self, error: String) {
        self.errors.lock().unwrap().push(error);
    }

    async fn run(self: Arc<Self>, mut listener: Listener) {
        while let Some(session) = listener.accept().await {
            let hub = self.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.victim_session(session).await {
                    hub.fail(e);
                }
            });
        }
    }

    async fn victim_session(&self, session: Session) -> Result<(), String> {
        let (mut tx, mut rx) = session.split();
        let hello = match rx.next().await {
            Some(Ok(hello)) => hello,
            other => return Err(format!("a victim's session began with {other:?}")),
        };
        if hello.len() != 12 || &hello[..4] != HELLO {
            return Err(format!("bad hello {hello:?}"));
        }
        let cycle = u32::from_le_bytes(hello[4..8].try_into().expect("4 bytes"));
        let burst = u64::from(u32::from_le_bytes(hello[8..].try_into().expect("4 bytes")));
        drop(hello);
        let send = async {
            let stream = BURST_FLAG | cycle;
            for seq in 0..burst {
                let m = Bytes::from(payload::make(stream, seq, storm_len(stream, seq)));
                if let Err(e) = tx.send(m).await {
                    return (seq, Some(e));
                }
            }
            (burst, None)
        };
        let receive = async {
            let mut seq = 0u64;
            loop {
                match rx.next().await {
                    Some(Ok(m)) => {
                        payload::check(&m, cycle, seq, Some(storm_len(cycle, seq)))
                            .map_err(|e| format!("victim {cycle}: {e}"))?;
                        seq += 1;
                    }
                    Some(Err(SessionError::Disconnected)) => break,
                    other => {
                        return Err(format!(
                            "victim {cycle}: after {seq} messages expected Disconnected, got {other:?}"
                        ));
                    }
                }
            }
            if let Some(extra) = rx.next().await {
                return Err(format!(
                    "victim {cycle}: the stream went on after Disconnected: {extra:?}"
                ));
            }
            Ok(seq)
        };
        let ((burst_sent, burst_error), received) = tokio::join!(send, receive);
        let report = HubReport {
            received: received?,
            burst_sent,
            burst_error,
        };
        let waiter = self.waiting.lock().unwrap().remove(&cycle);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(report);
                Ok(())
            }
            None => Err(format!("victim {cycle}: nobody expected its session")),
        }
    }
}

/// Runs one victim to its point, kills it and checks what the hub saw.
async fn cycle(hub: &Hub, socket: &str, plan: &Plan) -> Result<(), String> {
    let report = plan.opens().then(|| hub.expect(plan.cycle));
    let mut victim = spawn_child("crasher", &plan.args(socket));
    let at = victim.expect("AT").await;
    victim.sigkill();
    victim.reap_killed().await;
    let Some(report) = report else {
        return Ok(());
    };
    let report = within("the hub sees the victim's end", report)
        .await
        .map_err(|_| format!("cycle {}: the hub dropped its report", plan.cycle))?;
    let sent = ok_field(&at, "sent");
    if report.received < sent {
        return Err(format!(
            "cycle {} ({plan:?}): the victim had sent {sent} messages before it was killed, \
             the hub received {} (lost)",
            plan.cycle, report.received
        ));
    }
    match report.burst_error {
        None | Some(SessionError::Disconnected) => {}
        Some(e) => {
            return Err(format!(
                "cycle {}: burst send failed with {e:?}",
                plan.cycle
            ));
        }
    }
    if plan.point == "hold" && report.burst_sent != plan.burst {
        return Err(format!(
            "cycle {}: the victim held all {} burst messages but the hub sent {}",
            plan.cycle, plan.burst, report.burst_sent
        ));
    }
    Ok(())
}

#[test]
fn crash_storm_leaves_nothing_behind() {
    // Counts of this process's descriptors must not see other tests' (cargo test threads).
    support::run_isolated("storm::crash_storm_leaves_nothing_behind", storm_body);
}

async fn storm_body() {
    let started = Instant::now();
    let seed = seed_from_env("SHMLINK_STORM_SEED");
    report(format!(
        "crash storm seed {seed:#x} (replay: SHMLINK_STORM_SEED={seed:#x})"
    ));
    let dir = TestDir::new("storm");
    let engine = support::engine_builder(&dir)
        .credits(CREDITS)
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let socket_arg = socket.display().to_string();

    let hub = Arc::new(Hub::default());
    let hub_node = within("connect", Node::connect(&socket, "storm-hub"))
        .await
        .expect("connect hub");
    let listener = within("listen", support::listen(&hub_node, HUB_SERVICE))
        .await
        .expect("listen");
    let hub_task = tokio::spawn(hub.clone().run(listener));

    // The well-behaved pair, streaming from now until the end.
    let mut echo = spawn_child("steady-echo", std::slice::from_ref(&socket_arg));
    echo.expect("LISTENING").await;
    let mut sender = spawn_child("steady-sender", std::slice::from_ref(&socket_arg));
    sender.expect("FLOWING").await;

    // Warm up (one victim per point: the runtime's child reaping, the hub's tasks), then take
    // the baselines.
    let mut warm = Rng::new(seed);
    for (i, (point, _)) in POINTS.iter().enumerate() {
        let plan = Plan::with_point(&mut warm, WARM_UP + i as u32, point);
        if let Err(e) = cycle(&hub, &socket_arg, &plan).await {
            panic!("warm-up: {e}");
        }
    }
    let base = within(
        "warm-up victims buried",
        engine.wait_for_stats(|s| s.nodes == 3 && s.session_ends == 2 && s.services == 2),
    )
    .await;
    let base_fds = settled_fds(None).await;
    let base_maps = block_mappings();
    let steady_before = steady_count(&mut sender).await;

    // The storm.
    let storm_started = Instant::now();
    let plans: Vec<Plan> = (0..CYCLES).map(|c| Plan::new(seed, c)).collect();
    let lanes = (0..LANES).map(|lane| {
        let (hub, socket, plans) = (&hub, &socket_arg, &plans);
        async move {
            for plan in plans.iter().skip(lane as usize).step_by(LANES as usize) {
                if let Err(e) = cycle(hub, socket, plan).await {
                    panic!("seed {seed:#x}: {e}");
                }
            }
        }
    });
    futures::future::join_all(lanes).await;
    let storm_time = storm_started.elapsed();
    let during = steady_count(&mut sender).await - steady_before;
    // The pair still streams (however the scheduler shared the cores meanwhile).
    within("the steady stream moves on", async {
        while steady_count(&mut sender).await <= steady_before + during {}
    })
    .await;

    // Nothing of the dead remains.
    let errors = std::mem::take(&mut *hub.errors.lock().unwrap());
    assert!(
        errors.is_empty(),
        "seed {seed:#x}: the hub saw: {errors:#?}"
    );
    assert!(
        hub.waiting.lock().unwrap().is_empty(),
        "every victim's session reached the hub"
    );
    let after = within(
        "every victim buried",
        engine.wait_for_stats(|s| {
            s.nodes == base.nodes
                && s.session_ends == base.session_ends
                && s.services == base.services
        }),
    )
    .await;
    assert_eq!(
        after.violations, 0,
        "seed {seed:#x}: a kill is not a protocol violation: {after:?}"
    );
    let fds = settled_fds(Some(base_fds.len())).await;
    assert_eq!(
        fds.len(),
        base_fds.len(),
        "seed {seed:#x}: descriptors not back to baseline:\nbefore {base_fds:?}\nafter  {fds:?}"
    );
    assert_eq!(
        block_mappings(),
        base_maps,
        "seed {seed:#x}: block mappings not back to baseline"
    );

    // The well-behaved pair lost and duplicated nothing.
    sender.send("STOP").await;
    let sent = sender.ok().await;
    let received = echo.ok().await;
    assert_eq!(
        ok_field(&sent, "sent"),
        ok_field(&received, "received"),
        "{sent} / {received}"
    );
    assert_eq!(ok_field(&sent, "sent"), ok_field(&sent, "echoed"), "{sent}");
    sender.exit().await;
    echo.exit().await;
    // The hub's task holds its listener (and so its node): stop it.
    hub_task.abort();
    let _ = hub_task.await;
    drop(hub_node);
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0 && s.services == 0),
    )
    .await;
    let stats = engine.stats();
    engine.shutdown().await;

    let mut points: BTreeMap<&str, u32> = BTreeMap::new();
    for plan in &plans {
        *points.entry(plan.point).or_default() += 1;
    }
    report(format!(
        "{CYCLES} victims killed ({points:?}) in {storm_time:.1?} ({LANES} at a time); steady \
         pair exchanged {} messages each way, {} during the storm; engine copied {} messages; \
         total {:.1?}",
        ok_field(&sent, "sent"),
        during,
        stats.messages,
        started.elapsed()
    ));
}

/// Asks the steady sender how many echoes it has checked.
async fn steady_count(sender: &mut support::ChildProc) -> u64 {
    sender.send("COUNT").await;
    sender.expect("COUNT").await.parse().expect("COUNT answer")
}

/// This process's open descriptors, once their count is stable (or equals `want`): a child's
/// pipes and pidfd close asynchronously after it is reaped.
async fn settled_fds(want: Option<usize>) -> Vec<(i32, String)> {
    let mut fds = open_fds();
    for _ in 0..10_000 {
        tokio::task::yield_now().await;
        let again = open_fds();
        let settled = match want {
            Some(n) => again.len() == n,
            None => again.len() == fds.len(),
        };
        fds = again;
        if settled {
            break;
        }
    }
    fds
}
