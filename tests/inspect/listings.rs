//! Every listing's `--json` matches the engine's real state.

use bytes::Bytes;
use futures::SinkExt;
use shmlink::{Engine, Node};

use crate::support::{self, TestDir, within};
use crate::{Receiver, ctl, ctl_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_match_the_engine() {
    let dir = TestDir::new("inspect-listings");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");
    let mut alpha = Receiver::spawn(&socket, "alpha");
    let _beta = Receiver::spawn(&socket, "beta");
    within("both services", engine.wait_for_stats(|s| s.services == 2)).await;

    let node = within("connect", Node::connect(&socket, "tester"))
        .await
        .expect("connect");
    let session = within("open", node.open::<Bytes>("alpha"))
        .await
        .expect("open alpha");
    let (mut sink, _stream) = session.split();
    let messages = ["one", "two", "three", "four", "five"];
    for m in messages {
        within("send", sink.send(Bytes::from(m)))
            .await
            .expect("send");
    }
    for m in messages {
        assert_eq!(alpha.line().await, m);
    }
    let total: u64 = messages.iter().map(|m| m.len() as u64).sum();
    within("copied", engine.wait_for_stats(|s| s.messages == 5)).await;

    // nodes: the two children and this process's node.
    let nodes = ctl_json(&socket, &["nodes"]).await;
    let nodes = nodes.as_array().expect("array");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let pids: Vec<i64> = nodes.iter().filter_map(|n| n["pid"].as_i64()).collect();
    assert!(
        pids.contains(&i64::from(alpha.child.id().expect("pid"))),
        "{nodes:?}"
    );
    assert!(pids.contains(&i64::from(std::process::id())), "{nodes:?}");
    assert!(nodes.iter().any(|n| n["name"] == "tester"));

    // services: exactly the two names, by their serving children.
    let services = ctl_json(&socket, &["services"]).await;
    let names: Vec<&str> = services
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    // sessions: one, five messages one way, none the other.
    let sessions = ctl_json(&socket, &["sessions"]).await;
    let sessions = sessions.as_array().expect("array");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    let ends = [&s["a"], &s["b"]];
    let tester = ends
        .iter()
        .find(|e| e["node_name"] == "tester")
        .expect("the tester's end");
    let server = ends
        .iter()
        .find(|e| e["node_name"] != "tester")
        .expect("the server's end");
    assert_eq!(tester["sent_messages"], 5);
    assert_eq!(tester["sent_bytes"], total);
    assert_eq!(server["sent_messages"], 0);
    assert!(tester["in_flight"].as_u64().expect("in flight") <= 5);

    // status: the counters and the configuration.
    let status = ctl_json(&socket, &["status"]).await;
    assert_eq!(status["version"], shmlink::inspect::SNAPSHOT_VERSION);
    assert_eq!(status["counters"]["nodes"], 3);
    assert_eq!(status["counters"]["services"], 2);
    assert_eq!(status["counters"]["messages"], 5);
    assert_eq!(status["counters"]["bytes"], total);
    assert_eq!(status["engine"]["socket"], socket.display().to_string());
    assert_eq!(status["engine"]["policy"], "same-uid");
    assert_eq!(status["engine"]["rx_arena_bytes"], 4 << 20);

    // The engine's own snapshot agrees with what the CLI printed.
    let snapshot = engine.inspect().await.expect("snapshot");
    assert_eq!(snapshot.nodes.len(), 3);
    assert_eq!(
        serde_json::to_value(&snapshot.services).expect("json"),
        services
    );

    // The tables print the same names, aligned under their headers.
    let (code, table, _) = ctl(&socket, &["services"]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVICE"), "{table}");
    assert!(
        lines[1].starts_with("alpha") && lines[2].starts_with("beta"),
        "{table}"
    );
    let col = lines[0].find("NODE").expect("NODE column");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[col..].starts_with("shmlinkctl-recv-")),
        "{table}"
    );

    // No engine: a clear error, exit 1.
    let (code, _, stderr) = ctl(&dir.path().join("nothing.sock"), &["status"]).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no engine listens on"), "{stderr}");
    // --help on stdout, naming every subcommand.
    let (code, help, _) = ctl(&socket, &["--help"]).await;
    assert_eq!(code, Some(0));
    for sub in [
        "status", "nodes", "services", "sessions", "top", "send", "recv",
    ] {
        assert!(help.contains(sub), "{help}");
    }
    drop(sink);
    drop(node);
    engine.shutdown().await;
}
