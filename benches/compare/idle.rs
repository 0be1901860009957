//! The engine in a process of its own (the `engine-host` role, also that of `fanout`),
//! measured beside nodes that send nothing.
//!
//! - `idle`: two connected nodes holding open sessions; the engine's CPU time over a window
//!   in which nothing is sent.
//! - `idle-nodes`: N idle nodes (the `idle-host` role, one process; each node holds an open
//!   session with another) and an active pair, the measuring process and a server child,
//!   exchanging 64 B round trips. Reports the pair's round trip and the engine's CPU time per
//!   message, to compare against N = 0: an engine whose cost follows work keeps both flat.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node};
use tower::{Service as _, ServiceExt as _};

use crate::common::*;
use crate::shm::{Blob, ShmConn, block_config};
use crate::{Measured, Pattern, Res, Spec};

/// `idle`: the engine in its own process, two connected nodes here, nothing sent for 5 s.
pub(crate) fn measure_idle(spec: &Spec, dir: &Path) -> Res<Measured> {
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

pub(crate) async fn idle_nodes(spec: &Spec, socket: &Path, engine: u32) -> Res<Measured> {
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

pub(crate) fn check_reply_echo(data: &[u8]) -> Res<()> {
    if data.len() == 64 && data.iter().all(|&b| b == 7) {
        Ok(())
    } else {
        Err("wrong data: idle echo".into())
    }
}

/// The engine host of `idle`: runs an engine until its stdin closes.
pub(crate) fn engine_host(spec: &Spec) -> Res<()> {
    // `fanout`: beside its publisher, as the engine embedded in a client is in the other
    // patterns (the subscribers have the other CPU).
    let fanout = spec.pattern == Pattern::Fanout;
    pin(spec.cpus.map(|c| if fanout { c.0 } else { c.1 }))?;
    let mut builder = Engine::builder().socket(&spec.addr);
    if spec.pattern == Pattern::IdleNodes {
        raise_nofile()?;
        // Every node of the run has this uid: N idle nodes plus the active pair, past the
        // default admission limits of 512 connections and nodes per uid.
        let nodes = spec.size.saturating_add(IDLE_NODES_SPARE);
        builder = builder
            .block(idle_nodes_block())
            .max_connections_per_uid(nodes)
            .max_nodes_per_uid(nodes);
    } else {
        builder = builder.block(block_config());
    }
    current_thread()?.block_on(async {
        let engine = builder.spawn()?;
        println!("ready");
        stdin_closed().await;
        engine.shutdown().await;
        Ok(())
    })
}

/// Waits until this process's stdin is closed (its parent's signal to stop), off the runtime.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Connections and nodes the `idle-nodes` engine admits per uid beyond the N idle nodes: the
/// active pair and some room.
const IDLE_NODES_SPARE: usize = 64;

/// Payload of the active pair's round trips in `idle-nodes`.
pub(crate) const ACTIVE_SIZE: usize = 64;

/// Blocks of `idle-nodes`: small arenas (64 B messages need little room), so that a thousand
/// nodes map little memory in the engine and in the idle host.
fn idle_nodes_block() -> shmlink::BlockConfig {
    shmlink::BlockConfig {
        tx_arena: 1 << 20,
        rx_arena: 1 << 20,
        ..shmlink::BlockConfig::default()
    }
}

/// Raises the soft limit of open descriptors to the hard one: the engine holds a socket, a
/// block and two doorbells per node, and so does the idle host.
fn raise_nofile() -> Res<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok(())
}

/// `idle-nodes` with `spec.size` idle nodes: the engine host, the idle host and the server
/// start in that order (each says when it is ready), then this process's node measures
/// round trips with the server, and the engine's CPU time over the same window.
pub(crate) fn measure_idle_nodes(spec: &Spec, dir: &Path) -> Res<Measured> {
    let addr = path_str(&dir.join("engine.sock"))?;
    let mut host = spawn_role("engine-host", &server_spec(spec, addr.clone()), true)?;
    host.ready()?;
    let mut idle = spawn_role("idle-host", &server_spec(spec, addr.clone()), true)?;
    idle.ready()?;
    let mut server = spawn_role("serve", &server_spec(spec, addr.clone()), true)?;
    server.ready()?;
    let rt = current_thread()?;
    let measured = rt.block_on(active_pair(spec, &addr, host.pid()));
    // This node leaves first (the server ends with its session), then the idle nodes, and
    // the engine last: a node whose engine goes away while its runtime still runs can
    // busy-loop on the closed doorbell.
    drop(rt);
    server.finish(Duration::from_secs(10))?;
    drop(idle.0.stdin.take());
    idle.finish(Duration::from_secs(60))?;
    drop(host.0.stdin.take());
    host.finish(Duration::from_secs(10))?;
    measured
}

/// The active pair's round trips, timed here; CPU time: the engine's process alone.
async fn active_pair(spec: &Spec, socket: &str, engine: u32) -> Res<Measured> {
    let node = Node::connect(socket, "client").await?;
    let mut conn = ShmConn(node.open::<Bytes>("bench").await?);
    let rtt = Spec {
        pattern: Pattern::Rtt,
        size: ACTIVE_SIZE,
        ..spec.clone()
    };
    let m = conn_rtt(&rtt, &mut conn, &CpuProbe::only(engine)).await?;
    drop(conn);
    drop(node);
    Ok(m)
}

/// The idle host of `idle-nodes`: connects `spec.size` nodes in pairs, each pair with one
/// open session (a listener on one node, the session opened by the other and accepted), says
/// `ready`, and holds them, sending nothing, until its stdin closes.
pub(crate) fn idle_host(spec: &Spec) -> Res<()> {
    raise_nofile()?;
    current_thread()?.block_on(async {
        let pairs = spec.size / 2;
        let mut held = Vec::with_capacity(pairs);
        for k in 0..pairs {
            let a = Node::connect(&spec.addr, &format!("idle-{}", 2 * k)).await?;
            let b = Node::connect(&spec.addr, &format!("idle-{}", 2 * k + 1)).await?;
            let service = format!("idle-{k}");
            let mut listener = a.listen::<Bytes>(&service).await?;
            let (opened, accepted) = tokio::join!(b.open::<Bytes>(&service), listener.accept());
            let (opened, accepted) = (opened?, accepted.ok_or("engine gone")?);
            held.push((a, b, listener, opened, accepted));
        }
        println!("ready");
        stdin_closed().await;
        drop(held);
        Ok(())
    })
}
