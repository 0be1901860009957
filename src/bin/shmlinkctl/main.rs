//! `shmlinkctl`: look into a running shmlink engine, and pipe data through it.
//!
//! ```text
//! shmlinkctl [--socket PATH] status|nodes|services|sessions|topics|subscriptions|queues|consumers [--json]
//! shmlinkctl [--socket PATH] top
//! shmlinkctl [--socket PATH] send SERVICE [--raw]      # stdin -> a session to SERVICE
//! shmlinkctl [--socket PATH] recv SERVICE [--raw] [--count N]  # serve SERVICE, print what comes
//! ```
//!
//! The socket is `--socket`, else `SHMLINK_SOCKET`, else the engine's default path (as
//! `shmlinkd`). The listings ask the engine for one snapshot (an `Inspect` request on its
//! control socket: the same access policy as nodes, no block, no registration) and print
//! aligned tables, or the snapshot's JSON with `--json`. `top` redraws once a second.
//! `send` and `recv` move one message per line, or with `--raw` length-delimited records
//! (a 4-byte little-endian length, then the bytes).

mod top;

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use shmlink::Node;
use shmlink::inspect::{InspectError, Snapshot, inspect};

/// Look into a running shmlink engine, and pipe data through it.
#[derive(Debug, Parser)]
#[command(name = "shmlinkctl", version)]
struct Cli {
    /// The engine's socket (default: $XDG_RUNTIME_DIR/shmlink/engine.sock).
    #[arg(long, env = "SHMLINK_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The engine: version, uptime, policy, configuration, counters.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Connected nodes: id, name, pid, uid, sessions, receive arena in use.
    Nodes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Served names: name, serving node, message types.
    Services {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sessions: both ends, messages and bytes each way, in flight against the window.
    Sessions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Topics: publishers, subscribers, messages published, delivered, lagged, in flight.
    Topics {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Topic subscriptions: node, pattern, policy, delivered, lagged, in flight, queued.
    Subscriptions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queues: durability, depth (ready and unacked), producers, consumers, limits,
    /// dead-letter queue, messages enqueued, delivered, acked, dead-lettered.
    Queues {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue consumers: node, queue, prefetch, unacked, delivered, acked.
    Consumers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live view, refreshed once a second: rates per session, arena usage (q quits).
    Top,
    /// Open a raw session to SERVICE and send stdin: one message per line.
    Send {
        /// The service to open.
        service: String,
        /// Records of a 4-byte little-endian length and the bytes, instead of lines.
        #[arg(long)]
        raw: bool,
    },
    /// Publish stdin on raw TOPIC: one message per line (`tail -f log | shmlinkctl pub logs`).
    Pub {
        /// The topic.
        topic: String,
        /// Records of a 4-byte little-endian length and the bytes, instead of lines.
        #[arg(long)]
        raw: bool,
    },
    /// Subscribe to raw PATTERN (a topic, or `prefix/**`) and print what is published: one
    /// message per line; losses to a slow reader are reported on stderr.
    Sub {
        /// The topic or prefix pattern.
        pattern: String,
        /// Records of a 4-byte little-endian length and the bytes, instead of lines.
        #[arg(long)]
        raw: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Serve SERVICE and print what its sessions send: one message per line.
    Recv {
        /// The service to serve.
        service: String,
        /// Records of a 4-byte little-endian length and the bytes, instead of lines.
        #[arg(long)]
        raw: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// The CLI's failures: each printed as one sentence.
#[derive(Debug)]
enum Failure {
    Inspect(InspectError),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inspect(InspectError::Unreachable { path, source }) => write!(
                f,
                "no engine listens on {} ({source}); start shmlinkd, or pass --socket",
                path.display()
            ),
            Self::Inspect(e) => write!(f, "{e}"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<InspectError> for Failure {
    fn from(e: InspectError) -> Self {
        Self::Inspect(e)
    }
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(shmlink::default_socket_path);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shmlinkctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Status { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| status(&s, json)),
        Command::Nodes { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| nodes(&s, json)),
        Command::Services { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| services(&s, json)),
        Command::Sessions { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| sessions(&s, json)),
        Command::Topics { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| topics(&s, json)),
        Command::Subscriptions { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| subscriptions(&s, json)),
        Command::Queues { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| queues(&s, json)),
        Command::Consumers { json } => runtime
            .block_on(inspect(&socket))
            .map_err(Into::into)
            .and_then(|s| consumers(&s, json)),
        Command::Top => live_top(&runtime, &socket),
        Command::Send { service, raw } => runtime.block_on(send(&socket, &service, raw)),
        Command::Recv {
            service,
            raw,
            count,
        } => runtime.block_on(recv(&socket, &service, raw, count)),
        Command::Pub { topic, raw } => runtime.block_on(publish(&socket, &topic, raw)),
        Command::Sub {
            pattern,
            raw,
            count,
        } => runtime.block_on(subscribe(&socket, &pattern, raw, count)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmlinkctl: {e}");
            ExitCode::FAILURE
        }
    }
}

// ===== listings =====

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(other)?;
    println!("{text}");
    Ok(())
}

/// Prints rows as columns aligned to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned()
    };
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(stdout, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn status(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::json!({
            "version": s.version,
            "engine": s.engine,
            "counters": s.counters,
        }));
    }
    let e = &s.engine;
    let c = &s.counters;
    let mut rows = vec![
        vec!["version".into(), e.version.clone()],
        vec!["pid".into(), e.pid.to_string()],
        vec!["uptime".into(), format!("{}s", e.uptime_ms / 1000)],
        vec!["socket".into(), e.socket.clone()],
        vec!["policy".into(), e.policy.clone()],
        vec![
            "window".into(),
            format!("{} messages, {} bytes", e.window_messages, e.window_bytes),
        ],
        vec![
            "arenas".into(),
            format!(
                "tx {} bytes, rx {} bytes",
                e.tx_arena_bytes, e.rx_arena_bytes
            ),
        ],
        vec![
            "memory".into(),
            format!(
                "{} of {} bytes (blocks, topic and hand-off segments)",
                c.memory_used, c.memory_budget
            ),
        ],
        vec!["hand-off segments".into(), c.segments.to_string()],
        vec!["nodes".into(), c.nodes.to_string()],
        vec!["services".into(), c.services.to_string()],
        vec!["session ends".into(), c.session_ends.to_string()],
        vec!["messages".into(), c.messages.to_string()],
        vec!["bytes".into(), c.bytes.to_string()],
        vec!["violations".into(), c.violations.to_string()],
        vec!["topics".into(), c.topics.to_string()],
        vec![
            "topic segment".into(),
            format!("{} bytes", e.topic_segment_bytes),
        ],
        vec![
            "topic messages".into(),
            format!(
                "{} published, {} delivered, {} lagged",
                c.topic_published, c.topic_delivered, c.topic_lagged
            ),
        ],
        vec!["queues".into(), c.queues.to_string()],
        vec![
            "data dir".into(),
            e.data_dir
                .clone()
                .unwrap_or_else(|| "(none: in-memory queues only)".into()),
        ],
        vec![
            "queue memory".into(),
            format!(
                "{} {} of {} bytes",
                top::bar(e.queue_memory_in_use, e.queue_memory_budget, 10),
                e.queue_memory_in_use,
                e.queue_memory_budget
            ),
        ],
        vec![
            "queue messages".into(),
            format!(
                "{} ready, {} unacked; {} enqueued, {} delivered ({} redelivered), {} acked, {} dead-lettered, {} leases expired",
                c.queue_ready,
                c.queue_unacked,
                c.queue_enqueued,
                c.queue_delivered,
                c.queue_redelivered,
                c.queue_acked,
                c.queue_dead_lettered,
                c.queue_expired
            ),
        ],
        vec!["waiting".into(), c.waiting.to_string()],
        vec!["connections".into(), c.connections.to_string()],
    ];
    for (name, value) in &e.limits {
        rows.push(vec![format!("limit {name}"), value.to_string()]);
    }
    table(&["FIELD", "VALUE"], &rows);
    Ok(())
}

fn nodes(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.nodes).map_err(other)?);
    }
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.name.clone(),
                n.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                n.uid.to_string(),
                n.sessions.to_string(),
                n.services.to_string(),
                if n.active { "active" } else { "idle" }.into(),
                top::bar(n.rx_in_use, n.rx_size, 10),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "PID", "UID", "SESSIONS", "SERVICES", "STATE", "RX ARENA",
        ],
        &rows,
    );
    Ok(())
}

fn services(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.services).map_err(other)?);
    }
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format!("{} ({})", v.node_name, v.node),
                v.send_type.clone(),
                v.recv_type.clone(),
            ]
        })
        .collect();
    table(&["SERVICE", "NODE", "SENDS", "RECEIVES"], &rows);
    Ok(())
}

fn sessions(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.sessions).map_err(other)?);
    }
    let window = s.engine.window_messages;
    let rows: Vec<Vec<String>> = s
        .sessions
        .iter()
        .map(|v| {
            let b = v.b.as_ref();
            vec![
                format!(
                    "{}/{}",
                    v.a.end,
                    b.map_or_else(|| "-".into(), |b| b.end.to_string())
                ),
                v.a.node_name.clone(),
                b.map_or_else(|| "(closed)".into(), |b| b.node_name.clone()),
                format!("{} ({} B)", v.a.sent_messages, v.a.sent_bytes),
                b.map_or_else(
                    || "-".into(),
                    |b| format!("{} ({} B)", b.sent_messages, b.sent_bytes),
                ),
                format!(
                    "{}/{} {}/{}",
                    v.a.in_flight,
                    window,
                    b.map_or(0, |b| b.in_flight),
                    window
                ),
                (v.a.waiting + b.map_or(0, |b| b.waiting)).to_string(),
            ]
        })
        .collect();
    table(
        &["ENDS", "A", "B", "A->B", "B->A", "IN FLIGHT", "WAITING"],
        &rows,
    );
    Ok(())
}

fn topics(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.topics).map_err(other)?);
    }
    let rows: Vec<Vec<String>> = s
        .topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.message_type.clone().unwrap_or_else(|| "-".into()),
                t.publishers.to_string(),
                t.subscribers.to_string(),
                t.published.to_string(),
                t.delivered.to_string(),
                t.lagged.to_string(),
                t.in_flight.to_string(),
                top::bar(t.segment_in_use, s.engine.topic_segment_bytes, 10),
            ]
        })
        .collect();
    table(
        &[
            "TOPIC",
            "TYPE",
            "PUBLISHERS",
            "SUBSCRIBERS",
            "PUBLISHED",
            "DELIVERED",
            "LAGGED",
            "IN FLIGHT",
            "SEGMENT",
        ],
        &rows,
    );
    Ok(())
}

fn queues(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.queues).map_err(other)?);
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = s
        .queues
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                if q.durable { "durable" } else { "memory" }.into(),
                q.message_type.clone().unwrap_or_else(dash),
                q.ready.to_string(),
                q.unacked.to_string(),
                q.producers.to_string(),
                q.consumers.to_string(),
                if q.max_length == 0 {
                    dash()
                } else {
                    q.max_length.to_string()
                },
                q.dead_letter.clone().unwrap_or_else(dash),
                q.enqueued.to_string(),
                format!("{} ({})", q.delivered, q.redelivered),
                q.acked.to_string(),
                q.dead_lettered.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "KIND",
            "TYPE",
            "READY",
            "UNACKED",
            "PRODUCERS",
            "CONSUMERS",
            "MAX LEN",
            "DEAD LETTER",
            "ENQUEUED",
            "DELIVERED (REDELIVERED)",
            "ACKED",
            "DEAD-LETTERED",
        ],
        &rows,
    );
    Ok(())
}

fn consumers(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.consumers).map_err(other)?);
    }
    let rows: Vec<Vec<String>> = s
        .consumers
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                format!("{} ({})", c.node_name, c.node),
                c.queue.clone(),
                c.prefetch.to_string(),
                c.lease_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
                format!("{}{}", c.unacked, if c.stalled { " (stalled)" } else { "" }),
                c.delivered.to_string(),
                c.acked.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NODE",
            "QUEUE",
            "PREFETCH",
            "LEASE",
            "UNACKED",
            "DELIVERED",
            "ACKED",
        ],
        &rows,
    );
    Ok(())
}

fn subscriptions(s: &Snapshot, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(&serde_json::to_value(&s.subscriptions).map_err(other)?);
    }
    let rows: Vec<Vec<String>> = s
        .subscriptions
        .iter()
        .map(|v| {
            vec![
                v.id.to_string(),
                format!("{} ({})", v.node_name, v.node),
                v.pattern.clone(),
                match v.untether_ms {
                    Some(ms) => format!("{} {ms}ms", v.policy),
                    None => v.policy.clone(),
                },
                v.topics.len().to_string(),
                v.delivered.to_string(),
                v.lagged.to_string(),
                v.in_flight.to_string(),
                v.pending.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NODE",
            "PATTERN",
            "POLICY",
            "TOPICS",
            "DELIVERED",
            "LAGGED",
            "IN FLIGHT",
            "QUEUED",
        ],
        &rows,
    );
    Ok(())
}

// ===== top =====

fn live_top(runtime: &tokio::runtime::Runtime, socket: &Path) -> Result<(), Failure> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    // Fails early, before the screen is taken, when no engine answers.
    let mut cur = runtime.block_on(inspect(socket))?;
    let mut prev: Option<(Snapshot, Instant)> = None;
    let mut taken = Instant::now();
    let mut sort = top::Sort::default();
    let mut terminal = ratatui::init();
    let result = loop {
        let secs = prev
            .as_ref()
            .map_or(1.0, |(_, at)| taken.duration_since(*at).as_secs_f64());
        if let Err(e) = top::render(
            &mut terminal,
            prev.as_ref().map(|(s, _)| s),
            &cur,
            secs,
            sort,
        ) {
            break Err(other(e));
        }
        let deadline = taken + Duration::from_secs(1);
        let mut quit = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match event::poll(left) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                        KeyCode::Char('q') | KeyCode::Esc => quit = true,
                        KeyCode::Char('s') => sort = sort.toggled(),
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(e) => return finish(Err(other(e))),
                },
                Ok(false) => break,
                Err(e) => return finish(Err(other(e))),
            }
            if quit || left.is_zero() {
                break;
            }
        }
        if quit {
            break Ok(());
        }
        match runtime.block_on(inspect(socket)) {
            Ok(next) => {
                prev = Some((std::mem::replace(&mut cur, next), taken));
                taken = Instant::now();
            }
            Err(e) => break Err(e.into()),
        }
    };
    finish(result)
}

fn finish(result: Result<(), Failure>) -> Result<(), Failure> {
    ratatui::restore();
    result
}

// ===== send and recv =====

fn node_name(role: &str) -> String {
    format!("shmlinkctl-{role}-{}", std::process::id())
}

/// Reads one record from stdin: a line without its `\n`, or a length-prefixed record.
fn read_record(input: &mut impl BufRead, raw: bool) -> io::Result<Option<Vec<u8>>> {
    if raw {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut buf)?;
        return Ok(Some(buf));
    }
    let mut line = Vec::new();
    if input.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(Some(line))
}

async fn send(socket: &Path, service: &str, raw: bool) -> Result<(), Failure> {
    let node = Node::connect(socket, &node_name("send"))
        .await
        .map_err(|e| other(format!("cannot connect: {e}")))?;
    let session = node
        .open::<Bytes>(service)
        .await
        .map_err(|e| other(format!("cannot open {service:?}: {e}")))?;
    let (mut sink, _stream) = session.split();
    stdin_into(&mut sink, raw, service).await?;
    // Half-close: the receiver sees the end of this session after every message.
    sink.close()
        .await
        .map_err(|e| other(format!("closing the session: {e}")))?;
    Ok(())
}

async fn publish(socket: &Path, topic: &str, raw: bool) -> Result<(), Failure> {
    let node = Node::connect(socket, &node_name("pub"))
        .await
        .map_err(|e| other(format!("cannot connect: {e}")))?;
    let mut publisher = node
        .publish::<Bytes>(topic)
        .await
        .map_err(|e| other(format!("cannot publish on {topic:?}: {e}")))?;
    stdin_into(&mut publisher, raw, topic).await?;
    publisher
        .close()
        .await
        .map_err(|e| other(format!("closing the publisher: {e}")))?;
    Ok(())
}

/// Sends every record of stdin into `sink` (stdin is read on a blocking thread).
async fn stdin_into<S>(sink: &mut S, raw: bool, to: &str) -> Result<(), Failure>
where
    S: futures::Sink<Bytes> + Unpin,
    S::Error: std::fmt::Display,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(64);
    std::thread::spawn(move || {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        loop {
            match read_record(&mut input, raw) {
                Ok(Some(record)) => {
                    if tx.blocking_send(Ok(record)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    while let Some(record) = rx.recv().await {
        let record = record.map_err(|e| other(format!("reading stdin: {e}")))?;
        sink.send(Bytes::from(record))
            .await
            .map_err(|e| other(format!("sending to {to:?}: {e}")))?;
    }
    Ok(())
}

async fn subscribe(
    socket: &Path,
    pattern: &str,
    raw: bool,
    count: Option<u64>,
) -> Result<(), Failure> {
    let node = Node::connect(socket, &node_name("sub"))
        .await
        .map_err(|e| other(format!("cannot connect: {e}")))?;
    let mut subscription = node
        .subscribe::<Bytes>(pattern)
        .await
        .map_err(|e| other(format!("cannot subscribe to {pattern:?}: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let forward = async move {
        while let Some(next) = subscription.next().await {
            match next {
                Ok(message) => {
                    if tx.send(message).await.is_err() {
                        return Ok(());
                    }
                }
                Err(shmlink::SubscribeError::Lagged(n)) => {
                    eprintln!("shmlinkctl: {n} messages lost (this reader was too slow)");
                }
                Err(e) => return Err(other(format!("subscription to {pattern:?}: {e}"))),
            }
        }
        Ok(())
    };
    tokio::select! {
        result = print_records(rx, raw, count) => result,
        result = forward => result,
    }
}

async fn recv(socket: &Path, service: &str, raw: bool, count: Option<u64>) -> Result<(), Failure> {
    let node = Node::connect(socket, &node_name("recv"))
        .await
        .map_err(|e| other(format!("cannot connect: {e}")))?;
    let mut listener = node
        .listen::<Bytes>(service)
        .await
        .map_err(|e| other(format!("cannot serve {service:?}: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let accept = async move {
        while let Some(session) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (_sink, mut stream) = session.split();
                while let Some(Ok(message)) = stream.next().await {
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    tokio::select! {
        result = print_records(rx, raw, count) => result,
        () = accept => Ok(()),
    }
}

/// Prints records from `rx` on stdout (lines, or length-prefixed with `raw`) until `count`.
async fn print_records(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    raw: bool,
    count: Option<u64>,
) -> Result<(), Failure> {
    let mut printed = 0u64;
    let mut stdout = io::stdout().lock();
    while count.is_none_or(|c| printed < c) {
        let Some(message) = rx.recv().await else {
            break;
        };
        let written = if raw {
            stdout
                .write_all(&(message.len() as u32).to_le_bytes())
                .and_then(|()| stdout.write_all(&message))
        } else {
            stdout
                .write_all(&message)
                .and_then(|()| stdout.write_all(b"\n"))
        };
        match written.and_then(|()| stdout.flush()) {
            Ok(()) => printed += 1,
            // The reader went away (`| head`): done, quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(other(format!("writing stdout: {e}"))),
        }
    }
    Ok(())
}
