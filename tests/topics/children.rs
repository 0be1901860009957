//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise.

use bytes::Bytes;
use futures::StreamExt;
use shmlink::{Overflow, SubscribeError, SubscribeOptions, Subscription};

use crate::support::{self, ChildSpec, Commands, connect, ctx, expect_seq, parse_seq, say};

/// The length of message `seq` of the fan-out tests: 12 B (the sequence header) to 64 KiB.
pub(crate) fn fan_len(seq: u64) -> usize {
    match seq % 8 {
        0 => 12,
        1 => 64 << 10,
        _ => 12 + (seq.wrapping_mul(7919) % (64 << 10)) as usize,
    }
    .min(64 << 10)
}

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "sub-block" => {
                let count = a[2].parse().map_err(ctx("count"))?;
                sub_block(&a[0], &a[1], count, cmds).await
            }
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
        expect_seq(&msg, 1, seq)?;
        if msg.len() != fan_len(seq) {
            return Err(format!("message {seq}: {} bytes", msg.len()));
        }
    }
    let _ = parse_seq;
    cmds.done(format!("count={count}")).await
}
