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
//! `[--transports a,b] [--patterns rtt,stream,concurrent,idle] [--sizes 64,1K,16M]`
//! `[--placements split,free] [--window-ms MS] [--warmup-ms MS]`
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
//! listener or busy-polling).
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
//! - `concurrent`: 64 requests of 64 B in flight, requests/s.
//! - `idle`: the engine, in a process of its own with two connected nodes holding open
//!   sessions (raw and request/response), over a 5 s window: its CPU seconds.
//!
//! `cpu_s_per_million` is the CPU time of every process of the transport (client, server and,
//! for shmlink, the engine) during the measured window, per million one-way messages: a round
//! trip or a request counts two messages. The client reads its own CPU time
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

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{BlockConfig, Engine, Node, Session};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tower::{Service as _, ServiceExt as _};

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

// ===== What is measured =====

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "kebab-case")]
enum Transport {
    Shmlink,
    ShmlinkTyped,
    Uds,
    Tcp,
    Tarpc,
    Iceoryx2Event,
    Iceoryx2Poll,
}

const TRANSPORTS: [Transport; 7] = [
    Transport::Shmlink,
    Transport::ShmlinkTyped,
    Transport::Uds,
    Transport::Tcp,
    Transport::Tarpc,
    Transport::Iceoryx2Event,
    Transport::Iceoryx2Poll,
];

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Shmlink => "shmlink",
            Self::ShmlinkTyped => "shmlink-typed",
            Self::Uds => "uds",
            Self::Tcp => "tcp",
            Self::Tarpc => "tarpc",
            Self::Iceoryx2Event => "iceoryx2-event",
            Self::Iceoryx2Poll => "iceoryx2-poll",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        TRANSPORTS.into_iter().find(|t| t.name() == s)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "lowercase")]
enum Pattern {
    Rtt,
    Stream,
    Concurrent,
    Idle,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Self::Rtt => "rtt",
            Self::Stream => "stream",
            Self::Concurrent => "concurrent",
            Self::Idle => "idle",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[serde(rename_all = "lowercase")]
enum Placement {
    Split,
    Free,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Free => "free",
        }
    }
}

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
    /// Where the server finds the client: a socket path, a port, a service name.
    addr: String,
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
}

/// One line of `--json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Record {
    transport: Transport,
    pattern: Pattern,
    placement: Placement,
    size: Option<u64>,
    p50_ns: Option<f64>,
    p99_ns: Option<f64>,
    msgs_per_s: Option<f64>,
    bytes_per_s: Option<f64>,
    cpu_s_per_million: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    cpu_s: Option<f64>,
}

// ===== Payload: written whole by the sender, read whole by the receiver =====

/// A stream's end marker and the quit request (shorter than any payload).
const MARKER_LEN: usize = 1;
const QUIT_LEN: usize = 2;
/// Messages between two flushes (or notifications) of a stream.
const BATCH: u64 = 256;
/// The smallest payload: the control messages above are told apart by their length.
const MIN_SIZE: usize = 8;
/// Round-trip samples kept at most per measurement.
const MAX_SAMPLES: usize = 4_000_000;
/// Round trips measured at least, however long they take.
const MIN_ITERS: usize = 5;

/// The byte a sender fills message `i` with (never 0, so a zeroed buffer is caught).
fn seed_byte(i: u64) -> u8 {
    (i % 251) as u8 + 1
}

/// The byte a server fills its reply with, from the request's checksum.
fn reply_byte(sum: u64) -> u8 {
    (sum % 251) as u8 + 1
}

/// Wrapping sum of the little-endian 64-bit words, then of the trailing bytes: reads every byte.
fn checksum(buf: &[u8]) -> u64 {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    let mut sum = 0u64;
    for w in words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
    }
    for &b in tail {
        sum = sum.wrapping_add(u64::from(b));
    }
    sum
}

/// The checksum of `n` bytes of `b`.
fn expected(n: usize, b: u8) -> u64 {
    let word = u64::from(b).wrapping_mul(0x0101_0101_0101_0101);
    ((n / 8) as u64)
        .wrapping_mul(word)
        .wrapping_add((n % 8) as u64 * u64::from(b))
}

/// Checks a reply to a request of `n` bytes of `b`.
fn check_reply(reply: &[u8], n: usize, b: u8) -> Res<()> {
    if reply.len() != n {
        return Err(format!("wrong data: reply of {} bytes to {n}", reply.len()).into());
    }
    let want = expected(n, reply_byte(expected(n, b)));
    let got = checksum(reply);
    if got != want {
        return Err(format!("wrong data: reply checksum {got:#x}, expected {want:#x}").into());
    }
    Ok(())
}

/// Checks message `i` of a stream.
fn check_streamed(msg: &[u8], i: u64) -> Res<()> {
    let want = expected(msg.len(), seed_byte(i));
    let got = checksum(msg);
    if got != want {
        return Err(format!(
            "wrong data: streamed message {i} of {} bytes has checksum {got:#x}, expected {want:#x}",
            msg.len()
        )
        .into());
    }
    Ok(())
}

// ===== CPU time =====

fn self_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// CPU seconds of a live process: the sum of its threads' run time (nanoseconds, from
/// `/proc/PID/task/*/schedstat`), or `utime + stime` from `/proc/PID/stat` (clock ticks).
fn proc_cpu_s(pid: u32) -> f64 {
    let mut total = 0u64;
    let mut ok = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat"))
                && let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                ok = true;
            }
        }
    }
    if ok {
        return total as f64 * 1e-9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// CPU seconds of this process and, if any, its server child.
struct CpuProbe {
    child: Option<u32>,
}

impl CpuProbe {
    fn now(&self) -> f64 {
        self_cpu_s() + self.child.map_or(0.0, proc_cpu_s)
    }
}

fn pin(cpu: Option<usize>) -> Res<()> {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)?;
    }
    Ok(())
}

fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

// ===== Child processes =====

/// A child that is killed (if still running) and reaped when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the child to exit by itself, then kills it.
    fn finish(mut self, limit: Duration) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("server exited with {status}").into())
                };
            }
            if Instant::now() >= deadline {
                return Err("server did not exit".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reads one line the child prints on its stdout (its "ready").
    fn ready(&mut self) -> Res<()> {
        let out = self.0.stdout.as_mut().ok_or("no stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte)? {
                0 => return Err("server exited before it was ready".into()),
                _ if byte[0] == b'\n' => break,
                _ => line.push(byte[0]),
            }
        }
        if line != b"ready" {
            return Err(format!("server said {:?}", String::from_utf8_lossy(&line)).into());
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts this binary as `role` with `spec`; stdout piped (for "ready") if `piped`.
fn spawn_role(role: &str, spec: &Spec, piped: bool) -> Res<ChildGuard> {
    let child = Command::new(std::env::current_exe()?)
        .arg(role)
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(ChildGuard(child))
}

fn scratch_dir() -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("shmlink-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn current_thread() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some(role @ ("measure" | "serve" | "engine-host")) => {
            let spec = args
                .get(2)
                .ok_or_else(|| BoxError::from("missing spec"))
                .and_then(|s| serde_json::from_str::<Spec>(s).map_err(Into::into));
            spec.and_then(|spec| match role {
                "measure" => measure(&spec),
                "serve" => serve(&spec),
                _ => engine_host(&spec),
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
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => iox::client(spec),
        _ if spec.pattern == Pattern::Idle => measure_idle(spec, &dir),
        _ => current_thread()?.block_on(measure_async(spec, &dir)),
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!("RESULT {}", serde_json::to_string(&result?)?);
    Ok(())
}

fn block_config() -> BlockConfig {
    BlockConfig {
        tx_arena: 32 << 20,
        rx_arena: 32 << 20,
        ..BlockConfig::default()
    }
}

/// A server spec derived from ours, with its CPU and address.
fn server_spec(spec: &Spec, addr: String) -> Spec {
    Spec {
        addr,
        ..spec.clone()
    }
}

async fn measure_async(spec: &Spec, dir: &Path) -> Res<Measured> {
    match spec.transport {
        Transport::Shmlink | Transport::ShmlinkTyped => measure_shmlink(spec, dir).await,
        Transport::Uds => {
            let path = dir.join("uds.sock");
            let listener = UnixListener::bind(&path)?;
            let server = spawn_role("serve", &server_spec(spec, path_str(&path)?), false)?;
            let (stream, _) = listener.accept().await?;
            let mut conn = FramedConn::new(stream);
            let m = drive_conn(spec, &mut conn, server.pid()).await?;
            drop(conn);
            finish(server).await?;
            Ok(m)
        }
        Transport::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let server = spawn_role("serve", &server_spec(spec, port.to_string()), false)?;
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let mut conn = FramedConn::new(stream);
            let m = drive_conn(spec, &mut conn, server.pid()).await?;
            drop(conn);
            finish(server).await?;
            Ok(m)
        }
        Transport::Tarpc => {
            let path = dir.join("tarpc.sock");
            let listener = UnixListener::bind(&path)?;
            let server = spawn_role("serve", &server_spec(spec, path_str(&path)?), false)?;
            let (stream, _) = listener.accept().await?;
            let m = rpc::client(spec, stream, server.pid()).await?;
            finish(server).await?;
            Ok(m)
        }
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => unreachable!("measured in iox"),
    }
}

/// Waits for the server to exit by itself (it does once the client has closed its end), off
/// the runtime so that the engine and the transports' tasks go on running meanwhile.
async fn finish(server: ChildGuard) -> Res<()> {
    tokio::task::spawn_blocking(move || server.finish(Duration::from_secs(10))).await?
}

fn path_str(path: &Path) -> Res<String> {
    Ok(path.to_str().ok_or("non-UTF-8 path")?.to_owned())
}

async fn measure_shmlink(spec: &Spec, dir: &Path) -> Res<Measured> {
    let engine = Engine::builder()
        .socket(dir.join("engine.sock"))
        .block(block_config())
        .spawn()?;
    let server = spawn_role(
        "serve",
        &server_spec(spec, path_str(engine.socket_path())?),
        false,
    )?;
    let typed_rpc = spec.transport == Transport::ShmlinkTyped && spec.pattern != Pattern::Stream;
    engine
        .wait_for_stats(|s| s.services == if typed_rpc { 2 } else { 1 })
        .await;
    let node = Node::connect(engine.socket_path(), "client").await?;
    let m = match spec.transport {
        Transport::Shmlink => {
            let mut conn = ShmConn(node.open::<Bytes>("bench").await?);
            drive_conn(spec, &mut conn, server.pid()).await?
        }
        _ if spec.pattern == Pattern::Stream => {
            let mut conn = TypedConn(node.open::<Blob>("bench").await?);
            drive_conn(spec, &mut conn, server.pid()).await?
        }
        _ => {
            let lifeline = node.open::<Bytes>("lifeline").await?;
            let client = node.client::<Blob, Blob>("bench").await?;
            let m = typed_client(spec, client, server.pid()).await?;
            drop(lifeline);
            m
        }
    };
    finish(server).await?;
    drop(node);
    engine.shutdown().await;
    Ok(m)
}

/// `idle`: the engine in its own process, two connected nodes here, nothing sent for 5 s.
fn measure_idle(spec: &Spec, dir: &Path) -> Res<Measured> {
    let socket = dir.join("engine.sock");
    let mut host = spawn_role("engine-host", &server_spec(spec, path_str(&socket)?), true)?;
    host.ready()?;
    let rt = current_thread()?;
    let measured = rt.block_on(idle_nodes(spec, &socket, host.pid()));
    // The nodes leave (their runtime with them) before the engine stops: a node whose engine
    // goes away while its runtime still runs can busy-loop on the closed doorbell.
    drop(rt);
    drop(host.0.stdin.take()); // tells the engine host to stop
    host.finish(Duration::from_secs(10))?;
    measured
}

async fn idle_nodes(spec: &Spec, socket: &Path, engine: u32) -> Res<Measured> {
    let a = Node::connect(socket, "idle-a").await?;
    let b = Node::connect(socket, "idle-b").await?;
    let mut listener = a.listen::<Bytes>("idle").await?;
    let echo = tower::service_fn(|req: Blob| async move { Ok::<_, std::convert::Infallible>(req) });
    let server = a.serve("idle-typed", echo).await?;
    let (opened, accepted) = tokio::join!(b.open::<Bytes>("idle"), listener.accept());
    let (mut opened, mut accepted) = (opened?, accepted.ok_or("engine gone")?);
    opened.send(Bytes::from_static(b"hello")).await?;
    let got = accepted.next().await.ok_or("closed")??;
    accepted.send(got).await?;
    opened.next().await.ok_or("closed")??;
    let mut client = b.client::<Blob, Blob>("idle-typed").await?;
    let back = client.ready().await?.call(Blob::filled(64, 7)).await?;
    check_reply_echo(&back.data)?;

    let engine_before = proc_cpu_s(engine);
    let nodes_before = self_cpu_s();
    tokio::time::sleep(spec.window()).await;
    let engine_cpu = proc_cpu_s(engine) - engine_before;
    let nodes_cpu = self_cpu_s() - nodes_before;

    drop((opened, accepted, client));
    server.shutdown().await;
    Ok(Measured {
        cpu_s: Some(engine_cpu),
        nodes_cpu_s: Some(nodes_cpu),
        ..Measured::default()
    })
}

fn check_reply_echo(data: &[u8]) -> Res<()> {
    if data.len() == 64 && data.iter().all(|&b| b == 7) {
        Ok(())
    } else {
        Err("wrong data: idle echo".into())
    }
}

/// The engine host of `idle`: runs an engine until its stdin closes.
fn engine_host(spec: &Spec) -> Res<()> {
    pin(spec.cpus.map(|c| c.1))?;
    current_thread()?.block_on(async {
        let engine = Engine::builder()
            .socket(&spec.addr)
            .block(block_config())
            .spawn()?;
        println!("ready");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            let _ = tx.send(());
        });
        let _ = rx.await;
        engine.shutdown().await;
        Ok(())
    })
}

// ===== The measurement loops, shared by every transport =====

/// Round trips: a warm-up, then as many as fit in the window (at least `MIN_ITERS`).
async fn rtt_loop(
    spec: &Spec,
    cpu: &CpuProbe,
    mut one: impl AsyncFnMut(u64) -> Res<()>,
) -> Res<Measured> {
    let mut i = 0u64;
    let start = Instant::now();
    while start.elapsed() < spec.warmup() || i < 2 {
        one(i).await?;
        i += 1;
    }
    let mut samples = Vec::with_capacity(1 << 16);
    let cpu0 = cpu.now();
    let t0 = Instant::now();
    while (t0.elapsed() < spec.window() || samples.len() < MIN_ITERS) && samples.len() < MAX_SAMPLES
    {
        let t = Instant::now();
        one(i).await?;
        samples.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    let cpu_s = cpu.now() - cpu0;
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64;
    let messages = 2.0 * samples.len() as f64;
    Ok(Measured {
        p50_ns: Some(pick(0.5)),
        p99_ns: Some(pick(0.99)),
        cpu_s_per_million: Some(cpu_s / messages * 1e6),
        ..Measured::default()
    })
}

/// Streams and concurrent requests: a warm-up phase, then a measured one; `phase(d)` runs for
/// about `d` and returns how many messages (stream) or requests (concurrent) completed.
async fn phase_loop(
    spec: &Spec,
    cpu: &CpuProbe,
    mut phase: impl AsyncFnMut(Duration) -> Res<u64>,
) -> Res<Measured> {
    phase(spec.warmup()).await?;
    let cpu0 = cpu.now();
    let t0 = Instant::now();
    let done = phase(spec.window()).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = cpu.now() - cpu0;
    let per_op = if spec.pattern == Pattern::Concurrent {
        2.0
    } else {
        1.0
    };
    Ok(Measured {
        msgs_per_s: Some(done as f64 / secs),
        bytes_per_s: Some(done as f64 * spec.size as f64 / secs),
        cpu_s_per_million: Some(cpu_s / (done as f64 * per_op) * 1e6),
        ..Measured::default()
    })
}

// ===== Framed transports: UDS, TCP, shmlink sessions =====

/// A duplex message channel: what the socket transports and shmlink sessions have in common.
trait Conn {
    type Msg: AsRef<[u8]>;
    /// Queues a message of `n` bytes of `b`, written in place where the transport allows.
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()>;
    /// Queues a copy of `data`.
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()>;
    async fn flush(&mut self) -> Res<()>;
    /// The next message; `None` at the end.
    async fn recv(&mut self) -> Res<Option<Self::Msg>>;
    /// A message that is already there, without waiting.
    fn try_recv(&mut self) -> Res<Option<Self::Msg>>;
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(64 << 20)
        .new_codec()
}

/// Tokio `UnixStream` or `TcpStream` with length-delimited frames; the send buffer is reused.
struct FramedConn<T> {
    io: Framed<T, LengthDelimitedCodec>,
    buf: BytesMut,
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> FramedConn<T> {
    fn new(io: T) -> Self {
        Self {
            io: Framed::new(io, codec()),
            buf: BytesMut::new(),
        }
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn for FramedConn<T> {
    type Msg = BytesMut;
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        self.buf.put_bytes(b, n);
        let frame = self.buf.split().freeze();
        self.io.feed(frame).await?;
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        self.buf.put_slice(data);
        let frame = self.buf.split().freeze();
        self.io.feed(frame).await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        SinkExt::<Bytes>::flush(&mut self.io).await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<BytesMut>> {
        Ok(self.io.next().await.transpose()?)
    }
    fn try_recv(&mut self) -> Res<Option<BytesMut>> {
        Ok(self.io.next().now_or_never().flatten().transpose()?)
    }
}

/// A raw shmlink session: payloads written in place in loans, received zero-copy.
struct ShmConn(Session<Bytes>);

impl Conn for ShmConn {
    type Msg = Bytes;
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        let mut loan = self.0.loan(n).await?;
        loan.fill(b);
        self.0.feed(loan).await?;
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        let mut loan = self.0.loan(data.len()).await?;
        loan.copy_from_slice(data);
        self.0.feed(loan).await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        self.0.flush().await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().await.transpose()?)
    }
    fn try_recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().now_or_never().flatten().transpose()?)
    }
}

/// The typed payload: bytes, serialised as such, and decoded as a view of the received
/// shared memory (`shared_bytes`: what a shmlink user writes for a blob field; tarpc's side
/// uses `serde_bytes::ByteBuf`, its own best).
#[derive(shmlink::Message, Serialize, Deserialize, Debug, Clone)]
struct Blob {
    #[serde(with = "shmlink::message::shared_bytes")]
    data: Bytes,
}

impl Blob {
    fn filled(n: usize, b: u8) -> Self {
        Self {
            data: Bytes::from(vec![b; n]),
        }
    }
}

/// A typed shmlink session of `Blob`s (the typed stream API).
struct TypedConn(Session<Blob>);

impl Conn for TypedConn {
    type Msg = Bytes;
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        self.0.feed(Blob::filled(n, b)).await?;
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        self.0
            .feed(Blob {
                data: Bytes::copy_from_slice(data),
            })
            .await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        self.0.flush().await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self.0.next().await.transpose()?.map(|b| b.data))
    }
    fn try_recv(&mut self) -> Res<Option<Bytes>> {
        Ok(self
            .0
            .next()
            .now_or_never()
            .flatten()
            .transpose()?
            .map(|b| b.data))
    }
}

/// The client side of every pattern over a `Conn`.
async fn drive_conn<C: Conn>(spec: &Spec, conn: &mut C, server: u32) -> Res<Measured> {
    let cpu = CpuProbe {
        child: Some(server),
    };
    let n = spec.size;
    match spec.pattern {
        Pattern::Rtt => {
            rtt_loop(spec, &cpu, async |i| {
                let b = seed_byte(i);
                conn.feed_fill(n, b).await?;
                conn.flush().await?;
                let reply = conn.recv().await?.ok_or("server gone")?;
                check_reply(reply.as_ref(), n, b)
            })
            .await
        }
        Pattern::Stream => {
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut i = 0u64;
                loop {
                    for _ in 0..BATCH {
                        conn.feed_fill(n, seed_byte(i)).await?;
                        i += 1;
                    }
                    conn.flush().await?;
                    if t0.elapsed() >= d {
                        break;
                    }
                }
                conn.feed_copy(&[0xFF; MARKER_LEN]).await?;
                conn.flush().await?;
                let ack = conn.recv().await?.ok_or("server gone")?;
                check_ack(ack.as_ref(), i)?;
                Ok(i)
            })
            .await
        }
        Pattern::Concurrent => {
            let inflight = spec.inflight;
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut waiting = VecDeque::with_capacity(inflight);
                let mut next = 0u64;
                let mut done = 0u64;
                while waiting.len() < inflight {
                    let b = seed_byte(next);
                    conn.feed_fill(n, b).await?;
                    waiting.push_back(b);
                    next += 1;
                }
                conn.flush().await?;
                while let Some(first) = waiting.pop_front() {
                    let reply = conn.recv().await?.ok_or("server gone")?;
                    check_reply(reply.as_ref(), n, first)?;
                    done += 1;
                    while !waiting.is_empty()
                        && let Some(reply) = conn.try_recv()?
                    {
                        let b = waiting.pop_front().ok_or("extra reply")?;
                        check_reply(reply.as_ref(), n, b)?;
                        done += 1;
                    }
                    if t0.elapsed() < d {
                        while waiting.len() < inflight {
                            let b = seed_byte(next);
                            conn.feed_fill(n, b).await?;
                            waiting.push_back(b);
                            next += 1;
                        }
                        conn.flush().await?;
                    }
                }
                Ok(done)
            })
            .await
        }
        Pattern::Idle => Err("idle is measured apart".into()),
    }
}

fn check_ack(ack: &[u8], sent: u64) -> Res<()> {
    let got = u64::from_le_bytes(ack.try_into().map_err(|_| "wrong data: ack")?);
    if got != sent {
        return Err(
            format!("wrong data: receiver counted {got} messages, {sent} were sent").into(),
        );
    }
    Ok(())
}

/// The server side over a `Conn`: answers requests, checks and acknowledges streams, and
/// flushes only once no more input is ready.
async fn serve_conn<C: Conn>(conn: &mut C, pattern: Pattern) -> Res<()> {
    let mut count = 0u64;
    while let Some(msg) = conn.recv().await? {
        serve_one(conn, msg.as_ref(), pattern, &mut count).await?;
        while let Some(msg) = conn.try_recv()? {
            serve_one(conn, msg.as_ref(), pattern, &mut count).await?;
        }
        conn.flush().await?;
    }
    Ok(())
}

async fn serve_one<C: Conn>(
    conn: &mut C,
    msg: &[u8],
    pattern: Pattern,
    count: &mut u64,
) -> Res<()> {
    if msg.len() == MARKER_LEN {
        conn.feed_copy(&count.to_le_bytes()).await?;
        *count = 0;
    } else if pattern == Pattern::Stream {
        check_streamed(msg, *count)?;
        *count += 1;
    } else {
        conn.feed_fill(msg.len(), reply_byte(checksum(msg))).await?;
    }
    Ok(())
}

// ===== shmlink typed request/response (the tower client) =====

async fn typed_client(
    spec: &Spec,
    mut client: shmlink::Client<Blob, Blob>,
    server: u32,
) -> Res<Measured> {
    let cpu = CpuProbe {
        child: Some(server),
    };
    let n = spec.size;
    match spec.pattern {
        Pattern::Rtt => {
            rtt_loop(spec, &cpu, async |i| {
                let b = seed_byte(i);
                let reply = client.ready().await?.call(Blob::filled(n, b)).await?;
                check_reply(&reply.data, n, b)
            })
            .await
        }
        Pattern::Concurrent => {
            let inflight = spec.inflight;
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut calls = FuturesUnordered::new();
                let mut next = 0u64;
                let mut done = 0u64;
                loop {
                    while calls.len() < inflight && t0.elapsed() < d {
                        let b = seed_byte(next);
                        next += 1;
                        let call = client.ready().await?.call(Blob::filled(n, b));
                        calls.push(async move { (b, call.await) });
                    }
                    let Some((b, reply)) = calls.next().await else {
                        break;
                    };
                    check_reply(&reply?.data, n, b)?;
                    done += 1;
                }
                Ok(done)
            })
            .await
        }
        _ => Err("typed streams use a session".into()),
    }
}

// ===== tarpc =====

mod rpc {
    use super::*;
    use serde_bytes::ByteBuf;
    use tarpc::context;
    use tarpc::server::{BaseChannel, Channel as _};

    #[tarpc::service]
    trait Bench {
        /// A reply of the request's size, filled from its checksum.
        async fn echo(data: ByteBuf) -> ByteBuf;
        /// One message of a stream, numbered by the sender; true if its bytes are right.
        async fn push(seq: u64, data: ByteBuf) -> bool;
    }

    #[derive(Clone)]
    struct BenchServer;

    impl Bench for BenchServer {
        async fn echo(self, _: context::Context, data: ByteBuf) -> ByteBuf {
            ByteBuf::from(vec![reply_byte(checksum(&data)); data.len()])
        }

        async fn push(self, _: context::Context, seq: u64, data: ByteBuf) -> bool {
            check_streamed(&data, seq).is_ok()
        }
    }

    fn transport<Item, SinkItem>(
        stream: UnixStream,
    ) -> tarpc::serde_transport::Transport<
        UnixStream,
        Item,
        SinkItem,
        tokio_serde::formats::Bincode<Item, SinkItem>,
    >
    where
        Item: for<'de> Deserialize<'de>,
        SinkItem: Serialize,
    {
        tarpc::serde_transport::new(
            Framed::new(stream, codec()),
            tokio_serde::formats::Bincode::default(),
        )
    }

    pub(super) async fn serve(stream: UnixStream) -> Res<()> {
        BaseChannel::with_defaults(transport(stream))
            .execute(BenchServer.serve())
            .for_each(|response| async {
                tokio::spawn(response);
            })
            .await;
        Ok(())
    }

    pub(super) async fn client(spec: &Spec, stream: UnixStream, server: u32) -> Res<Measured> {
        let client = BenchClient::new(tarpc::client::Config::default(), transport(stream)).spawn();
        let cpu = CpuProbe {
            child: Some(server),
        };
        let n = spec.size;
        match spec.pattern {
            Pattern::Rtt => {
                rtt_loop(spec, &cpu, async |i| {
                    let b = seed_byte(i);
                    let reply = client
                        .echo(context::current(), ByteBuf::from(vec![b; n]))
                        .await?;
                    check_reply(&reply, n, b)
                })
                .await
            }
            Pattern::Concurrent | Pattern::Stream => {
                let stream = spec.pattern == Pattern::Stream;
                let inflight = if stream {
                    BATCH as usize
                } else {
                    spec.inflight
                };
                phase_loop(spec, &cpu, async |d| {
                    let t0 = Instant::now();
                    let mut calls = FuturesUnordered::new();
                    let mut next = 0u64;
                    let mut done = 0u64;
                    loop {
                        while calls.len() < inflight && t0.elapsed() < d {
                            let (seq, b) = (next, seed_byte(next));
                            next += 1;
                            let client = client.clone();
                            calls.push(async move {
                                let data = ByteBuf::from(vec![b; n]);
                                if stream {
                                    match client.push(context::current(), seq, data).await {
                                        Ok(true) => Ok(()),
                                        Ok(false) => Err(BoxError::from("wrong data: tarpc push")),
                                        Err(e) => Err(e.into()),
                                    }
                                } else {
                                    let reply = client.echo(context::current(), data).await?;
                                    check_reply(&reply, n, b)
                                }
                            });
                        }
                        let Some(result) = calls.next().await else {
                            break;
                        };
                        result?;
                        done += 1;
                    }
                    Ok(done)
                })
                .await
            }
            Pattern::Idle => Err("idle is measured apart".into()),
        }
    }
}

// ===== iceoryx2 =====

mod iox {
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use super::{
        BATCH, CpuProbe, MARKER_LEN, MIN_SIZE, Measured, Pattern, QUIT_LEN, Res, Spec, Transport,
        check_ack, check_reply, check_streamed, checksum, current_thread, phase_loop, reply_byte,
        rtt_loop, seed_byte, server_spec, spawn_role,
    };
    use iceoryx2::port::listener::Listener;
    use iceoryx2::port::notifier::Notifier;
    use iceoryx2::prelude::*;

    /// Waiting for the peer: on an event listener, or spinning.
    struct Waiter {
        event: bool,
        notifier: Notifier<ipc::Service>,
        listener: Listener<ipc::Service>,
    }

    impl Waiter {
        /// `to_peer` / `from_peer`: the two event services, one per direction.
        fn new(node: &Node<ipc::Service>, base: &str, side: &str, event: bool) -> Res<Self> {
            let other = if side == "client" { "server" } else { "client" };
            let to_peer = node
                .service_builder(&ServiceName::new(&format!("{base}/to-{other}"))?)
                .event()
                .open_or_create()?;
            let from_peer = node
                .service_builder(&ServiceName::new(&format!("{base}/to-{side}"))?)
                .event()
                .open_or_create()?;
            Ok(Self {
                event,
                notifier: to_peer.notifier_builder().create()?,
                listener: from_peer.listener_builder().create()?,
            })
        }

        fn notify(&self) -> Res<()> {
            if self.event {
                self.notifier.notify()?;
            }
            Ok(())
        }

        fn wait(&self) -> Res<()> {
            if self.event {
                self.listener.blocking_wait(|_| {})?;
            } else {
                core::hint::spin_loop();
            }
            Ok(())
        }
    }

    fn quiet() {
        set_log_level(LogLevel::Error);
    }

    /// The measuring client: creates the services, starts the server, measures.
    pub(super) fn client(spec: &Spec) -> Res<Measured> {
        quiet();
        let event = spec.transport == Transport::Iceoryx2Event;
        let base = format!("shmlink-compare/{}", std::process::id());
        let node = NodeBuilder::new().create::<ipc::Service>()?;
        let n = spec.size;
        let slice = n.max(MIN_SIZE);
        let rt = current_thread()?;
        if spec.pattern == Pattern::Stream {
            let data = node
                .service_builder(&ServiceName::new(&format!("{base}/data"))?)
                .publish_subscribe::<[u8]>()
                .subscriber_max_buffer_size(4 * BATCH as usize)
                .history_size(0)
                .enable_safe_overflow(false)
                .create()?;
            let acks = node
                .service_builder(&ServiceName::new(&format!("{base}/ack"))?)
                .publish_subscribe::<u64>()
                .subscriber_max_buffer_size(4)
                .history_size(0)
                .enable_safe_overflow(false)
                .create()?;
            let publisher = data
                .publisher_builder()
                .initial_max_slice_len(slice)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()?;
            let ack_sub = acks.subscriber_builder().create()?;
            let waiter = Waiter::new(&node, &base, "client", event)?;
            let mut server = spawn_role("serve", &server_spec(spec, base.clone()), true)?;
            server.ready()?;
            let cpu = CpuProbe {
                child: Some(server.pid()),
            };
            let m = rt.block_on(phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut i = 0u64;
                loop {
                    for _ in 0..BATCH {
                        let b = seed_byte(i);
                        publisher
                            .loan_slice_uninit(n)?
                            .write_from_fn(|_| b)
                            .send()?;
                        i += 1;
                    }
                    waiter.notify()?;
                    if t0.elapsed() >= d {
                        break;
                    }
                }
                publisher
                    .loan_slice_uninit(MARKER_LEN)?
                    .write_from_fn(|_| 0xFF)
                    .send()?;
                waiter.notify()?;
                let ack = loop {
                    if let Some(sample) = ack_sub.receive()? {
                        break *sample.payload();
                    }
                    waiter.wait()?;
                };
                check_ack(&ack.to_le_bytes(), i)?;
                Ok(i)
            }))?;
            publisher
                .loan_slice_uninit(QUIT_LEN)?
                .write_from_fn(|_| 0xFE)
                .send()?;
            waiter.notify()?;
            server.finish(Duration::from_secs(10))?;
            return Ok(m);
        }

        let rr = node
            .service_builder(&ServiceName::new(&format!("{base}/rr"))?)
            .request_response::<[u8], [u8]>()
            .max_active_requests_per_client(spec.inflight.max(2))
            .max_response_buffer_size(2)
            .max_loaned_requests(2)
            .enable_safe_overflow_for_requests(false)
            .enable_safe_overflow_for_responses(false)
            .max_servers(1)
            .max_clients(1)
            .create()?;
        let client = rr.client_builder().initial_max_slice_len(slice).create()?;
        let waiter = Waiter::new(&node, &base, "client", event)?;
        let mut server = spawn_role("serve", &server_spec(spec, base.clone()), true)?;
        server.ready()?;
        let cpu = CpuProbe {
            child: Some(server.pid()),
        };
        let m = match spec.pattern {
            Pattern::Rtt => rt.block_on(rtt_loop(spec, &cpu, async |i| {
                let b = seed_byte(i);
                let pending = client.loan_slice_uninit(n)?.write_from_fn(|_| b).send()?;
                waiter.notify()?;
                let reply = loop {
                    if let Some(reply) = pending.receive()? {
                        break reply;
                    }
                    waiter.wait()?;
                };
                check_reply(reply.payload(), n, b)
            }))?,
            Pattern::Concurrent => {
                let inflight = spec.inflight;
                rt.block_on(phase_loop(spec, &cpu, async |d| {
                    let t0 = Instant::now();
                    let mut waiting = VecDeque::with_capacity(inflight);
                    let mut next = 0u64;
                    let mut done = 0u64;
                    loop {
                        let mut sent = false;
                        while waiting.len() < inflight && t0.elapsed() < d {
                            let b = seed_byte(next);
                            next += 1;
                            let pending =
                                client.loan_slice_uninit(n)?.write_from_fn(|_| b).send()?;
                            waiting.push_back((b, pending));
                            sent = true;
                        }
                        if sent {
                            waiter.notify()?;
                        }
                        let Some((b, pending)) = waiting.front() else {
                            break;
                        };
                        match pending.receive()? {
                            Some(reply) => {
                                check_reply(reply.payload(), n, *b)?;
                                drop(reply);
                                waiting.pop_front();
                                done += 1;
                            }
                            None => waiter.wait()?,
                        }
                    }
                    Ok(done)
                }))?
            }
            _ => return Err("not an iceoryx2 request pattern".into()),
        };
        let quit = client
            .loan_slice_uninit(QUIT_LEN)?
            .write_from_fn(|_| 0xFE)
            .send()?;
        waiter.notify()?;
        server.finish(Duration::from_secs(10))?;
        drop(quit);
        Ok(m)
    }

    /// The server: opens the services, says "ready", serves until the quit message.
    pub(super) fn serve(spec: &Spec) -> Res<()> {
        quiet();
        let event = spec.transport == Transport::Iceoryx2Event;
        let base = &spec.addr;
        let node = NodeBuilder::new().create::<ipc::Service>()?;
        let slice = spec.size.max(MIN_SIZE);
        if spec.pattern == Pattern::Stream {
            let data = node
                .service_builder(&ServiceName::new(&format!("{base}/data"))?)
                .publish_subscribe::<[u8]>()
                .open()?;
            let acks = node
                .service_builder(&ServiceName::new(&format!("{base}/ack"))?)
                .publish_subscribe::<u64>()
                .open()?;
            let subscriber = data.subscriber_builder().create()?;
            let ack_pub = acks.publisher_builder().create()?;
            let waiter = Waiter::new(&node, base, "server", event)?;
            println!("ready");
            let mut count = 0u64;
            loop {
                while let Some(sample) = subscriber.receive()? {
                    let msg = sample.payload();
                    match msg.len() {
                        QUIT_LEN => return Ok(()),
                        MARKER_LEN => {
                            ack_pub.send_copy(count)?;
                            waiter.notify()?;
                            count = 0;
                        }
                        _ => {
                            check_streamed(msg, count)?;
                            count += 1;
                        }
                    }
                }
                waiter.wait()?;
            }
        }
        let rr = node
            .service_builder(&ServiceName::new(&format!("{base}/rr"))?)
            .request_response::<[u8], [u8]>()
            .open()?;
        let server = rr.server_builder().initial_max_slice_len(slice).create()?;
        let waiter = Waiter::new(&node, base, "server", event)?;
        println!("ready");
        loop {
            let mut answered = false;
            while let Some(request) = server.receive()? {
                let msg = request.payload();
                if msg.len() == QUIT_LEN {
                    return Ok(());
                }
                let b = reply_byte(checksum(msg));
                request
                    .loan_slice_uninit(msg.len())?
                    .write_from_fn(|_| b)
                    .send()?;
                answered = true;
            }
            if answered {
                waiter.notify()?;
            }
            waiter.wait()?;
        }
    }
}

// ===== The server role =====

fn serve(spec: &Spec) -> Res<()> {
    pin(spec.cpus.map(|c| c.1))?;
    match spec.transport {
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => iox::serve(spec),
        _ => current_thread()?.block_on(serve_async(spec)),
    }
}

async fn serve_async(spec: &Spec) -> Res<()> {
    match spec.transport {
        Transport::Uds => {
            serve_conn(
                &mut FramedConn::new(UnixStream::connect(&spec.addr).await?),
                spec.pattern,
            )
            .await
        }
        Transport::Tcp => {
            let stream = TcpStream::connect(("127.0.0.1", spec.addr.parse::<u16>()?)).await?;
            stream.set_nodelay(true)?;
            serve_conn(&mut FramedConn::new(stream), spec.pattern).await
        }
        Transport::Tarpc => rpc::serve(UnixStream::connect(&spec.addr).await?).await,
        Transport::Shmlink => {
            let node = Node::connect(&spec.addr, "server").await?;
            let mut listener = node.listen::<Bytes>("bench").await?;
            let session = listener.accept().await.ok_or("engine gone")?;
            serve_conn(&mut ShmConn(session), spec.pattern).await
        }
        Transport::ShmlinkTyped if spec.pattern == Pattern::Stream => {
            let node = Node::connect(&spec.addr, "server").await?;
            let mut listener = node.listen::<Blob>("bench").await?;
            let session = listener.accept().await.ok_or("engine gone")?;
            serve_conn(&mut TypedConn(session), spec.pattern).await
        }
        Transport::ShmlinkTyped => {
            let node = Node::connect(&spec.addr, "server").await?;
            let handler = tower::service_fn(|req: Blob| async move {
                let b = reply_byte(checksum(&req.data));
                Ok::<_, std::convert::Infallible>(Blob::filled(req.data.len(), b))
            });
            let mut lifeline = node.listen::<Bytes>("lifeline").await?;
            let server = node.serve("bench", handler).await?;
            // Serve until the client closes its lifeline session.
            let mut session = lifeline.accept().await.ok_or("engine gone")?;
            while session.next().await.is_some() {}
            server.shutdown().await;
            Ok(())
        }
        Transport::Iceoryx2Event | Transport::Iceoryx2Poll => unreachable!("served in iox"),
    }
}

// ===== The coordinator =====

struct Options {
    quick: bool,
    runs: usize,
    json: Option<PathBuf>,
    transports: Vec<Transport>,
    patterns: Vec<Pattern>,
    rtt_sizes: Vec<usize>,
    stream_sizes: Vec<usize>,
    placements: Vec<Placement>,
    warmup_ms: u64,
    window_ms: u64,
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok().map(|v| v * mult)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Relative paths are taken from the workspace root (cargo runs benches in the package's
/// directory).
fn resolve(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workspace_root().join(p)
    }
}

fn options(args: &[String]) -> Res<Options> {
    let mut o = Options {
        quick: false,
        runs: 5,
        json: None,
        transports: TRANSPORTS.to_vec(),
        patterns: vec![
            Pattern::Rtt,
            Pattern::Stream,
            Pattern::Concurrent,
            Pattern::Idle,
        ],
        rtt_sizes: vec![64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 16 << 20],
        stream_sizes: vec![64, 4 << 10],
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
            }
            "--patterns" => {
                o.patterns = value()?
                    .split(',')
                    .map(|p| match p {
                        "rtt" => Ok(Pattern::Rtt),
                        "stream" => Ok(Pattern::Stream),
                        "concurrent" => Ok(Pattern::Concurrent),
                        "idle" => Ok(Pattern::Idle),
                        _ => Err(format!("unknown pattern {p}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--sizes" => {
                o.rtt_sizes = value()?
                    .split(',')
                    .map(|s| {
                        parse_size(s)
                            .filter(|&v| v >= MIN_SIZE)
                            .ok_or_else(|| format!("bad size {s} (at least {MIN_SIZE} B)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--placements" => {
                o.placements = value()?
                    .split(',')
                    .map(|p| match p {
                        "split" => Ok(Placement::Split),
                        "free" => Ok(Placement::Free),
                        _ => Err(format!("unknown placement {p}")),
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

type Key = (Pattern, usize, Placement, Transport);

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
    let limit =
        Duration::from_millis(spec.warmup_ms + spec.window_ms) * 3 + Duration::from_secs(60);
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
    let mut cases = Vec::new();
    for &p in &o.patterns {
        match p {
            Pattern::Rtt => cases.extend(o.rtt_sizes.iter().map(|&s| (p, s))),
            Pattern::Stream => cases.extend(o.stream_sizes.iter().map(|&s| (p, s))),
            Pattern::Concurrent => cases.push((p, 64)),
            Pattern::Idle => {}
        }
    }
    let idle = o.patterns.contains(&Pattern::Idle) && o.transports.contains(&Transport::Shmlink);
    let idle_runs = if o.quick { 1 } else { o.runs };
    let total = o.runs * cases.len() * placements.len() * o.transports.len()
        + if idle {
            idle_runs * placements.len()
        } else {
            0
        };
    eprintln!(
        "compare: {} measurements ({} runs, warm-up {} ms, window {} ms{}), CPUs {:?}",
        total,
        o.runs,
        o.warmup_ms,
        o.window_ms,
        if o.quick { ", quick" } else { "" },
        pair
    );

    let started = Instant::now();
    let mut results: BTreeMap<Key, Vec<Measured>> = BTreeMap::new();
    let mut failures: BTreeMap<Key, Vec<String>> = BTreeMap::new();
    let mut done = 0;
    let mut one = |spec: Spec| {
        let key = (spec.pattern, spec.size, spec.placement, spec.transport);
        done += 1;
        match run_one(&spec) {
            Ok(m) => {
                eprintln!(
                    "[{done}/{total} {:>5.0}s] {} {} {} {}: {}",
                    started.elapsed().as_secs_f64(),
                    spec.transport.name(),
                    spec.pattern.name(),
                    size_label(spec.size),
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
                    size_label(spec.size),
                    spec.placement.name()
                );
                failures.entry(key).or_default().push(e.to_string());
            }
        }
    };
    let spec_for = |transport, pattern, size, placement| Spec {
        transport,
        pattern,
        placement,
        size,
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
    };
    for run in 0..o.runs {
        for &(pattern, size) in &cases {
            for &placement in &placements {
                for &transport in &o.transports {
                    one(spec_for(transport, pattern, size, placement));
                }
            }
        }
        if idle && run < idle_runs {
            for &placement in &placements {
                one(spec_for(Transport::Shmlink, Pattern::Idle, 0, placement));
            }
        }
    }
    let elapsed = started.elapsed();

    let medians: BTreeMap<Key, Measured> =
        results.iter().map(|(k, v)| (*k, median_of(v))).collect();
    print!("{}", table(&o, &medians, &placements, elapsed, pair));
    if !failures.is_empty() {
        println!("\nFailures:");
        for ((pattern, size, placement, transport), errors) in &failures {
            println!(
                "  {} {} {} {}: {} of {} runs: {}",
                transport.name(),
                pattern.name(),
                size_label(*size),
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
            .map(|(&(pattern, size, placement, transport), m)| Record {
                transport,
                pattern,
                placement,
                size: (pattern != Pattern::Idle).then_some(size as u64),
                p50_ns: m.p50_ns,
                p99_ns: m.p99_ns,
                msgs_per_s: m.msgs_per_s,
                bytes_per_s: m.bytes_per_s,
                cpu_s_per_million: m.cpu_s_per_million,
                cpu_s: m.cpu_s,
            })
            .collect();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&records)? + "\n")?;
        println!("\nwrote {} records to {}", records.len(), path.display());
    }
    Ok(())
}

fn size_label(size: usize) -> String {
    match size {
        0 => "-".to_owned(),
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
    if let Some(v) = m.cpu_s {
        let _ = write!(s, "engine {:.3} ms ", v * 1e3);
    }
    if let Some(v) = m.nodes_cpu_s {
        let _ = write!(s, "nodes {:.3} ms", v * 1e3);
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
    let figures: [Figure; 8] = [
        ("round trip p50", Pattern::Rtt, |m| m.p50_ns, fmt_ns),
        ("round trip p99", Pattern::Rtt, |m| m.p99_ns, fmt_ns),
        (
            "round trip CPU s per million messages",
            Pattern::Rtt,
            |m| m.cpu_s_per_million,
            |v| format!("{v:.2}"),
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
                    .get(&(pattern, size, placement, Transport::Shmlink))
                    .and_then(get);
                for &t in &o.transports {
                    let v = medians.get(&(pattern, size, placement, t)).and_then(get);
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
    let idle: Vec<_> = medians
        .iter()
        .filter(|(k, _)| k.0 == Pattern::Idle)
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "\nidle engine, 5 s window (two nodes connected, sessions open)"
        );
        for ((_, _, placement, _), m) in idle {
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
