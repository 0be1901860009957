//! Helpers of the typed tests over the shared kit (`testkit`, re-exported here): engines
//! with room for large messages, and a [`World`] of one engine and one child.
//!
//! A child runs `--exact child_entry --nocapture --test-threads=1` with its role, the
//! engine's socket and its arguments in `testkit::CHILD_ENV` (`role|socket|arg…`), talks to the
//! parent through `testkit::MARK` lines, takes commands on stdin and ends when its stdin closes.

use std::path::{Path, PathBuf};

use shmlink::{BlockConfig, Client, Engine};

use crate::messages::{Op, OpReply};

pub(crate) use testkit::{ChildProc, TestDir, stats_until, within};

/// Small blocks: 16 MiB arenas (room for one message of several MiB each way), 256 B classes.
pub(crate) fn block() -> BlockConfig {
    BlockConfig {
        tx_arena: 16 << 20,
        rx_arena: 16 << 20,
        min_block: 256,
        ..Default::default()
    }
}

/// An engine embedded in this process, on `dir`'s socket, with small blocks and `credits`.
pub(crate) fn engine(dir: &TestDir, credits: u32) -> Engine {
    Engine::builder()
        .socket(dir.socket())
        .block(block())
        .credits(credits)
        .spawn()
        .expect("spawn engine")
}

/// Starts this binary as a child in `role`, connected to the engine at `socket`.
pub(crate) fn spawn_child(role: &str, socket: &Path, args: &[&str]) -> ChildProc {
    let socket = socket.to_str().expect("utf-8 socket path").to_owned();
    let args: Vec<String> = std::iter::once(socket)
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    testkit::spawn_child(role, &args)
}

/// One test's world: its temp dir, its engine, and a child serving in `role`.
pub(crate) struct World {
    pub(crate) engine: Engine,
    pub(crate) child: ChildProc,
    pub(crate) dir: TestDir,
}

impl World {
    /// Starts an engine with `credits`, then the child, and waits until it serves `services`
    /// names (the child prints `ready` after that too).
    pub(crate) async fn start(
        test: &str,
        credits: u32,
        role: &str,
        args: &[&str],
        services: usize,
    ) -> Self {
        let dir = TestDir::new(test);
        let engine = engine(&dir, credits);
        let mut child = spawn_child(role, &dir.socket(), args);
        child.expect_line("ready").await;
        stats_until(&engine, "the child's services", |s| s.services == services).await;
        Self { engine, child, dir }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    /// A node of this (the parent) process.
    pub(crate) async fn node(&self, name: &str) -> shmlink::Node {
        within("connect", shmlink::Node::connect(self.socket(), name))
            .await
            .expect("connect")
    }

    /// Lets the child finish, checks it succeeded, and shuts the engine down.
    pub(crate) async fn finish(self) {
        self.child.exit().await;
        within("engine shutdown", self.engine.shutdown()).await;
    }
}

/// A node of this process and a client of the child's `ops` service.
pub(crate) async fn ops_client(world: &World) -> (shmlink::Node, Client<Op, OpReply>) {
    let node = world.node("parent").await;
    let client = within("client", node.client::<Op, OpReply>("ops"))
        .await
        .expect("client");
    (node, client)
}
