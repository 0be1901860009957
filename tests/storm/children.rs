//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise; the
//! runner prints it on stderr and exits non-zero.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Session, SessionSink};

use crate::payload::{self, HEADER};
use crate::support::{self, ChildSpec, Commands, Rng, connect, ctx, say};

/// The service the storm's hub serves; every crasher opens it.
pub(crate) const HUB_SERVICE: &str = "storm-hub";
/// The service of the well-behaved pair.
pub(crate) const STEADY_SERVICE: &str = "steady";
/// Stream id of the well-behaved pair's numbered stream.
pub(crate) const STEADY_STREAM: u32 = 0x7000_0000;
/// Marks the stream of the burst the hub sends to crasher `cycle`.
pub(crate) const BURST_FLAG: u32 = 0x4000_0000;
/// First bytes of a crasher's hello: `HELO`, cycle (u32 LE), burst length (u32 LE).
pub(crate) const HELLO: &[u8; 4] = b"HELO";

/// The length of message `seq` of a storm stream (crasher, burst or steady): 16 B to 8 KiB.
pub(crate) fn storm_len(stream: u32, seq: u64) -> usize {
    HEADER + Rng::derive(0x57_0E, u64::from(stream), seq).below(8 << 10) as usize
}

/// The length of message `seq` of load stream `stream`: 64 B to 256 KiB, mostly small
/// (60 % up to 4 KiB, 30 % up to 64 KiB, 10 % up to 256 KiB).
pub(crate) fn load_len(stream: u32, seq: u64) -> usize {
    let mut rng = Rng::derive(0x10AD, u64::from(stream), seq);
    let len = match rng.below(100) {
        0..60 => rng.range(64, 4 << 10),
        60..90 => rng.range((4 << 10) + 1, 64 << 10),
        _ => rng.range((64 << 10) + 1, 256 << 10),
    };
    len as usize
}

/// The stream id of session `k` opened by load node `g`.
pub(crate) fn load_stream(g: usize, k: usize) -> u32 {
    (g * 16 + k) as u32
}

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "steady-echo" => steady_echo(&a[0], cmds).await,
            "steady-sender" => steady_sender(&a[0], cmds).await,
            "crasher" => crasher(a).await,
            "load" => load(a, cmds).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

fn num<T: std::str::FromStr>(args: &[String], k: usize) -> Result<T, String>
where
    T::Err: Display,
{
    args.get(k)
        .ok_or_else(|| format!("missing argument {k}"))?
        .parse()
        .map_err(ctx(format!("argument {k}")))
}

/// Sends message (`stream`, `seq`) of `len` bytes, through a loan written in place or as
/// `Bytes`, so both paths carry traffic.
async fn send_message(
    tx: &mut SessionSink,
    stream: u32,
    seq: u64,
    len: usize,
    loan: bool,
) -> Result<(), String> {
    if loan {
        let mut loan = tx
            .loan(len)
            .await
            .map_err(ctx(format!("loan for stream {stream} seq {seq}")))?;
        payload::fill(&mut loan, stream, seq);
        tx.send(loan).await
    } else {
        tx.send(Bytes::from(payload::make(stream, seq, len))).await
    }
    .map_err(ctx(format!("send stream {stream} seq {seq} ({len} B)")))
}

// ===== the well-behaved pair =====

/// Serves the steady stream: checks every message (one stream, 0, 1, 2… without gap or
/// repeat) and echoes it, until the sender half-closes.
async fn steady_echo(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "steady-echo").await?;
    let mut listener = support::listen(&node, STEADY_SERVICE)
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let session = listener.accept().await.ok_or("engine went away")?;
    let received = echo_checked(session, Some(STEADY_STREAM), storm_len).await?;
    cmds.done(format!("received={received}")).await
}

/// Streams numbered messages to the echo until told `STOP`, checking every echo; answers
/// `COUNT` with the number of echoes checked so far.
async fn steady_sender(socket: &str, mut cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "steady-sender").await?;
    let session = support::open(&node, STEADY_SERVICE)
        .await
        .map_err(ctx("open"))?;
    let (mut tx, mut rx) = session.split();
    let stop = AtomicBool::new(false);
    let echoed = AtomicU64::new(0);
    let send = async {
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let len = storm_len(STEADY_STREAM, seq);
            send_message(&mut tx, STEADY_STREAM, seq, len, seq.is_multiple_of(3)).await?;
            seq += 1;
        }
        SinkExt::<Bytes>::close(&mut tx)
            .await
            .map_err(ctx("close"))?;
        Ok::<u64, String>(seq)
    };
    let recv = async {
        let mut seq = 0u64;
        loop {
            match rx.next().await {
                Some(Ok(m)) => {
                    let len = storm_len(STEADY_STREAM, seq);
                    payload::check(&m, STEADY_STREAM, seq, Some(len))
                        .map_err(|e| format!("echo: {e}"))?;
                    seq += 1;
                    echoed.store(seq, Ordering::Relaxed);
                    if seq == 100 {
                        say("FLOWING");
                    }
                }
                Some(Err(e)) => return Err(format!("echo {seq}: {e}")),
                None => return Ok::<u64, String>(seq),
            }
        }
    };
    let control = async {
        loop {
            match cmds.next().await?.as_str() {
                "COUNT" => say(format!("COUNT {}", echoed.load(Ordering::Relaxed))),
                "STOP" => {
                    stop.store(true, Ordering::Relaxed);
                    return Ok::<(), String>(());
                }
                other => return Err(format!("unknown command {other:?}")),
            }
        }
    };
    let (sent, echoed, control) = tokio::join!(send, recv, control);
    control?;
    let (sent, echoed) = (sent?, echoed?);
    if sent != echoed {
        return Err(format!(
            "sent {sent} messages but {echoed} echoes came back"
        ));
    }
    cmds.done(format!("sent={sent} echoed={echoed}")).await
}

/// Reads a numbered stream to its end (checking every message: stream `stream`, or the one
/// its first message names when `None`; sequence numbers 0, 1, 2… without gap or repeat;
/// lengths from `len_of`), echoing each; returns how many.
async fn echo_checked(
    mut session: Session,
    stream: Option<u32>,
    len_of: fn(u32, u64) -> usize,
) -> Result<u64, String> {
    let mut stream = stream;
    let mut seq = 0u64;
    while let Some(message) = session.next().await {
        let message = message.map_err(ctx(format!("receiving stream {stream:?} seq {seq}")))?;
        let id = match stream {
            Some(id) => id,
            None => {
                let (id, _) = payload::peek(&message).ok_or("first message has no header")?;
                *stream.insert(id)
            }
        };
        payload::check(&message, id, seq, Some(len_of(id, seq)))?;
        session
            .send(message)
            .await
            .map_err(ctx(format!("echo stream {id} seq {seq}")))?;
        seq += 1;
    }
    SinkExt::<Bytes>::close(&mut session)
        .await
        .map_err(ctx("close"))?;
    Ok(seq)
}

// ===== the crash storm's victims =====

/// A node that connects, opens the hub's service, sends, and stops at one random point,
/// announced with `AT <point> …`; the parent SIGKILLs it as soon as it reads that line.
///
/// Arguments: socket, cycle, point, messages to send before the point, loan length, burst.
/// Points:
/// - `welcomed`: a rendezvous by hand, stopped after the welcome (the engine created and
///   mapped a block, sent it, and waits for `Ready`);
/// - `rendezvous`: announced just before `Node::connect`, which the kill interrupts anywhere;
/// - `connected`: registered, serving a name, with a session to itself it never accepted;
/// - `loan`: holds a loan of the given length, partly written, never sent;
/// - `submit`: in a tight send loop (the kill lands between or inside sends);
/// - `hold`: received the hub's whole burst and keeps every `Bytes` (never released).
///
/// From `connected` on, the victim serves a name and holds an unaccepted session to itself.
/// In every point but `hold`, the burst the hub sends stays unread.
async fn crasher(args: &[String]) -> Result<(), String> {
    let socket = &args[0];
    let cycle: u32 = num(args, 1)?;
    let point = args[2].as_str();
    let before: u64 = num(args, 3)?;
    let loan_len: usize = num(args, 4)?;
    let burst: u64 = num(args, 5)?;
    let name = format!("crasher-{cycle}");
    if point == "welcomed" {
        let half = support::hello_and_welcome(socket, &name)
            .await
            .map_err(ctx("hello and welcome"))?;
        say("AT welcomed");
        return forever(half).await;
    }
    if point == "rendezvous" {
        say("AT rendezvous");
    }
    let node = connect(socket, &name).await?;
    if point == "rendezvous" {
        return forever(node).await;
    }
    // A name it serves, and a session to itself it never accepts: the engine must forget
    // both when the node dies.
    let service = format!("crasher-svc-{cycle}");
    let listener = support::listen(&node, &service)
        .await
        .map_err(ctx("listen"))?;
    let to_itself = support::open(&node, &service)
        .await
        .map_err(ctx("open a session to itself"))?;
    let keep = (listener, to_itself);
    if point == "connected" {
        say("AT connected");
        return forever((node, keep)).await;
    }
    let session = support::open(&node, HUB_SERVICE)
        .await
        .map_err(ctx("open"))?;
    let (mut tx, mut rx) = session.split();
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&cycle.to_le_bytes());
    hello.extend_from_slice(&(burst as u32).to_le_bytes());
    tx.send(Bytes::from(hello)).await.map_err(ctx("hello"))?;
    let mut seq = 0u64;
    while seq < before {
        send_message(&mut tx, cycle, seq, storm_len(cycle, seq), seq % 2 == 1).await?;
        seq += 1;
    }
    match point {
        "loan" => {
            let mut loan = tx.loan(loan_len).await.map_err(ctx("loan"))?;
            let part = loan.len().min(4096);
            loan[..part].fill(0xEE);
            say(format!("AT loan sent={seq} loan={loan_len}"));
            forever((node, keep, tx, rx, loan)).await
        }
        "submit" => {
            say(format!("AT submit sent={seq}"));
            loop {
                send_message(&mut tx, cycle, seq, storm_len(cycle, seq), seq % 2 == 1).await?;
                seq += 1;
            }
        }
        "hold" => {
            let stream = BURST_FLAG | cycle;
            let mut held = Vec::new();
            for s in 0..burst {
                let m = rx
                    .next()
                    .await
                    .ok_or_else(|| format!("burst ended after {s}"))?
                    .map_err(ctx(format!("burst {s}")))?;
                payload::check(&m, stream, s, Some(storm_len(stream, s)))?;
                held.push(m);
            }
            say(format!("AT hold sent={seq} held={}", held.len()));
            forever((node, keep, tx, rx, held)).await
        }
        other => Err(format!("unknown point {other:?}")),
    }
}

/// Keeps `what` alive until the process is killed.
async fn forever<T>(what: T) -> Result<(), String> {
    std::future::pending::<()>().await;
    drop(what);
    Ok(())
}

// ===== load =====

/// Hosts `count` load nodes `first..first+count` of `total`: node `g` serves `load-svc-g`
/// and opens `sessions` sessions to nodes `g + stride·k` (k = 1..=sessions, modulo `total`),
/// sends `messages` checked messages of mixed sizes on each and checks every echo; it echoes
/// and checks what it serves. Says `LISTENING` once all its nodes serve, starts on `GO`.
async fn load(args: &[String], mut cmds: Commands) -> Result<(), String> {
    let socket = &args[0];
    let first: usize = num(args, 1)?;
    let count: usize = num(args, 2)?;
    let total: usize = num(args, 3)?;
    let sessions: usize = num(args, 4)?;
    let messages: u64 = num(args, 5)?;
    let stride: usize = num(args, 6)?;
    let mut nodes = Vec::new();
    for g in first..first + count {
        let node = connect(socket, &format!("load-{g}")).await?;
        let listener = support::listen(&node, &format!("load-svc-{g}"))
            .await
            .map_err(ctx(format!("listen load-svc-{g}")))?;
        nodes.push((g, node, listener));
    }
    say("LISTENING");
    cmds.expect("GO").await?;
    let per_node = nodes.into_iter().map(|(g, node, mut listener)| async move {
        let serve = async {
            let mut accepted = Vec::new();
            for k in 0..sessions {
                accepted.push(listener.accept().await.ok_or_else(|| {
                    format!("node {g}: engine went away before accepting session {k}")
                })?);
            }
            let served = futures::future::try_join_all(
                accepted
                    .into_iter()
                    .map(|session| echo_checked(session, None, load_len)),
            )
            .await?;
            Ok::<u64, String>(served.iter().sum())
        };
        let open = futures::future::try_join_all((1..=sessions).map(|k| {
            let node = node.clone();
            async move {
                let target = (g + stride * k) % total;
                let service = format!("load-svc-{target}");
                let session = support::open(&node, &service)
                    .await
                    .map_err(ctx(format!("node {g}: open {service}")))?;
                send_and_check_echoes(session, load_stream(g, k), messages)
                    .await
                    .map_err(|e| format!("node {g} → {service}: {e}"))
            }
        }));
        let (served, opened) = tokio::join!(serve, open);
        Ok::<(u64, u64), String>((served?, opened?.iter().sum()))
    });
    let results = futures::future::try_join_all(per_node).await?;
    let served: u64 = results.iter().map(|r| r.0).sum();
    let echoed: u64 = results.iter().map(|r| r.1).sum();
    cmds.done(format!("served={served} echoed={echoed}")).await
}

/// Sends `m` load messages (odd ones through loans) while checking their echoes; half-closes
/// and expects the peer's end after the last echo.
async fn send_and_check_echoes(session: Session, stream: u32, m: u64) -> Result<u64, String> {
    support::echo_exchange(
        session,
        m,
        async |tx: &mut SessionSink, seq| {
            send_message(tx, stream, seq, load_len(stream, seq), seq % 2 == 1).await
        },
        |echo, seq| {
            payload::check(echo, stream, seq, Some(load_len(stream, seq)))
                .map_err(|e| format!("echo: {e}"))
        },
    )
    .await
}
