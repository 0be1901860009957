//! Test 6: hostile input on the rendezvous socket. Every bad connection gets an `Error`
//! frame (decodable, with the right code) and/or a closed connection, and the engine keeps
//! serving well-behaved nodes meanwhile and afterwards.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::{
    self, EngineFrame, ErrorCode, MAX_FRAME, MessageType, NodeFrame, PROTOCOL_VERSION, Schema,
};
use shmlink::{ConnectError, Engine, Node, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::{self, TestDir, expect_seq, seq_message, within};

/// What came back on a raw connection: the frames, decoded, and how it ended.
#[derive(Debug)]
struct Answer {
    frames: Vec<EngineFrame>,
    /// Bytes after the last whole frame (must be none).
    rest: Vec<u8>,
}

impl Answer {
    /// Asserts the connection got exactly `before` frames (by their kind) and then an
    /// `Error` frame with `code` (request 0), and nothing else.
    fn assert_error_after(&self, before: &[&str], code: ErrorCode, case: &str) -> String {
        assert!(
            self.rest.is_empty(),
            "{case}: undecodable tail {:?}",
            self.rest
        );
        let kinds: Vec<&str> = self.frames.iter().map(kind).collect();
        let mut want: Vec<&str> = before.to_vec();
        want.push("Error");
        assert_eq!(kinds, want, "{case}: {:?}", self.frames);
        match self.frames.last() {
            Some(EngineFrame::Error {
                req,
                code: c,
                message,
            }) => {
                assert_eq!(*req, 0, "{case}: connection-level errors carry request 0");
                assert_eq!(
                    ErrorCode::from_u16(*c),
                    Some(code),
                    "{case}: code {c} ({message})"
                );
                message.clone()
            }
            other => unreachable!("{other:?}"),
        }
    }
}

fn kind(frame: &EngineFrame) -> &'static str {
    match frame {
        EngineFrame::Welcome { .. } => "Welcome",
        EngineFrame::ServeOk { .. } => "ServeOk",
        EngineFrame::UnserveOk { .. } => "UnserveOk",
        EngineFrame::OpenOk { .. } => "OpenOk",
        EngineFrame::Accept { .. } => "Accept",
        EngineFrame::SchemaMismatch { .. } => "SchemaMismatch",
        EngineFrame::Error { .. } => "Error",
        EngineFrame::Limit { .. } => "Limit",
        EngineFrame::PublishOk { .. } => "PublishOk",
        EngineFrame::TopicDone { .. } => "TopicDone",
        EngineFrame::SubscribeOk { .. } => "SubscribeOk",
        EngineFrame::TopicAttach { .. } => "TopicAttach",
        EngineFrame::InspectChunk { .. } => "InspectChunk",
        EngineFrame::QueueOk { .. } => "QueueOk",
        EngineFrame::SegmentOk { .. } => "SegmentOk",
        EngineFrame::SegmentDelivery { .. } => "SegmentDelivery",
    }
}

/// Writes `input` on a fresh connection (then half-closes if asked), reads until the engine
/// closes the connection, and decodes what it said.
async fn raw(socket: &Path, input: &[u8], half_close: bool) -> Answer {
    let mut stream = within("raw connect", UnixStream::connect(socket))
        .await
        .expect("raw connect");
    // The engine may close as soon as it has seen enough: later writes may fail.
    let _ = stream.write_all(input).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut UnixStream) -> Answer {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match within("the engine closes the connection", stream.read(&mut buf)).await {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            // Closing with our bytes unread makes the kernel report a reset after the data.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("raw read: {e}"),
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while let Ok(Some((frame, used))) = control::decode_engine_frame(&bytes[at..]) {
        frames.push(frame);
        at += used;
    }
    Answer {
        frames,
        rest: bytes[at..].to_vec(),
    }
}

fn hello(name: &str) -> Vec<u8> {
    NodeFrame::Hello { name: name.into() }.encode()
}

fn open_frame() -> Vec<u8> {
    NodeFrame::Open {
        req: 1,
        service: "x".into(),
        schema: Schema::bytes(),
    }
    .encode()
}

/// A frame with the given body (version byte, tag, fields) and its true length prefix.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A bad input: its name, the bytes, whether to half-close after them, the frames expected
/// before the `Error` frame, and its code.
type Case = (
    &'static str,
    Vec<u8>,
    bool,
    &'static [&'static str],
    ErrorCode,
);

/// A well-behaved pair of fresh nodes exchanges messages both ways.
async fn good_pair(engine: &Engine, tag: &str) {
    let socket = engine.socket_path();
    let a = within("good connect", Node::connect(socket, "good-a"))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: connect: {e}"));
    let b = within("good connect", Node::connect(socket, "good-b"))
        .await
        .unwrap_or_else(|e| panic!("after {tag}: connect: {e}"));
    let service = format!("good-{tag}");
    let mut listener = within("good listen", support::listen(&a, &service))
        .await
        .unwrap();
    let mut opened = within("good open", support::open(&b, &service))
        .await
        .unwrap();
    let mut accepted = within("good accept", listener.accept()).await.unwrap();
    for seq in 0..10 {
        within(
            "good send",
            opened.send(Bytes::from(seq_message(1, seq, 100))),
        )
        .await
        .unwrap();
        let m = within("good recv", accepted.next()).await.unwrap().unwrap();
        expect_seq(&m, 1, seq).unwrap();
        within("good reply", accepted.send(m)).await.unwrap();
        let r = within("good recv reply", opened.next())
            .await
            .unwrap()
            .unwrap();
        expect_seq(&r, 1, seq).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rendezvous_input_is_refused_and_the_engine_keeps_serving() {
    let dir = TestDir::new("rendezvous");
    let engine = support::engine(&dir);
    let socket = dir.socket();

    // A connection that says nothing and stays open while others are served.
    let silent = UnixStream::connect(&socket).await.expect("connect");
    // A connection that sent half a frame and stays open.
    let mut slow = UnixStream::connect(&socket).await.expect("connect");
    slow.write_all(&hello("slow")[..5]).await.expect("write");
    good_pair(&engine, "while-silent").await;

    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "garbage",
        b"GET / HTTP/1.1\r\nHost: shmlink\r\n\r\n".to_vec(),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let h = hello("cut");
    cases.push((
        "truncated frame then close",
        h[..h.len() - 2].to_vec(),
        true,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "only part of the length prefix then close",
        h[..2].to_vec(),
        true,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut v = hello("version");
    v[4] = PROTOCOL_VERSION.wrapping_add(1);
    cases.push(("wrong version", v, false, &[], ErrorCode::Version));
    cases.push((
        "huge length prefix",
        u32::MAX.to_le_bytes().to_vec(),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    big.extend_from_slice(&[PROTOCOL_VERSION, 1]);
    cases.push((
        "length just over the limit",
        big,
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "length too small for version and tag",
        frame(&[PROTOCOL_VERSION]),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "open before hello",
        open_frame(),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "ready before hello",
        NodeFrame::Ready.encode(),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "unknown tag",
        frame(&[PROTOCOL_VERSION, 200, 1, 2, 3]),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "an engine frame sent by a node",
        EngineFrame::Welcome {
            node: 1,
            credits: 1,
            window_bytes: 1,
        }
        .encode(),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    cases.push((
        "hello with an empty name",
        frame(&[PROTOCOL_VERSION, 1, 0, 0]),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut long = vec![PROTOCOL_VERSION, 1];
    long.extend_from_slice(&300u16.to_le_bytes());
    long.extend_from_slice(&[b'n'; 300]);
    cases.push((
        "hello with a 300-byte name",
        frame(&long),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut utf = vec![PROTOCOL_VERSION, 1];
    utf.extend_from_slice(&2u16.to_le_bytes());
    utf.extend_from_slice(&[0xC3, 0x28]);
    cases.push((
        "hello with a name that is not UTF-8",
        frame(&utf),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut name_over = vec![PROTOCOL_VERSION, 1];
    name_over.extend_from_slice(&40u16.to_le_bytes());
    name_over.extend_from_slice(b"short");
    cases.push((
        "string longer than its frame",
        frame(&name_over),
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut trailing = hello("trailing");
    trailing.push(0);
    let l = (trailing.len() - 4) as u32;
    trailing[..4].copy_from_slice(&l.to_le_bytes());
    cases.push((
        "bytes after the fields",
        trailing,
        false,
        &[],
        ErrorCode::BadFrame,
    ));
    let mut hello_open = hello("no-ready");
    hello_open.extend_from_slice(&open_frame());
    cases.push((
        "open instead of ready",
        hello_open,
        false,
        &["Welcome"],
        ErrorCode::BadFrame,
    ));
    let mut bad_ready = hello("bad-ready");
    let mut r = NodeFrame::Ready.encode();
    r[4] = 9;
    bad_ready.extend_from_slice(&r);
    cases.push((
        "ready with a wrong version",
        bad_ready,
        false,
        &["Welcome"],
        ErrorCode::Version,
    ));
    let mut after = hello("registered");
    after.extend_from_slice(&NodeFrame::Ready.encode());
    after.extend_from_slice(&hello("again"));
    cases.push((
        "a second hello after rendezvous",
        after,
        false,
        &["Welcome"],
        ErrorCode::BadFrame,
    ));
    let mut after = hello("registered");
    after.extend_from_slice(&NodeFrame::Ready.encode());
    after.extend_from_slice(b"\xff\xff\xff\xffgarbage after rendezvous");
    cases.push((
        "garbage after rendezvous",
        after,
        false,
        &["Welcome"],
        ErrorCode::BadFrame,
    ));
    let mut after = hello("registered");
    after.extend_from_slice(&NodeFrame::Ready.encode());
    let s = NodeFrame::Serve {
        req: 1,
        service: "half".into(),
        schema: Schema {
            send: MessageType::bytes(),
            recv: MessageType::bytes(),
        },
    }
    .encode();
    after.extend_from_slice(&s[..s.len() - 3]);
    cases.push((
        "truncated frame after rendezvous then close",
        after,
        true,
        &["Welcome"],
        ErrorCode::BadFrame,
    ));

    for (case, input, half_close, before, code) in cases {
        let answer = raw(&socket, &input, half_close).await;
        let message = answer.assert_error_after(before, code, case);
        assert!(!message.is_empty(), "{case}: the error says why");
        // Nothing of the bad connection stays registered, and others are served.
        within(
            "bad connection forgotten",
            engine.wait_for_stats(|s| s.nodes == 0 && s.services == 0),
        )
        .await;
        good_pair(&engine, case).await;
    }

    // Hello then close without ready: the welcome, then nothing registered.
    let answer = raw(&socket, &hello("quitter"), true).await;
    assert_eq!(
        answer.frames.iter().map(kind).collect::<Vec<_>>(),
        ["Welcome"],
        "{answer:?}"
    );
    good_pair(&engine, "quitter").await;

    // Many bad connections at once.
    let storm = futures::future::join_all((0..32).map(|i| {
        let socket = socket.clone();
        async move {
            let input = if i % 2 == 0 {
                b"\x00\x00\x00\x00".to_vec()
            } else {
                open_frame()
            };
            raw(&socket, &input, false).await
        }
    }))
    .await;
    for answer in storm {
        answer.assert_error_after(&[], ErrorCode::BadFrame, "storm");
    }
    good_pair(&engine, "storm").await;

    // The silent and slow connections never held anyone up; they are still not nodes.
    within(
        "only good nodes ever registered",
        engine.wait_for_stats(|s| s.nodes == 0),
    )
    .await;
    drop((silent, slow));
    good_pair(&engine, "end").await;
    within(
        "all gone",
        engine.wait_for_stats(|s| s.nodes == 0 && s.session_ends == 0),
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let dir = TestDir::new("handshake");
    let engine = support::engine_builder(&dir)
        .handshake_timeout(Duration::from_secs(1))
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    // One connection says nothing, one sends half a hello: both are closed without a word
    // once the timeout expires (no expiry is asserted on, only that it comes).
    let mut silent = UnixStream::connect(&socket).await.expect("connect");
    let mut slow = UnixStream::connect(&socket).await.expect("connect");
    slow.write_all(&hello("slow")[..6]).await.expect("write");
    let (silent, slow) = tokio::join!(read_until_closed(&mut silent), read_until_closed(&mut slow));
    for answer in [silent, slow] {
        assert!(
            answer.frames.is_empty() && answer.rest.is_empty(),
            "{answer:?}"
        );
    }
    good_pair(&engine, "after-timeouts").await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_outside_the_policy_is_refused_before_any_block() {
    let dir = TestDir::new("policy");
    let other = rustix::process::getuid().as_raw().wrapping_add(1);
    let engine = support::engine_builder(&dir)
        .policy(Policy::AllowUids(vec![other]))
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    // The engine says why, before it reads anything and before it creates any block.
    let answer = raw(&socket, &[], false).await;
    let message = answer.assert_error_after(&[], ErrorCode::Denied, "connect and wait");
    let uid = rustix::process::getuid().as_raw().to_string();
    assert!(message.contains(&uid), "names the uid: {message}");
    let answer = raw(&socket, &hello("raw"), false).await;
    answer.assert_error_after(&[], ErrorCode::Denied, "raw hello");
    // A real node fails to connect (see `a_refused_node_is_told_why` for how).
    assert!(
        within("connect", Node::connect(&socket, "me"))
            .await
            .is_err()
    );
    assert_eq!(engine.stats().nodes, 0);
    engine.shutdown().await;
}

/// `Node::connect` to an engine whose policy refuses this uid must fail with `Refused`
/// carrying the engine's reason, every time. The engine writes its `Error` frame and closes
/// at once, without reading the node's `Hello`; when that happens before the node has
/// written its `Hello`, the node's write fails with EPIPE and `connect` returns
/// `ConnectError::Io(BrokenPipe)`, although the reason is waiting in its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_node_is_told_why() {
    let dir = TestDir::new("policy-node");
    let other = rustix::process::getuid().as_raw().wrapping_add(1);
    let engine = support::engine_builder(&dir)
        .policy(Policy::AllowUids(vec![other]))
        .spawn()
        .expect("engine");
    let socket = dir.socket();
    let uid = rustix::process::getuid().as_raw().to_string();
    for attempt in 0..200 {
        match within("connect", Node::connect(&socket, "me")).await {
            Err(ConnectError::Refused { message }) => {
                assert!(message.contains(&uid), "names the uid: {message}");
            }
            other => panic!("attempt {attempt}: expected Refused, got {other:?}"),
        }
    }
    engine.shutdown().await;
}
