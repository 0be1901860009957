//! The message types the tests send, and deterministic samples of them (both processes build
//! the same values, so each side can check what it received with `assert_eq!`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use shmlink::Message;

// ===== typed streams =====

/// An enum with unit, tuple and struct variants.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Empty,
    Circle(f64),
    Pair(i32, String),
    Rect {
        w: u32,
        h: u32,
        label: Option<String>,
    },
}

/// Nested inside [`Record`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) deeper: Option<Box<Inner>>,
}

/// A bit of everything serde and bincode handle.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) seq: u32,
    pub(crate) title: String,
    pub(crate) inner: Inner,
    pub(crate) nested: Vec<Vec<Inner>>,
    pub(crate) shapes: Vec<Shape>,
    pub(crate) maybe: Option<Inner>,
    pub(crate) nothing: Option<u64>,
    pub(crate) by_name: BTreeMap<String, Shape>,
    pub(crate) by_id: HashMap<u32, Vec<u8>>,
    pub(crate) blob: Vec<u8>,
    pub(crate) numbers: (i8, i64, u128, f32, f64),
    pub(crate) flag: bool,
    pub(crate) letter: char,
    pub(crate) unit: (),
}

/// A generic message: its fingerprint mixes in `T`'s.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Tagged<T> {
    pub(crate) tag: String,
    pub(crate) seq: u32,
    pub(crate) value: T,
    pub(crate) history: Vec<T>,
    pub(crate) latest: Option<T>,
}

/// Not a `Message` in itself elsewhere: used as `Tagged<Plain>` to get a second instance of
/// the generic with the same name and another fingerprint.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Plain(pub(crate) u64);

/// Index of the record that carries a large blob.
pub(crate) const BIG_RECORD: u32 = 5;
/// Size of the large blob: several MiB.
pub(crate) const BIG_BLOB: usize = 5 << 20;
/// How many records a round trip sends.
pub(crate) const RECORDS: u32 = 9;

/// Deterministic bytes (xorshift64) for `seed`.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    testkit::pattern(seed, 0, len)
}

fn inner(id: u64, depth: u32) -> Inner {
    Inner {
        id,
        name: format!("inner-{id}-ñ-日本-🦀"),
        tags: (0..id % 4).map(|t| format!("tag{t}-ß")).collect(),
        deeper: (depth > 0).then(|| Box::new(inner(id * 10 + 1, depth - 1))),
    }
}

/// Record number `i`. Record [`BIG_RECORD`] carries [`BIG_BLOB`] bytes.
pub(crate) fn record(i: u32) -> Record {
    let n = u64::from(i);
    let blob_len = match i {
        0 => 0,
        1 => 1,
        2 => 255,
        3 => 4096 + 3,
        BIG_RECORD => BIG_BLOB,
        _ => 100 * i as usize,
    };
    let shapes = vec![
        Shape::Empty,
        Shape::Circle(2.5 * f64::from(i)),
        Shape::Pair(-(i as i32) - 1, "paire — ✓".repeat(i as usize % 3)),
        Shape::Rect {
            w: i,
            h: u32::MAX - i,
            label: i.is_multiple_of(2).then(|| format!("rect «{i}»")),
        },
    ];
    let mut by_name = BTreeMap::new();
    for (k, shape) in shapes.iter().enumerate().skip(i as usize % 2) {
        by_name.insert(format!("клю́ч-{k}"), shape.clone());
    }
    let mut by_id = HashMap::new();
    for k in 0..(i % 5) {
        by_id.insert(
            k * 1000 + i,
            pattern(n * 100 + u64::from(k), k as usize * 7),
        );
    }
    Record {
        seq: i,
        title: match i % 3 {
            0 => String::new(),
            1 => format!("Grüße, 世界! 🚀 #{i} \u{0} tab\there"),
            _ => "ascii only".repeat(i as usize),
        },
        inner: inner(n, i % 3),
        nested: (0..i % 3)
            .map(|a| (0..a + 1).map(|b| inner(n + u64::from(b), 0)).collect())
            .collect(),
        shapes,
        maybe: (i % 2 == 1).then(|| inner(n + 7, 1)),
        nothing: (i % 3 == 2).then_some(u64::MAX - n),
        by_name,
        by_id,
        blob: pattern(n, blob_len),
        numbers: (
            i8::MIN + i as i8,
            i64::MIN + i64::from(i),
            u128::MAX - u128::from(i),
            0.25 * i as f32,
            -1e300,
        ),
        flag: i.is_multiple_of(2),
        letter: ['✓', 'a', 'é', '🦀'][i as usize % 4],
        unit: (),
    }
}

/// Generic message number `i`.
pub(crate) fn tagged(i: u32) -> Tagged<Shape> {
    let shapes = [
        Shape::Empty,
        Shape::Circle(-0.5),
        Shape::Pair(i as i32, format!("ζ{i}")),
        Shape::Rect {
            w: 3,
            h: 4,
            label: None,
        },
    ];
    Tagged {
        tag: format!("tagged «{i}» ✓"),
        seq: i,
        value: shapes[i as usize % 4].clone(),
        history: shapes.iter().take(i as usize % 5).cloned().collect(),
        latest: i
            .is_multiple_of(2)
            .then(|| shapes[(i as usize + 1) % 4].clone()),
    }
}

// ===== request/response =====

/// The requests of the "ops" service (served by a child process).
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Answered with [`OpReply::Echoed`] at once.
    Echo { id: u64, text: String },
    /// The handler fails with `op {id} refused: {reason}`.
    Fail { id: u64, reason: String },
    /// The handler panics with `op {id} panicked: {reason}`.
    Panic { id: u64, reason: String },
    /// The handler reports `entered hang N` and never answers.
    Hang { id: u64 },
    /// The handler reports `entered {gate} N`, waits until the parent releases `gate`, then
    /// answers `Value(id * 7)`.
    Gate { id: u64, gate: u32 },
    /// Fails the first `failures` calls with this key, then answers `Attempts(n)`.
    Flaky { key: u64, failures: u32 },
    /// The most `Gate` handlers of `gate` that ran at once so far: `Value(max)`.
    MaxActive { gate: u32 },
    /// Answers `Echoed` with `len` bytes of text (larger than a session carries, if asked).
    Grow { id: u64, len: u64 },
}

/// The replies of the "ops" service.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum OpReply {
    Echoed { id: u64, reversed: String, sum: u64 },
    Value(u64),
    Attempts(u32),
}

/// What the server answers to `Echo { id, text }`: derived from the request, so a reply
/// matched to the wrong request is caught.
pub(crate) fn echoed(id: u64, text: &str) -> OpReply {
    OpReply::Echoed {
        id,
        reversed: text.chars().rev().collect(),
        sum: id.wrapping_mul(3).wrapping_add(text.len() as u64),
    }
}

/// The text of request `id` (non-ASCII, varying length).
pub(crate) fn echo_text(id: u64) -> String {
    format!("req-{id}-ünï-{}", "✓".repeat((id % 17) as usize))
}

// ===== schema checks =====

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SchemaAlpha {
    pub(crate) x: u32,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SchemaBeta {
    pub(crate) doubled: u64,
}

/// The same shape as [`SchemaAlpha`], under another name.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SchemaGamma {
    pub(crate) x: u32,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct StreamA {
    pub(crate) text: String,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct StreamC {
    pub(crate) text: String,
}

// ===== decode failures =====

/// The sender's type: derived.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Wire {
    pub(crate) id: u32,
    pub(crate) text: Vec<u8>,
    pub(crate) flag: u8,
}

/// The receiver's type: written by hand with [`Wire`]'s name and fingerprint, so the session
/// opens, but a stricter serde shape: `text` must be UTF-8 and `flag` 0 or 1. Every `Strict`
/// encodes to bytes that decode as a `Wire`; not every `Wire` decodes as a `Strict`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Strict {
    pub(crate) id: u32,
    pub(crate) text: String,
    pub(crate) flag: bool,
}

impl shmlink::Message for Strict {
    const NAME: &'static str = <Wire as shmlink::Message>::NAME;
    const FINGERPRINT: u64 = <Wire as shmlink::Message>::FINGERPRINT;
}

/// The `Wire` messages a sender sends in the decode tests, in order: valid, invalid UTF-8,
/// invalid bool, valid.
pub(crate) fn wire_messages() -> Vec<Wire> {
    vec![
        Wire {
            id: 1,
            text: "héllo ✓".as_bytes().to_vec(),
            flag: 1,
        },
        Wire {
            id: 2,
            text: vec![b'o', b'k', 0xff, 0xfe],
            flag: 0,
        },
        Wire {
            id: 3,
            text: b"fine text".to_vec(),
            flag: 7,
        },
        Wire {
            id: 4,
            text: "ünïcødé after the bad ones".as_bytes().to_vec(),
            flag: 0,
        },
    ]
}

/// `Strict`'s id for a report of a decode error (the error text in `text`).
pub(crate) const DECODE_ERROR_ID: u32 = u32::MAX;

// ===== a raw request/response peer =====

/// The unit request and reply of the "half" service.
#[derive(Message, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub(crate) struct Unit;

/// A request/response envelope seen raw: `[id: u64 LE][kind: u8]` with an empty body (the
/// bincode encoding of [`Unit`]). Declared with the name and fingerprint the client uses for
/// `Unit` requests and replies (`rpc:Unit`), so a plain typed listener of `RawEnvelope` can
/// stand in for a server and behave in ways `Node::serve` never does (half-close early).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub(crate) struct RawEnvelope {
    pub(crate) raw: [u8; 9],
}

impl shmlink::Message for RawEnvelope {
    const NAME: &'static str = "rpc:Unit";
    const FINGERPRINT: u64 = <Unit as shmlink::Message>::FINGERPRINT;
}

impl RawEnvelope {
    pub(crate) fn id(&self) -> u64 {
        u64::from_le_bytes(self.raw[..8].try_into().expect("8 bytes"))
    }
}

// ===== zero-copy byte fields =====

/// A message with a large byte field decoded as a view of the received payload.
#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    pub(crate) seq: u64,
    #[serde(with = "shmlink::message::shared_bytes")]
    pub(crate) pixels: bytes::Bytes,
}

pub(crate) fn frame(seq: u64) -> Frame {
    let len = [0, 1, 100, 64 << 10][(seq % 4) as usize];
    Frame {
        seq,
        pixels: bytes::Bytes::from(vec![(seq % 251) as u8; len]),
    }
}

/// An `Echo` request whose text derives from `id`.
pub(crate) fn echo(id: u64) -> Op {
    Op::Echo {
        id,
        text: echo_text(id),
    }
}

/// The reply to [`echo`]`(id)`.
pub(crate) fn echo_reply(id: u64) -> OpReply {
    echoed(id, &echo_text(id))
}
