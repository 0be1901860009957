//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise.

use bytes::Bytes;
use futures::SinkExt;
use futures::StreamExt;
use shmlink::{Overflow, Publisher, SubscribeError, SubscribeOptions, Subscription};

use crate::support::{
    self, ChildSpec, Commands, connect, ctx, expect_seq, parse_seq, say, seq_message,
};

/// The length of message `seq` of the fan-out tests: 0 B (every eighth message, from the
/// first), 64 KiB (every eighth, from the second), and lengths between 12 B (the sequence
/// header) and 64 KiB in between.
pub(crate) fn fan_len(seq: u64) -> usize {
    match seq % 8 {
        0 => 0,
        1 => 64 << 10,
        _ => 12 + (seq.wrapping_mul(7919) % ((64 << 10) - 12)) as usize,
    }
}

/// Message `seq` of the fan-out tests, `fan_len(seq)` bytes: empty, or a sequenced message
/// of stream 1 (header and filler, see `seq_message`).
pub(crate) fn fan_message(seq: u64) -> Bytes {
    match fan_len(seq) {
        0 => Bytes::new(),
        len => Bytes::from(seq_message(1, seq, len)),
    }
}

/// Checks that `msg` is message `seq` of the fan-out tests, every byte: an empty message
/// carries no number, but stands where only an empty one may (every eighth), between
/// numbered neighbours, so a lost or reordered one is still caught.
pub(crate) fn check_fan_message(msg: &[u8], seq: u64) -> Result<(), String> {
    match fan_len(seq) {
        0 if msg.is_empty() => Ok(()),
        0 => Err(format!("message {seq}: {} bytes, expected none", msg.len())),
        len => {
            expect_seq(msg, 1, seq)?;
            if msg.len() == len {
                Ok(())
            } else {
                Err(format!(
                    "message {seq}: {} bytes, expected {len}",
                    msg.len()
                ))
            }
        }
    }
}

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "sub-block" => {
                let count = a[2].parse().map_err(ctx("count"))?;
                sub_block(&a[0], &a[1], count, cmds).await
            }
            "sub-drop" => {
                let count = a[2].parse().map_err(ctx("count"))?;
                let queue = a[3].parse().map_err(ctx("queue"))?;
                sub_drop(&a[0], &a[1], count, queue, cmds).await
            }
            "sub-stuck" => sub_stuck(&a[0], &a[1]).await,
            "pub-forever" => pub_forever(&a[0], &a[1]).await,
            "sub-multi" => {
                let publishers = a[2].parse().map_err(ctx("publishers"))?;
                let count = a[3].parse().map_err(ctx("count"))?;
                sub_multi(&a[0], &a[1], publishers, count, cmds).await
            }
            "pub-n" => {
                let stream = a[2].parse().map_err(ctx("stream"))?;
                let count = a[3].parse().map_err(ctx("count"))?;
                pub_n(&a[0], &a[1], stream, count, cmds).await
            }
            "sub-readonly" => sub_readonly(&a[0], &a[1], cmds).await,
            "noop" => cmds.done("noop").await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// Subscribes to `topic` with `Block` and checks `count` messages of stream 1, every byte,
/// in order.
async fn sub_block(socket: &str, topic: &str, count: u64, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "sub").await?;
    let options = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 120_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = node
        .subscribe_with(topic, options)
        .await
        .map_err(ctx("subscribe"))?;
    say("READY");
    for seq in 0..count {
        let msg = sub
            .next()
            .await
            .ok_or_else(|| format!("stream ended before message {seq}"))?
            .map_err(|e: SubscribeError| format!("message {seq}: {e}"))?;
        check_fan_message(&msg, seq)?;
    }
    cmds.done(format!("count={count}")).await
}

/// Subscribes with `DropOldest` and a queue of `queue`; reads until what it received plus
/// what it was told it lost is `count`. Received messages of stream 1 must come in rising
/// order, each intact. Reports both numbers.
async fn sub_drop(
    socket: &str,
    topic: &str,
    count: u64,
    queue: u32,
    cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, "sub").await?;
    let options = SubscribeOptions {
        overflow: Overflow::DropOldest,
        queue,
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = node
        .subscribe_with(topic, options)
        .await
        .map_err(ctx("subscribe"))?;
    say("READY");
    let (mut received, mut lagged, mut next) = (0u64, 0u64, 0u64);
    while received + lagged < count {
        match sub.next().await {
            None => return Err(format!("stream ended after {received} + {lagged} lagged")),
            Some(Ok(msg)) => {
                let (stream, seq) = parse_seq(&msg)?;
                if stream != 1 || seq < next {
                    return Err(format!(
                        "stream {stream} seq {seq} after {next}: out of order"
                    ));
                }
                next = seq + 1;
                received += 1;
            }
            Some(Err(SubscribeError::Lagged(n))) => lagged += n,
            Some(Err(e)) => return Err(format!("after {received}: {e}")),
        }
    }
    if next != count {
        return Err(format!(
            "the last message received was {}, not {}",
            next - 1,
            count - 1
        ));
    }
    cmds.done(format!("received={received} lagged={lagged}"))
        .await
}

/// Subscribes with `Block`, reads ten messages, says so and then holds them without reading
/// on (until it is killed).
async fn sub_stuck(socket: &str, topic: &str) -> Result<(), String> {
    let node = connect(socket, "stuck").await?;
    let options = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 600_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = node
        .subscribe_with(topic, options)
        .await
        .map_err(ctx("subscribe"))?;
    say("READY");
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(
            sub.next()
                .await
                .ok_or("stream ended")?
                .map_err(ctx("receive"))?,
        );
    }
    say("GOT10");
    std::future::pending::<()>().await;
    Err("unreachable".into())
}

/// Publishes stream 2 on `topic` until it is killed.
async fn pub_forever(socket: &str, topic: &str) -> Result<(), String> {
    let node = connect(socket, "pub-forever").await?;
    let mut publisher: Publisher<Bytes> = node.publish(topic).await.map_err(ctx("publish"))?;
    for seq in 0.. {
        publisher
            .send(Bytes::from(seq_message(2, seq, fan_len(seq) / 4)))
            .await
            .map_err(ctx("send"))?;
        if seq == 10 {
            say("PUBLISHING");
        }
    }
    Err("unreachable".into())
}

/// Subscribes, receives one message, then proves that the topic's segment is read-only
/// here: every mapping of it lacks write permission, and writing or truncating through its
/// descriptor fails.
async fn sub_readonly(socket: &str, topic: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "readonly").await?;
    let mut sub: Subscription<Bytes> = node.subscribe(topic).await.map_err(ctx("subscribe"))?;
    say("READY");
    let msg = sub
        .next()
        .await
        .ok_or("stream ended")?
        .map_err(ctx("receive"))?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(ctx("maps"))?;
    let mapped: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:shmlink-topic-"))
        .collect();
    if mapped.is_empty() {
        return Err(format!("no topic segment mapped:\n{maps}"));
    }
    for line in &mapped {
        let perms = line.split_whitespace().nth(1).unwrap_or("");
        if perms.contains('w') {
            return Err(format!("a writable mapping of the segment: {line}"));
        }
    }
    let fds = support::procfs::fds("self");
    let seg = fds
        .iter()
        .find(|f| f.target.starts_with("/memfd:shmlink-topic-"))
        .ok_or("no descriptor of the segment")?;
    let path = format!("/proc/self/fd/{}", seg.fd);
    // Opening for writing may succeed (the seal is on writes, not opens): every write fails.
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
        if rustix::io::pwrite(&file, b"x", 0).is_ok() {
            return Err("pwrite into the segment succeeded".into());
        }
        if rustix::fs::ftruncate(&file, 0).is_ok() {
            return Err("ftruncate of the segment succeeded".into());
        }
    }
    let file = std::fs::File::open(&path).map_err(ctx("open the segment"))?;
    if rustix::fs::ftruncate(&file, 1 << 30).is_ok() {
        return Err("ftruncate (grow) of the segment succeeded".into());
    }
    cmds.done(format!("mappings={} len={}", mapped.len(), msg.len()))
        .await
}

/// Subscribes with `Block`; reads `count` messages of each of streams 1..=`publishers`, each
/// stream in order, every byte checked.
async fn sub_multi(
    socket: &str,
    topic: &str,
    publishers: u32,
    count: u64,
    cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, "sub-multi").await?;
    let options = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 120_000,
        },
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = node
        .subscribe_with(topic, options)
        .await
        .map_err(ctx("subscribe"))?;
    say("READY");
    let mut next = vec![0u64; publishers as usize + 1];
    for _ in 0..u64::from(publishers) * count {
        let msg = sub
            .next()
            .await
            .ok_or("stream ended")?
            .map_err(ctx("receive"))?;
        let (stream, seq) = parse_seq(&msg)?;
        let want = next
            .get_mut(stream as usize)
            .filter(|_| stream >= 1)
            .ok_or_else(|| format!("unknown stream {stream}"))?;
        if seq != *want {
            return Err(format!("stream {stream}: seq {seq}, expected {want}"));
        }
        *want += 1;
    }
    cmds.done(format!("count={}", u64::from(publishers) * count))
        .await
}

/// Publishes `count` messages of stream `stream` on `topic`.
async fn pub_n(
    socket: &str,
    topic: &str,
    stream: u32,
    count: u64,
    cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, "pub-n").await?;
    let mut publisher: Publisher<Bytes> = node.publish(topic).await.map_err(ctx("publish"))?;
    for seq in 0..count {
        publisher
            .send(Bytes::from(seq_message(stream, seq, fan_len(seq) / 8)))
            .await
            .map_err(ctx("send"))?;
    }
    cmds.done(format!("count={count}")).await
}
