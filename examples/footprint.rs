//! What idle nodes and open sessions cost the engine: its resident memory and descriptors,
//! measured from outside the nodes.
//!
//! `cargo run --release --example footprint -- [NODES] [SESSIONS_PER_NODE]` (default 200 and
//! 4). The engine runs in this process; the nodes run in a child process (this program
//! re-executed), so this process's resident memory is the engine's. It prints the engine's
//! RSS and descriptor count before, with the idle nodes connected, and with their sessions
//! open, and the cost per node and per session; and the blocks' memory that is touched
//! (allocated in the host's memory: a memfd's pages exist only once someone touches them),
//! read from the engine's own descriptors of the blocks.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use shmlink::{BlockConfig, Engine, Node};

const CHILD_ENV: &str = "SHMLINK_FOOTPRINT_CHILD";

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Bytes of the nodes' blocks held in the host's memory (`st_blocks` of each block's memfd,
/// through the engine's descriptors), and how many blocks.
fn blocks_touched() -> (u64, usize) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (0, 0);
    };
    let mut total = (0, 0);
    for entry in dir.flatten() {
        let is_block = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmlink-node-"));
        if let (true, Ok(stat)) = (is_block, rustix::fs::stat(entry.path())) {
            total.0 += stat.st_blocks as u64 * 512;
            total.1 += 1;
        }
    }
    total
}

/// The child: connects `nodes` nodes, says CONNECTED, opens `sessions` sessions from each
/// to a served name, says OPEN, then waits for its stdin to close.
async fn child(
    socket: String,
    nodes: usize,
    sessions: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let server = Node::connect(&socket, "footprint-server").await?;
    let mut listener = server.listen::<bytes::Bytes>("footprint").await?;
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(s) = listener.accept().await {
            held.push(s);
        }
        held.len()
    });
    let mut idle = Vec::with_capacity(nodes);
    for i in 0..nodes {
        idle.push(Node::connect(&socket, &format!("idle-{i}")).await?);
    }
    println!("CONNECTED");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let mut open = Vec::with_capacity(nodes * sessions);
    for node in &idle {
        for _ in 0..sessions {
            open.push(node.open::<bytes::Bytes>("footprint").await?);
        }
    }
    println!("OPEN");
    std::io::stdout().flush()?;
    line.clear();
    std::io::stdin().read_line(&mut line)?;
    accepting.abort();
    drop((open, idle, server));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let sessions: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Ok(socket) = std::env::var(CHILD_ENV) {
        return runtime.block_on(child(socket, nodes, sessions));
    }
    // Open files: each node holds a few of the engine's descriptors.
    let want = (nodes as u64 * 8 + 1024).max(4096);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(want),
            maximum: Some(want),
        },
    );
    let dir = std::env::temp_dir().join(format!("shmlink-footprint-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    runtime.block_on(async {
        // Default blocks (32 MiB + 32 MiB arenas): what a user gets.
        // The memory budget (half the host's memory by default) counts every block whole,
        // touched or not: this measures what idle blocks really hold, so it lifts it.
        let engine = Engine::builder()
            .socket(&socket)
            .block(BlockConfig::default())
            .max_sessions_per_node(1 << 20)
            .memory_budget(u64::MAX)
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss0, fds0) = (rss_kib(), fds());
        let mut child = Command::new(std::env::current_exe()?)
            .args([nodes.to_string(), sessions.to_string()])
            .env(CHILD_ENV, &socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("stdin")?;
        let mut out = BufReader::new(child.stdout.take().ok_or("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).await?;
        engine.wait_for_stats(|s| s.nodes == nodes + 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss1, fds1) = (rss_kib(), fds());
        let (touched, blocks) = blocks_touched();
        stdin.write_all(b"\n").await?;
        line.clear();
        out.read_line(&mut line).await?;
        engine
            .wait_for_stats(|s| s.session_ends == 2 * nodes * sessions)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss2, fds2) = (rss_kib(), fds());
        stdin.write_all(b"\n").await?;
        drop(stdin);
        child.wait().await?;
        engine.wait_for_stats(|s| s.nodes == 0).await;
        println!("engine with no node:        RSS {rss0} KiB, {fds0} fds");
        println!("with {nodes} idle nodes:      RSS {rss1} KiB, {fds1} fds");
        println!(
            "with {} sessions open:    RSS {rss2} KiB, {fds2} fds",
            nodes * sessions
        );
        let per_node = (rss1.saturating_sub(rss0)) as f64 / nodes as f64;
        let per_session = (rss2.saturating_sub(rss1)) as f64 / (nodes * sessions) as f64;
        println!(
            "per idle node: {per_node:.1} KiB RSS, {:.1} fds; per open session: {:.0} B RSS",
            (fds1 - fds0) as f64 / nodes as f64,
            per_session * 1024.0
        );
        let touched_per_node = touched as f64 / 1024.0 / blocks.max(1) as f64;
        println!(
            "blocks touched: {} KiB in {blocks} blocks, {touched_per_node:.1} KiB per idle node; \
             footprint per idle node (engine RSS + block memory touched): {:.1} KiB",
            touched / 1024,
            per_node + touched_per_node
        );
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
