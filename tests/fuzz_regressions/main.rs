//! The fuzz targets (docs/ARCHITECTURE.md, Testing), replayed on stable in every test run: every committed
//! corpus input through the same entry points the targets call (`ipc_core::__fuzz`,
//! `testkit::hostile`), then each crash or failure the fuzzers found, as its own test.
//!
//! The seeds in `fuzz/corpus/<target>/` are written by [`write_seeds`]:
//!
//! ```text
//! cargo test --test fuzz_regressions -- --ignored write_seeds
//! ```

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use ipc_core::control::{EngineFrame, MessageType, NodeFrame, Overflow, Schema, SubscribeOptions};
use ipc_core::layout::{Layout, RawHeader};
use ipc_core::{BlockConfig, RawDescriptor, kind};
use shmlink::{Engine, Node};

/// The engine target checks that the process's descriptors and mappings return to their
/// baseline, so no two tests of this binary run at once (`cargo test` runs them as threads).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const TARGETS: [&str; 6] = [
    "control_msg",
    "descriptor",
    "engine",
    "frame",
    "header",
    "ring_drain",
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read a corpus input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    let _serial = serial();
    for (path, bytes) in corpus(target) {
        eprintln!("{}", path.display());
        run(&bytes);
    }
}

// ===== the committed corpora =====

#[test]
fn corpus_control_msg() {
    replay("control_msg", ipc_core::__fuzz::control_msg);
}

#[test]
fn corpus_descriptor() {
    replay("descriptor", ipc_core::__fuzz::descriptor);
}

#[test]
fn corpus_frame() {
    replay("frame", ipc_core::__fuzz::frame);
}

#[test]
fn corpus_header() {
    replay("header", ipc_core::__fuzz::header);
}

#[test]
fn corpus_ring_drain() {
    replay("ring_drain", ipc_core::__fuzz::ring_drain);
}

#[test]
fn corpus_engine() {
    replay("engine", testkit::hostile::engine);
}

// ===== crashes and failures found by the fuzzers =====

/// `engine`, found in its first minute (fixed in 31c41f4): a zero-length `DATA` (here forged
/// by the hostile node: `submit`, own session, kind `DATA`, length 0) was delivered to its
/// receiver `fuzz-b` at the offset of the sub-block the engine gave it, which `fuzz-b`'s
/// `validate_deliver` refused (it wanted offset 0 for length 0): `fuzz-b` disconnected.
#[test]
fn engine_empty_payload_does_not_disconnect_its_receiver() {
    let _serial = serial();
    testkit::hostile::engine(&[44, 54, 1, 0]);
}

/// The same bug through the public API only: a node that held one received message was
/// disconnected by the engine's delivery of an empty one on the same session.
#[test]
fn an_empty_message_behind_a_held_one_is_delivered() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("shmlink-fuzzreg-{}", std::process::id()));
        let socket = dir.join("engine.sock");
        let engine = Engine::builder()
            .socket(&socket)
            .block(BlockConfig {
                tx_arena: 1 << 16,
                rx_arena: 1 << 16,
                min_block: 64,
                ..BlockConfig::default()
            })
            .spawn()
            .expect("spawn");
        let b = Node::connect(&socket, "b").await.expect("connect b");
        let mut listener = b.listen::<Bytes>("svc").await.expect("listen");
        let a = Node::connect(&socket, "a").await.expect("connect a");
        let mut to_b = a.open::<Bytes>("svc").await.expect("open");
        let mut from_a = listener.accept().await.expect("accept");

        to_b.send(Bytes::from_static(b"held")).await.expect("send");
        let held = next(&mut from_a).await;
        assert_eq!(held.as_ref(), b"held");
        // `held` still occupies offset 0 of b's receive arena.
        to_b.send(Bytes::new())
            .await
            .expect("send an empty message");
        let empty = next(&mut from_a).await;
        assert!(empty.is_empty());
        drop((held, empty));
        assert_eq!(engine.stats().nodes, 2, "{:?}", engine.stats());
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// `engine`, found after a few minutes (fixed in ee8bc13): the hostile node opened some 250
/// sessions to `fuzz` and left; `fuzz-b` dropped the sessions it was offered, all at once
/// (a `FIN` and a `CLOSE` each), and the entries beyond twice its 64-slot submit ring never
/// reached the engine. A `Drop` that found the ring full queued its entry and armed the
/// wait-for-space flag; the engine's doorbell flushed the queue, but when the ring filled
/// again the node did not arm the flag anew, so the engine never rang it again.
#[test]
fn engine_many_sessions_closed_at_once_all_reach_the_engine() {
    let _serial = serial();
    // Two of the fuzzer's own inputs: 135 and 68 opens of `fuzz` (`50, 104, 101, 108`, then
    // repeats: `139, n`).
    testkit::hostile::engine(&[
        139, 139, 50, 104, 101, 108, 139, 139, 139, 139, 139, 139, 139, 11, 139, 139, 139, 139,
        139, 139, 237, 139, 139, 137, 139, 139, 139, 139, 139, 99, 109, 112, 45, 113, 117, 105, 99,
        107, 139, 139, 40, 0,
    ]);
    testkit::hostile::engine(&[
        139, 139, 50, 104, 101, 108, 139, 139, 139, 139, 139, 139, 139, 139, 139, 50, 104, 101,
        108, 139, 139, 139, 139, 139, 139, 139, 11, 139, 139, 139, 139, 139, 139, 237, 0, 28, 137,
        38, 139, 139, 117, 116, 116, 125, 139, 139, 0, 0, 0, 0, 0, 101, 1, 0, 2, 108, 139, 0, 0, 0,
        139, 139, 139, 139, 40, 0,
    ]);
    // And its shape spelled out: some 250 opens, then the node leaves.
    let mut input = op::control(4, 16, 2);
    for _ in 0..250 {
        input.extend(op::control(4, 64, 0));
    }
    testkit::hostile::engine(&input);
}

/// `engine`, found by CI's minute of fuzzing: the hostile node sent a long run of opens of `fuzz`
/// with request id 0, then left. Request id 0 is the one the engine's unsolicited frames
/// carry, so their answers freed no place among the 64 requests a connection may have in
/// flight: the engine stopped reading the socket for good, never saw the node leave, and
/// kept its sessions (`fuzz-b`'s echoes) open. A request with id 0 now closes the node.
#[test]
fn engine_requests_with_id_zero_do_not_stop_the_engine_reading() {
    let _serial = serial();
    // The fuzzer's input: `50, 9, 0, 0` (an open, request id 0), then repeats (`251`).
    let mut input = vec![50, 9, 0, 0];
    input.extend([251; 128]);
    testkit::hostile::engine(&input);
    // And its shape spelled out: 65 opens with id 0, then the node leaves.
    let mut input = Vec::new();
    for _ in 0..65 {
        input.extend(op::control(4, 0, 0));
    }
    input.push(op::LEAVE);
    testkit::hostile::engine(&input);
}

/// The same bug through the public API only: a node drops more sessions at once than its
/// submit ring holds twice over (each drop queues a `FIN` and a `CLOSE`), and the engine must
/// still learn of every close.
#[test]
fn dropping_many_sessions_at_once_closes_them_all() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("shmlink-fuzzreg-{}", std::process::id()));
        let socket = dir.join("engine.sock");
        let engine = Engine::builder()
            .socket(&socket)
            .block(BlockConfig {
                submit_capacity: 64,
                tx_arena: 1 << 16,
                rx_arena: 1 << 16,
                min_block: 64,
                ..BlockConfig::default()
            })
            .spawn()
            .expect("spawn");
        let b = Node::connect(&socket, "b").await.expect("connect b");
        let mut listener = b.listen::<Bytes>("svc").await.expect("listen");
        let a = Node::connect(&socket, "a").await.expect("connect a");
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..200 {
            clients.push(a.open::<Bytes>("svc").await.expect("open"));
            servers.push(listener.accept().await.expect("accept"));
        }
        // 200 CLOSE entries at once from each node, on submit rings of 64.
        drop(servers);
        drop(clients);
        let stats = tokio::time::timeout(
            Duration::from_secs(10),
            engine.wait_for_stats(|s| s.session_ends == 0),
        )
        .await;
        assert!(stats.is_ok(), "session ends left: {:?}", engine.stats());
        engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

async fn next(session: &mut shmlink::Session) -> Bytes {
    match tokio::time::timeout(Duration::from_secs(10), session.next()).await {
        Ok(Some(Ok(bytes))) => bytes,
        other => panic!("expected a message, got {other:?}"),
    }
}

// ===== seeds =====

/// Writes the seed corpora from the code that defines the formats (ignored: run it by hand
/// after a format changes, then review and commit `fuzz/corpus`).
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    for target in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus dir");
        for entry in std::fs::read_dir(&dir).expect("list the corpus dir") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(path).expect("remove an old seed");
            }
        }
        let seeds = match target {
            "control_msg" => control_msg_seeds(),
            "descriptor" => descriptor_seeds(),
            "engine" => engine_seeds(),
            "frame" => frame_seeds(),
            "header" => header_seeds(),
            _ => ring_drain_seeds(),
        };
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        }
    }
}

/// A frame seed: the declared record count, then the frame.
fn frame_seed(declared: u8, records: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![declared];
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut overrun = frame_seed(1, &[b"abcdef"]);
    overrun[1] = 7;
    let mut trailing = frame_seed(2, &[b"abc"]);
    trailing.extend_from_slice(&[1, 2]);
    let mut huge = frame_seed(2, &[b"x", b"yz"]);
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    vec![
        ("three-records", frame_seed(3, &[b"hello", b"", b"frames"])),
        ("one-empty-record", frame_seed(1, &[b""])),
        ("count-mismatch", frame_seed(3, &[b"ab", b"cd"])),
        ("zero-declared", frame_seed(0, &[b"ab"])),
        ("record-overruns", overrun),
        ("trailing-bytes", trailing),
        ("length-u32-max", huge),
        ("empty", vec![1]),
    ]
}

fn control_msg_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let schema = Schema {
        send: MessageType {
            name: "GetQuote".into(),
            fingerprint: 0x1234_5678_9abc_def0,
        },
        recv: MessageType::bytes(),
    };
    let node_frames = [
        (
            "hello",
            NodeFrame::Hello {
                name: "billing".into(),
            },
        ),
        ("ready", NodeFrame::Ready),
        (
            "serve",
            NodeFrame::Serve {
                req: 1,
                service: "quotes".into(),
                schema: schema.clone(),
            },
        ),
        ("unserve", NodeFrame::Unserve { req: 2, service: 1 }),
        (
            "open",
            NodeFrame::Open {
                req: 3,
                service: "quotes".into(),
                schema,
            },
        ),
        (
            "publish",
            NodeFrame::Publish {
                req: 4,
                topic: "sensors/temp".into(),
                ty: MessageType {
                    name: "Tick".into(),
                    fingerprint: 0xfeed,
                },
                history: 8,
            },
        ),
        (
            "unpublish",
            NodeFrame::Unpublish {
                req: 5,
                publisher: 1,
            },
        ),
        (
            "subscribe",
            NodeFrame::Subscribe {
                req: 6,
                pattern: "sensors/**".into(),
                ty: MessageType::bytes(),
                options: SubscribeOptions::default(),
            },
        ),
        (
            "subscribe-block",
            NodeFrame::Subscribe {
                req: 7,
                pattern: "sensors/temp".into(),
                ty: MessageType::bytes(),
                options: SubscribeOptions {
                    overflow: Overflow::Block { untether_ms: 500 },
                    queue: 16,
                    history: 4,
                },
            },
        ),
        (
            "unsubscribe",
            NodeFrame::Unsubscribe {
                req: 8,
                subscription: 2,
            },
        ),
        (
            "segment",
            NodeFrame::Segment {
                req: 9,
                len: 33 << 20,
            },
        ),
    ];
    let mut all = Vec::new();
    let mut seeds = Vec::new();
    for (name, frame) in node_frames {
        let bytes = frame.encode();
        all.extend_from_slice(&bytes);
        seeds.push((name, bytes));
    }
    seeds.push(("node-frames", all));
    let engine_frames = [
        (
            "welcome",
            EngineFrame::Welcome {
                node: 7,
                credits: 256,
                window_bytes: 4 << 20,
            },
        ),
        (
            "open-ok",
            EngineFrame::OpenOk {
                req: 3,
                session: 9,
                peer: "billing".into(),
            },
        ),
        (
            "segment-ok",
            EngineFrame::SegmentOk {
                req: 9,
                segment: 1,
                len: 33 << 20,
            },
        ),
        (
            "segment-delivery",
            EngineFrame::SegmentDelivery {
                segment: 4,
                len: 33 << 20,
            },
        ),
        (
            "error",
            EngineFrame::Error {
                req: 0,
                code: 1,
                message: "closed by the engine".into(),
            },
        ),
        (
            "publish-ok",
            EngineFrame::PublishOk {
                req: 4,
                publisher: 1,
                topic: 1,
                max_message: 8 << 20,
            },
        ),
        (
            "subscribe-ok",
            EngineFrame::SubscribeOk {
                req: 6,
                subscription: 2,
            },
        ),
        (
            "topic-attach",
            EngineFrame::TopicAttach {
                subscription: 2,
                topic: 1,
                name: "sensors/temp".into(),
                segment_size: 1 << 20,
                ty: MessageType::bytes(),
            },
        ),
        ("topic-done", EngineFrame::TopicDone { req: 8 }),
    ];
    for (name, frame) in engine_frames {
        seeds.push((name, frame.encode()));
    }
    seeds
}

fn descriptor_bytes(raw: &RawDescriptor) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&raw.session.to_le_bytes());
    out.extend_from_slice(&raw.kind.to_le_bytes());
    out.extend_from_slice(&raw.flags.to_le_bytes());
    out.extend_from_slice(&raw.segment.to_le_bytes());
    out.extend_from_slice(&raw.len.to_le_bytes());
    out.extend_from_slice(&raw.offset.to_le_bytes());
    out.extend_from_slice(&raw.aux.to_le_bytes());
    out
}

fn descriptor_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let valid = [
        RawDescriptor::data(1, 0, 100),
        RawDescriptor::control(kind::FIN, 1, 0),
        RawDescriptor::control(kind::CLOSE, 1, 0),
        RawDescriptor::offset_only(kind::RELEASE, 64),
        RawDescriptor::offset_only(kind::TX_DONE, 128),
        RawDescriptor::control(kind::CREDIT, 1, 3),
        RawDescriptor::topic_data(2, 1, 4096, 100, 7),
        RawDescriptor::control(kind::TOPIC_LAGGED, 2, 5),
        RawDescriptor::control(kind::TOPIC_CLOSED, 2, 2),
        RawDescriptor::topic_release(2, 1, 4096),
    ];
    let edges = [
        // The last 64 bytes of the fuzzer's 1 MiB arena, and one past it.
        RawDescriptor::data(2, (1 << 20) - 64, 64),
        RawDescriptor::data(2, (1 << 20) - 64, 65),
        RawDescriptor::data(3, 0, 0),
    ];
    vec![
        (
            "every-kind",
            valid.iter().flat_map(descriptor_bytes).collect(),
        ),
        (
            "arena-edges",
            edges.iter().flat_map(descriptor_bytes).collect(),
        ),
    ]
}

fn header_bytes(layout: &Layout, actual: u64) -> Vec<u8> {
    let h: RawHeader = layout.to_header();
    let words = [
        h.magic,
        u64::from(h.layout_version) | u64::from(h.header_size) << 32,
        h.total_size,
        u64::from(h.segment) | u64::from(h.descriptor_size) << 32,
        h.submit.offset,
        u64::from(h.submit.capacity),
        h.deliver.offset,
        u64::from(h.deliver.capacity),
        h.release.offset,
        u64::from(h.release.capacity),
        h.tx_tree_offset,
        h.tx_tree_len,
        h.tx.offset,
        h.tx.size,
        h.tx.min_block,
        h.rx.offset,
        h.rx.size,
        h.rx.min_block,
    ];
    let mut out = actual.to_le_bytes().to_vec();
    out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    out
}

fn header_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let default = Layout::compute(&BlockConfig::default()).expect("layout");
    let small = Layout::compute(&BlockConfig {
        submit_capacity: 64,
        deliver_capacity: 64,
        release_capacity: 64,
        tx_arena: 1 << 16,
        rx_arena: 1 << 16,
        min_block: 64,
    })
    .expect("layout");
    vec![
        ("default", header_bytes(&default, default.total_size)),
        ("small", header_bytes(&small, small.total_size)),
        (
            "small-short-file",
            header_bytes(&small, small.total_size - 1),
        ),
    ]
}

fn ring_drain_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // 33 bytes per step: a descriptor, then 0 push, 1 pop, 2 sleep and wake.
    let step = |raw: RawDescriptor, op: u8| {
        let mut bytes = descriptor_bytes(&raw);
        bytes.push(op);
        bytes
    };
    let mut fill = Vec::new();
    for i in 0..9 {
        fill.extend(step(RawDescriptor::data(1, 64 * i, 64), 0));
    }
    for _ in 0..9 {
        fill.extend(step(RawDescriptor::default(), 1));
    }
    fill.extend(step(RawDescriptor::default(), 2));
    let mut mixed = Vec::new();
    for i in 0..4 {
        mixed.extend(step(RawDescriptor::data(1, 64 * i, 10), 0));
        mixed.extend(step(RawDescriptor::default(), 1));
        mixed.extend(step(RawDescriptor::default(), 2));
    }
    vec![("fill-and-drain", fill), ("push-pop-sleep", mixed)]
}

/// Encoders for `testkit::hostile`'s operations (its module docs list the format).
mod op {
    pub(crate) const OWN: u8 = 0;
    pub(crate) const LEARNED: u8 = 1;
    pub(crate) const PEER: u8 = 2;
    pub(crate) const PAIR: u8 = 3;
    pub(crate) const ZERO: u8 = 4;

    pub(crate) const SUBMIT_RING: u8 = 0;
    pub(crate) const DELIVER_RING: u8 = 1;
    pub(crate) const RELEASE_RING: u8 = 2;
    pub(crate) const HEAD: u8 = 0;
    pub(crate) const TAIL: u8 = 1;
    pub(crate) const WAITING: u8 = 2;

    pub(crate) const DELIVER: u8 = 5;
    pub(crate) const BELL: u8 = 6;
    pub(crate) const SETTLE: u8 = 9;
    pub(crate) const REPLIES: u8 = 11;
    pub(crate) const LEAVE: u8 = 12;

    /// `region`: 0 header page, 1-3 submit / deliver / release ring, 4 tx arena, 5 rx arena.
    pub(crate) fn write(region: u8, offset: u16, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![0, region];
        out.extend_from_slice(&offset.to_le_bytes());
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
        out
    }
    pub(crate) fn set(ring: u8, word: u8, value: u32) -> Vec<u8> {
        let mut out = vec![1, ring, word, 1];
        out.extend_from_slice(&value.to_le_bytes());
        out
    }
    pub(crate) fn add(ring: u8, word: u8, delta: i8) -> Vec<u8> {
        vec![1, ring, word, (delta as u8) << 1]
    }
    pub(crate) fn submit(
        session: u8,
        kind: u16,
        shape: u8,
        len: u32,
        offset: u64,
        aux: u64,
    ) -> Vec<u8> {
        let mut out = vec![2, session, kind as u8, shape];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&aux.to_le_bytes());
        out
    }
    /// Sends `len` bytes (1..=65536).
    pub(crate) fn send(session: u8, len: u32, fill: u8) -> Vec<u8> {
        let mut out = vec![3, session];
        out.extend_from_slice(&((len - 1) as u16).to_le_bytes());
        out.push(fill);
        out
    }
    /// 0 the oldest received, 1 the last released again, 3 inside the oldest received.
    pub(crate) fn release(how: u8) -> Vec<u8> {
        vec![4, how]
    }
    pub(crate) fn release_raw(offset: u32) -> Vec<u8> {
        let mut out = vec![4, 2];
        out.extend_from_slice(&offset.to_le_bytes());
        out
    }
    pub(crate) fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![7, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }
    /// `kind`: 0 hello, 1 ready, 2 serve, 3 unserve, 4 open. `name`: 0 `fuzz`, 1 `hostile`,
    /// 2 `nobody`, 3 empty; plus 0x10 for a schema nobody serves.
    pub(crate) fn control(kind: u8, req: u8, name: u8) -> Vec<u8> {
        vec![8, kind, req, name]
    }
    pub(crate) fn yields(n: u8) -> Vec<u8> {
        vec![10, n - 1]
    }
    pub(crate) fn repeat(times: u8) -> Vec<u8> {
        vec![13, times - 1]
    }
}

fn engine_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use op::*;
    let seq = |parts: &[Vec<u8>]| parts.concat();
    let data = kind::DATA;
    vec![
        (
            // A fuzzer's input after which LeakSanitizer took a node driver's emptied control
            // buffer for a leak (an advanced `BytesMut` points one past its allocation): the
            // driver now lets an emptied buffer go. A seed, so that libFuzzer starts from it.
            "emptied-control-buffer",
            vec![3, 0, 43, 1, 14, 13, 2, 12, 6, 9, 3, 0, 43, 1, 15, 6, 9],
        ),
        (
            // A hand-off segment (kind 0xf1: 256 MiB + 1 + 10 * 64 bytes, past the arenas)
            // sent on the node's session (shape 2: segment 1, offset 0, 600 of its bytes), to
            // `fuzz-b`, who echoes it; then the same one again (no longer lent: the node is
            // closed).
            "segment-hand-off",
            seq(&[
                control(0xf1, 3, 10),
                vec![REPLIES, SETTLE],
                submit(OWN, data, 2, 600, 0, 0),
                vec![BELL, SETTLE, DELIVER],
                submit(OWN, data, 2, 600, 0, 0),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "echo-and-release",
            seq(&[
                send(OWN, 100, 0xab),
                vec![BELL, SETTLE],
                yields(4),
                vec![DELIVER],
                release(0),
                vec![BELL, SETTLE, DELIVER],
            ]),
        ),
        (
            "over-credits",
            seq(&[send(OWN, 8, 1), repeat(9), vec![BELL, SETTLE]]),
        ),
        (
            "tail-past-capacity",
            seq(&[set(SUBMIT_RING, TAIL, 1000), vec![BELL, SETTLE]]),
        ),
        (
            "tail-backwards",
            seq(&[
                send(OWN, 64, 2),
                vec![BELL, SETTLE],
                add(SUBMIT_RING, TAIL, -1),
                send(OWN, 64, 3),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "deliver-head-ahead",
            seq(&[
                send(OWN, 64, 4),
                vec![BELL, SETTLE, DELIVER],
                add(DELIVER_RING, HEAD, 5),
                send(OWN, 64, 5),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "forged-data",
            seq(&[
                submit(OWN, data, 0, 64, 0, 0),
                submit(OWN, data, 4, 64, u64::MAX - 10, 0),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "foreign-sessions",
            seq(&[
                send(PAIR, 16, 6),
                send(PEER, 16, 7),
                send(ZERO, 16, 8),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "data-after-fin",
            seq(&[
                submit(OWN, kind::FIN, 0, 0, 0, 0),
                send(OWN, 32, 9),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "data-after-close",
            seq(&[
                submit(OWN, kind::CLOSE, 0, 0, 0, 0),
                vec![BELL, SETTLE, DELIVER],
                send(OWN, 32, 10),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "double-release",
            seq(&[
                send(OWN, 200, 11),
                vec![BELL, SETTLE],
                yields(4),
                vec![DELIVER],
                release(0),
                release(1),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "release-foreign",
            seq(&[release_raw(4096), release_raw(1), vec![BELL, SETTLE]]),
        ),
        (
            "serve-open-self",
            seq(&[
                control(2, 7, 1),
                control(4, 8, 1),
                yields(8),
                vec![REPLIES],
                send(LEARNED, 50, 12),
                send(LEARNED + 6, 50, 13),
                control(3, 9, 0),
                vec![BELL, SETTLE],
                yields(4),
                vec![REPLIES, DELIVER],
            ]),
        ),
        (
            "control-garbage",
            seq(&[
                control(4, 3, 0x10),
                control(4, 4, 2),
                control(0, 5, 0),
                frame(&[2, 0, 0, 0, 1, 2]),
                frame(&[0xff; 16]),
                vec![SETTLE],
            ]),
        ),
        (
            "leave-with-pending",
            seq(&[
                send(OWN, 300, 14),
                repeat(3),
                vec![LEAVE, BELL, SETTLE],
                send(OWN, 300, 15),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "slot-garbage",
            seq(&[
                write(1, 512, &[0xff; 32]),
                add(SUBMIT_RING, TAIL, 1),
                vec![BELL, SETTLE],
            ]),
        ),
        (
            "fill-own-rx",
            seq(&[
                send(OWN, 1 << 15, 16),
                send(OWN, 1 << 15, 17),
                send(OWN, 1 << 15, 18),
                vec![BELL, SETTLE],
                yields(8),
                vec![DELIVER, SETTLE],
                set(RELEASE_RING, WAITING, 1),
                release(0),
                vec![BELL, SETTLE, DELIVER],
            ]),
        ),
    ]
}
