//! Control requests in flight per connection.

use futures::future::join_all;
use shmlink::Node;

use crate::common::{Bystander, fresh_node_exchanges};
use crate::support::{self, TestDir, within};

const OPENS: usize = 5000;
const MAX_REQUESTS: usize = 4;

/// One node fires 5,000 opens at once while the engine reads at most `MAX_REQUESTS` of its
/// requests ahead of the answers (the rest wait in the socket): every open completes, the
/// server accepts every session, and the bystanders exchange meanwhile. The bound throttles
/// a request storm without wedging the node that sends it (the engine never waits on a
/// node's socket to answer it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_opens_is_throttled_and_every_open_completes() {
    let dir = TestDir::new("flood-requests");
    let engine = support::engine_builder(&dir)
        .max_requests_per_connection(MAX_REQUESTS)
        .max_sessions_per_opener(1 << 16)
        .spawn()
        .expect("engine");
    let mut bystander = Bystander::new(&engine).await;
    let server = within("connect", Node::connect(dir.socket(), "storm-server"))
        .await
        .expect("connect server");
    let mut listener = within("listen", support::listen(&server, "storm"))
        .await
        .expect("listen");
    let accepting = tokio::spawn(async move {
        let mut accepted = Vec::with_capacity(OPENS);
        while accepted.len() < OPENS {
            accepted.push(listener.accept().await.expect("accept"));
        }
        accepted
    });
    let client = within("connect", Node::connect(dir.socket(), "storm-client"))
        .await
        .expect("connect client");
    let opens = join_all((0..OPENS).map(|_| support::open(&client, "storm")));
    let (opened, ()) = within("5,000 concurrent opens", async {
        tokio::join!(opens, async {
            bystander.exchange(20).await;
        })
    })
    .await;
    let failed: Vec<_> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} opens failed: {:?}",
        failed.len(),
        failed.first()
    );
    let accepted = within("every session accepted", accepting)
        .await
        .expect("accept task");
    assert_eq!(accepted.len(), OPENS);
    bystander.exchange(10).await;
    drop((opened, accepted, client, server));
    within(
        "the storm's sessions are gone",
        engine.wait_for_stats(|s| s.nodes == 2 && s.session_ends == 2),
    )
    .await;
    fresh_node_exchanges(&engine, "fresh-after-storm").await;
    drop(bystander);
    support::all_gone(engine).await;
}
