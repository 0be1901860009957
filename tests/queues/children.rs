//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise.

use bytes::Bytes;
use futures::StreamExt;
use shmlink::{Consumer, ConsumerOptions};

use crate::support::{self, ChildSpec, Commands, connect, ctx, parse_seq, say};

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "consume-hold" => {
                let count = a[2].parse().map_err(ctx("count"))?;
                consume_hold(&a[0], &a[1], count, cmds).await
            }
            "engine" => engine(&a[0], &a[1], cmds).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// Consumes `count` deliveries of `queue` and holds them, unsettled, until killed; says
/// `HELD <seqs>` once it has them all.
async fn consume_hold(
    socket: &str,
    queue: &str,
    count: u32,
    mut cmds: Commands,
) -> Result<(), String> {
    let node = connect(socket, "holder").await?;
    let options = ConsumerOptions {
        prefetch: count,
        lease: None,
    };
    let mut consumer: Consumer<Bytes> = node
        .consumer_with(queue, options)
        .await
        .map_err(ctx("consume"))?;
    let mut held = Vec::new();
    let mut seqs = Vec::new();
    while held.len() < count as usize {
        let delivery = consumer
            .next()
            .await
            .ok_or("the stream ended")?
            .map_err(ctx("delivery"))?;
        if delivery.redelivered() {
            return Err(format!("first delivery marked redelivered: {delivery:?}"));
        }
        seqs.push(parse_seq(&delivery)?.1.to_string());
        held.push(delivery);
    }
    say(format!("HELD {}", seqs.join(",")));
    // Holds everything until the parent kills it.
    let _ = cmds.next().await;
    Err("not killed".into())
}

/// Runs an engine with data directory `data` on `socket` until killed (the engine-crash
/// tests SIGKILL this process).
async fn engine(socket: &str, data: &str, mut cmds: Commands) -> Result<(), String> {
    let _engine = shmlink::Engine::builder()
        .socket(socket)
        .block(support::small_block())
        .data_dir(data)
        .spawn()
        .map_err(ctx("spawn the engine"))?;
    say("READY");
    let _ = cmds.next().await;
    Ok(())
}
