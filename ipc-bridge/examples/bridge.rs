//! Two engines, as on two hosts, bridged over Zenoh on loopback: a tower service served on
//! host B is called from host A, and a topic published on B is read on A. Neither node's
//! code knows about the bridge.
//!
//! `cargo run --manifest-path ipc-bridge/Cargo.toml --example bridge`
//!
//! On two real hosts, run one engine and one bridge on each, with Zenoh endpoints the other
//! host can reach (and TLS or user/password: see docs/ARCHITECTURE.md, "Bridge").

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipc_bridge::{Bridge, BridgeConfig};
use serde::{Deserialize, Serialize};
use shmlink::{Engine, Message, Node};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Message, Serialize, Deserialize, Debug)]
struct GetQuote {
    sku: String,
}

#[derive(Message, Serialize, Deserialize, Debug)]
struct Quote {
    sku: String,
    cents: u64,
}

#[derive(Message, Serialize, Deserialize, Debug)]
struct Tick {
    seq: u64,
    price: u64,
}

/// A Zenoh peer on loopback, multicast scouting off, listening on or connecting to `port`.
fn zenoh(role: &str, port: u16) -> Result<zenoh::Config, BoxError> {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", r#""peer""#)?;
    config.insert_json5("scouting/multicast/enabled", "false")?;
    config.insert_json5(
        &format!("{role}/endpoints"),
        &format!(r#"["tcp/127.0.0.1:{port}"]"#),
    )?;
    Ok(config)
}

// Zenoh needs a multi-thread runtime; one worker is enough.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("shmlink-bridge-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (socket_a, socket_b) = (dir.join("host-a.sock"), dir.join("host-b.sock"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();

    // Host B: an engine, a server and a publisher, and a bridge exporting both.
    let engine_b = Engine::builder().socket(&socket_b).spawn()?;
    let billing = Node::connect(&socket_b, "billing").await?;
    let quotes = tower::service_fn(|req: GetQuote| async move {
        Ok::<_, std::convert::Infallible>(Quote {
            cents: 100 + req.sku.len() as u64,
            sku: req.sku,
        })
    });
    let _server = billing.serve("quotes", quotes).await?;
    let bridge_b = Bridge::start(
        &socket_b,
        BridgeConfig::new(zenoh("listen", port)?)
            .export_service("quotes")
            .export_topic::<Tick>("ticks"),
    )
    .await?;

    // Host A: an engine and a bridge importing them.
    let engine_a = Engine::builder().socket(&socket_a).spawn()?;
    let bridge_a = Bridge::start(
        &socket_a,
        BridgeConfig::new(zenoh("connect", port)?)
            .import_service("quotes")
            .import_topic::<Tick>("ticks"),
    )
    .await?;
    let mut imported = bridge_a.watch_import("quotes").ok_or("not imported")?;
    tokio::time::timeout(
        Duration::from_secs(30),
        imported.wait_for(|s| s.exporter.is_some()),
    )
    .await??;

    // A node on host A calls the server on host B, as if it were local.
    let web = Node::connect(&socket_a, "web").await?;
    let client = web.client::<GetQuote, Quote>("quotes").await?;
    let quote = client.oneshot(GetQuote { sku: "A-42".into() }).await?;
    println!("host A got {quote:?} from host B");

    // A subscriber on host A reads what a publisher on host B publishes.
    let mut ticks = web.subscribe::<Tick>("ticks").await?;
    bridge_b.wait_topic_importers("ticks").await?;
    let feed = Node::connect(&socket_b, "feed").await?;
    let mut publisher = feed.publish::<Tick>("ticks").await?;
    for seq in 0..3 {
        publisher
            .send(Tick {
                seq,
                price: 1999 + seq,
            })
            .await?;
    }
    for _ in 0..3 {
        let tick = ticks.next().await.ok_or("ticks ended")??;
        println!("host A received {tick:?} published on host B");
    }

    drop((ticks, publisher));
    bridge_a.shutdown().await;
    bridge_b.shutdown().await;
    engine_a.shutdown().await;
    engine_b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
