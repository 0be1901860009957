//! Temp dirs, engines and in-process node pairs for the integration tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::BlockConfig;
use ipc_tokio::{
    Engine, EngineBuilder, EngineStats, Listener, Node, OpenError, Session, SessionSink,
};

/// Generous bound on any single step: catches hangs, never expected to fire.
pub const STEP: Duration = Duration::from_secs(60);

/// Awaits `fut`, panicking with `what` if it takes longer than [`STEP`] (a hang).
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// Small blocks keep memory and time low: 4 MiB arenas, 256 B minimum class.
pub fn small_block() -> BlockConfig {
    BlockConfig {
        tx_arena: 4 << 20,
        rx_arena: 4 << 20,
        min_block: 256,
        ..Default::default()
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("shmlink-test-{}-{}", std::process::id(), name));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The engine socket path in this directory.
    pub fn socket(&self) -> PathBuf {
        self.path.join("engine.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An engine builder on `dir`'s socket with small blocks.
pub fn engine_builder(dir: &TestDir) -> EngineBuilder {
    Engine::builder().socket(dir.socket()).block(small_block())
}

/// Starts an engine on `dir`'s socket with small blocks.
pub fn engine(dir: &TestDir) -> Engine {
    engine_builder(dir).spawn().expect("spawn engine")
}

/// Two nodes of this process and one byte session between them, on `engine`'s socket.
#[derive(Debug)]
pub struct Pair {
    pub server: Node,
    pub listener: Listener,
    pub client: Node,
    /// The client's end.
    pub opened: Session,
    /// The server's end.
    pub accepted: Session,
}

/// Connects a server node that listens on `service` and a client node that opens it.
pub async fn pair(engine: &Engine, service: &str) -> Pair {
    let socket = engine.socket_path();
    let server = within("connect", Node::connect(socket, &format!("{service}-srv")))
        .await
        .expect("connect server");
    let mut listener = within("listen", listen(&server, service))
        .await
        .expect("listen");
    let client = within("connect", Node::connect(socket, &format!("{service}-cli")))
        .await
        .expect("connect client");
    let opened = within("open", open(&client, service)).await.expect("open");
    let accepted = within("accept", listener.accept()).await.expect("accept");
    Pair {
        server,
        listener,
        client,
        opened,
        accepted,
    }
}

/// Waits until the engine holds no node and no session end, then shuts it down.
pub async fn all_gone(engine: Engine) {
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

/// Opens a byte session (`Session<Bytes>`) to `service`.
pub async fn open(node: &Node, service: &str) -> Result<Session, OpenError> {
    node.open(service).await
}

/// Polls the session's `poll_ready` once: `None` while it is pending.
pub fn ready_now(session: &mut Session) -> Option<Result<(), ipc_tokio::SessionError>> {
    use futures::FutureExt;
    futures::future::poll_fn(|cx| {
        <Session as futures::Sink<bytes::Bytes>>::poll_ready(std::pin::Pin::new(&mut *session), cx)
    })
    .now_or_never()
}

/// Serves `service` with byte sessions.
pub async fn listen(node: &Node, service: &str) -> Result<Listener, OpenError> {
    node.listen(service).await
}

/// Waits (bounded by [`STEP`]) until `pred` holds for `engine`'s counts; panics with `what`
/// and the counts on a hang.
pub async fn stats_until(
    engine: &Engine,
    what: &str,
    pred: impl FnMut(&EngineStats) -> bool,
) -> EngineStats {
    match tokio::time::timeout(STEP, engine.wait_for_stats(pred)).await {
        Ok(stats) => stats,
        Err(_) => panic!("hang: {what}; engine counts now {:?}", engine.stats()),
    }
}

/// Sends `m` messages on `session` (`send(tx, seq)` queues message `seq`) while checking each
/// echo the peer sends back (`check(echo, seq)`); then half-closes and expects the peer's end
/// right after the last echo. Returns `m`.
///
/// # Errors
///
/// The first failed send or check, an echo missing, or anything after the last one.
pub async fn echo_exchange<S, C>(
    session: Session,
    m: u64,
    mut send: S,
    mut check: C,
) -> Result<u64, String>
where
    S: AsyncFnMut(&mut SessionSink, u64) -> Result<(), String>,
    C: FnMut(&[u8], u64) -> Result<(), String>,
{
    let (mut tx, mut rx) = session.split();
    let sending = async {
        for seq in 0..m {
            send(&mut tx, seq).await?;
        }
        SinkExt::<Bytes>::close(&mut tx)
            .await
            .map_err(|e| format!("close: {e}"))
    };
    let receiving = async {
        for seq in 0..m {
            let echo = rx
                .next()
                .await
                .ok_or_else(|| format!("stream ended before echo {seq}"))?
                .map_err(|e| format!("echo {seq}: {e}"))?;
            check(&echo, seq)?;
        }
        match rx.next().await {
            None => Ok(m),
            Some(other) => Err(format!(
                "expected the end, got {:?}",
                other.map(|b| b.len())
            )),
        }
    };
    let (sent, received) = tokio::join!(sending, receiving);
    sent?;
    received
}
