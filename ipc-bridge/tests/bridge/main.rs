//! Two engines bridged over Zenoh (peer mode on loopback TCP, multicast scouting off,
//! connected explicitly): services, topics, schemas and the death of the other host.

mod netns;
mod support;

use std::convert::Infallible;

use futures::{SinkExt, StreamExt};
use ipc_bridge::{Bridge, BridgeConfig};
use serde::{Deserialize, Serialize};
use shmlink::{Bincode, CallError, Message, OpenError, Overflow, SubscribeOptions};
use testkit::child::{ChildProc, child_spec, spawn_child};
use testkit::setup::{TestDir, engine, within};
use tower::ServiceExt;

use support::{Hosts, free_port, quote_service, zenoh_connect, zenoh_listen};

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct GetQuote {
    sku: String,
    n: u64,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Quote {
    sku: String,
    cents: u64,
}

/// Another request type: a client declaring it does not match a `quotes` server.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct GetPrice {
    sku: String,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Tick {
    seq: u64,
}

/// The children of this binary (engine B in its own process).
#[test]
fn child_entry() {
    let Some(spec) = child_spec() else {
        return;
    };
    match spec.role.as_str() {
        "host-b" => support::run_child_multi_thread(spec, support::host_b),
        other => panic!("unknown child role {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_typed_calls_cross_with_64_in_flight() {
    let hosts = Hosts::start(
        "calls",
        |b| b.export_service("quotes"),
        |a| a.import_service("quotes"),
    )
    .await;
    let _server = hosts
        .b_node("billing")
        .await
        .serve("quotes", quote_service())
        .await
        .expect("serve on B");
    hosts.served_on_a("quotes", 1).await;

    let web = hosts.a_node("web").await;
    let client = within("client", web.client::<GetQuote, Quote>("quotes"))
        .await
        .expect("client on A reaches the server on B");
    let replies = futures::stream::iter(0..1000u64)
        .map(|n| {
            let client = client.clone();
            async move {
                let sku = format!("sku-{n}");
                let quote = client
                    .oneshot(GetQuote {
                        sku: sku.clone(),
                        n,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("call {n}: {e}"));
                assert_eq!(
                    quote,
                    Quote {
                        sku,
                        cents: n * 3 + 1
                    },
                    "reply to call {n}"
                );
                n
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<u64>>();
    let mut done = within("1,000 calls", replies).await;
    done.sort_unstable();
    assert_eq!(done, (0..1000).collect::<Vec<_>>());
    hosts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_not_exported_is_not_reachable() {
    // B serves "secret" and "quotes" but exports only "quotes"; A imports both names.
    let hosts = Hosts::start(
        "unexported",
        |b| b.export_service("quotes"),
        |a| a.import_service("quotes").import_service("secret"),
    )
    .await;
    let billing = hosts.b_node("billing").await;
    let _quotes = billing.serve("quotes", quote_service()).await.unwrap();
    let _secret = billing.serve("secret", quote_service()).await.unwrap();
    hosts.served_on_a("quotes", 1).await;

    let web = hosts.a_node("web").await;
    let err = within("client secret", web.client::<GetQuote, Quote>("secret"))
        .await
        .expect_err("secret is not exported");
    assert!(
        matches!(&err, OpenError::NotServed { service } if service == "secret"),
        "{err:?}"
    );
    // The exporting bridge refuses it too, whatever a peer asks for (a hand-made open).
    let answer = within("forged open", hosts.forge_open_on_b("secret")).await;
    assert_eq!(
        answer,
        support::REFUSED_NOT_EXPORTED,
        "B's bridge must refuse"
    );
    hosts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_published_on_b_reaches_a_in_order() {
    let hosts = Hosts::start(
        "topics",
        |b| b.export_topic::<Tick>("ticks"),
        |a| a.import_topic::<Tick>("ticks"),
    )
    .await;
    let reader = hosts.a_node("reader").await;
    // A subscriber that never lags: the test reads every message.
    let options = SubscribeOptions {
        overflow: Overflow::Block {
            untether_ms: 60_000,
        },
        queue: 256,
        history: 0,
    };
    let mut ticks = reader
        .subscribe_with::<Tick, Bincode>("ticks", options)
        .await
        .expect("subscribe");
    within(
        "A imports ticks",
        hosts.bridge_b().wait_topic_importers("ticks"),
    )
    .await
    .expect("ticks is exported");

    let writer = hosts.b_node("writer").await;
    let mut publisher = writer.publish::<Tick>("ticks").await.expect("publish");
    const N: u64 = 2_000;
    let publish = async {
        for seq in 0..N {
            publisher.feed(Tick { seq }).await.expect("publish");
        }
        publisher.flush().await.expect("flush");
    };
    let receive = async {
        for seq in 0..N {
            let tick = ticks.next().await.expect("stream open").expect("tick");
            assert_eq!(tick, Tick { seq }, "in order");
        }
    };
    within("2,000 ticks", futures::future::join(publish, receive)).await;
    hosts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_mismatch_across_hosts_is_the_local_error() {
    let hosts = Hosts::start(
        "schema",
        |b| b.export_service("quotes"),
        |a| a.import_service("quotes"),
    )
    .await;
    let _server = hosts
        .b_node("billing")
        .await
        .serve("quotes", quote_service())
        .await
        .unwrap();
    hosts.served_on_a("quotes", 1).await;
    let web = hosts.a_node("web").await;
    let err = within("client", web.client::<GetPrice, Quote>("quotes"))
        .await
        .expect_err("GetPrice is not what B's server takes");
    match &err {
        OpenError::SchemaMismatch {
            service,
            client,
            server,
        } => {
            assert_eq!(service, "quotes");
            assert!(client.send.name.contains("GetPrice"), "{err}");
            assert!(server.recv.name.contains("GetQuote"), "{err}");
            assert!(server.send.name.contains("Quote"), "{err}");
            assert_ne!(client.send.fingerprint, server.recv.fingerprint);
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    // The right types still work.
    let client = web.client::<GetQuote, Quote>("quotes").await.unwrap();
    let quote = within(
        "call",
        client.oneshot(GetQuote {
            sku: "x".into(),
            n: 2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(quote.cents, 7);
    hosts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_host_b_ends_pending_calls_and_a_restart_serves_again() {
    let dir = TestDir::new("bridge-kill-a");
    let engine_a = engine(&dir);
    let port = free_port();
    let ns = format!("kill{}", std::process::id());
    let bridge_a = Bridge::start(
        dir.socket(),
        BridgeConfig::new(zenoh_listen(port))
            .namespace(&ns)
            .import_service("quotes"),
    )
    .await
    .expect("bridge A");
    let mut imported = bridge_a.watch_import("quotes").unwrap();
    let web = shmlink::Node::connect(dir.socket(), "web").await.unwrap();

    for round in 1..=2u64 {
        let mut b = spawn_host_b(port, &ns, round);
        b.expect("OK").await;
        within(
            "A serves the import",
            imported.wait_for(|s| s.served >= round),
        )
        .await
        .unwrap();
        let client = within("client", web.client::<GetQuote, Quote>("quotes"))
            .await
            .unwrap();
        let quote = within(
            "call",
            client.clone().oneshot(GetQuote {
                sku: "ok".into(),
                n: round,
            }),
        )
        .await
        .expect("a call crosses");
        assert_eq!(quote.cents, round * 3 + 1);
        if round == 2 {
            b.exit().await;
            break;
        }
        // Eight calls B's server holds (n = u64::MAX): pending until B dies.
        let pending: Vec<_> = (0..8)
            .map(|i| {
                let call = client.clone().oneshot(GetQuote {
                    sku: format!("hold-{i}"),
                    n: u64::MAX,
                });
                tokio::spawn(call)
            })
            .collect();
        for _ in 0..8 {
            b.expect("HELD").await;
        }
        b.sigkill();
        for (i, call) in pending.into_iter().enumerate() {
            let result = within("pending call ends", call).await.unwrap();
            assert_eq!(result, Err(CallError::Disconnected), "pending call {i}");
        }
        b.reap_killed().await;
        within(
            "A stops serving the import",
            imported.wait_for(|s| s.exporter.is_none()),
        )
        .await
        .unwrap();
    }
    bridge_a.shutdown().await;
    engine_a.shutdown().await;
}

fn spawn_host_b(port: u16, ns: &str, round: u64) -> ChildProc {
    spawn_child(
        "host-b",
        &[
            "127.0.0.1".to_owned(),
            port.to_string(),
            ns.to_owned(),
            format!("kill-{round}"),
        ],
    )
}

/// A stream from A to B whose receiver on B reads slowly: the sender on A is held back by
/// the tunnel's window and nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_across_hosts_holds_the_sender_back_without_loss() {
    const WINDOW: u32 = 8;
    let hosts = Hosts::start_with_window(
        "backpressure",
        WINDOW,
        |b| b.export_service("sink"),
        |a| a.import_service("sink"),
    )
    .await;
    let receiver = hosts.b_node("receiver").await;
    let mut listener = receiver.listen::<Tick>("sink").await.unwrap();
    hosts.served_on_a("sink", 1).await;
    let sender = hosts.a_node("sender").await;
    let mut session = within("open", sender.open::<Tick>("sink")).await.unwrap();
    let mut remote = within("accept", listener.accept()).await.unwrap();

    // With nobody reading on B, A can send only what fits the windows and buffers between:
    // the send of message `stuck` does not complete until B reads.
    const N: u64 = 3_000;
    let send = async {
        for seq in 0..N {
            session.send(Tick { seq }).await.expect("send");
        }
        session.close().await.expect("close");
    };
    tokio::pin!(send);
    // Let the sender run until it blocks: a sender that never blocks with nobody reading
    // would finish all N sends here, which a window of 8 forbids.
    let finished_unread = tokio::time::timeout(std::time::Duration::from_secs(3), &mut send)
        .await
        .is_ok();
    assert!(
        !finished_unread,
        "{N} messages went out with nobody reading: no back-pressure"
    );
    let receive = async {
        for seq in 0..N {
            let tick = remote.next().await.expect("open").expect("tick");
            assert_eq!(tick.seq, seq, "in order, none lost");
        }
        assert!(remote.next().await.is_none(), "closed after the last");
    };
    within("drain", futures::future::join(send, receive)).await;
    hosts.shutdown().await;
}

/// Not `Infallible`-free: the quote service's error type, named for the helper.
pub(crate) type ServiceError = Infallible;

/// User/password authentication (Zenoh's `transport/auth/usrpwd`): a bridge with the right
/// credentials reaches the exported service; a peer with a wrong password is refused at
/// connection, so its bridge does not start (with `connect/exit_on_failure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_authentication_admits_only_known_peers() {
    let dir_a = TestDir::new("bridge-auth-a");
    let dir_b = TestDir::new("bridge-auth-b");
    let dir_x = TestDir::new("bridge-auth-x");
    let (engine_a, engine_b, engine_x) = (engine(&dir_a), engine(&dir_b), engine(&dir_x));
    let users = dir_b.path().join("users.txt");
    std::fs::write(&users, "host-a:correct horse\n").unwrap();
    let port = free_port();
    let ns = format!("auth{}", std::process::id());
    let with_auth = |mut config: zenoh::Config, user: &str, password: &str| {
        let auth = format!(r#"{{ user: "{user}", password: "{password}" }}"#);
        config.insert_json5("transport/auth/usrpwd", &auth).unwrap();
        config
    };
    let mut config_b = with_auth(zenoh_listen(port), "host-b", "battery staple");
    config_b
        .insert_json5(
            "transport/auth/usrpwd/dictionary_file",
            &format!("{:?}", users.to_str().unwrap()),
        )
        .unwrap();
    let server = shmlink::Node::connect(dir_b.socket(), "billing")
        .await
        .unwrap();
    let _server = server.serve("quotes", quote_service()).await.unwrap();
    let bridge_b = Bridge::start(
        dir_b.socket(),
        BridgeConfig::new(config_b)
            .namespace(&ns)
            .export_service("quotes"),
    )
    .await
    .expect("bridge B");

    let strict = |mut config: zenoh::Config| {
        config.insert_json5("connect/timeout_ms", "0").unwrap();
        config
            .insert_json5("connect/exit_on_failure", "true")
            .unwrap();
        config
    };
    let intruder = Bridge::start(
        dir_x.socket(),
        BridgeConfig::new(strict(with_auth(zenoh_connect(port), "host-a", "wrong")))
            .namespace(&ns)
            .import_service("quotes"),
    )
    .await;
    assert!(
        matches!(intruder, Err(ipc_bridge::BridgeError::Zenoh(_))),
        "a wrong password must be refused: {intruder:?}"
    );

    let bridge_a = Bridge::start(
        dir_a.socket(),
        BridgeConfig::new(strict(with_auth(
            zenoh_connect(port),
            "host-a",
            "correct horse",
        )))
        .namespace(&ns)
        .import_service("quotes"),
    )
    .await
    .expect("bridge A, with the right password");
    let mut imported = bridge_a.watch_import("quotes").unwrap();
    within("A serves the import", imported.wait_for(|s| s.served >= 1))
        .await
        .unwrap();
    let web = shmlink::Node::connect(dir_a.socket(), "web").await.unwrap();
    let client = web.client::<GetQuote, Quote>("quotes").await.unwrap();
    let quote = within(
        "call",
        client.oneshot(GetQuote {
            sku: "auth".into(),
            n: 5,
        }),
    )
    .await
    .unwrap();
    assert_eq!(quote.cents, 16);
    bridge_a.shutdown().await;
    bridge_b.shutdown().await;
    for engine in [engine_a, engine_b, engine_x] {
        engine.shutdown().await;
    }
}
