//! Soak: an embedded engine and real child processes stream a given number of messages of
//! mixed sizes, every one checked, while the engine process's memory and descriptors are
//! watched: measured once traffic has warmed up and again at the end, the run fails if they
//! grew beyond a stated bound.
//!
//! ```text
//! cargo run --release --example soak -- --messages 10000000 [--nodes 4]
//! ```
//!
//! The parent hosts the engine. Each of `--nodes` children (this binary re-executed) is one
//! node: node `i` serves `soak-i` and opens a session to `soak-(i+1)`, so the nodes form a
//! ring and every node sends and receives at once. The messages are split evenly over the
//! nodes. Each carries its stream, sequence number and length in a header and a body cut
//! from a fixed table of random bytes at an offset derived from both numbers: the receiver
//! checks every byte of every message, and any loss, duplicate, reordering or corruption
//! fails the run. Most messages are small, some large (16 B to 256 KiB); most are written in
//! place through loans, every fourth is sent as `Bytes`.
//!
//! Phases: every child sends 1 % of its share (warm-up: arenas, rings, allocator trees and
//! the runtime reach their working size), then waits; the parent measures its `VmRSS` (from
//! `/proc/self/status`) and open descriptors, lets the children send the rest, and measures
//! again once they are done (nodes still connected, as at the first measurement). Exit
//! status: 0 if everything arrived intact, the engine copied exactly the number of messages
//! sent, and the growth stayed within the bound; 1 otherwise.

use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node, SessionSink, SessionStream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How much the engine process's resident memory may grow between the two measurements.
const RSS_BOUND_MIB: i64 = 64;
/// How many more descriptors the engine process may hold at the end than after warm-up.
const FD_BOUND: i64 = 16;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = |threads: usize| {
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(threads);
            b
        };
        builder.enable_all().build().expect("tokio runtime")
    };
    let result = match args.first().map(String::as_str) {
        Some("child") => runtime(1).block_on(child(&args[1..])),
        _ => match Options::parse(&args) {
            Ok(options) => runtime(2).block_on(parent(options)),
            Err(e) => {
                eprintln!("soak: {e}\nusage: soak [--messages N] [--nodes N]");
                std::process::exit(2);
            }
        },
    };
    if let Err(e) = result {
        eprintln!("soak: FAILED: {e}");
        std::process::exit(1);
    }
}

#[derive(Debug)]
struct Options {
    messages: u64,
    nodes: u64,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut options = Options {
            messages: 1_000_000,
            nodes: 4,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> Result<u64, Error> {
                let v = it.next().ok_or(format!("{name} needs a value"))?;
                Ok(v.replace('_', "")
                    .parse()
                    .map_err(|e| format!("{name} {v}: {e}"))?)
            };
            match arg.as_str() {
                "--messages" => options.messages = value("--messages")?,
                "--nodes" => options.nodes = value("--nodes")?,
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        if options.nodes < 2 {
            return Err("--nodes must be at least 2".into());
        }
        if options.messages < options.nodes {
            return Err("--messages must be at least --nodes".into());
        }
        Ok(options)
    }
}

/// Messages node `i` of `nodes` sends.
fn share(messages: u64, nodes: u64, i: u64) -> u64 {
    messages / nodes + u64::from(i < messages % nodes)
}

/// How many of a share of `n` messages belong to the warm-up.
fn warm_up(n: u64) -> u64 {
    (n / 100).clamp(1, n)
}

// ===== checked messages =====

const HEADER: usize = 16;
const MAX_LEN: usize = 256 << 10;
const NOISE_LEN: usize = 1 << 20;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn noise() -> &'static [u8] {
    static NOISE: OnceLock<Vec<u8>> = OnceLock::new();
    NOISE.get_or_init(|| {
        (0..NOISE_LEN as u64 / 8)
            .flat_map(|i| mix(i ^ 0x50A4).to_le_bytes())
            .collect()
    })
}

/// The length of message `seq` of `stream`: 70 % 16–256 B, 25 % up to 4 KiB, 4.9 % up to
/// 64 KiB, 0.1 % up to 256 KiB.
fn message_len(stream: u32, seq: u64) -> usize {
    let r = mix(u64::from(stream) << 40 ^ seq);
    let (pick, x) = (r % 1000, r >> 10);
    let (lo, hi) = match pick {
        0..700 => (HEADER as u64, 256),
        700..950 => (257, 4 << 10),
        950..999 => ((4 << 10) + 1, 64 << 10),
        _ => ((64 << 10) + 1, MAX_LEN as u64),
    };
    (lo + x % (hi - lo + 1)) as usize
}

fn body_offset(stream: u32, seq: u64) -> usize {
    (mix(seq ^ u64::from(stream).rotate_left(17) ^ 0xB0D1) % (NOISE_LEN - MAX_LEN) as u64) as usize
}

fn fill(buf: &mut [u8], stream: u32, seq: u64) {
    let len = buf.len();
    buf[..4].copy_from_slice(&stream.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    let off = body_offset(stream, seq);
    buf[HEADER..].copy_from_slice(&noise()[off..off + len - HEADER]);
}

fn check(bytes: &[u8], stream: u32, seq: u64) -> Result<(), Error> {
    let len = message_len(stream, seq);
    if bytes.len() != len {
        return Err(format!(
            "stream {stream} seq {seq}: {} bytes instead of {len}",
            bytes.len()
        )
        .into());
    }
    let got_stream = u32::from_le_bytes(bytes[..4].try_into()?);
    let got_seq = u64::from_le_bytes(bytes[4..12].try_into()?);
    let got_len = u32::from_le_bytes(bytes[12..16].try_into()?) as usize;
    if (got_stream, got_seq, got_len) != (stream, seq, len) {
        return Err(format!(
            "expected stream {stream} seq {seq} ({len} B), got stream {got_stream} seq {got_seq} \
             ({got_len} B): lost, duplicated or reordered"
        )
        .into());
    }
    let off = body_offset(stream, seq);
    if bytes[HEADER..] != noise()[off..off + len - HEADER] {
        return Err(format!("stream {stream} seq {seq} ({len} B): body corrupted").into());
    }
    Ok(())
}

// ===== the parent: engine, children, measurements =====

/// The engine process's resident memory and descriptors at one moment.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_kib: i64,
    anon_kib: i64,
    shmem_kib: i64,
    fds: i64,
}

impl Usage {
    fn now() -> Result<Self, Error> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let field = |name: &str| -> Result<i64, Error> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or(format!("no {name} in /proc/self/status"))?;
            Ok(line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?)
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            anon_kib: field("RssAnon:")?,
            shmem_kib: field("RssShmem:")?,
            fds: std::fs::read_dir("/proc/self/fd")?.count() as i64,
        })
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB (anon {:.1} MiB, shared memory {:.1} MiB), {} open fds",
            self.rss_kib as f64 / 1024.0,
            self.anon_kib as f64 / 1024.0,
            self.shmem_kib as f64 / 1024.0,
            self.fds
        )
    }
}

struct ChildNode {
    index: u64,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl ChildNode {
    async fn expect(&mut self, word: &str) -> Result<String, Error> {
        loop {
            let line = self
                .stdout
                .next_line()
                .await?
                .ok_or(format!("node {} exited before {word}", self.index))?;
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().to_owned());
            }
            if line.starts_with("FAIL") {
                return Err(format!("node {}: {line}", self.index).into());
            }
        }
    }

    async fn say(&mut self, line: &str) -> Result<(), Error> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }
}

async fn parent(options: Options) -> Result<(), Error> {
    let Options { messages, nodes } = options;
    let dir = std::env::temp_dir().join(format!("shmlink-soak-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder().socket(&socket).spawn()?;
    let result = run(&engine, &socket, messages, nodes).await;
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    engine: &Engine,
    socket: &std::path::Path,
    messages: u64,
    nodes: u64,
) -> Result<(), Error> {
    println!(
        "soak: {messages} messages through {nodes} child processes (one node each, in a ring), \
         16 B to 256 KiB, every one checked"
    );
    println!(
        "soak: bound on the engine process's growth after warm-up: VmRSS +{RSS_BOUND_MIB} MiB, \
         open fds +{FD_BOUND}"
    );
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for index in 0..nodes {
        let mut child = tokio::process::Command::new(&exe)
            .arg("child")
            .arg(socket)
            .args([index, nodes, messages].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        children.push(ChildNode {
            index,
            child,
            stdin,
            stdout,
        });
    }
    for c in &mut children {
        c.expect("READY").await?;
    }
    let started = Instant::now();
    for c in &mut children {
        c.say("START").await?;
    }
    for c in &mut children {
        c.expect("WARM").await?;
    }
    let warm: u64 = (0..nodes).map(|i| warm_up(share(messages, nodes, i))).sum();
    let before = Usage::now()?;
    let copied_before = copies_at_least(engine, warm).await?;
    println!("soak: after a warm-up of {warm} messages: {before}");
    let timed = Instant::now();
    for c in &mut children {
        c.say("GO").await?;
    }
    let mut received = 0u64;
    let mut bytes = 0u64;
    for c in &mut children {
        let done = c.expect("DONE").await?;
        for word in done.split_whitespace() {
            if let Some(v) = word.strip_prefix("received=") {
                received += v.parse::<u64>()?;
            } else if let Some(v) = word.strip_prefix("bytes=") {
                bytes += v.parse::<u64>()?;
            }
        }
    }
    let elapsed = timed.elapsed();
    let after = Usage::now()?;
    copies_at_least(engine, messages).await?;
    let stats = engine.stats();
    println!("soak: at the end:                  {after}");
    for mut c in children {
        drop(c.stdin.take());
        let status = c.child.wait().await?;
        if !status.success() {
            return Err(format!("node {} exited with {status}", c.index).into());
        }
    }
    let rate = (messages - warm) as f64 / elapsed.as_secs_f64();
    println!(
        "soak: {received} messages received and checked ({:.1} GiB of payload); after warm-up \
         {:.0} messages/s; overall {:.0} MiB/s; total {:.1?}; engine: {} copies, {} violations",
        bytes as f64 / (1u64 << 30) as f64,
        rate,
        bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64(),
        started.elapsed(),
        stats.messages,
        stats.violations
    );
    let rss_growth = (after.rss_kib - before.rss_kib) as f64 / 1024.0;
    let fd_growth = after.fds - before.fds;
    println!(
        "soak: growth: VmRSS {rss_growth:+.1} MiB (bound +{RSS_BOUND_MIB} MiB; anon {:+.1} MiB, \
         shared memory {:+.1} MiB: block pages the engine touched for the first time, at most \
         the blocks' size), fds {fd_growth:+} (bound +{FD_BOUND})",
        (after.anon_kib - before.anon_kib) as f64 / 1024.0,
        (after.shmem_kib - before.shmem_kib) as f64 / 1024.0,
    );
    let mut failures = Vec::new();
    if received != messages {
        failures.push(format!("{received} messages received of {messages}"));
    }
    if stats.messages != messages || stats.messages - copied_before != messages - warm {
        failures.push(format!(
            "the engine copied {} messages for {messages} sent",
            stats.messages
        ));
    }
    if stats.violations != 0 {
        failures.push(format!("{} protocol violations", stats.violations));
    }
    if rss_growth > RSS_BOUND_MIB as f64 {
        failures.push(format!(
            "VmRSS grew by {rss_growth:.1} MiB (bound {RSS_BOUND_MIB} MiB)"
        ));
    }
    if fd_growth > FD_BOUND {
        failures.push(format!("fds grew by {fd_growth} (bound {FD_BOUND})"));
    }
    if failures.is_empty() {
        println!("soak: ok");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// The engine's count of copies once it reaches `n` (it publishes its counts at the end of
/// each pass, which may end after a node has seen the last message).
async fn copies_at_least(engine: &Engine, n: u64) -> Result<u64, Error> {
    let wait = engine.wait_for_stats(|s| s.messages >= n);
    match tokio::time::timeout(std::time::Duration::from_secs(60), wait).await {
        Ok(stats) => Ok(stats.messages),
        Err(_) => Err(format!(
            "the engine counts {} copies, expected at least {n}",
            engine.stats().messages
        )
        .into()),
    }
}

// ===== a child: one node =====

/// Prints a protocol line for the parent.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Command lines from the parent, read on a plain thread.
fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn child(args: &[String]) -> Result<(), Error> {
    let result = child_node(args).await;
    if let Err(e) = &result {
        say(format!("FAIL {e}"));
    }
    result
}

async fn child_node(args: &[String]) -> Result<(), Error> {
    let [socket, index, nodes, messages] = args else {
        return Err(format!("child arguments: {args:?}").into());
    };
    let (index, nodes, messages): (u64, u64, u64) =
        (index.parse()?, nodes.parse()?, messages.parse()?);
    let mut cmds = commands();
    let mut expect = async |want: &str| -> Result<(), Error> {
        match cmds.recv().await {
            Some(line) if line == want => Ok(()),
            other => Err(format!("expected {want}, got {other:?}").into()),
        }
    };
    let node = Node::connect(socket, &format!("soak-{index}")).await?;
    let mut listener = node.listen::<Bytes>(&format!("soak-{index}")).await?;
    say("READY");
    expect("START").await?;
    let next = (index + 1) % nodes;
    let (mut tx, _tx_stream) = node.open::<Bytes>(&format!("soak-{next}")).await?.split();
    let (_rx_sink, mut rx) = listener.accept().await.ok_or("engine went away")?.split();
    let prev = (index + nodes - 1) % nodes;
    let (out_stream, in_stream) = (index as u32, prev as u32);
    let (out_total, in_total) = (share(messages, nodes, index), share(messages, nodes, prev));
    let (out_warm, in_warm) = (warm_up(out_total), warm_up(in_total));

    let (sent, got) = tokio::join!(
        send(&mut tx, out_stream, 0..out_warm),
        receive(&mut rx, in_stream, 0..in_warm)
    );
    sent?;
    let mut bytes = got?;
    say("WARM");
    expect("GO").await?;
    let (sent, got) = tokio::join!(
        async {
            send(&mut tx, out_stream, out_warm..out_total).await?;
            SinkExt::<Bytes>::close(&mut tx).await?;
            Ok::<(), Error>(())
        },
        receive(&mut rx, in_stream, in_warm..in_total)
    );
    sent?;
    bytes += got?;
    if let Some(extra) = rx.next().await {
        return Err(format!("expected the end of stream {in_stream}, got {extra:?}").into());
    }
    say(format!("DONE received={in_total} bytes={bytes}"));
    // Stay connected until the parent lets go.
    while cmds.recv().await.is_some() {}
    Ok(())
}

async fn send(tx: &mut SessionSink, stream: u32, seqs: std::ops::Range<u64>) -> Result<(), Error> {
    for seq in seqs {
        let len = message_len(stream, seq);
        if seq % 4 == 3 {
            let mut buf = vec![0u8; len];
            fill(&mut buf, stream, seq);
            tx.send(Bytes::from(buf)).await?;
        } else {
            let mut loan = tx.loan(len).await?;
            fill(&mut loan, stream, seq);
            tx.send(loan).await?;
        }
    }
    Ok(())
}

/// Receives and checks messages `seqs` of `stream`; returns their bytes.
async fn receive(
    rx: &mut SessionStream,
    stream: u32,
    seqs: std::ops::Range<u64>,
) -> Result<u64, Error> {
    let mut bytes = 0u64;
    for seq in seqs {
        let m = rx
            .next()
            .await
            .ok_or(format!("stream {stream} ended before seq {seq}"))??;
        check(&m, stream, seq)?;
        bytes += m.len() as u64;
    }
    Ok(bytes)
}
