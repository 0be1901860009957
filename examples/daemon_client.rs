//! Talks to a `shmlinkd` started by hand.
//!
//! ```sh
//! cargo run --release --bin shmlinkd -- --socket /tmp/shmlink-demo.sock      # terminal 1
//! cargo run --release --example daemon_client -- /tmp/shmlink-demo.sock      # terminal 2
//! ```
//!
//! It registers two nodes with the daemon (each gets its own sealed block), serves a
//! "clock" service on one, opens it from the other, streams ticks one way and
//! acknowledgements the other, and prints what happened.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::Node;

const TICKS: u64 = 10_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .map_or_else(shmlink::default_socket_path, Into::into);
    let server = Node::connect(&socket, "clock-server").await?;
    let client = Node::connect(&socket, "clock-client").await?;
    println!(
        "connected two nodes to {} (ids {} and {})",
        socket.display(),
        server.id(),
        client.id()
    );

    let mut listener = server.listen::<Bytes>("clock").await?;
    let serve = tokio::spawn(async move {
        let session = listener.accept().await.ok_or("daemon went away")?;
        let (mut tx, mut rx) = session.split();
        for tick in 0..TICKS {
            tx.send(Bytes::copy_from_slice(&tick.to_le_bytes())).await?;
        }
        tx.close().await?; // half-close: the client's stream ends after the last tick
        let mut acks = 0u64;
        while let Some(ack) = rx.next().await {
            ack?;
            acks += 1;
        }
        Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(acks)
    });

    let session = client.open::<Bytes>("clock").await?;
    let (mut tx, mut rx) = session.split();
    let mut expected = 0u64;
    while let Some(tick) = rx.next().await {
        let tick = u64::from_le_bytes(tick?[..].try_into()?);
        if tick != expected {
            return Err(format!("tick {tick} arrived, expected {expected}").into());
        }
        expected += 1;
        if tick % 1000 == 999 {
            tx.send(Bytes::from_static(b"ack")).await?;
        }
    }
    drop(tx);
    let acks = serve.await?.map_err(|e| e.to_string())?;
    println!("client received {expected} ticks in order; server received {acks} acknowledgements");
    Ok(())
}
