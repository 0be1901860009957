//! The `fanout` pattern: one publisher (the measuring process) and N subscriber processes
//! (the `serve` role), every message to every subscriber, nothing lost.
//!
//! ```text
//!  publisher ──BATCH messages, flush (or notify)──> transport ──> subscriber 1..N
//!      │            ... until the phase's time is up, then the marker             │ checks every
//!      └──────────<── "ack <count>" on each subscriber's stdout ──────────────────┘ byte, counts
//! ```
//!
//! What is shared by the transports lives here: the subscriber processes and their acks, the
//! measuring loop with its CPU accounting, and the subscribers' tally. The publisher and
//! subscriber of each transport live in its file (`shm::fanout`, `uds::fanout`,
//! `iox::fanout`).
//!
//! Acks travel on the subscribers' stdout pipes, the same for every transport, so that no
//! transport needs a return path for them; one ack per subscriber per phase costs nothing
//! measurable. A phase ends once every subscriber has acknowledged the marker with the exact
//! number of messages published before it: the rate per subscriber is messages published over
//! the time until the last subscriber had them all.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::common::*;
use crate::{
    FANOUT_TRANSPORTS, Key, Measured, Pattern, Placement, Res, Spec, Transport, fmt_si, size_label,
};

/// What each subscriber process says on its stdout: `ready`, then `ack <count>` per marker.
pub(crate) struct Subscribers {
    children: Vec<ChildGuard>,
    /// Lines of every subscriber, tagged with its index; `None` when its stdout ended.
    lines: mpsc::UnboundedReceiver<(usize, Option<String>)>,
}

impl Subscribers {
    /// Starts `spec.subscribers` subscriber processes (the `serve` role) that find the
    /// publisher at `addr`.
    pub(crate) fn spawn(spec: &Spec, addr: &str) -> Res<Self> {
        if spec.subscribers == 0 {
            return Err("fanout needs at least one subscriber".into());
        }
        let (tx, lines) = mpsc::unbounded_channel();
        let mut children = Vec::with_capacity(spec.subscribers);
        for k in 0..spec.subscribers {
            let mut child = spawn_role("serve", &server_spec(spec, addr.to_owned()), true)?;
            let stdout = child.0.stdout.take().ok_or("no stdout")?;
            let tx = tx.clone();
            // A thread per subscriber: blocking reads of a pipe stay off the runtime.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) => {
                            if tx.send((k, Some(line))).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((k, None));
            });
            children.push(child);
        }
        Ok(Self { children, lines })
    }

    /// The process ids of the subscribers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ChildGuard::pid).collect()
    }

    /// The next line of any subscriber; an error if one exited.
    async fn line(&mut self) -> Res<(usize, String)> {
        match self.lines.recv().await {
            Some((k, Some(line))) => Ok((k, line)),
            Some((k, None)) => Err(format!("subscriber {k} exited").into()),
            None => Err("no subscriber left".into()),
        }
    }

    /// Waits until every subscriber said `ready`.
    pub(crate) async fn ready(&mut self) -> Res<()> {
        for _ in 0..self.children.len() {
            let (k, line) = self.line().await?;
            if line != "ready" {
                return Err(format!("subscriber {k} said {line:?}").into());
            }
        }
        Ok(())
    }

    /// Waits until every subscriber acknowledged the marker with `sent` messages.
    pub(crate) async fn acks(&mut self, sent: u64) -> Res<()> {
        let mut acked = vec![false; self.children.len()];
        for _ in 0..self.children.len() {
            let (k, line) = self.line().await?;
            let count = line
                .strip_prefix("ack ")
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or_else(|| format!("subscriber {k} said {line:?}"))?;
            if std::mem::replace(&mut acked[k], true) {
                return Err(format!("subscriber {k} acknowledged twice").into());
            }
            if count != sent {
                return Err(format!(
                    "wrong data: subscriber {k} counted {count} messages, {sent} were published"
                )
                .into());
            }
        }
        Ok(())
    }

    /// Waits for every subscriber to exit by itself (after the quit message or the end of
    /// its stream), off the runtime.
    pub(crate) async fn finish(self) -> Res<()> {
        tokio::task::spawn_blocking(move || {
            for child in self.children {
                child.finish(Duration::from_secs(10))?;
            }
            Ok(())
        })
        .await?
    }
}

/// The measuring loop: a warm-up phase, then a measured one. `phase(d)` publishes batches
/// for about `d`, then the marker, and returns how many messages it published; the phase ends
/// when every subscriber acknowledged them all. CPU time: this process (the publisher), the
/// subscribers and, if any, the engine's process.
pub(crate) async fn fanout_loop(
    spec: &Spec,
    subs: &mut Subscribers,
    engine: Option<u32>,
    mut phase: impl AsyncFnMut(Duration) -> Res<u64>,
) -> Res<Measured> {
    let sent = phase(spec.warmup()).await?;
    subs.acks(sent).await?;
    let pids = subs.pids();
    let sample = || {
        (
            self_cpu_s(),
            pids.iter().map(|&p| proc_cpu_s(p)).sum::<f64>(),
            engine.map_or(0.0, proc_cpu_s),
        )
    };
    let (pub0, subs0, engine0) = sample();
    let t0 = Instant::now();
    let sent = phase(spec.window()).await?;
    subs.acks(sent).await?;
    let secs = t0.elapsed().as_secs_f64();
    let (pub1, subs1, engine1) = sample();
    let per_million = |cpu_s: f64| cpu_s / sent.max(1) as f64 * 1e6;
    let (publisher, receivers, engine_cpu) = (pub1 - pub0, subs1 - subs0, engine1 - engine0);
    Ok(Measured {
        msgs_per_s: Some(sent as f64 / secs),
        bytes_per_s: Some(sent as f64 * spec.size as f64 / secs),
        cpu_s_per_million: Some(per_million(publisher + receivers + engine_cpu)),
        engine_cpu_s_per_million: engine.map(|_| per_million(engine_cpu)),
        sender_cpu_s_per_million: Some(per_million(publisher)),
        receivers_cpu_s_per_million: Some(per_million(receivers)),
        ..Measured::default()
    })
}

/// A subscriber's count of the messages of the current phase.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    count: u64,
}

impl Tally {
    /// Checks one received message (every byte); at a marker says `ack <count>` on stdout
    /// and starts counting again. False at the quit message.
    pub(crate) fn take(&mut self, msg: &[u8]) -> Res<bool> {
        match msg.len() {
            QUIT_LEN => return Ok(false),
            MARKER_LEN => {
                println!("ack {}", self.count);
                self.count = 0;
            }
            _ => {
                check_streamed(msg, self.count)?;
                self.count += 1;
            }
        }
        Ok(true)
    }
}

/// Ends this subscriber process when its parent's end of its stdin closes, whatever it is
/// doing: a measuring process killed at its time limit leaves no subscriber behind (an
/// iceoryx2 subscriber would wait, or spin, for good).
pub(crate) fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
}

// ===== The report =====

/// Whether a ratio meets its target, as the report says it.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// The `fanout` blocks of the report: per-subscriber rates with shmlink's ratio to each
/// transport, CPU per published message by process, and the issue's targets at 64 KiB.
pub(crate) fn table(
    out: &mut String,
    medians: &BTreeMap<Key, Measured>,
    transports: &[Transport],
    placements: &[Placement],
) {
    use std::fmt::Write as _;
    let mut cases: Vec<(usize, usize)> = medians
        .keys()
        .filter(|k| k.0 == Pattern::Fanout)
        .map(|k| (k.1, k.2))
        .collect();
    cases.dedup();
    if cases.is_empty() {
        return;
    }
    let transports: Vec<Transport> = transports
        .iter()
        .copied()
        .filter(|t| FANOUT_TRANSPORTS.contains(t))
        .collect();
    let get = |size, subs, placement, t| medians.get(&(Pattern::Fanout, size, subs, placement, t));
    const W: usize = 18;
    let _ = writeln!(
        out,
        "\nfanout: 1 publisher -> N subscriber processes, every message to every subscriber (shmlink: a raw topic, Block, the engine in a process of its own pinned with the publisher)"
    );
    let _ = write!(
        out,
        "per-subscriber messages/s ((x.xx) = shmlink / transport)\n{:<22}",
        "size subs placement"
    );
    for t in &transports {
        let _ = write!(out, "{:>W$}", t.name());
    }
    out.push('\n');
    for &(size, subs) in &cases {
        for &placement in placements {
            let _ = write!(
                out,
                "{:<22}",
                format!("{} x{subs} {}", size_label(size), placement.name())
            );
            let base = get(size, subs, placement, Transport::Shmlink).and_then(|m| m.msgs_per_s);
            for &t in &transports {
                let v = get(size, subs, placement, t).and_then(|m| m.msgs_per_s);
                let cell = match (v, base) {
                    (Some(v), Some(b)) if t != Transport::Shmlink && v > 0.0 => {
                        format!("{} ({:.2})", fmt_si(v), b / v)
                    }
                    (Some(v), _) => fmt_si(v),
                    (None, _) => "-".to_owned(),
                };
                let _ = write!(out, "{cell:>W$}");
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\nfanout CPU s per million published messages, by process (engine: (x.xx) = value / value with 1 subscriber)"
    );
    let _ = writeln!(
        out,
        "{:<22}{:<16}{:>12}{:>12}{:>14}{:>18}",
        "size subs placement", "transport", "all", "publisher", "subscribers", "engine"
    );
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    for &(size, subs) in &cases {
        for &placement in placements {
            for &t in &transports {
                let Some(m) = get(size, subs, placement, t) else {
                    continue;
                };
                let engine = match (
                    m.engine_cpu_s_per_million,
                    get(size, 1, placement, t).and_then(|b| b.engine_cpu_s_per_million),
                ) {
                    (Some(v), Some(b)) if b > 0.0 => format!("{v:.2} ({:.2})", v / b),
                    (v, _) => f(v),
                };
                let _ = writeln!(
                    out,
                    "{:<22}{:<16}{:>12}{:>12}{:>14}{:>18}",
                    format!("{} x{subs} {}", size_label(size), placement.name()),
                    t.name(),
                    f(m.cpu_s_per_million),
                    f(m.sender_cpu_s_per_million),
                    f(m.receivers_cpu_s_per_million),
                    engine
                );
            }
        }
    }
    targets(out, medians, placements);
}

/// The issue's targets, with 64 KiB payloads: the engine's CPU per published message with N
/// subscribers at most 2 x with 1 (one copy, not N); shmlink's per-subscriber rate at least
/// iceoryx2's and at least 3 x UDS fan-out's.
fn targets(out: &mut String, medians: &BTreeMap<Key, Measured>, placements: &[Placement]) {
    use std::fmt::Write as _;
    const SIZE: usize = 64 << 10;
    let get = |subs, placement, t| medians.get(&(Pattern::Fanout, SIZE, subs, placement, t));
    let mut counts: Vec<usize> = medians
        .keys()
        .filter(|k| k.0 == Pattern::Fanout && k.1 == SIZE)
        .map(|k| k.2)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nfanout targets at 64 KiB");
    for &placement in placements {
        for &subs in &counts {
            let Some(shm) = get(subs, placement, Transport::Shmlink) else {
                continue;
            };
            let label = format!("x{subs} {}", placement.name());
            if subs > 1
                && let (Some(v), Some(b)) = (
                    shm.engine_cpu_s_per_million,
                    get(1, placement, Transport::Shmlink).and_then(|m| m.engine_cpu_s_per_million),
                )
                && b > 0.0
            {
                let r = v / b;
                let _ = writeln!(
                    out,
                    "{label:<12} engine CPU per published message / with 1 subscriber: {r:.2} (target <= 2): {}",
                    verdict(r <= 2.0)
                );
            }
            for (t, target) in [
                (Transport::Iceoryx2Event, 1.0),
                (Transport::Iceoryx2Poll, 1.0),
                (Transport::Uds, 3.0),
            ] {
                if let (Some(v), Some(b)) = (
                    shm.msgs_per_s,
                    get(subs, placement, t).and_then(|m| m.msgs_per_s),
                ) && b > 0.0
                {
                    let r = v / b;
                    let _ = writeln!(
                        out,
                        "{label:<12} per-subscriber rate, shmlink / {}: {r:.2} (target >= {target}): {}",
                        t.name(),
                        verdict(r >= target)
                    );
                }
            }
        }
    }
}
