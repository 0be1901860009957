//! Child roles of the floods tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmlink::{Engine, Node, NodeOptions};

use crate::common::Bystander;
use crate::support::{self, ChildSpec, Commands, run_child, say};

pub(crate) fn run(spec: ChildSpec) {
    match spec.role.as_str() {
        "deaf" => run_child(spec, deaf),
        "emfile-engine" => run_child(spec, emfile_engine),
        "dumpable" => run_child(spec, dumpable),
        "probe" => run_child(spec, probe),
        other => panic!("unknown child role {other:?}"),
    }
}

/// Serves "deaf", then waits (the parent stops it: it reads nothing any more).
async fn deaf(spec: ChildSpec, commands: Commands) -> Result<(), String> {
    let node = Node::connect(&spec.args[0], "deaf")
        .await
        .map_err(|e| e.to_string())?;
    let _listener = support::listen(&node, "deaf")
        .await
        .map_err(|e| e.to_string())?;
    say("LISTENING");
    commands.done("deaf").await
}

/// Descriptors left for the engine to accept with once the limit is lowered.
pub(crate) const EMFILE_HEADROOM: u64 = 16;
/// Round trips the bystanders make while the engine's descriptors are exhausted.
pub(crate) const EMFILE_ROUNDS: u64 = 200;

/// An engine with a bystander pair, then a descriptor limit just above what is open: the
/// parent's silent connections exhaust it. Reports the accept failures counted while the
/// bystanders exchange, and how long that took.
async fn emfile_engine(spec: ChildSpec, mut commands: Commands) -> Result<(), String> {
    let socket = PathBuf::from(&spec.args[0]);
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .max_connections_per_uid(100_000)
        .max_handshakes_per_uid(100_000)
        // Silent connections must hold their descriptors for the whole test.
        .handshake_timeout(Duration::from_secs(600))
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut bystander = Bystander::new(&engine).await;
    bystander.exchange(10).await;
    // A new descriptor takes the lowest free number, and fails once none below the limit is
    // free: pick the limit that leaves exactly EMFILE_HEADROOM free numbers.
    let open: Vec<u64> = support::open_fds()
        .iter()
        .map(|(fd, _)| *fd as u64)
        .collect();
    let limit = (1..)
        .find(|&l: &u64| l - open.iter().filter(|&&fd| fd < l).count() as u64 >= EMFILE_HEADROOM)
        .expect("a limit");
    let old = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: old.maximum,
        },
    )
    .map_err(|e| format!("setrlimit: {e}"))?;
    say(format!("READY limit={limit}"));
    commands.expect("flooded").await?;
    engine.wait_for_stats(|s| s.accept_failures > 0).await;
    let (start, before) = (Instant::now(), engine.stats().accept_failures);
    bystander.exchange(EMFILE_ROUNDS).await;
    let (ms, during) = (
        start.elapsed().as_millis(),
        engine.stats().accept_failures - before,
    );
    say(format!("EXCHANGED failures={during} ms={ms}"));
    commands.expect("freed").await?;
    commands.expect("fresh-done").await?;
    bystander.exchange(10).await;
    let stats = engine.stats();
    commands
        .done(format!(
            "failures={} connections={}",
            stats.accept_failures, stats.connections
        ))
        .await
}

/// Holds blocks with the option under test: `engine` (the embedded engine's
/// `non_dumpable`), `node` (the node's `non_dumpable`) or `off`; reports its pid, one of its
/// block descriptors and its dumpable flag.
async fn dumpable(spec: ChildSpec, commands: Commands) -> Result<(), String> {
    let mode = spec.args[0].as_str();
    let socket = PathBuf::from(&spec.args[1]).join(format!("{mode}.sock"));
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .non_dumpable(mode == "engine")
        .spawn()
        .map_err(|e| e.to_string())?;
    let options = NodeOptions::default().non_dumpable(mode == "node");
    let _node = Node::connect_with(&socket, "holder", options)
        .await
        .map_err(|e| e.to_string())?;
    engine.wait_for_stats(|s| s.nodes == 1).await;
    let fd = support::open_fds()
        .into_iter()
        .find(|(_, target)| target.starts_with("/memfd:shmlink-node-"))
        .ok_or("no block descriptor")?
        .0;
    let dumpable = rustix::process::dumpable_behavior().map_err(|e| e.to_string())?;
    let flag = u8::from(dumpable == rustix::process::DumpableBehavior::Dumpable);
    say(format!(
        "READY pid={} fd={fd} dumpable={flag}",
        std::process::id()
    ));
    commands.done(mode).await
}

/// Tries to open another process's descriptor through `/proc/<pid>/fd/<fd>`.
async fn probe(spec: ChildSpec, commands: Commands) -> Result<(), String> {
    let path = format!("/proc/{}/fd/{}", spec.args[0], spec.args[1]);
    match std::fs::File::open(&path) {
        Ok(_) => say("OPENED"),
        Err(e) => say(format!("DENIED {}", e.raw_os_error().unwrap_or(0))),
    }
    drop(commands);
    Ok(())
}
