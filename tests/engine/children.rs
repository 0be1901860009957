//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise; the
//! runner prints it on stderr and exits non-zero.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, OpenError, Session, SessionError, SessionSink};

use crate::support::{
    self, ChildSpec, Commands, check_pattern, connect, ctx, expect_seq, pattern, say, seq_len,
    seq_message,
};

/// Seed of the payload-size test's contents.
pub(crate) const SIZES_SEED: u64 = 0x5EED_0001;
/// Stream ids of the flow-control test.
pub(crate) const STUCK_STREAM: u32 = 1;
pub(crate) const FLOW_STREAM: u32 = 2;
/// Tells the flow receiver to start reading the stuck session.
pub(crate) const DRAIN: &[u8] = b"DRAIN";
/// Stream id of the SIGKILL victim's traffic.
pub(crate) const VICTIM_STREAM: u32 = 7;

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "noop" => cmds.done("").await,
            "sizes-echo" => sizes_echo(&a[0], cmds).await,
            "sizes-sender" => sizes_sender(&a[0], cmds).await,
            "frames-tx" => crate::frames::frames_tx(&a[0], &a[1], cmds).await,
            "frames-rx" => crate::frames::frames_rx(&a[0], cmds).await,
            "mesh" => mesh(a, cmds).await,
            "flow-rx" => flow_rx(&a[0], cmds).await,
            "victim" => victim(&a[0]).await,
            "survivor" => survivor(&a[0], cmds).await,
            "engine-host" => engine_host(&a[0], cmds).await,
            "count-rx" => {
                let stream = a[2].parse().map_err(ctx("stream id"))?;
                count_rx(&a[0], &a[1], stream, cmds).await
            }
            "closer" => closer(&a[0], cmds).await,
            "quitter" => quitter(&a[0], a[1].parse().map_err(ctx("count"))?, cmds).await,
            "iso-rx" => iso_rx(&a[0], &a[1], a[2].parse().map_err(ctx("stuck"))?, cmds).await,
            "iso-dead-tx" => {
                iso_dead_tx(
                    &a[0],
                    a[1].parse().map_err(ctx("len"))?,
                    a[2].parse().map_err(ctx("count"))?,
                    cmds,
                )
                .await
            }
            "iso-tx" => iso_tx(&a[0], &a[1], a[2].parse().map_err(ctx("len"))?, cmds).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// Every payload size the size test sends for a node whose largest payload is `max`: 0, 1,
/// and each power of two with its neighbours, up to `max` itself.
pub(crate) fn payload_sizes(max: u64) -> Vec<usize> {
    let mut sizes = vec![0u64, 1];
    let mut p = 2u64;
    while p <= max {
        for s in [p - 1, p, p + 1] {
            if s <= max && !sizes.contains(&s) {
                sizes.push(s);
            }
        }
        p *= 2;
    }
    if !sizes.contains(&max) {
        sizes.push(max);
    }
    // Past the arenas: hand-off segments of their own, just past and well past.
    sizes.extend([max + 1, 2 * max + 3]);
    sizes.into_iter().map(|s| s as usize).collect()
}

// ===== payload sizes =====

/// Serves "sizes": checks every payload against the expected size and seed byte by byte and
/// echoes it back.
async fn sizes_echo(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "sizes-echo").await?;
    let mut listener = support::listen(&node, "sizes")
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut session = listener.accept().await.ok_or("engine went away")?;
    let sizes = payload_sizes(node.max_payload());
    let mut i = 0usize;
    while let Some(message) = session.next().await {
        let message = message.map_err(ctx(format!("receiving payload {i}")))?;
        let len = *sizes
            .get(i)
            .ok_or_else(|| format!("payload {i} beyond the {} expected", sizes.len()))?;
        check_pattern(SIZES_SEED, i as u64, len, &message)?;
        session
            .send(message)
            .await
            .map_err(ctx(format!("echoing payload {i}")))?;
        i += 1;
    }
    if i != sizes.len() {
        return Err(format!(
            "stream ended after {i} payloads, expected {}",
            sizes.len()
        ));
    }
    SinkExt::<Bytes>::close(&mut session)
        .await
        .map_err(ctx("close"))?;
    cmds.done(format!("received={i} max={}", node.max_payload()))
        .await
}

/// Sends every size (as `Bytes` or through a loan written in place),
/// checks each echo, and in the middle checks that an oversized payload is refused at once
/// with both sizes while the session goes on.
async fn sizes_sender(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "sizes-sender").await?;
    let max = node.max_payload();
    let sizes = payload_sizes(max);
    let session = support::open(&node, "sizes").await.map_err(ctx("open"))?;
    let (mut tx, mut rx) = session.split();
    if tx.max_payload() != shmlink::MAX_SESSION_PAYLOAD {
        return Err(format!(
            "session max {} != MAX_SESSION_PAYLOAD",
            tx.max_payload()
        ));
    }
    let half = sizes.len() / 2;
    let send = async {
        for (i, &len) in sizes.iter().enumerate() {
            if i == half {
                too_large(&mut tx, shmlink::MAX_SESSION_PAYLOAD).await?;
            }
            let payload = pattern(SIZES_SEED, i as u64, len);
            // Loans for the empty payload and every odd index, `Bytes` for the rest (the
            // echo answers everything with `Bytes`, so both paths carry every size class).
            if i % 2 == 0 && i != 0 {
                tx.send(Bytes::from(payload))
                    .await
                    .map_err(ctx(format!("send payload {i} ({len} B)")))?;
            } else {
                let mut loan = tx
                    .loan(len)
                    .await
                    .map_err(ctx(format!("loan for payload {i} ({len} B)")))?;
                if loan.len() != len {
                    return Err(format!("loan of {len} bytes has {} bytes", loan.len()));
                }
                loan.copy_from_slice(&payload);
                tx.send(loan)
                    .await
                    .map_err(ctx(format!("send loan {i} ({len} B)")))?;
            }
        }
        SinkExt::<Bytes>::close(&mut tx)
            .await
            .map_err(ctx("close"))?;
        Ok::<_, String>(())
    };
    let recv = async {
        for (i, &len) in sizes.iter().enumerate() {
            let echo = rx
                .next()
                .await
                .ok_or_else(|| format!("stream ended before echo {i}"))?
                .map_err(ctx(format!("echo {i}")))?;
            check_pattern(SIZES_SEED, i as u64, len, &echo).map_err(|e| format!("echo: {e}"))?;
        }
        match rx.next().await {
            None => Ok(()),
            Some(other) => Err(format!(
                "expected the end of the stream, got {:?}",
                other.map(|b| b.len())
            )),
        }
    };
    let (sent, received) = tokio::join!(send, recv);
    sent?;
    received?;
    cmds.done(format!(
        "sent={} max={max} largest={}",
        sizes.len(),
        sizes.iter().max().copied().unwrap_or(0)
    ))
    .await
}

/// An oversized payload fails at once, naming both sizes, through every way of sending.
async fn too_large(tx: &mut shmlink::SessionSink, max: u64) -> Result<(), String> {
    let too = max + 1;
    let check = |what: &str, r: Result<(), SessionError>| -> Result<(), String> {
        match r {
            Err(SessionError::TooLarge { len, max: m }) if len == too && m == max => {
                let text = SessionError::TooLarge { len, max: m }.to_string();
                if !text.contains(&too.to_string()) || !text.contains(&max.to_string()) {
                    return Err(format!("{what}: message {text:?} does not name both sizes"));
                }
                Ok(())
            }
            other => Err(format!(
                "{what}: expected TooLarge {{ len: {too}, max: {max} }}, got {other:?}"
            )),
        }
    };
    // Zeroed: the kernel maps such allocations lazily, and a refused payload is never read.
    check(
        "Sink<Bytes>",
        tx.send(Bytes::from(vec![0u8; too as usize])).await,
    )?;
    check("Sink<Vec<u8>>", tx.send(vec![0u8; too as usize]).await)?;
    check("loan", tx.loan(too as usize).await.map(drop))?;
    match tx.loan(usize::MAX).await {
        Err(SessionError::TooLarge { len, max: m }) if len == usize::MAX as u64 && m == max => {}
        other => {
            return Err(format!(
                "loan of usize::MAX: expected TooLarge naming it, got {:?}",
                other.map(|l| l.len())
            ));
        }
    }
    Ok(())
}

// ===== mesh =====

/// Node `i` of `n`: serves "mesh-svc-i", opens `s` sessions to the next `s` nodes, sends `m`
/// sequenced messages on each and checks their echoes; echoes and checks what it serves.
async fn mesh(args: &[String], mut cmds: Commands) -> Result<(), String> {
    let num = |k: usize| -> Result<usize, String> {
        args[k].parse().map_err(ctx(format!("argument {k}")))
    };
    let (socket, i, n, s, m) = (&args[0], num(1)?, num(2)?, num(3)?, num(4)? as u64);
    let node = connect(socket, &format!("mesh-{i}")).await?;
    let mut listener = node
        .listen(&format!("mesh-svc-{i}"))
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    cmds.expect("GO").await?;

    let serve = async {
        let mut sessions = Vec::new();
        for k in 0..s {
            sessions.push(
                listener
                    .accept()
                    .await
                    .ok_or_else(|| format!("engine went away before accepting session {k}"))?,
            );
        }
        let served = futures::future::try_join_all(
            sessions.into_iter().map(|session| echo_checked(session, m)),
        )
        .await?;
        Ok::<u64, String>(served.iter().sum())
    };
    let open = futures::future::try_join_all((1..=s).map(|k| {
        let node = node.clone();
        async move {
            let service = format!("mesh-svc-{}", (i + k) % n);
            let session = node
                .open(&service)
                .await
                .map_err(ctx(format!("open {service}")))?;
            let stream = (i * 1000 + k) as u32;
            send_and_check_echoes(session, stream, m)
                .await
                .map_err(|e| format!("session to {service}: {e}"))
        }
    }));
    let (served, opened) = tokio::join!(serve, open);
    let served = served?;
    let echoed: u64 = opened?.iter().sum();
    cmds.done(format!("served={served} echoed={echoed}")).await
}

/// Reads a sequenced stream to its end (checking every message: one stream id, sequence
/// numbers 0, 1, 2… without gap or repeat), echoing each; expects `m` messages.
async fn echo_checked(mut session: Session, m: u64) -> Result<u64, String> {
    let mut stream = None;
    let mut seq = 0u64;
    while let Some(message) = session.next().await {
        let message = message.map_err(ctx(format!("receiving seq {seq}")))?;
        let (id, _) = support::parse_seq(&message)?;
        let id = *stream.get_or_insert(id);
        expect_seq(&message, id, seq)?;
        session
            .send(message)
            .await
            .map_err(ctx(format!("echo seq {seq}")))?;
        seq += 1;
    }
    if seq != m {
        return Err(format!(
            "stream {stream:?} ended after {seq} messages, expected {m}"
        ));
    }
    SinkExt::<Bytes>::close(&mut session)
        .await
        .map_err(ctx("close"))?;
    Ok(seq)
}

/// Sends `m` sequenced messages while checking their echoes; half-closes and expects the
/// peer's end after the last echo.
pub(crate) async fn send_and_check_echoes(
    session: Session,
    stream: u32,
    m: u64,
) -> Result<u64, String> {
    support::echo_exchange(
        session,
        m,
        async |tx: &mut SessionSink, seq| {
            tx.send(Bytes::from(seq_message(stream, seq, seq_len(seq))))
                .await
                .map_err(ctx(format!("send seq {seq}")))
        },
        |echo, seq| expect_seq(echo, stream, seq),
    )
    .await
}

// ===== flow control =====

/// Serves "flow": accepts a *stuck* session it does not read until told (DRAIN on the
/// flowing one), and a *flowing* one whose messages it checks and echoes.
async fn flow_rx(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "flow-rx").await?;
    let mut listener = support::listen(&node, "flow")
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut stuck = listener.accept().await.ok_or("no stuck session")?;
    let mut flowing = listener.accept().await.ok_or("no flowing session")?;
    let mut flowed = 0u64;
    loop {
        let message = flowing
            .next()
            .await
            .ok_or("flowing session ended before DRAIN")?
            .map_err(ctx("flowing"))?;
        if &message[..] == DRAIN {
            break;
        }
        expect_seq(&message, FLOW_STREAM, flowed)?;
        flowing.send(message).await.map_err(ctx("ack"))?;
        flowed += 1;
    }
    let mut drained = 0u64;
    while let Some(message) = stuck.next().await {
        let message = message.map_err(ctx(format!("stuck seq {drained}")))?;
        expect_seq(&message, STUCK_STREAM, drained)?;
        drained += 1;
    }
    if let Some(extra) = flowing.next().await {
        return Err(format!("unexpected message after DRAIN: {extra:?}"));
    }
    cmds.done(format!("stuck={drained} flowing={flowed}")).await
}

// ===== SIGKILL =====

/// Serves "victim-svc": streams sequenced messages on the first session for ever (until
/// killed) and never reads the second.
async fn victim(socket: &str) -> Result<(), String> {
    let node = connect(socket, "victim").await?;
    let mut listener = support::listen(&node, "victim-svc")
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut stream = listener.accept().await.ok_or("no first session")?;
    let _never_read = listener.accept().await.ok_or("no second session")?;
    for seq in 0.. {
        stream
            .send(Bytes::from(seq_message(VICTIM_STREAM, seq, seq_len(seq))))
            .await
            .map_err(ctx(format!("stream seq {seq}")))?;
    }
    Ok(())
}

/// Serves "count-rx"-style: reads one session to its end checking sequence numbers.
async fn count_rx(
    socket: &str,
    service: &str,
    stream_id: u32,
    cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, &format!("{service}-node")).await?;
    let mut listener = support::listen(&node, service)
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut session = listener.accept().await.ok_or("engine went away")?;
    let mut seq = 0u64;
    while let Some(message) = session.next().await {
        let message = message.map_err(ctx(format!("seq {seq}")))?;
        expect_seq(&message, stream_id, seq)?;
        seq += 1;
    }
    cmds.done(format!("received={seq}")).await
}

// ===== engine restart =====

/// A node that outlives its engine: echoes one session until the engine goes, checks that
/// every operation then reports the disconnection, and on RECONNECT does it again on the
/// new engine, this time until the parent closes.
async fn survivor(socket: &str, mut commands: Commands) -> Result<(), String> {
    for round in 0..2 {
        let node = connect(socket, "survivor").await?;
        let mut listener = support::listen(&node, "survivor-svc")
            .await
            .map_err(ctx("listen"))?;
        say("LISTENING");
        let mut session = listener.accept().await.ok_or("engine went away")?;
        let mut echoed = 0u64;
        let end = loop {
            match session.next().await {
                Some(Ok(message)) => match session.send(message).await {
                    Ok(()) => echoed += 1,
                    Err(e) => break Some(e),
                },
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        if round == 0 {
            if end != Some(SessionError::Disconnected) {
                return Err(format!(
                    "after {echoed} echoes: expected Disconnected when the engine stopped, got {end:?}"
                ));
            }
            // Whatever reported it first, every operation now agrees.
            let next = session.next().await;
            if !matches!(next, None | Some(Err(SessionError::Disconnected))) {
                return Err(format!("stream after disconnection: {next:?}"));
            }
            if let Some(n) = session.next().await {
                return Err(format!("stream after its end: {n:?}"));
            }
            let sent = session.send(Bytes::from_static(b"late")).await;
            if sent != Err(SessionError::Disconnected) {
                return Err(format!("send after disconnection: {sent:?}"));
            }
            let opened = support::open(&node, "survivor-svc").await.map(drop);
            if opened != Err(OpenError::Disconnected) {
                return Err(format!("open after disconnection: {opened:?}"));
            }
            let listened = support::listen(&node, "other-svc").await.map(drop);
            if listened != Err(OpenError::Disconnected) {
                return Err(format!("listen after disconnection: {listened:?}"));
            }
            if listener.accept().await.is_some() {
                return Err("accept after disconnection gave a session".into());
            }
            say(format!("DISCONNECTED echoed={echoed}"));
            commands.expect("RECONNECT").await?;
        } else {
            if let Some(e) = end {
                return Err(format!("second round ended with {e:?} after {echoed}"));
            }
            SinkExt::<Bytes>::close(&mut session)
                .await
                .map_err(ctx("close"))?;
            return commands.done(format!("echoed={echoed}")).await;
        }
    }
    Err("unreachable: two rounds".into())
}

/// Hosts an engine until killed (or until stdin closes).
async fn engine_host(socket: &str, cmds: Commands) -> Result<(), String> {
    let engine = Engine::builder()
        .socket(socket)
        .block(support::small_block())
        .spawn()
        .map_err(ctx("spawn engine"))?;
    say("READY");
    let mut cmds = cmds;
    let _ = cmds.next().await;
    engine.shutdown().await;
    Ok(())
}

// ===== close =====

/// Serves "closer": three sessions, one per way of ending (see `close::half_close_and_close`).
async fn closer(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "closer").await?;
    let mut listener = support::listen(&node, "closer-svc")
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");

    // 1. The parent sends 100 then half-closes: we read exactly those, then the end; our
    //    direction still works: we send 50 and half-close.
    let mut s = listener.accept().await.ok_or("no session 1")?;
    for seq in 0..100 {
        let m = s
            .next()
            .await
            .ok_or_else(|| format!("session 1 ended at {seq}"))?
            .map_err(ctx("session 1"))?;
        expect_seq(&m, 1, seq)?;
    }
    if let Some(m) = s.next().await {
        return Err(format!("session 1: expected the end after 100, got {m:?}"));
    }
    for seq in 0..50 {
        s.send(Bytes::from(seq_message(2, seq, seq_len(seq))))
            .await
            .map_err(ctx(format!("session 1 reply {seq}")))?;
    }
    SinkExt::<Bytes>::close(&mut s)
        .await
        .map_err(ctx("close"))?;
    let after = s.send(Bytes::from_static(b"x")).await;
    if after != Err(SessionError::Closed) {
        return Err(format!("send after our own close: {after:?}"));
    }
    drop(s);

    // 2. The parent sends 100 then drops its session: we read them all, then the end, and
    //    our sends fail with Closed.
    let mut s = listener.accept().await.ok_or("no session 2")?;
    for seq in 0..100 {
        let m = s
            .next()
            .await
            .ok_or_else(|| format!("session 2 ended at {seq}"))?
            .map_err(ctx("session 2"))?;
        expect_seq(&m, 3, seq)?;
    }
    if let Some(m) = s.next().await {
        return Err(format!("session 2: expected the end after 100, got {m:?}"));
    }
    let after = s.send(Bytes::from_static(b"x")).await;
    if after != Err(SessionError::Closed) {
        return Err(format!("send to a dropped peer: {after:?}"));
    }
    drop(s);

    // 3. We send 100 and drop the session without closing.
    let mut s = listener.accept().await.ok_or("no session 3")?;
    for seq in 0..100 {
        s.send(Bytes::from(seq_message(4, seq, seq_len(seq))))
            .await
            .map_err(ctx(format!("session 3 send {seq}")))?;
    }
    drop(s);
    cmds.done("sessions=3").await
}

/// Opens "quit-svc", sends `count` sequenced messages, half-closes, drops everything and
/// exits at once (no lingering): what it queued must still be delivered.
async fn quitter(socket: &str, count: u64, mut cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "quitter").await?;
    let mut session = support::open(&node, "quit-svc")
        .await
        .map_err(ctx("open"))?;
    say("READY");
    cmds.expect("GO").await?;
    for seq in 0..count {
        session
            .send(Bytes::from(seq_message(6, seq, seq_len(seq))))
            .await
            .map_err(ctx(format!("send {seq}")))?;
    }
    SinkExt::<Bytes>::close(&mut session)
        .await
        .map_err(ctx("close"))?;
    drop(session);
    drop(node);
    say(format!("OK sent={count}"));
    Ok(())
}

// ===== isolation =====

/// Serves `service`: holds the first `stuck` sessions it accepts without ever reading them,
/// and echoes every later one. Reports on `done`.
async fn iso_rx(
    socket: &str,
    service: &str,
    stuck: usize,
    mut cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, &format!("{service}-rx")).await?;
    let mut listener = support::listen(&node, service)
        .await
        .map_err(ctx("listen"))?;
    say("LISTENING");
    let mut held = Vec::new();
    let mut echoes = tokio::task::JoinSet::new();
    let command = loop {
        tokio::select! {
            session = listener.accept() => {
                let mut session = session.ok_or("engine went away")?;
                if held.len() < stuck {
                    held.push(session);
                    continue;
                }
                echoes.spawn(async move {
                    while let Some(Ok(message)) = session.next().await {
                        if session.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
            command = cmds.next() => break command?,
        }
    };
    if command != "done" {
        return Err(format!("unexpected command {command:?}"));
    }
    let n = held.len();
    cmds.done(format!("stuck={n}")).await
}

/// Opens `service` and completes the isolation test's round trips of `len` bytes.
async fn iso_tx(socket: &str, service: &str, len: usize, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "iso-tx2").await?;
    let mut session = node
        .open::<Bytes>(service)
        .await
        .map_err(ctx(format!("open {service}")))?;
    crate::isolation::round_trips(&mut session, len, crate::isolation::ROUND_TRIPS).await?;
    cmds.done(format!("round_trips={}", crate::isolation::ROUND_TRIPS))
        .await
}

/// Opens "dead", sends `count` payloads of `len` bytes, says SENT and waits to be killed.
async fn iso_dead_tx(
    socket: &str,
    len: usize,
    count: u64,
    mut cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, "dead-tx").await?;
    let mut session = node.open::<Bytes>("dead").await.map_err(ctx("open dead"))?;
    for seq in 0..count {
        session
            .send(crate::isolation::iso_message(seq, len))
            .await
            .map_err(ctx(format!("send {seq}")))?;
    }
    say("SENT");
    let _ = cmds.next().await;
    Err("expected to be killed".into())
}
