//! `shmlinkd`: a standalone shmlink engine.
//!
//! ```text
//! shmlinkd [-h|--help] [-V|--version]
//! shmlinkd [--socket PATH] [--tx-arena BYTES] [--rx-arena BYTES] [--min-block BYTES]
//!          [--ring ENTRIES] [--credits N] [--window-bytes BYTES] [--topic-segment BYTES]
//!          [--allow-uid UID]... [--spin-us N] [--log FILTER]
//!          [--max-connections-per-uid N] [--max-handshakes-per-uid N] [--max-nodes-per-uid N]
//!          [--max-sessions-per-uid N] [--max-sessions-per-opener N] [--max-queued-sessions N]
//!          [--max-requests-per-connection N] [--max-partial-frame BYTES]
//!          [--max-queued-frames N] [--dumpable] [--metrics-addr ADDR [--metrics-allow-remote]]
//!          [--data-dir PATH | --no-data-dir] [--queue-memory BYTES]
//!          [--memory-budget BYTES] [--node-memory-budget BYTES]
//! ```
//!
//! Durable queues live in the data directory (`queues.redb`): `--data-dir`, or
//! `$SHMLINK_DATA_DIR`, or by default `$XDG_STATE_HOME/shmlink`, else
//! `/var/lib/shmlink` when running as root, else `$HOME/.local/state/shmlink`.
//! `--no-data-dir` runs without one (declaring a durable queue is then an error). A store
//! that cannot be read (corrupted, truncated, in use by another engine) stops the daemon at
//! start with the reason, never an empty queue.
//!
//! Every flag has an environment variable (`SHMLINK_SOCKET`, `SHMLINK_TX_ARENA`,
//! `SHMLINK_RX_ARENA`, `SHMLINK_MIN_BLOCK`, `SHMLINK_RING`, `SHMLINK_CREDITS`,
//! `SHMLINK_WINDOW_BYTES`, `SHMLINK_TOPIC_SEGMENT`, `SHMLINK_ALLOW_UIDS` (comma-separated), `SHMLINK_SPIN_US`, `RUST_LOG`, and for the limits
//! `SHMLINK_MAX_CONNECTIONS_PER_UID`, `SHMLINK_MAX_HANDSHAKES_PER_UID`,
//! `SHMLINK_MAX_NODES_PER_UID`, `SHMLINK_MAX_SESSIONS_PER_UID`,
//! `SHMLINK_MAX_SESSIONS_PER_OPENER`, `SHMLINK_MAX_QUEUED_SESSIONS`,
//! `SHMLINK_MAX_REQUESTS_PER_CONNECTION`, `SHMLINK_MAX_PARTIAL_FRAME`,
//! `SHMLINK_MAX_QUEUED_FRAMES`, `SHMLINK_DUMPABLE=1`, `SHMLINK_METRICS_ADDR`); a flag wins over its variable. Sizes
//! accept a `K`, `M` or `G` suffix. The limits' defaults and meaning are those of
//! `EngineBuilder` (docs/SECURITY.md lists them).
//!
//! The daemon makes itself non-dumpable (`PR_SET_DUMPABLE` 0) so that other processes of
//! its uid cannot open every node's block through `/proc/<pid>/fd`; `--dumpable` keeps it
//! dumpable, for debugging. SIGINT or SIGTERM shuts down gracefully: every node sees
//! `Disconnected` and the socket file is removed.
//!
//! `--metrics-addr 127.0.0.1:9464` serves the engine's metrics for Prometheus on
//! `http://ADDR/metrics` (`metrics-exporter-prometheus`); an address that is not loopback is
//! refused unless `--metrics-allow-remote` is given.

use std::process::ExitCode;
use std::time::Duration;

use shmlink::{BlockConfig, Engine, EngineBuilder, Policy};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: shmlinkd [--socket PATH] [--tx-arena BYTES] [--rx-arena BYTES] \
[--min-block BYTES] [--ring ENTRIES] [--credits N] [--window-bytes BYTES] [--topic-segment BYTES] [--allow-uid UID]... [--spin-us N] [--log FILTER] \
[--max-connections-per-uid N] [--max-handshakes-per-uid N] [--max-nodes-per-uid N] \
[--max-sessions-per-uid N] [--max-sessions-per-opener N] [--max-queued-sessions N] \
[--max-requests-per-connection N] [--max-partial-frame BYTES] [--max-queued-frames N] [--dumpable] \
[--metrics-addr ADDR [--metrics-allow-remote]] [--data-dir PATH | --no-data-dir] [--queue-memory BYTES] \
[--memory-budget BYTES] [--node-memory-budget BYTES]";

/// What `--help` prints (on stdout).
const HELP: &str = "\
shmlinkd: a standalone shmlink engine (shared-memory messaging for processes on one host)

Usage: shmlinkd [OPTIONS]

Options:
  --socket PATH       socket nodes connect to [env SHMLINK_SOCKET]
                      (default $XDG_RUNTIME_DIR/shmlink/engine.sock,
                      or /tmp/shmlink-UID/engine.sock without XDG_RUNTIME_DIR)
  --tx-arena BYTES    each node's transmit arena, K/M/G suffixes [env SHMLINK_TX_ARENA] (32M)
  --rx-arena BYTES    each node's receive arena [env SHMLINK_RX_ARENA] (32M)
  --min-block BYTES   smallest allocation class [env SHMLINK_MIN_BLOCK] (256)
  --ring ENTRIES      capacity of every ring: submit, deliver, release [env SHMLINK_RING]
  --credits N         messages a session end may have in flight [env SHMLINK_CREDITS] (256)
  --window-bytes BYTES  bytes a session end may have in flight [env SHMLINK_WINDOW_BYTES] (4M)
  --topic-segment BYTES  each topic's broadcast segment, the largest topic message;
                      a power of two from 4K to 256M [env SHMLINK_TOPIC_SEGMENT] (8M)
  --allow-uid UID     also admit nodes of this uid; repeatable
                      [env SHMLINK_ALLOW_UIDS, comma-separated]
  --spin-us N         how long the engine polls before it parks [env SHMLINK_SPIN_US] (50)
  --log FILTER        tracing filter [env RUST_LOG] (info)
  --max-connections-per-uid N      [env SHMLINK_MAX_CONNECTIONS_PER_UID] (512)
  --max-handshakes-per-uid N       [env SHMLINK_MAX_HANDSHAKES_PER_UID] (64)
  --max-nodes-per-uid N            [env SHMLINK_MAX_NODES_PER_UID] (512)
  --max-sessions-per-uid N         [env SHMLINK_MAX_SESSIONS_PER_UID] (65536)
  --max-sessions-per-opener N      sessions one node may open to one server
                                   [env SHMLINK_MAX_SESSIONS_PER_OPENER] (1024)
  --max-queued-sessions N          [env SHMLINK_MAX_QUEUED_SESSIONS] (1024)
  --max-requests-per-connection N  [env SHMLINK_MAX_REQUESTS_PER_CONNECTION] (64)
  --max-partial-frame BYTES        [env SHMLINK_MAX_PARTIAL_FRAME] (4K)
  --max-queued-frames N            [env SHMLINK_MAX_QUEUED_FRAMES] (16384)
  --dumpable          stay dumpable (for debugging) [env SHMLINK_DUMPABLE=1]
  --metrics-addr ADDR serve Prometheus metrics on http://ADDR/metrics, for example
                      127.0.0.1:9464 [env SHMLINK_METRICS_ADDR] (off)
  --metrics-allow-remote  allow a --metrics-addr that is not loopback
  --data-dir PATH     where durable queues are kept [env SHMLINK_DATA_DIR]
                      (default $XDG_STATE_HOME/shmlink; /var/lib/shmlink as root;
                      else $HOME/.local/state/shmlink)
  --no-data-dir       no durable queues (declaring one is an error)
  --queue-memory BYTES  engine memory for queued payloads [env SHMLINK_QUEUE_MEMORY] (256M)
  --memory-budget BYTES  shared memory for all nodes' blocks and topic segments together
                      [env SHMLINK_MEMORY_BUDGET] (half of the host's memory)
  --node-memory-budget BYTES  shared memory for one node [env SHMLINK_NODE_MEMORY_BUDGET]
                      (a quarter of --memory-budget, at least one block)
  -h, --help          print this help and exit
  -V, --version       print the version and exit

A flag wins over its variable. SIGINT or SIGTERM shuts down gracefully: every node sees
Disconnected and the socket file is removed.";

/// What the command line asks for.
#[derive(Debug)]
enum Parsed {
    /// Run the engine.
    Run(Box<Options>),
    /// Print this text on stdout and exit successfully (`--help`, `--version`).
    Print(String),
}

/// The limits' flags, their variables, and the builder method each sets.
type SetLimit = fn(EngineBuilder, usize) -> EngineBuilder;
const LIMITS: [(&str, &str, SetLimit); 9] = [
    (
        "--max-connections-per-uid",
        "SHMLINK_MAX_CONNECTIONS_PER_UID",
        EngineBuilder::max_connections_per_uid,
    ),
    (
        "--max-handshakes-per-uid",
        "SHMLINK_MAX_HANDSHAKES_PER_UID",
        EngineBuilder::max_handshakes_per_uid,
    ),
    (
        "--max-nodes-per-uid",
        "SHMLINK_MAX_NODES_PER_UID",
        EngineBuilder::max_nodes_per_uid,
    ),
    (
        "--max-sessions-per-uid",
        "SHMLINK_MAX_SESSIONS_PER_UID",
        EngineBuilder::max_sessions_per_uid,
    ),
    (
        "--max-sessions-per-opener",
        "SHMLINK_MAX_SESSIONS_PER_OPENER",
        EngineBuilder::max_sessions_per_opener,
    ),
    (
        "--max-queued-sessions",
        "SHMLINK_MAX_QUEUED_SESSIONS",
        EngineBuilder::max_queued_sessions,
    ),
    (
        "--max-requests-per-connection",
        "SHMLINK_MAX_REQUESTS_PER_CONNECTION",
        EngineBuilder::max_requests_per_connection,
    ),
    (
        "--max-partial-frame",
        "SHMLINK_MAX_PARTIAL_FRAME",
        EngineBuilder::max_partial_frame_bytes,
    ),
    (
        "--max-queued-frames",
        "SHMLINK_MAX_QUEUED_FRAMES",
        EngineBuilder::max_queued_frames,
    ),
];

#[derive(Debug)]
struct Options {
    socket: std::path::PathBuf,
    block: BlockConfig,
    credits: u32,
    window_bytes: u64,
    topic_segment: u64,
    allow: Vec<u32>,
    spin_us: Option<u64>,
    log: String,
    /// Values for [`LIMITS`], by index.
    limits: [Option<usize>; LIMITS.len()],
    dumpable: bool,
    metrics_addr: Option<std::net::SocketAddr>,
    metrics_allow_remote: bool,
    /// `None`: no durable queues.
    data_dir: Option<std::path::PathBuf>,
    queue_memory: Option<u64>,
    memory_budget: Option<u64>,
    node_memory_budget: Option<u64>,
}

/// The daemon's default data directory (see the module docs).
fn default_data_dir() -> Option<std::path::PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = env("XDG_STATE_HOME") {
        return Some(std::path::PathBuf::from(state).join("shmlink"));
    }
    // /proc/self belongs to the process's effective uid.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").ok()?) == 0;
    if root {
        return Some("/var/lib/shmlink".into());
    }
    env("HOME").map(|home| std::path::PathBuf::from(home).join(".local/state/shmlink"))
}

fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size too large: {text:?}"))
}

fn parse_num<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{what}: not a number: {text:?}"))
}

/// A limit: a count, or a size with a suffix.
fn parse_limit(what: &str, text: &str) -> Result<usize, String> {
    let value = parse_size(text).map_err(|e| format!("{what}: {e}"))?;
    usize::try_from(value).map_err(|_| format!("{what}: too large: {text:?}"))
}

fn options() -> Result<Parsed, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut o = Options {
        socket: env("SHMLINK_SOCKET").map_or_else(shmlink::default_socket_path, Into::into),
        block: BlockConfig::default(),
        credits: 256,
        window_bytes: 4 << 20,
        topic_segment: shmlink::DEFAULT_TOPIC_SEGMENT,
        allow: Vec::new(),
        spin_us: None,
        log: env("RUST_LOG").unwrap_or_else(|| "info".into()),
        limits: [None; LIMITS.len()],
        dumpable: env("SHMLINK_DUMPABLE").is_some_and(|v| v != "0"),
        metrics_addr: None,
        metrics_allow_remote: false,
        data_dir: env("SHMLINK_DATA_DIR").map_or_else(default_data_dir, |d| Some(d.into())),
        queue_memory: None,
        memory_budget: None,
        node_memory_budget: None,
    };
    if let Some(v) = env("SHMLINK_MEMORY_BUDGET") {
        o.memory_budget = Some(parse_size(&v)?);
    }
    if let Some(v) = env("SHMLINK_NODE_MEMORY_BUDGET") {
        o.node_memory_budget = Some(parse_size(&v)?);
    }
    if let Some(v) = env("SHMLINK_QUEUE_MEMORY") {
        o.queue_memory = Some(parse_size(&v)?);
    }
    if let Some(v) = env("SHMLINK_METRICS_ADDR") {
        o.metrics_addr = Some(parse_num("SHMLINK_METRICS_ADDR", &v)?);
    }
    for (i, (_, var, _)) in LIMITS.iter().enumerate() {
        if let Some(v) = env(var) {
            o.limits[i] = Some(parse_limit(var, &v)?);
        }
    }
    let set_ring = |block: &mut BlockConfig, n: u32| {
        block.submit_capacity = n;
        block.deliver_capacity = n;
        block.release_capacity = n;
    };
    if let Some(v) = env("SHMLINK_TX_ARENA") {
        o.block.tx_arena = parse_size(&v)?;
    }
    if let Some(v) = env("SHMLINK_RX_ARENA") {
        o.block.rx_arena = parse_size(&v)?;
    }
    if let Some(v) = env("SHMLINK_MIN_BLOCK") {
        o.block.min_block = parse_size(&v)?;
    }
    if let Some(v) = env("SHMLINK_RING") {
        set_ring(&mut o.block, parse_num("SHMLINK_RING", &v)?);
    }
    if let Some(v) = env("SHMLINK_CREDITS") {
        o.credits = parse_num("SHMLINK_CREDITS", &v)?;
    }
    if let Some(v) = env("SHMLINK_WINDOW_BYTES") {
        o.window_bytes = parse_size(&v)?;
    }
    if let Some(v) = env("SHMLINK_TOPIC_SEGMENT") {
        o.topic_segment = parse_size(&v)?;
    }
    if let Some(v) = env("SHMLINK_ALLOW_UIDS") {
        for uid in v.split(',') {
            o.allow.push(parse_num("SHMLINK_ALLOW_UIDS", uid)?);
        }
    }
    if let Some(v) = env("SHMLINK_SPIN_US") {
        o.spin_us = Some(parse_num("SHMLINK_SPIN_US", &v)?);
    }
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Print(HELP.into())),
            "-V" | "--version" => {
                return Ok(Parsed::Print(format!(
                    "shmlinkd {}",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            _ => {}
        }
        if flag == "--dumpable" {
            o.dumpable = true;
            continue;
        }
        if flag == "--no-data-dir" {
            o.data_dir = None;
            continue;
        }
        if flag == "--metrics-allow-remote" {
            o.metrics_allow_remote = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--socket" => o.socket = value.into(),
            "--tx-arena" => o.block.tx_arena = parse_size(&value)?,
            "--rx-arena" => o.block.rx_arena = parse_size(&value)?,
            "--min-block" => o.block.min_block = parse_size(&value)?,
            "--ring" => set_ring(&mut o.block, parse_num("--ring", &value)?),
            "--credits" => o.credits = parse_num("--credits", &value)?,
            "--window-bytes" => o.window_bytes = parse_size(&value)?,
            "--topic-segment" => o.topic_segment = parse_size(&value)?,
            "--allow-uid" => o.allow.push(parse_num("--allow-uid", &value)?),
            "--spin-us" => o.spin_us = Some(parse_num("--spin-us", &value)?),
            "--log" => o.log = value,
            "--data-dir" => o.data_dir = Some(value.into()),
            "--queue-memory" => o.queue_memory = Some(parse_size(&value)?),
            "--memory-budget" => o.memory_budget = Some(parse_size(&value)?),
            "--node-memory-budget" => o.node_memory_budget = Some(parse_size(&value)?),
            "--metrics-addr" => o.metrics_addr = Some(parse_num("--metrics-addr", &value)?),
            other => match LIMITS.iter().position(|(name, _, _)| *name == other) {
                Some(i) => o.limits[i] = Some(parse_limit(other, &value)?),
                None => return Err(format!("unknown flag {other}\n{USAGE}")),
            },
        }
    }
    if let Some(addr) = o.metrics_addr
        && !addr.ip().is_loopback()
        && !o.metrics_allow_remote
    {
        return Err(format!(
            "--metrics-addr {addr} is not a loopback address: metrics would be readable from \
             other hosts; add --metrics-allow-remote if that is meant"
        ));
    }
    Ok(Parsed::Run(Box::new(o)))
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(Parsed::Run(o)) => *o,
        Ok(Parsed::Print(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&options.log).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shmlinkd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut builder = Engine::builder()
            .socket(&options.socket)
            .block(options.block)
            .credits(options.credits)
            .window_bytes(options.window_bytes)
            .topic_segment_size(options.topic_segment);
        if let Some(us) = options.spin_us {
            builder = builder.spin(Duration::from_micros(us));
        }
        if !options.allow.is_empty() {
            builder = builder.policy(Policy::AllowUids(options.allow.clone()));
        }
        for ((_, _, set), value) in LIMITS.iter().zip(options.limits) {
            if let Some(value) = value {
                builder = set(builder, value);
            }
        }
        // Other processes of this uid lose /proc/<pid>/fd, /proc/<pid>/mem and ptrace.
        builder = builder.non_dumpable(!options.dumpable);
        if let Some(dir) = &options.data_dir {
            builder = builder.data_dir(dir);
        }
        if let Some(bytes) = options.queue_memory {
            builder = builder.queue_memory(bytes);
        }
        if let Some(bytes) = options.memory_budget {
            builder = builder.memory_budget(bytes);
        }
        if let Some(bytes) = options.node_memory_budget {
            builder = builder.node_memory_budget(bytes);
        }
        if let Some(addr) = options.metrics_addr {
            let installed = metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install();
            if let Err(e) = installed {
                eprintln!("shmlinkd: cannot serve metrics on {addr}: {e}");
                return ExitCode::FAILURE;
            }
            println!("shmlinkd: metrics on http://{addr}/metrics");
            builder = builder.metrics(true);
        }
        let engine = match builder.spawn() {
            Ok(engine) => engine,
            Err(e) => {
                eprintln!("shmlinkd: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("shmlinkd: listening on {}", engine.socket_path().display());
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("shmlinkd: cannot watch SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        engine.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("32M"), Ok(32 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
