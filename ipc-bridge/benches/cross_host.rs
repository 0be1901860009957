//! Cross-host request/response on loopback: a tower client on engine A calling a server on
//! engine B through two bridges over Zenoh, against tarpc over TCP (what a user would pick
//! instead), in one run. The same calls within one engine are shown beside them for scale.
//!
//! Each row: p50 round trip at 64 B and 64 KiB (sequential calls), and requests/s with 64 in
//! flight (64 B). Ratios are bridge / tarpc. Run:
//! `cargo bench --manifest-path ipc-bridge/Cargo.toml --bench cross_host`
//! (`-- --quick` for a short run).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipc_bridge::{Bridge, BridgeConfig};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use shmlink::{Engine, Message, Node};
use tarpc::context;
use tarpc::server::{BaseChannel, Channel as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Message, Serialize, Deserialize, Debug, Clone)]
struct Echo {
    data: ByteBuf,
}

#[tarpc::service]
trait Bench {
    /// The request back.
    async fn echo(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct BenchServer;

impl Bench for BenchServer {
    async fn echo(self, _: context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// One transport's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Row {
    p50_small_us: f64,
    p50_large_us: f64,
    rps: f64,
}

struct Plan {
    small_calls: usize,
    large_calls: usize,
    window: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            small_calls: 500,
            large_calls: 100,
            window: Duration::from_millis(500),
        }
    } else {
        Plan {
            small_calls: 5_000,
            large_calls: 1_000,
            window: Duration::from_secs(3),
        }
    };
    let dir = std::env::temp_dir().join(format!("shmlink-bridge-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let bridged = bridged(&dir, &plan).await?;
    let tarpc = tarpc_tcp(&plan).await?;
    let local = local(&dir, &plan).await?;
    let zenoh_only = zenoh_ping_pong(&plan).await?;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "{:<28} {:>14} {:>16} {:>16}",
        "transport", "p50 64 B (us)", "p50 64 KiB (us)", "req/s (64 infl.)"
    );
    for (name, row) in [
        ("shmlink bridged (Zenoh)", bridged),
        ("tarpc over TCP", tarpc),
        ("shmlink one engine", local),
        ("Zenoh put/subscribe alone", zenoh_only),
    ] {
        println!(
            "{name:<28} {:>14.1} {:>16.1} {:>16.0}",
            row.p50_small_us, row.p50_large_us, row.rps
        );
    }
    println!(
        "ratio bridged / tarpc: p50 64 B {:.2}x, p50 64 KiB {:.2}x, req/s {:.2}x",
        bridged.p50_small_us / tarpc.p50_small_us,
        bridged.p50_large_us / tarpc.p50_large_us,
        bridged.rps / tarpc.rps
    );
    Ok(())
}

fn zenoh(endpoint: (&str, u16)) -> Result<zenoh::Config, BoxError> {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", r#""peer""#)?;
    config.insert_json5("scouting/multicast/enabled", "false")?;
    config.insert_json5(
        &format!("{}/endpoints", endpoint.0),
        &format!(r#"["tcp/127.0.0.1:{}"]"#, endpoint.1),
    )?;
    Ok(config)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn echo_service() -> impl tower::Service<
    Echo,
    Response = Echo,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<Echo, std::convert::Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: Echo| std::future::ready(Ok(req)))
}

/// Two engines, two bridges, a server on B and a client on A.
async fn bridged(dir: &std::path::Path, plan: &Plan) -> Result<Row, BoxError> {
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    let engine_a = Engine::builder().socket(&sock_a).spawn()?;
    let engine_b = Engine::builder().socket(&sock_b).spawn()?;
    let port = free_port()?;
    let server_node = Node::connect(&sock_b, "server").await?;
    let _server = server_node.serve("echo", echo_service()).await?;
    let bridge_b = Bridge::start(
        &sock_b,
        BridgeConfig::new(zenoh(("listen", port))?)
            .namespace("bench")
            .export_service("echo"),
    )
    .await?;
    let bridge_a = Bridge::start(
        &sock_a,
        BridgeConfig::new(zenoh(("connect", port))?)
            .namespace("bench")
            .import_service("echo"),
    )
    .await?;
    let mut state = bridge_a.watch_import("echo").ok_or("not imported")?;
    tokio::time::timeout(
        Duration::from_secs(60),
        state.wait_for(|s| s.exporter.is_some()),
    )
    .await??;
    let node = Node::connect(&sock_a, "client").await?;
    let row = shmlink_row(&node, plan).await?;
    drop(node);
    bridge_a.shutdown().await;
    bridge_b.shutdown().await;
    engine_a.shutdown().await;
    engine_b.shutdown().await;
    Ok(row)
}

/// Client and server on one engine.
async fn local(dir: &std::path::Path, plan: &Plan) -> Result<Row, BoxError> {
    let sock = dir.join("local.sock");
    let engine = Engine::builder().socket(&sock).spawn()?;
    let server_node = Node::connect(&sock, "server").await?;
    let _server = server_node.serve("echo", echo_service()).await?;
    let node = Node::connect(&sock, "client").await?;
    let row = shmlink_row(&node, plan).await?;
    drop(node);
    engine.shutdown().await;
    Ok(row)
}

async fn shmlink_row(node: &Node, plan: &Plan) -> Result<Row, BoxError> {
    let client = node.client::<Echo, Echo>("echo").await?;
    let call = |n: usize| {
        let client = client.clone();
        async move {
            let reply = client
                .oneshot(Echo {
                    data: ByteBuf::from(vec![7u8; n]),
                })
                .await?;
            check(reply.data.len(), n)
        }
    };
    measure(plan, call).await
}

async fn tarpc_tcp(plan: &Plan) -> Result<Row, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        BaseChannel::with_defaults(transport(stream))
            .execute(BenchServer.serve())
            .for_each(|response| async {
                tokio::spawn(response);
            })
            .await;
    });
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let client = BenchClient::new(tarpc::client::Config::default(), transport(stream)).spawn();
    let call = |n: usize| {
        let client = client.clone();
        async move {
            let mut ctx = context::current();
            ctx.deadline = Instant::now() + Duration::from_secs(60);
            let reply = client.echo(ctx, ByteBuf::from(vec![7u8; n])).await?;
            check(reply.len(), n)
        }
    };
    let row = measure(plan, call).await?;
    drop(client);
    server.abort();
    Ok(row)
}

/// Zenoh alone, as the bridges use it (two peers on loopback, reliable, `Block`, express):
/// a request published on one key, answered on another by a subscriber's callback. The
/// floor under the bridged figures.
async fn zenoh_ping_pong(plan: &Plan) -> Result<Row, BoxError> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use zenoh::qos::CongestionControl;

    let port = free_port()?;
    let server = zenoh::open(zenoh(("listen", port))?).await?;
    let client = zenoh::open(zenoh(("connect", port))?).await?;
    let pong = Arc::new(
        server
            .declare_publisher("bench/pong")
            .congestion_control(CongestionControl::Block)
            .express(true)
            .await?,
    );
    let answer = pong.clone();
    let _echo = server
        .declare_subscriber("bench/ping")
        .callback(move |sample| {
            let _ = zenoh::Wait::wait(answer.put(sample.payload().clone()));
        })
        .await?;
    type Waiters = Mutex<HashMap<u64, tokio::sync::oneshot::Sender<usize>>>;
    let waiters: Arc<Waiters> = Arc::new(Mutex::new(HashMap::new()));
    let w = waiters.clone();
    let _replies = client
        .declare_subscriber("bench/pong")
        .callback(move |sample| {
            let bytes = sample.payload().to_bytes();
            let id = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            if let Some(tx) = w.lock().expect("lock").remove(&id) {
                let _ = tx.send(bytes.len());
            }
        })
        .await?;
    let ping = Arc::new(
        client
            .declare_publisher("bench/ping")
            .congestion_control(CongestionControl::Block)
            .express(true)
            .await?,
    );
    // Wait until each side sees the other's subscriber.
    for publisher in [&ping, &pong] {
        let listener = publisher.matching_listener().await?;
        if !publisher.matching_status().await?.matching() {
            while !listener.recv_async().await?.matching() {}
        }
    }
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let call = |n: usize| {
        let (ping, waiters, next) = (ping.clone(), waiters.clone(), next.clone());
        async move {
            let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiters.lock().expect("lock").insert(id, tx);
            let mut data = vec![7u8; n.max(8)];
            data[..8].copy_from_slice(&id.to_le_bytes());
            ping.put(data).await?;
            let got = rx.await?;
            check(got, n.max(8))
        }
    };
    let row = measure(plan, call).await?;
    client.close().await?;
    server.close().await?;
    Ok(row)
}

fn transport<Item, SinkItem>(
    stream: TcpStream,
) -> tarpc::serde_transport::Transport<
    TcpStream,
    Item,
    SinkItem,
    tokio_serde::formats::Bincode<Item, SinkItem>,
>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(64 << 20)
        .new_codec();
    tarpc::serde_transport::new(
        Framed::new(stream, codec),
        tokio_serde::formats::Bincode::default(),
    )
}

fn check(got: usize, want: usize) -> Result<(), BoxError> {
    if got == want {
        Ok(())
    } else {
        Err(format!("reply of {got} bytes to a request of {want}").into())
    }
}

/// p50 of sequential calls at 64 B and 64 KiB, then requests/s with 64 in flight.
async fn measure<F, Fut>(plan: &Plan, call: F) -> Result<Row, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut row = Row {
        p50_small_us: p50(plan.small_calls, 64, &call).await?,
        p50_large_us: p50(plan.large_calls, 64 << 10, &call).await?,
        ..Row::default()
    };
    let t0 = Instant::now();
    let mut calls = FuturesUnordered::new();
    let mut done = 0u64;
    loop {
        while calls.len() < 64 && t0.elapsed() < plan.window {
            calls.push(call(64));
        }
        match calls.next().await {
            Some(result) => {
                result?;
                done += 1;
            }
            None => break,
        }
    }
    row.rps = done as f64 / t0.elapsed().as_secs_f64();
    Ok(row)
}

async fn p50<F, Fut>(calls: usize, size: usize, call: &F) -> Result<f64, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    for _ in 0..calls / 10 {
        call(size).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        call(size).await?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2].as_secs_f64() * 1e6)
}
