//! The README's main command: an embedded engine and two real child processes.
//!
//! The parent process hosts the engine on its Tokio runtime and starts two copies of this
//! binary: a server that answers every message with its bytes reversed, and a client that
//! sends messages of many sizes, checks each answer and reports. Nothing is mocked: the
//! children map their own sealed blocks, and every payload crosses the engine.
//!
//! Run: `cargo run --release --example quickstart`

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Engine, Node};

const SERVICE: &str = "reverse";
const MESSAGES: usize = 2_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("server") => runtime.block_on(server(&args[2])),
        Some("client") => runtime.block_on(client(&args[2])),
        _ => runtime.block_on(parent()),
    }
}

async fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shmlink-quickstart-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder().socket(&socket).spawn()?;
    println!("engine  listening on {}", socket.display());

    let exe = std::env::current_exe()?;
    let spawn = |role: &str| {
        tokio::process::Command::new(&exe)
            .args([role, socket.to_str().expect("utf-8 path")])
            .stdout(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
    };
    let mut server = spawn("server")?;
    // The client may start once the server's name is registered.
    engine.wait_for_stats(|s| s.services == 1).await;
    let mut client = spawn("client")?;

    let client_status = client.wait().await?;
    let server_status = server.wait().await?;
    let stats = engine.stats();
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "engine  copied {} messages between {} processes; client {}, server {}",
        stats.messages, 2, client_status, server_status
    );
    if client_status.success() && server_status.success() {
        println!("ok");
        Ok(())
    } else {
        Err("a child process failed".into())
    }
}

async fn server(socket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, "server").await?;
    let mut listener = node.listen::<Bytes>(SERVICE).await?;
    println!("server  pid {} serving {SERVICE:?}", std::process::id());
    let mut session = listener.accept().await.ok_or("engine went away")?;
    let mut answered = 0usize;
    while let Some(message) = session.next().await {
        let message = message?;
        let reversed: Vec<u8> = message.iter().rev().copied().collect();
        drop(message); // hands the receive sub-block back to the engine
        session.send(Bytes::from(reversed)).await?;
        answered += 1;
    }
    println!("server  answered {answered} messages; client closed the session");
    Ok(())
}

async fn client(socket: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::connect(socket, "client").await?;
    let mut session = node.open::<Bytes>(SERVICE).await?;
    println!(
        "client  pid {} opened {SERVICE:?} on node {:?}",
        std::process::id(),
        session.peer()
    );
    let sizes = [0usize, 1, 64, 1000, 4096, 65_536, 1 << 20];
    let mut bytes = 0usize;
    let started = Instant::now();
    let mut fastest = Duration::MAX;
    for i in 0..MESSAGES {
        let len = sizes[i % sizes.len()];
        let payload: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
        let sent_at = Instant::now();
        session.send(Bytes::from(payload.clone())).await?;
        let answer = session.next().await.ok_or("server went away")??;
        fastest = fastest.min(sent_at.elapsed());
        let expected: Vec<u8> = payload.iter().rev().copied().collect();
        if answer[..] != expected[..] {
            return Err(format!("message {i} ({len} bytes) came back wrong").into());
        }
        bytes += 2 * len;
    }
    let elapsed = started.elapsed();
    println!(
        "client  {MESSAGES} round trips ({} MiB both ways) in {:.1?}, all checked; fastest round trip {:.1?}",
        bytes >> 20,
        elapsed,
        fastest
    );
    Ok(())
}
