//! Accept under descriptor exhaustion.

use tokio::net::UnixStream;

use crate::children::{EMFILE_HEADROOM, EMFILE_ROUNDS};
use crate::common::fresh_node_exchanges_at;
use crate::support::{TestDir, ok_field, spawn_child, within};

/// Silent connections: more than the engine's remaining descriptors, fewer than its backlog.
const SILENT: u64 = EMFILE_HEADROOM * 4;

/// An engine (in a child, so this process's limit is untouched) runs with a descriptor limit
/// just above what it uses; silent connections exhaust it, and `accept` fails with EMFILE
/// while more wait in the backlog. The listener backs off (1 ms doubling to 100 ms) instead
/// of retrying at once: while the bystanders make their round trips, the failures counted
/// stay within what the backoff allows for that span (before, millions were logged at full
/// CPU). The bystanders keep exchanging, and once the silent connections leave a fresh node
/// connects and exchanges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_while_descriptors_are_exhausted_and_recovers() {
    let dir = TestDir::new("flood-emfile");
    let socket = dir.socket();
    let mut engine = spawn_child("emfile-engine", &[socket.display().to_string()]);
    let ready = engine.expect("READY").await;
    println!("engine child: {ready}");
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(
            within("connect", UnixStream::connect(&socket))
                .await
                .expect("silent connect"),
        );
    }
    engine.send("flooded").await;
    let exchanged = engine.expect("EXCHANGED").await;
    let (failures, ms) = (ok_field(&exchanged, "failures"), ok_field(&exchanged, "ms"));
    println!("{EMFILE_ROUNDS} round trips under EMFILE: {failures} accept failures in {ms} ms");
    // 1 + 2 + 4 + … + 64 ms, then one attempt per 100 ms at most: an upper bound that load
    // can only make looser (a slower machine makes fewer attempts, never more).
    let allowed = 8 + ms / 50;
    assert!(
        failures <= allowed,
        "{failures} accept failures in {ms} ms: the accept loop does not back off (at most {allowed})"
    );
    drop(silent);
    engine.send("freed").await;
    fresh_node_exchanges_at(&socket, "fresh-after-emfile").await;
    engine.send("fresh-done").await;
    let ok = engine.finish_ok().await;
    println!("engine child: {ok}");
}
