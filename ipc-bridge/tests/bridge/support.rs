//! Two hosts in one test: an engine and a bridge each, joined over Zenoh on loopback.

use std::future::Future;
use std::pin::Pin;

use ipc_bridge::{Bridge, BridgeConfig};
use shmlink::{Engine, Node};
use testkit::child::{ChildSpec, Commands, say};
use testkit::setup::{TestDir, engine, within};

use crate::{GetQuote, Quote, ServiceError};

/// B's bridge's answer to an open of a name it does not export: `Refused`, tunnel 1,
/// answer "not exported" (see the wire format in ipc-bridge's `wire` module).
pub(crate) const REFUSED_NOT_EXPORTED: &[u8] = &[5, 1, 0, 0, 0, 0, 0, 0, 0, 2];

/// A free TCP port on loopback (bound then released; Zenoh binds it next).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn base() -> zenoh::Config {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", r#""peer""#).unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    config
}

/// A peer listening on `127.0.0.1:port`.
pub(crate) fn zenoh_listen(port: u16) -> zenoh::Config {
    let mut config = base();
    config
        .insert_json5("listen/endpoints", &format!(r#"["tcp/127.0.0.1:{port}"]"#))
        .unwrap();
    config
}

/// A peer connecting to `127.0.0.1:port`.
pub(crate) fn zenoh_connect(port: u16) -> zenoh::Config {
    zenoh_connect_to("127.0.0.1", port)
}

/// A peer connecting to `addr:port`.
pub(crate) fn zenoh_connect_to(addr: &str, port: u16) -> zenoh::Config {
    let mut config = base();
    config
        .insert_json5("connect/endpoints", &format!(r#"["tcp/{addr}:{port}"]"#))
        .unwrap();
    config
}

/// A peer listening on `addr:port`.
pub(crate) fn zenoh_listen_on(addr: &str, port: u16) -> zenoh::Config {
    let mut config = base();
    config
        .insert_json5("listen/endpoints", &format!(r#"["tcp/{addr}:{port}"]"#))
        .unwrap();
    config
}

/// The quote service: `cents = n * 3 + 1`; a request with `n == u64::MAX` is held forever
/// (after saying `HELD`, for a child's parent).
pub(crate) fn quote_service() -> impl tower::Service<
    GetQuote,
    Response = Quote,
    Error = ServiceError,
    Future = Pin<Box<dyn Future<Output = Result<Quote, ServiceError>> + Send>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: GetQuote| {
        Box::pin(async move {
            if req.n == u64::MAX {
                say("HELD");
                std::future::pending::<()>().await;
            }
            Ok(Quote {
                sku: req.sku,
                cents: req.n.wrapping_mul(3) + 1,
            })
        }) as Pin<Box<dyn Future<Output = Result<Quote, ServiceError>> + Send>>
    })
}

/// Host A (connects) and host B (listens), each an engine and a bridge, in this process.
pub(crate) struct Hosts {
    ns: String,
    port: u16,
    dir_a: TestDir,
    dir_b: TestDir,
    engine_a: Engine,
    engine_b: Engine,
    bridge_a: Bridge,
    bridge_b: Bridge,
}

impl Hosts {
    pub(crate) async fn start(
        name: &str,
        b: impl FnOnce(BridgeConfig) -> BridgeConfig,
        a: impl FnOnce(BridgeConfig) -> BridgeConfig,
    ) -> Self {
        Self::start_with_window(name, ipc_bridge::DEFAULT_WINDOW, b, a).await
    }

    pub(crate) async fn start_with_window(
        name: &str,
        window: u32,
        b: impl FnOnce(BridgeConfig) -> BridgeConfig,
        a: impl FnOnce(BridgeConfig) -> BridgeConfig,
    ) -> Self {
        let ns = format!("{name}{}", std::process::id());
        let dir_a = TestDir::new(&format!("bridge-{name}-a"));
        let dir_b = TestDir::new(&format!("bridge-{name}-b"));
        let engine_a = engine(&dir_a);
        let engine_b = engine(&dir_b);
        let port = free_port();
        let config_b = b(BridgeConfig::new(zenoh_listen(port))
            .namespace(&ns)
            .window(window));
        let bridge_b = within("bridge B", Bridge::start(dir_b.socket(), config_b))
            .await
            .expect("bridge B");
        let config_a = a(BridgeConfig::new(zenoh_connect(port))
            .namespace(&ns)
            .window(window));
        let bridge_a = within("bridge A", Bridge::start(dir_a.socket(), config_a))
            .await
            .expect("bridge A");
        Self {
            ns,
            port,
            dir_a,
            dir_b,
            engine_a,
            engine_b,
            bridge_a,
            bridge_b,
        }
    }

    pub(crate) async fn a_node(&self, name: &str) -> Node {
        Node::connect(self.dir_a.socket(), name)
            .await
            .expect("node on A")
    }

    pub(crate) async fn b_node(&self, name: &str) -> Node {
        Node::connect(self.dir_b.socket(), name)
            .await
            .expect("node on B")
    }

    pub(crate) fn bridge_b(&self) -> &Bridge {
        &self.bridge_b
    }

    /// Waits until A's bridge serves the import `name` for the `times`-th time.
    pub(crate) async fn served_on_a(&self, name: &str, times: u64) {
        let mut state = self.bridge_a.watch_import(name).expect("imported");
        within(
            "A serves the import",
            state.wait_for(|s| s.served >= times && s.exporter.is_some()),
        )
        .await
        .expect("bridge A running");
    }

    /// Joins the Zenoh network as a hand-made peer and sends B's bridge an `Open` of
    /// `service`; returns B's answer as raw bytes.
    pub(crate) async fn forge_open_on_b(&self, service: &str) -> Vec<u8> {
        let session = zenoh::open(zenoh_connect(self.port)).await.unwrap();
        let me = session.zid().to_string();
        let b = self.bridge_b.zid();
        let inbox = session
            .declare_subscriber(format!("{}/bridge/{me}/in/{b}", self.ns))
            .await
            .unwrap();
        let publisher = session
            .declare_publisher(format!("{}/bridge/{b}/in/{me}", self.ns))
            .await
            .unwrap();
        let listener = publisher.matching_listener().await.unwrap();
        if !publisher.matching_status().await.unwrap().matching() {
            while !listener.recv_async().await.unwrap().matching() {}
        }
        // Open { tunnel: 1, service, schema: bytes both ways }.
        let mut open = vec![3u8];
        open.extend_from_slice(&1u64.to_le_bytes());
        open.extend_from_slice(&(service.len() as u16).to_le_bytes());
        open.extend_from_slice(service.as_bytes());
        for _ in 0..2 {
            open.extend_from_slice(&0u64.to_le_bytes());
            open.extend_from_slice(&5u16.to_le_bytes());
            open.extend_from_slice(b"bytes");
        }
        publisher.put(open).await.unwrap();
        let reply = inbox.recv_async().await.unwrap();
        let bytes = reply.payload().to_bytes().into_owned();
        session.close().await.unwrap();
        bytes
    }

    pub(crate) async fn shutdown(self) {
        self.bridge_a.shutdown().await;
        self.bridge_b.shutdown().await;
        self.engine_a.shutdown().await;
        self.engine_b.shutdown().await;
    }
}

/// `testkit::child::run_child` on a multi-thread runtime with one worker: Zenoh does not
/// run on a current-thread one.
pub(crate) fn run_child_multi_thread<F, Fut>(spec: ChildSpec, run: F)
where
    F: FnOnce(ChildSpec, Commands) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    testkit::child::run_child_on(&runtime, testkit::setup::STEP * 2, spec, run);
}

/// Host B in a child process: an engine, the quote server and a bridge exporting it,
/// connected to A's bridge at address `args[0]`, port `args[1]`, namespace `args[2]`
/// (`args[3]` tells runs apart).
pub(crate) async fn host_b(spec: ChildSpec, commands: Commands) -> Result<(), String> {
    let addr = &spec.args[0];
    let port: u16 = spec.args[1].parse().map_err(|e| format!("port: {e}"))?;
    let ns = &spec.args[2];
    let dir = TestDir::new(&format!("bridge-b-{}", spec.args[3]));
    let engine = engine(&dir);
    let billing = Node::connect(dir.socket(), "billing")
        .await
        .map_err(|e| e.to_string())?;
    let _server = billing
        .serve("quotes", quote_service())
        .await
        .map_err(|e| e.to_string())?;
    let bridge = Bridge::start(
        dir.socket(),
        BridgeConfig::new(zenoh_connect_to(addr, port))
            .namespace(ns)
            .export_service("quotes"),
    )
    .await
    .map_err(|e| e.to_string())?;
    commands.done("ready").await?;
    bridge.shutdown().await;
    engine.shutdown().await;
    Ok(())
}
