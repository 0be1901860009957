//! Both ends of a session must declare the same types: a mismatch fails the open with an error
//! that names both sides' types and fingerprints.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Message, Node, OpenError};
use tower::ServiceExt;

use crate::harness::{World, within};
use crate::messages::*;

/// The fingerprint as it appears in the message (hex, 16 digits).
fn hex(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// The message type's own name in a schema's type name: `rpc:` (request/response sessions)
/// and `/codec` stripped.
fn type_name(declared: &str) -> &str {
    let bare = declared.strip_prefix("rpc:").unwrap_or(declared);
    bare.split('/').next().unwrap_or(bare)
}

/// Asserts `result` is a schema mismatch whose fields name each of `names` (see
/// [`type_name`]) and carry each of `fingerprints`, and whose message shows them too (the
/// fingerprints in hex); returns the message.
fn mismatch<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, OpenError>,
    names: &[&str],
    fingerprints: &[u64],
) -> String {
    let error = match result {
        Err(error @ OpenError::SchemaMismatch { .. }) => error,
        other => panic!("{what}: expected a schema mismatch, got {other:?}"),
    };
    let OpenError::SchemaMismatch { client, server, .. } = &error else {
        unreachable!()
    };
    assert!(
        !client.matches(server),
        "{what}: the schemas reported do differ: {client:?} {server:?}"
    );
    let types = [&client.send, &client.recv, &server.send, &server.recv];
    let message = error.to_string();
    for name in names {
        assert!(
            types.iter().any(|t| type_name(&t.name) == *name),
            "{what}: {types:?} has no type {name}"
        );
        assert!(
            message.contains(name),
            "{what}: {message:?} does not name {name}"
        );
    }
    for fp in fingerprints {
        assert!(
            types.iter().any(|t| t.fingerprint == *fp),
            "{what}: {types:?} has no fingerprint {fp:#x}"
        );
        assert!(
            message.contains(&hex(*fp)),
            "{what}: {message:?} does not show fingerprint {}",
            hex(*fp)
        );
    }
    message
}

async fn check_mismatches(node: &Node) {
    // Request/response: the request type differs...
    mismatch(
        "client::<SchemaGamma, SchemaBeta>",
        within("client", node.client::<SchemaGamma, SchemaBeta>("ab")).await,
        &["SchemaGamma", "SchemaAlpha"],
        &[SchemaGamma::FINGERPRINT, SchemaAlpha::FINGERPRINT],
    );
    // ...or the response type.
    mismatch(
        "client::<SchemaAlpha, SchemaGamma>",
        within("client", node.client::<SchemaAlpha, SchemaGamma>("ab")).await,
        &["SchemaGamma", "SchemaBeta"],
        &[SchemaGamma::FINGERPRINT, SchemaBeta::FINGERPRINT],
    );
    // A typed stream opened with another type than the listener's.
    mismatch(
        "open::<StreamC>",
        within("open", node.open::<StreamC>("typed")).await,
        &["StreamC", "StreamA"],
        &[StreamC::FINGERPRINT, StreamA::FINGERPRINT],
    );
    // Typed against raw, both ways.
    mismatch(
        "open::<StreamA> on a raw listener",
        within("open", node.open::<StreamA>("raw")).await,
        &["StreamA", "bytes"],
        &[StreamA::FINGERPRINT],
    );
    mismatch(
        "open::<Bytes> on a typed listener",
        within("open", node.open::<Bytes>("typed")).await,
        &["StreamA", "bytes"],
        &[StreamA::FINGERPRINT],
    );
    // The same generic under two parameters: same name, the fingerprints tell them apart.
    assert_eq!(<Tagged<Plain>>::NAME, <Tagged<Shape>>::NAME);
    mismatch(
        "open::<Tagged<Plain>>",
        within("open", node.open::<Tagged<Plain>>("generic")).await,
        &["Tagged"],
        &[<Tagged<Plain>>::FINGERPRINT, <Tagged<Shape>>::FINGERPRINT],
    );
    // A plain typed stream is not a request/response session of the same type, and back.
    mismatch(
        "open::<SchemaAlpha> on a served name",
        within("open", node.open::<SchemaAlpha>("ab")).await,
        &["SchemaAlpha"],
        &[SchemaAlpha::FINGERPRINT],
    );
    mismatch(
        "client::<StreamA, StreamA> on a typed listener",
        within("client", node.client::<StreamA, StreamA>("typed")).await,
        &["StreamA"],
        &[StreamA::FINGERPRINT],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_mismatch_fails_the_open_and_names_both_sides() {
    let world = World::start("schema-mismatch", 64, "schemas", &[], 4).await;
    let node = world.node("parent").await;

    let result = within("client", node.client::<SchemaGamma, SchemaBeta>("ab")).await;
    let error = result.as_ref().map(drop).unwrap_err().clone();
    let message = mismatch("first", result, &["SchemaGamma", "SchemaAlpha"], &[]);
    assert!(
        message.contains("\"ab\""),
        "the message names the service: {message:?}"
    );
    // The fields: the client sends a Gamma and receives a Beta; the server receives an Alpha.
    match error {
        OpenError::SchemaMismatch {
            service,
            client,
            server,
        } => {
            assert_eq!(service, "ab");
            assert_eq!(client.send.fingerprint, SchemaGamma::FINGERPRINT);
            assert_eq!(client.recv.fingerprint, SchemaBeta::FINGERPRINT);
            assert_eq!(server.recv.fingerprint, SchemaAlpha::FINGERPRINT);
            assert_eq!(server.send.fingerprint, SchemaBeta::FINGERPRINT);
            assert_eq!(type_name(&server.recv.name), "SchemaAlpha", "{server:?}");
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    check_mismatches(&node).await;

    // Refused opens leave nothing behind, and the right types still work.
    let client = within("client", node.client::<SchemaAlpha, SchemaBeta>("ab"))
        .await
        .expect("client");
    let reply = within("call", client.clone().oneshot(SchemaAlpha { x: 21 })).await;
    assert_eq!(reply, Ok(SchemaBeta { doubled: 42 }));
    let mut typed = within("open", node.open::<StreamA>("typed"))
        .await
        .expect("open typed");
    let sent = StreamA {
        text: "typed ✓".into(),
    };
    within("send", typed.send(sent.clone()))
        .await
        .expect("send");
    assert_eq!(
        within("echo", typed.next())
            .await
            .expect("an echo")
            .expect("decoded"),
        sent
    );
    let mut raw = within("open", node.open::<Bytes>("raw"))
        .await
        .expect("open raw");
    within("send", raw.send(Bytes::from_static(b"raw")))
        .await
        .expect("send");
    assert_eq!(
        &within("echo", raw.next())
            .await
            .expect("an echo")
            .expect("bytes")[..],
        b"raw"
    );
    let mut generic = within("open", node.open::<Tagged<Shape>>("generic"))
        .await
        .expect("open generic");
    within("send", generic.send(tagged(3))).await.expect("send");
    assert_eq!(
        within("echo", generic.next())
            .await
            .expect("an echo")
            .expect("decoded"),
        tagged(3)
    );

    // Still refused after the good opens.
    check_mismatches(&node).await;

    drop((client, typed, raw, generic, node));
    world.finish().await;
}

/// `open_as`, `listen_as`, `publish_as` and `subscribe_as` carry encodings under a declared
/// type (what the bridge does): the engine checks the declared schema as a typed one, and
/// the bytes pass through unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_schema_is_checked_like_a_type_and_carries_encodings() {
    use shmlink::{Bincode, Payload, Schema, SubscribeOptions, TopicSetupError};

    let dir = crate::harness::TestDir::new("schema-declared");
    let engine = crate::harness::engine(&dir, 64);
    let socket = dir.path().join("engine.sock");
    let typed = Node::connect(&socket, "typed").await.expect("connect");
    let raw = Node::connect(&socket, "raw").await.expect("connect");
    let stream_a = <StreamA as Payload<Bincode>>::message_type();
    let stream_c = <StreamC as Payload<Bincode>>::message_type();
    let both = |ty: &shmlink::MessageType| Schema {
        send: ty.clone(),
        recv: ty.clone(),
    };

    // A raw end declaring StreamA opens a typed StreamA listener and echoes its encodings.
    let mut listener = typed.listen::<StreamA>("declared").await.expect("listen");
    let mismatch_result = within("open_as", raw.open_as("declared", both(&stream_c))).await;
    mismatch(
        "open_as StreamC",
        mismatch_result,
        &["StreamC", "StreamA"],
        &[StreamC::FINGERPRINT, StreamA::FINGERPRINT],
    );
    let mut echo = within("open_as", raw.open_as("declared", both(&stream_a)))
        .await
        .expect("open_as with the listener's type");
    let mut session = within("accept", listener.accept()).await.expect("accepted");
    let sent = StreamA {
        text: "declared ✓".into(),
    };
    within("send", session.send(sent.clone()))
        .await
        .expect("send");
    let encoding = within("raw receive", echo.next())
        .await
        .expect("a message")
        .expect("bytes");
    within("echo", echo.send(encoding)).await.expect("echo");
    let back = within("typed receive", session.next())
        .await
        .expect("a message")
        .expect("decodes as StreamA");
    assert_eq!(back, sent);

    // A raw listener declaring StreamA is opened by a typed StreamA end, and only by one.
    let _served = raw
        .listen_as("served-as", both(&stream_a))
        .await
        .expect("listen_as");
    within("typed open", typed.open::<StreamA>("served-as"))
        .await
        .expect("a typed StreamA end opens it");
    mismatch(
        "open::<StreamC> on listen_as StreamA",
        within("typed open", typed.open::<StreamC>("served-as")).await,
        &["StreamC", "StreamA"],
        &[StreamC::FINGERPRINT, StreamA::FINGERPRINT],
    );

    // A topic declared StreamA by publish_as refuses a StreamC subscriber, and a
    // subscribe_as of another type.
    let _publisher = raw
        .publish_as("declared-topic", stream_a.clone(), 0)
        .await
        .expect("publish_as");
    let refused = typed.subscribe::<StreamC>("declared-topic").await;
    assert!(
        matches!(refused, Err(TopicSetupError::SchemaMismatch { .. })),
        "{refused:?}"
    );
    let refused = raw
        .subscribe_as("declared-topic", stream_c, SubscribeOptions::default())
        .await;
    assert!(
        matches!(refused, Err(TopicSetupError::SchemaMismatch { .. })),
        "{refused:?}"
    );
    drop((typed, raw, echo, session, listener));
    engine.shutdown().await;
}
