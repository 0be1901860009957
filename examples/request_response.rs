//! Request/response between two processes, through `tower`.
//!
//! The parent hosts the engine and starts a child that serves `GetQuote -> Quote` with a
//! plain `tower::service_fn`. The parent's client is a `tower::Service` wrapped in a
//! `ServiceBuilder` stack (a timeout and a concurrency limit), and sends 500 requests with
//! up to 64 in flight; replies come back matched by id, in any order. One request asks for
//! an unknown SKU (the handler's error comes back as `CallError::Remote`), one for a slow
//! SKU that the timeout layer gives up on.
//!
//! Run: `cargo run --release --example request_response`

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shmlink::{CallError, Engine, Message, Node};
use tower::{BoxError, ServiceBuilder, ServiceExt};

#[derive(Message, Serialize, Deserialize, Debug, Clone)]
struct GetQuote {
    sku: String,
    quantity: u32,
}

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Quote {
    sku: String,
    cents: u64,
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => runtime.block_on(server(&args[2])),
        _ => runtime.block_on(client()),
    }
}

/// The child: serves quotes until the client goes away.
async fn server(socket: &str) -> Result<(), BoxError> {
    let node = Node::connect(socket, "pricing").await?;
    let quote = tower::service_fn(|req: GetQuote| async move {
        match req.sku.as_str() {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Quote {
                    sku: req.sku,
                    cents: 0,
                })
            }
            sku if sku.starts_with("sku-") => Ok(Quote {
                cents: 199 * u64::from(req.quantity),
                sku: req.sku,
            }),
            other => Err(format!("unknown sku {other:?}")),
        }
    });
    let server = node.serve("quotes", quote).await?;
    // Serve until the parent closes its side: the engine then reports the node's sessions
    // ended; here we simply wait for our connection's end.
    let mut watch = node.listen::<bytes::Bytes>("pricing.lifeline").await?;
    let _ = watch.accept().await; // the parent opens this, then closes it when done
    server.shutdown().await;
    Ok(())
}

async fn client() -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("shmlink-rr-{}", std::process::id()));
    let socket = dir.join("engine.sock");
    let engine = Engine::builder().socket(&socket).spawn()?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["server", socket.to_str().ok_or("path")?])
        .kill_on_drop(true)
        .spawn()?;
    engine.wait_for_stats(|s| s.services == 2).await;

    let node = Node::connect(&socket, "web").await?;
    let client = node.client::<GetQuote, Quote>("quotes").await?;
    let service = ServiceBuilder::new()
        .concurrency_limit(64)
        .timeout(Duration::from_millis(500))
        .service(client);

    // 500 requests, at most 64 in flight (the concurrency limit), answered out of order.
    let requests = (0..500u32).map(|i| GetQuote {
        sku: format!("sku-{i}"),
        quantity: i % 7 + 1,
    });
    let mut replies = service
        .clone()
        .call_all(futures::stream::iter(requests))
        .enumerate();
    let mut total = 0u64;
    while let Some((i, reply)) = replies.next().await {
        let quote = reply?;
        assert_eq!(quote.sku, format!("sku-{i}"));
        total += quote.cents;
    }
    println!("500 quotes received in order of request, total {total} cents");

    let unknown = service
        .clone()
        .oneshot(GetQuote {
            sku: "nope".into(),
            quantity: 1,
        })
        .await;
    match unknown.map_err(|e| e.downcast::<CallError>()) {
        Err(Ok(e)) => println!("unknown sku  -> {e}"),
        other => return Err(format!("expected a remote error, got {other:?}").into()),
    }
    let slow = service
        .clone()
        .oneshot(GetQuote {
            sku: "slow".into(),
            quantity: 1,
        })
        .await;
    match slow {
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => println!(
            "slow sku     -> timed out after 500 ms (the late reply is dropped on arrival)"
        ),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }

    // Tell the server we are done, then wait for it to exit.
    drop(node.open::<bytes::Bytes>("pricing.lifeline").await?);
    let status = child.wait().await?;
    engine.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("server exited: {status}");
    Ok(())
}
