//! shmlink beside the alternatives, measured in one run between real processes.
//!
//! Regenerate the published figures (from the workspace root; relative paths are resolved
//! against the workspace root, whatever directory cargo runs the bench in):
//!
//! ```text
//! cargo bench -p shmlink-benches --bench compare -- --json docs/bench.json
//! cargo run --release -p shmlink-benches --bin plot -- docs/bench.json docs/rtt.svg
//! ```
//!
//! `cargo bench -p shmlink-benches --bench compare -- [--quick] [--json FILE] [--runs N]`
//! `[--transports a,b] [--patterns rtt,stream,stream-flush,concurrent,idle,idle-nodes,fanout]`
//! `[--sizes 64,1K,16M] [--idle-nodes 0,100,1000] [--subscribers 1,4,16]`
//! `[--placements split,free] [--window-ms MS] [--warmup-ms MS]`
//!
//! `--sizes` sets the sizes of `rtt` and of `fanout`, from 8 B to 1 GiB (`64,1M,256M,1G`).
//!
//! Large round trips (issue 15), a few GiB alive at once at most:
//!
//! ```text
//! cargo bench -p shmlink-benches --bench compare -- --patterns rtt --sizes 64,1M,16M,256M,1G \
//!     --transports shmlink,uds,tcp,iceoryx2-event,iceoryx2-poll --placements split --runs 3 \
//!     --json docs/bench-large.json
//! ```
//!
//! A round trip that outlasts the window is measured `MIN_ITERS` (5) times after
//! `MIN_WARMUP_ITERS` (2) warm-ups, so at 256 MiB and 1 GiB each p50 is the median of 5 or a
//! few more samples and p99 the slowest of them; the progress lines say how many. shmlink
//! sends payloads past its arenas (32 MiB) in hand-off segments; `uds` and `tcp` write each frame
//! in place in the codec's write buffer. iceoryx2 preallocates its segments for the largest
//! payload (`iox::RTT_CHUNKS` payloads, zeroed at creation), so its round trips stop at
//! `iox::MAX_RTT_SHM` / `RTT_CHUNKS` (455 MiB): larger sizes are skipped for it with the
//! reason printed, never silently.
//!
//! `--patterns queue` (not in the default set): durable queues, shmlink against NATS
//! JetStream and a naive redb queue; its own setup (nats-server) and figures are described
//! in `queue.rs`.
//!
//! (Plain `cargo bench --bench compare` from the workspace root does not find the target: the
//! root package has `autobenches = false` and `benches/` is not a default member. Pass
//! `-p shmlink-benches`, or `--workspace`: `cargo bench --workspace --bench compare -- --quick`.)
//!
//! # What is measured
//!
//! Transports: `shmlink` (raw `Bytes` sessions through the engine, loans on the send side),
//! `shmlink-typed` (a `#[derive(Message)]` struct with a `serde_bytes` payload: the tower
//! client and `Node::serve` for requests, a typed session for streams), `uds` (Tokio
//! `UnixStream` + `LengthDelimitedCodec`), `tcp` (Tokio `TcpStream` on 127.0.0.1 with
//! `TCP_NODELAY`, same codec), `tarpc` (tarpc over a Unix socket, `serde_transport` with
//! tokio-serde's Bincode), `iceoryx2-event` and `iceoryx2-poll` (iceoryx2 request/response for
//! requests, publish/subscribe for streams, `[u8]` slice payloads, waiting on an event
//! listener or busy-polling), `raw-ring` (the floor: an ipc-core block's deliver and release
//! rings between two processes, no engine, batched on both sides, spinning; see
//! `raw_ring.rs`), `shmipc` (CloudWeGo's shared-memory streams, V4 with eventfd wake-ups,
//! length-prefixed frames written in place). `raw-ring` measures `stream` only, `shmipc` both
//! stream patterns, tarpc every pattern but `stream-flush`.
//!
//! Every payload is written by its sender (every byte) and read by its receiver (a checksum of
//! every byte, checked against the expected value: a wrong byte fails the run). The server of
//! a request answers with a payload of the same size whose bytes depend on the request's
//! checksum, so both directions are checked.
//!
//! Patterns:
//! - `rtt`: one request, one reply, sequential; p50 and p99 of the round trip after a warm-up.
//! - `stream`: one-way messages as fast as the sender can push them, ended by a marker the
//!   receiver acknowledges; messages/s and bytes/s. Socket senders `feed` and `flush` every 256
//!   messages, shmlink `feed`s too; tarpc (which has no one-way call) keeps 256 calls in flight;
//!   iceoryx2 publishes (and, event mode, notifies once per 256 messages).
//! - `stream-flush` (64 B): the same stream, but every message is sent and flushed on its own
//!   (iceoryx2 notifies after each): one wake-up per message, the cost a producer that cannot
//!   batch pays.
//! - `concurrent`: 64 requests of 64 B in flight, requests/s.
//! - `idle`: the engine, in a process of its own with two connected nodes holding open
//!   sessions (raw and request/response), over a 5 s window: its CPU seconds.
//! - `idle-nodes` (shmlink only, not in the default set): the engine in a process of its own,
//!   N idle nodes connected to it (`--idle-nodes`, 0, 100 and 1000 by default; one helper
//!   process, each node with an open session), and an active pair (the measuring process and
//!   a server) exchanging 64 B round trips: p50, p99 and the engine's CPU seconds per million
//!   messages, each with its ratio to N = 0. An engine whose cost follows work keeps them
//!   near 1.
//! - `fanout` (`shmlink`, `uds`, `iceoryx2-event`, `iceoryx2-poll`; not in the default set:
//!   it starts up to 16 processes per measurement): one publisher (the measuring process)
//!   and N subscriber processes (`--subscribers`, 1, 4 and 16 by default), 64 B and 64 KiB
//!   payloads by default. Every subscriber receives every message: shmlink publishes raw
//!   `Bytes` on a topic to subscriptions with `Overflow::Block` (the engine in a process of
//!   its own, pinned with the publisher under `split`, so that its CPU time is measured
//!   alone); iceoryx2 publishes to N subscribers with `RetryUntilDelivered`, notifying once
//!   per 256 messages (event) or not (poll); UDS writes each message to N sockets, one per
//!   subscriber, feeding 256 frames to every socket before flushing them all at once. The
//!   publisher writes every byte of each message once; each subscriber checks every byte.
//!   After each phase every subscriber acknowledges the count on its stdout pipe (the same
//!   for every transport). Reports messages/s per subscriber (messages published over the
//!   time until the last subscriber had them all), the CPU of every process per million
//!   published messages (also split into publisher, subscribers and, for shmlink, engine:
//!   `engine_cpu_s_per_million` in the JSON), and the issue's targets at 64 KiB: the
//!   engine's CPU per published message with N subscribers over that with 1 (at most 2),
//!   shmlink's per-subscriber rate over iceoryx2's (at least 1) and over UDS's (at least 3).
//!
//! `cpu_s_per_million` is the CPU time of every process of the transport (client, server and,
//! for shmlink, the engine) during the measured window, per million one-way messages: a round
//! trip or a request counts two messages; a message published to N subscribers counts one. The client reads its own CPU time
//! (`CLOCK_PROCESS_CPUTIME_ID`) and the server's (`/proc/PID/task/*/schedstat`, nanoseconds)
//! at both ends of the window.
//!
//! Each measurement is a fresh pair of processes: this binary re-executes itself as the
//! measuring client (which hosts the shmlink engine, embedded on its current-thread Tokio
//! runtime, as a user's application would) and the client starts the server. Placement
//! `split` pins the client (and so the engine) to one CPU and the server to another; `free`
//! leaves both to the scheduler. Every figure is the median over `--runs` runs (5; 3 with
//! `--quick`), and within a run the transports and placements are interleaved so drift hits
//! them alike.
//!
//! `--quick`: 3 runs, a 20 ms warm-up and a 100 ms window per measurement (instead of 200 ms
//! and 1 s), all sizes, and the idle window measured once per placement.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmlink_benches::{Pattern, Placement, Record, TRANSPORTS, Transport, resolve};

mod common;
mod fanout;
mod idle;
#[path = "iceoryx2.rs"]
mod iox;
mod queue;
mod raw_ring;
#[path = "tarpc.rs"]
mod rpc;
#[path = "shmlink.rs"]
mod shm;
#[path = "shmipc.rs"]
mod shmipc_peer;
mod tcp;
mod uds;

use common::*;

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// One measurement, handed to the measuring process and from it to its server.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Spec {
    transport: Transport,
    pattern: Pattern,
    placement: Placement,
    size: usize,
    /// CPU of the client (and the embedded engine) and of the server under `split`.
    cpus: Option<(usize, usize)>,
    warmup_ms: u64,
    window_ms: u64,
    /// Requests in flight (`concurrent`).
    inflight: usize,
    /// Subscriber processes (`fanout`).
    #[serde(default)]
    subscribers: usize,
    /// Where the server finds the client: a socket path, a port, a service name.
    addr: String,
    /// `queue`: producer processes.
    #[serde(default)]
    producers: usize,
    /// `queue`: which producer this is.
    #[serde(default)]
    index: usize,
}

impl Spec {
    fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }
}

/// What one measuring process reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct Measured {
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
    msgs_per_s: Option<f64>,
    bytes_per_s: Option<f64>,
    cpu_s_per_million: Option<f64>,
    /// `idle`: the engine's CPU seconds over the window.
    cpu_s: Option<f64>,
    /// `idle`: the two nodes' CPU seconds over the window (printed, not in the JSON).
    nodes_cpu_s: Option<f64>,
    /// `fanout`, shmlink: the engine's CPU seconds per million published messages.
    engine_cpu_s_per_million: Option<f64>,
    /// `fanout`: the publisher's CPU seconds per million published messages (printed).
    sender_cpu_s_per_million: Option<f64>,
    /// `fanout`: all subscribers' CPU seconds per million published messages (printed).
    receivers_cpu_s_per_million: Option<f64>,
    /// `queue`: publisher confirms per second.
    #[serde(default)]
    confirms_per_s: Option<f64>,
    /// `rtt`: round trips measured (printed; few for the largest sizes).
    #[serde(default)]
    samples: Option<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some(
            role @ ("measure" | "serve" | "engine-host" | "idle-host" | "queue-produce"
            | "queue-consume"),
        ) => {
            let spec = args
                .get(2)
                .ok_or_else(|| BoxError::from("missing spec"))
                .and_then(|s| serde_json::from_str::<Spec>(s).map_err(Into::into));
            spec.and_then(|spec| match role {
                "measure" => measure(&spec),
                "serve" => serve(&spec),
                "idle-host" => idle::idle_host(&spec),
                "queue-produce" => queue::produce(&spec),
                "queue-consume" => queue::consume(&spec),
                _ => idle::engine_host(&spec),
            })
        }
        _ => coordinate(&args[1..]),
    };
    if let Err(e) = result {
        eprintln!(
            "compare {}: error: {e}",
            args.get(1).map_or("", String::as_str)
        );
        std::process::exit(1);
    }
}

// ===== The measuring client =====

/// Runs one measurement and prints `RESULT <json>`.
fn measure(spec: &Spec) -> Res<()> {
    pin(spec.cpus.map(|c| c.0))?;
    let dir = scratch_dir()?;
    let result = match spec.transport {
        _ if spec.pattern == Pattern::Queue => queue::measure(spec, &dir),
        Transport::Shmlink if spec.pattern == Pattern::Fanout => shm::measure_fanout(spec, &dir),
        Transport::Uds if spec.pattern == Pattern::Fanout => {
            current_thread()?.block_on(uds::measure_fanout(spec, &dir))
        }
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll if spec.pattern == Pattern::Fanout => {
            iox::fanout_client(spec)
        }
        _ if spec.pattern == Pattern::Fanout => {
            Err(format!("no fanout for {}", spec.transport.name()).into())
        }
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => iox::client(spec),
        Transport::RawRing => raw_ring::client(spec),
        _ if spec.pattern == Pattern::Idle => idle::measure_idle(spec, &dir),
        _ if spec.pattern == Pattern::IdleNodes => idle::measure_idle_nodes(spec, &dir),
        _ => current_thread()?.block_on(measure_async(spec, &dir)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!("RESULT {}", serde_json::to_string(&result?)?);
    Ok(())
}

async fn measure_async(spec: &Spec, dir: &Path) -> Res<Measured> {
    match spec.transport {
        Transport::Shmlink | Transport::ShmlinkTyped => shm::measure(spec, dir).await,
        Transport::Uds => uds::measure(spec, dir).await,
        Transport::Tcp => tcp::measure(spec).await,
        Transport::Tarpc => rpc::measure(spec, dir).await,
        Transport::Shmipc => shmipc_peer::measure(spec, dir).await,
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll | Transport::RawRing => {
            unreachable!("measured without a runtime")
        }
        Transport::Jetstream | Transport::RedbNaive | Transport::ShmlinkMemory => {
            Err("a queue-only transport".into())
        }
    }
}

// ===== The server role =====

fn serve(spec: &Spec) -> Res<()> {
    pin(spec.cpus.map(|c| c.1))?;
    if spec.pattern == Pattern::Fanout {
        fanout::exit_with_parent();
    }
    match spec.transport {
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => iox::serve(spec),
        Transport::RawRing => raw_ring::serve(spec),
        _ => current_thread()?.block_on(serve_async(spec)),
    }
}

async fn serve_async(spec: &Spec) -> Res<()> {
    match spec.transport {
        Transport::Uds => uds::serve(spec).await,
        Transport::Tcp => tcp::serve(spec).await,
        Transport::Tarpc => rpc::serve(spec).await,
        Transport::Shmlink | Transport::ShmlinkTyped => shm::serve(spec).await,
        Transport::Shmipc => shmipc_peer::serve(spec).await,
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll | Transport::RawRing => {
            unreachable!("served without a runtime")
        }
        Transport::Jetstream | Transport::RedbNaive | Transport::ShmlinkMemory => {
            Err("a queue-only transport".into())
        }
    }
}

// ===== The coordinator =====

struct Options {
    quick: bool,
    runs: usize,
    json: Option<PathBuf>,
    transports: Vec<Transport>,
    /// Whether `--transports` was given (the queue pattern has transports of its own).
    transports_given: bool,
    patterns: Vec<Pattern>,
    rtt_sizes: Vec<usize>,
    stream_sizes: Vec<usize>,
    fanout_sizes: Vec<usize>,
    /// Subscriber processes (`fanout`).
    subscribers: Vec<usize>,
    /// `stream-flush`: 64 B only.
    stream_flush_sizes: Vec<usize>,
    /// Idle nodes beside the active pair (`idle-nodes`).
    idle_nodes: Vec<usize>,
    placements: Vec<Placement>,
    warmup_ms: u64,
    window_ms: u64,
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|v| v * mult)
}

fn options(args: &[String]) -> Res<Options> {
    let mut o = Options {
        quick: false,
        runs: 5,
        json: None,
        transports: TRANSPORTS.to_vec(),
        transports_given: false,
        patterns: vec![
            Pattern::Rtt,
            Pattern::Stream,
            Pattern::Concurrent,
            Pattern::Idle,
        ],
        rtt_sizes: vec![64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 16 << 20],
        stream_sizes: vec![64, 4 << 10],
        fanout_sizes: vec![64, 64 << 10],
        subscribers: vec![1, 4, 16],
        stream_flush_sizes: vec![64],
        idle_nodes: vec![0, 100, 1000],
        placements: vec![Placement::Split, Placement::Free],
        warmup_ms: 200,
        window_ms: 1000,
    };
    let mut runs = None;
    let (mut warmup, mut window) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--runs" => runs = Some(value()?.parse::<usize>()?.max(1)),
            "--json" => o.json = Some(resolve(&value()?)),
            "--transports" => {
                o.transports = value()?
                    .split(',')
                    .map(|t| Transport::parse(t).ok_or_else(|| format!("unknown transport {t}")))
                    .collect::<Result<_, _>>()?;
                o.transports_given = true;
            }
            "--patterns" => {
                o.patterns = value()?
                    .split(',')
                    .map(|p| Pattern::parse(p).ok_or_else(|| format!("unknown pattern {p}")))
                    .collect::<Result<_, _>>()?;
            }
            "--sizes" => {
                o.rtt_sizes = value()?
                    .split(',')
                    .map(|s| {
                        parse_size(s)
                            .filter(|v| (MIN_SIZE..=MAX_SIZE).contains(v))
                            .ok_or_else(|| {
                                format!("bad size {s} ({MIN_SIZE} B to {})", size_label(MAX_SIZE))
                            })
                    })
                    .collect::<Result<_, _>>()?;
                o.fanout_sizes.clone_from(&o.rtt_sizes);
            }
            "--subscribers" => {
                o.subscribers = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_SUBSCRIBERS).contains(n))
                            .ok_or_else(|| {
                                format!("bad subscriber count {n} (1 to {MAX_SUBSCRIBERS})")
                            })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--placements" => {
                o.placements = value()?
                    .split(',')
                    .map(|p| Placement::parse(p).ok_or_else(|| format!("unknown placement {p}")))
                    .collect::<Result<_, _>>()?;
            }
            "--idle-nodes" => {
                o.idle_nodes = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| n % 2 == 0)
                            .ok_or_else(|| format!("bad idle node count {n} (an even number)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--warmup-ms" => warmup = Some(value()?.parse()?),
            "--window-ms" => window = Some(value()?.parse()?),
            _ => {} // cargo bench passes --bench
        }
    }
    if o.quick {
        o.runs = 3;
        o.warmup_ms = 20;
        o.window_ms = 100;
    }
    o.runs = runs.unwrap_or(o.runs);
    o.warmup_ms = warmup.unwrap_or(o.warmup_ms);
    o.window_ms = window.unwrap_or(o.window_ms);
    Ok(o)
}

/// The most subscriber processes of `fanout`.
const MAX_SUBSCRIBERS: usize = 64;

/// A case: its pattern, payload size (or, `idle-nodes`, the number of idle nodes) and
/// subscribers (`fanout`; 0 otherwise).
type Case = (Pattern, usize, usize);

type Key = (Pattern, usize, usize, Placement, Transport);

/// The transports that have a `fanout`.
const FANOUT_TRANSPORTS: [Transport; 4] = [
    Transport::Shmlink,
    Transport::Uds,
    Transport::Iceoryx2Event,
    Transport::Iceoryx2Poll,
];

/// Runs one measuring process, with a time limit.
fn run_one(spec: &Spec) -> Res<Measured> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("measure")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    // The result line arrives (or stdout ends) when the measurement is over: wait for that
    // without polling, so this process stays asleep while others are measured.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("RESULT ").map(str::to_owned));
        let _ = tx.send(line);
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Round trips of a large payload are each measured (`MIN_WARMUP_ITERS` + `MIN_ITERS`
    // times) however long they take: a second each per 64 MiB more, only to catch a hang
    // (a 1 GiB round trip takes 2-5 s on a loaded 2-core machine).
    let rounds = MIN_ITERS as u64 + MIN_WARMUP_ITERS;
    let large = Duration::from_secs((spec.size >> 26) as u64 * rounds);
    let limit = Duration::from_millis(spec.warmup_ms + spec.window_ms) * 3
        + Duration::from_secs(60)
        + large;
    let line = rx.recv_timeout(limit);
    if line.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let stderr = err.join().unwrap_or_default();
    match line {
        Ok(Some(line)) if status.success() => Ok(serde_json::from_str(&line)?),
        Err(_) => Err(format!("timed out after {limit:?}; stderr: {}", stderr.trim()).into()),
        _ => Err(format!("{status}: {}", stderr.trim()).into()),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn median_of(runs: &[Measured]) -> Measured {
    let m = |f: fn(&Measured) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    Measured {
        p50_ns: m(|r| r.p50_ns),
        p99_ns: m(|r| r.p99_ns),
        msgs_per_s: m(|r| r.msgs_per_s),
        bytes_per_s: m(|r| r.bytes_per_s),
        cpu_s_per_million: m(|r| r.cpu_s_per_million),
        cpu_s: m(|r| r.cpu_s),
        nodes_cpu_s: m(|r| r.nodes_cpu_s),
        engine_cpu_s_per_million: m(|r| r.engine_cpu_s_per_million),
        sender_cpu_s_per_million: m(|r| r.sender_cpu_s_per_million),
        receivers_cpu_s_per_million: m(|r| r.receivers_cpu_s_per_million),
        confirms_per_s: m(|r| r.confirms_per_s),
        samples: m(|r| r.samples),
    }
}

fn coordinate(args: &[String]) -> Res<()> {
    let o = options(args)?;
    let cpus = allowed_cpus();
    let pair = (cpus.len() >= 2).then(|| (cpus[0], cpus[1]));
    let placements: Vec<Placement> = o
        .placements
        .iter()
        .copied()
        .filter(|&p| p == Placement::Free || pair.is_some())
        .collect();
    if pair.is_none() && o.placements.contains(&Placement::Split) {
        eprintln!("fewer than two CPUs allowed: placement split skipped");
    }
    let mut cases: Vec<Case> = Vec::new();
    for &p in &o.patterns {
        match p {
            Pattern::Rtt => cases.extend(o.rtt_sizes.iter().map(|&s| (p, s, 0))),
            Pattern::Stream => cases.extend(o.stream_sizes.iter().map(|&s| (p, s, 0))),
            Pattern::StreamFlush => {
                cases.extend(o.stream_flush_sizes.iter().map(|&s| (p, s, 0)));
            }
            Pattern::Concurrent => cases.push((p, 64, 0)),
            // Only shmlink has an engine to idle; the case's number is N, not a size.
            Pattern::IdleNodes if o.transports.contains(&Transport::Shmlink) => {
                cases.extend(o.idle_nodes.iter().map(|&n| (p, n, 0)));
            }
            Pattern::Fanout => {
                for &size in &o.fanout_sizes {
                    cases.extend(o.subscribers.iter().map(|&n| (p, size, n)));
                }
            }
            // Run apart, with transports and cases of its own (queue.rs).
            Pattern::Idle | Pattern::IdleNodes | Pattern::Queue => {}
        }
    }
    let transports_for = |pattern| match pattern {
        Pattern::IdleNodes => vec![Transport::Shmlink],
        Pattern::Fanout => o
            .transports
            .iter()
            .copied()
            .filter(|t| FANOUT_TRANSPORTS.contains(t))
            .collect(),
        _ => o
            .transports
            .iter()
            .copied()
            .filter(|t| TRANSPORTS.contains(t) && t.measures(pattern))
            .collect(),
    };
    // Measurements a transport cannot make, each said once, never dropped silently.
    let mut skipped: Vec<String> = Vec::new();
    for &(pattern, size, subscribers) in &cases {
        for transport in transports_for(pattern) {
            if let Some(why) = beyond_limit(transport, pattern, size) {
                let line = format!(
                    "{} {} {}: skipped: {why}",
                    transport.name(),
                    pattern.name(),
                    case_label(pattern, size, subscribers)
                );
                eprintln!("compare: {line}");
                skipped.push(line);
            }
        }
    }
    let measured_for = |(pattern, size, _): Case| {
        transports_for(pattern)
            .into_iter()
            .filter(move |&t| beyond_limit(t, pattern, size).is_none())
    };
    let idle = o.patterns.contains(&Pattern::Idle) && o.transports.contains(&Transport::Shmlink);
    let idle_runs = if o.quick { 1 } else { o.runs };
    let total = o.runs
        * placements.len()
        * cases
            .iter()
            .map(|&case| measured_for(case).count())
            .sum::<usize>()
        + if idle {
            idle_runs * placements.len()
        } else {
            0
        };
    if total > 0 {
        eprintln!(
            "compare: {} measurements ({} runs, warm-up {} ms, window {} ms{}), CPUs {:?}",
            total,
            o.runs,
            o.warmup_ms,
            o.window_ms,
            if o.quick { ", quick" } else { "" },
            pair
        );
    }

    let started = Instant::now();
    let mut results: BTreeMap<Key, Vec<Measured>> = BTreeMap::new();
    let mut failures: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    let mut done = 0;
    let mut one = |spec: Spec| {
        let key = (
            spec.pattern,
            spec.size,
            spec.subscribers,
            spec.placement,
            spec.transport,
        );
        done += 1;
        match run_one(&spec) {
            Ok(m) => {
                eprintln!(
                    "[{done}/{total} {:>5.0}s] {} {} {} {}: {}",
                    started.elapsed().as_secs_f64(),
                    spec.transport.name(),
                    spec.pattern.name(),
                    case_label(spec.pattern, spec.size, spec.subscribers),
                    spec.placement.name(),
                    brief(&m)
                );
                results.entry(key).or_default().push(m);
            }
            Err(e) => {
                eprintln!(
                    "[{done}/{total}] {} {} {} {}: FAILED: {e}",
                    spec.transport.name(),
                    spec.pattern.name(),
                    case_label(spec.pattern, spec.size, spec.subscribers),
                    spec.placement.name()
                );
                failures.entry(key).or_default().push(e.to_string());
            }
        }
    };
    let spec_for = |transport, (pattern, size, subscribers): Case, placement| Spec {
        transport,
        pattern,
        placement,
        size,
        subscribers,
        cpus: if placement == Placement::Split {
            pair
        } else {
            None
        },
        warmup_ms: o.warmup_ms,
        window_ms: if pattern == Pattern::Idle {
            5000
        } else {
            o.window_ms
        },
        inflight: if pattern == Pattern::Concurrent {
            64
        } else {
            1
        },
        addr: String::new(),
        producers: 0,
        index: 0,
    };
    for run in 0..o.runs {
        for &case in &cases {
            for &placement in &placements {
                for transport in measured_for(case) {
                    one(spec_for(transport, case, placement));
                }
            }
        }
        if idle && run < idle_runs {
            for &placement in &placements {
                one(spec_for(
                    Transport::Shmlink,
                    (Pattern::Idle, 0, 0),
                    placement,
                ));
            }
        }
    }
    let elapsed = started.elapsed();

    let medians: BTreeMap<Key, Measured> =
        results.iter().map(|(k, v)| (*k, median_of(v))).collect();
    if !medians.is_empty() {
        print!("{}", table(&o, &medians, &placements, elapsed, pair));
    }
    let mut queue_records = Vec::new();
    if o.patterns.contains(&Pattern::Queue) {
        let transports = queue::transports(o.transports_given.then_some(&o.transports[..]));
        // An fsync-bound rate needs a longer warm-up and window than the other patterns.
        let (report, records) = queue::run(
            &transports,
            o.runs,
            o.warmup_ms.max(queue::MIN_WARMUP_MS),
            o.window_ms.max(queue::MIN_WINDOW_MS),
        );
        print!("{report}");
        queue_records = records;
    }
    if !skipped.is_empty() {
        println!("\nSkipped (beyond a transport's limit):");
        for line in &skipped {
            println!("  {line}");
        }
    }
    if !failures.is_empty() {
        println!("\nFailures:");
        for ((pattern, size, subscribers, placement, transport), errors) in &failures {
            println!(
                "  {} {} {} {}: {} of {} runs: {}",
                transport.name(),
                pattern.name(),
                case_label(*pattern, *size, *subscribers),
                placement.name(),
                errors.len(),
                if *pattern == Pattern::Idle {
                    idle_runs
                } else {
                    o.runs
                },
                errors[0]
            );
        }
    }
    if let Some(path) = &o.json {
        let records: Vec<Record> = medians
            .iter()
            .map(
                |(&(pattern, size, subscribers, placement, transport), m)| Record {
                    transport,
                    pattern,
                    placement,
                    size: match pattern {
                        Pattern::Idle => None,
                        Pattern::IdleNodes => Some(idle::ACTIVE_SIZE as u64),
                        _ => Some(size as u64),
                    },
                    idle_nodes: (pattern == Pattern::IdleNodes).then_some(size as u64),
                    subscribers: (pattern == Pattern::Fanout).then_some(subscribers as u64),
                    producers: None,
                    p50_ns: m.p50_ns,
                    p99_ns: m.p99_ns,
                    msgs_per_s: m.msgs_per_s,
                    bytes_per_s: m.bytes_per_s,
                    cpu_s_per_million: m.cpu_s_per_million,
                    engine_cpu_s_per_million: m.engine_cpu_s_per_million,
                    cpu_s: m.cpu_s,
                    confirms_per_s: None,
                },
            )
            .chain(queue_records)
            .collect();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&records)? + "\n")?;
        println!("\nwrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}

/// Why `transport` cannot measure `pattern` at `size`, if it cannot: iceoryx2's round trip
/// past [`iox::MAX_RTT_SHM`] of preallocated shared memory (see there).
fn beyond_limit(transport: Transport, pattern: Pattern, size: usize) -> Option<String> {
    let iceoryx2 = matches!(
        transport,
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll
    );
    let shm = iox::RTT_CHUNKS.saturating_mul(size);
    (iceoryx2 && pattern == Pattern::Rtt && shm > iox::MAX_RTT_SHM).then(|| {
        format!(
            "iceoryx2 preallocates and zeroes {} payloads for a round trip, {} of shared memory \
             at {}, over the {} this harness lets it take (its largest round trip here: {} MiB)",
            iox::RTT_CHUNKS,
            size_label(shm),
            size_label(size),
            size_label(iox::MAX_RTT_SHM),
            (iox::MAX_RTT_SHM / iox::RTT_CHUNKS) >> 20
        )
    })
}

/// What tells a case apart in the progress lines: its size, `N=…` idle nodes, or a size
/// and `x…` subscribers.
fn case_label(pattern: Pattern, size: usize, subscribers: usize) -> String {
    match pattern {
        Pattern::IdleNodes => format!("N={size}"),
        Pattern::Fanout => format!("{} x{subscribers}", size_label(size)),
        _ => size_label(size),
    }
}

fn size_label(size: usize) -> String {
    match size {
        0 => "-".to_owned(),
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn brief(m: &Measured) -> String {
    let mut s = String::new();
    if let Some(v) = m.p50_ns {
        let _ = write!(s, "p50 {} ", fmt_ns(v));
    }
    if let Some(v) = m.p99_ns {
        let _ = write!(s, "p99 {} ", fmt_ns(v));
    }
    if let Some(v) = m.msgs_per_s {
        let _ = write!(s, "{} msg/s ", fmt_si(v));
    }
    if let Some(v) = m.cpu_s_per_million {
        let _ = write!(s, "cpu {v:.2} s/M ");
    }
    if let Some(v) = m.engine_cpu_s_per_million {
        let _ = write!(s, "engine {v:.2} s/M ");
    }
    if let Some(v) = m.cpu_s {
        let _ = write!(s, "engine {:.3} ms ", v * 1e3);
    }
    if let Some(v) = m.nodes_cpu_s {
        let _ = write!(s, "nodes {:.3} ms", v * 1e3);
    }
    if let Some(v) = m.samples {
        let _ = write!(s, "({v:.0} samples)");
    }
    s
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}us", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

/// CPU seconds per million messages: two decimals, or SI-prefixed from 100,000 (a 1 GiB
/// round trip costs about 10⁶), so that every cell fits its column.
fn fmt_cpu(v: f64) -> String {
    if v >= 1e5 {
        fmt_si(v)
    } else {
        format!("{v:.2}")
    }
}

fn fmt_si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// The report: one block per figure, a row per case and placement, a column per transport
/// with the value and, after it, shmlink's value divided by it.
fn table(
    o: &Options,
    medians: &BTreeMap<Key, Measured>,
    placements: &[Placement],
    elapsed: Duration,
    pair: Option<(usize, usize)>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nshmlink compare: median of {} runs, warm-up {} ms, window {} ms per measurement; took {:.0} s",
        o.runs,
        o.warmup_ms,
        o.window_ms,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "engine: embedded in the client process on its current-thread runtime (split: client and engine on CPU {}, server on CPU {}); idle: engine alone in a process{}",
        pair.map_or("-".into(), |p| p.0.to_string()),
        pair.map_or("-".into(), |p| p.1.to_string()),
        if pair.is_some() {
            " pinned like the server, nodes like the client"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "(x.xx) = shmlink / transport: below 1 is better for shmlink on time and CPU, above 1 on rates"
    );
    type Figure = (
        &'static str,
        Pattern,
        fn(&Measured) -> Option<f64>,
        fn(f64) -> String,
    );
    let figures: [Figure; 10] = [
        ("round trip p50", Pattern::Rtt, |m| m.p50_ns, fmt_ns),
        ("round trip p99", Pattern::Rtt, |m| m.p99_ns, fmt_ns),
        (
            "round trip CPU s per million messages",
            Pattern::Rtt,
            |m| m.cpu_s_per_million,
            fmt_cpu,
        ),
        (
            "stream messages/s",
            Pattern::Stream,
            |m| m.msgs_per_s,
            fmt_si,
        ),
        (
            "stream bytes/s",
            Pattern::Stream,
            |m| m.bytes_per_s,
            |v| format!("{}B", fmt_si(v)),
        ),
        (
            "stream CPU s per million messages",
            Pattern::Stream,
            |m| m.cpu_s_per_million,
            |v| format!("{v:.2}"),
        ),
        (
            "stream, a flush per message: messages/s",
            Pattern::StreamFlush,
            |m| m.msgs_per_s,
            fmt_si,
        ),
        (
            "stream, a flush per message: CPU s per million messages",
            Pattern::StreamFlush,
            |m| m.cpu_s_per_million,
            |v| format!("{v:.2}"),
        ),
        (
            "64 in flight: requests/s",
            Pattern::Concurrent,
            |m| m.msgs_per_s,
            fmt_si,
        ),
        (
            "64 in flight: CPU s per million messages",
            Pattern::Concurrent,
            |m| m.cpu_s_per_million,
            |v| format!("{v:.2}"),
        ),
    ];
    const W: usize = 17;
    for (title, pattern, get, fmt) in figures {
        let sizes: Vec<usize> = {
            let mut s: Vec<usize> = medians
                .keys()
                .filter(|k| k.0 == pattern)
                .map(|k| k.1)
                .collect();
            s.dedup();
            s
        };
        if sizes.is_empty() {
            continue;
        }
        let _ = write!(out, "\n{title}\n{:<18}", "size placement");
        for t in &o.transports {
            let _ = write!(out, "{:>W$}", t.name());
        }
        out.push('\n');
        for &size in &sizes {
            for &placement in placements {
                let _ = write!(
                    out,
                    "{:<18}",
                    format!("{} {}", size_label(size), placement.name())
                );
                let base = medians
                    .get(&(pattern, size, 0, placement, Transport::Shmlink))
                    .and_then(get);
                for &t in &o.transports {
                    let v = medians.get(&(pattern, size, 0, placement, t)).and_then(get);
                    let cell = match (v, base) {
                        (Some(v), _) if t == Transport::Shmlink => fmt(v),
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
    fanout::table(&mut out, medians, &o.transports, placements);
    idle_nodes_table(&mut out, medians, placements);
    let idle: Vec<_> = medians
        .iter()
        .filter(|(k, _)| k.0 == Pattern::Idle)
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "\nidle engine, 5 s window (two nodes connected, sessions open)"
        );
        for ((_, _, _, placement, _), m) in idle {
            let _ = writeln!(
                out,
                "{:<18}engine CPU {:.3} ms, nodes CPU {:.3} ms",
                placement.name(),
                m.cpu_s.unwrap_or(f64::NAN) * 1e3,
                m.nodes_cpu_s.unwrap_or(f64::NAN) * 1e3
            );
        }
    }
    out
}

/// The `idle-nodes` block: a row per N and placement, the active pair's round trip and the
/// engine's CPU per message, each with its ratio to N = 0 (cost follows work: both stay near
/// 1.00).
fn idle_nodes_table(out: &mut String, medians: &BTreeMap<Key, Measured>, placements: &[Placement]) {
    let counts: Vec<usize> = {
        let mut n: Vec<usize> = medians
            .keys()
            .filter(|k| k.0 == Pattern::IdleNodes)
            .map(|k| k.1)
            .collect();
        n.dedup();
        n
    };
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nidle-nodes: the active pair's {} B round trip and the engine's CPU per message beside N idle nodes\n(engine alone in a process, each idle node with an open session; (x.xx) = value / value at N = 0)",
        idle::ACTIVE_SIZE
    );
    let _ = writeln!(
        out,
        "{:<18}{:>20}{:>20}{:>28}",
        "N placement", "round trip p50", "round trip p99", "engine CPU s per million"
    );
    for &n in &counts {
        for &placement in placements {
            let Some(m) = medians.get(&(Pattern::IdleNodes, n, 0, placement, Transport::Shmlink))
            else {
                continue;
            };
            let base = medians.get(&(Pattern::IdleNodes, 0, 0, placement, Transport::Shmlink));
            let cell = |get: fn(&Measured) -> Option<f64>, fmt: fn(f64) -> String| match (
                get(m),
                base.and_then(get),
            ) {
                (Some(v), Some(b)) if b > 0.0 => format!("{} ({:.2})", fmt(v), v / b),
                (Some(v), _) => fmt(v),
                (None, _) => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "{:<18}{:>20}{:>20}{:>28}",
                format!("{n} {}", placement.name()),
                cell(|m| m.p50_ns, fmt_ns),
                cell(|m| m.p99_ns, fmt_ns),
                cell(|m| m.cpu_s_per_million, |v| format!("{v:.2}"))
            );
        }
    }
}
