//! The control protocol: frames on the node's Unix socket.
//!
//! Every frame is `[len: u32 LE][version: u8][tag: u8][fields…]`, where `len` counts the bytes
//! after itself. Integers are little-endian; strings are `[len: u16][UTF-8]`. The engine parses
//! every frame a node sends with [`decode_node_frame`]: a frame longer than [`MAX_FRAME`], of
//! another version, with an unknown tag, cut short, with bytes left over, or with a name that
//! is empty, too long, not UTF-8 or holds a control character (see [`check_name`]) is a
//! [`FrameError`], never a panic.
//!
//! Setup travels here (hello, serve, open); everything whose order matters relative to data
//! (data, half-close, close, credits) travels in the rings.

use thiserror::Error;

/// The protocol version this build speaks.
/// 3: the rings carry `FRAME` entries (several records of a session in one sub-block).
pub const PROTOCOL_VERSION: u8 = 4;
/// Largest frame body accepted.
pub const MAX_FRAME: usize = 64 * 1024;

/// The most bytes one [`EngineFrame::InspectChunk`] carries (well under [`MAX_FRAME`]).
pub const INSPECT_CHUNK: usize = 60 * 1024;

/// The most bytes an inspector snapshot may take in all (its chunks together): an engine
/// whose snapshot is larger answers with an error, and a client stops reading past it.
pub const MAX_INSPECT: usize = 64 << 20;
/// Longest node, service or type name.
pub const MAX_NAME: usize = 255;
/// Longest error message.
pub const MAX_MESSAGE: usize = 4096;

/// A message type as one end of a session declares it: its name and schema fingerprint.
/// Untyped byte sessions use [`MessageType::bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The type's name.
    pub name: String,
    /// Its schema fingerprint.
    pub fingerprint: u64,
}

impl MessageType {
    /// The type of raw byte payloads.
    pub fn bytes() -> Self {
        Self {
            name: "bytes".to_owned(),
            fingerprint: 0,
        }
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#018x})", self.name, self.fingerprint)
    }
}

/// What each end sends and receives on a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schema {
    /// The type this end sends.
    pub send: MessageType,
    /// The type this end receives.
    pub recv: MessageType,
}

impl Schema {
    /// A byte session both ways.
    pub fn bytes() -> Self {
        Self {
            send: MessageType::bytes(),
            recv: MessageType::bytes(),
        }
    }

    /// Whether `self` (one end) and `other` (the other end) agree: each receives what the
    /// other sends.
    pub fn matches(&self, other: &Schema) -> bool {
        self.send == other.recv && self.recv == other.send
    }
}

/// The multi-level wildcard that may end a subscription pattern (`"sensors/**"`).
pub const WILDCARD: &str = "**";

/// Whether `name` is a valid topic name: 1 to [`MAX_NAME`] bytes, segments separated by
/// `/`, every segment non-empty (no leading, trailing or doubled `/`) and free of `*`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.contains('*'))
}

/// Whether `pattern` is a valid subscription pattern: a topic name (that topic only),
/// [`WILDCARD`] alone (every topic), or a topic name followed by `/**` (every topic strictly
/// under it: `"sensors/**"` matches `"sensors/a"` and `"sensors/a/b"`, not `"sensors"` nor
/// `"sensorsx/a"`).
pub fn valid_topic_pattern(pattern: &str) -> bool {
    if pattern.len() > MAX_NAME {
        return false;
    }
    if pattern == WILDCARD {
        return true;
    }
    match pattern.strip_suffix("/**") {
        Some(prefix) => valid_topic_name(prefix),
        None => valid_topic_name(pattern),
    }
}

/// What a subscription does when its queue of pending messages is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Drop the oldest pending message and count it; the subscriber is told `Lagged(n)`.
    DropOldest,
    /// Hold publishers back until there is room, at most `untether_ms` milliseconds; then the
    /// subscription is cut loose (closed with an error) so it never stalls the topic for good.
    Block {
        /// The untether timeout in milliseconds (at least 1).
        untether_ms: u64,
    },
}

/// A subscription's options as they travel in [`NodeFrame::Subscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscribeOptions {
    /// The overflow policy.
    pub overflow: Overflow,
    /// Pending messages the engine keeps for this subscriber beyond what it has in flight
    /// (at least 1).
    pub queue: u32,
    /// How many of each matched topic's kept messages to replay on joining.
    pub history: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            overflow: Overflow::DropOldest,
            queue: 64,
            history: 0,
        }
    }
}

/// A queue's settings as they travel in [`NodeFrame::DeclareQueue`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueSpec {
    /// Kept on disk, surviving the engine's restart.
    pub durable: bool,
    /// Most messages the queue holds (ready and delivered, not yet acknowledged); 0: no limit
    /// but the engine's memory budget.
    pub max_length: u64,
    /// When full: refuse the message (the producer gets an error) instead of holding the
    /// producer back until there is room.
    pub reject_when_full: bool,
    /// Deliveries after which a message that was not acknowledged goes to the dead-letter
    /// queue (at least 1).
    pub max_deliveries: u32,
    /// The dead-letter queue's name; empty: rejected messages are dropped.
    pub dead_letter: String,
    /// The default lease (visibility timeout) of its consumers in milliseconds; 0: none.
    pub lease_ms: u64,
}

impl Default for QueueSpec {
    fn default() -> Self {
        Self {
            durable: false,
            max_length: 0,
            reject_when_full: false,
            max_deliveries: 20,
            dead_letter: String::new(),
            lease_ms: 0,
        }
    }
}

/// Frames a node sends to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeFrame {
    /// First frame: the node's name.
    Hello {
        /// The node's name (for logs and the inspector).
        name: String,
    },
    /// The node mapped and validated its block.
    Ready,
    /// Serve `service` with this schema (as the server end sees it).
    Serve {
        /// Request id echoed in the reply.
        req: u32,
        /// The service name.
        service: String,
        /// What the server end sends and receives.
        schema: Schema,
    },
    /// Stop serving the service with this id.
    Unserve {
        /// Request id echoed in the reply.
        req: u32,
        /// The id from `ServeOk`.
        service: u32,
    },
    /// Open a session to `service` (as the client end sees it).
    Open {
        /// Request id echoed in the reply.
        req: u32,
        /// The service name.
        service: String,
        /// What the client end sends and receives.
        schema: Schema,
    },
    /// Become a publisher of `topic` (created on first use).
    Publish {
        /// Request id echoed in the reply.
        req: u32,
        /// The topic's name (see [`valid_topic_name`]).
        topic: String,
        /// The type published ([`MessageType::bytes`] for raw bytes).
        ty: MessageType,
        /// Messages the topic should keep for late joiners (the topic keeps the largest any
        /// publisher asked for).
        history: u32,
    },
    /// Stop publishing with this id.
    Unpublish {
        /// Request id echoed in the reply.
        req: u32,
        /// The id from `PublishOk`.
        publisher: u32,
    },
    /// Subscribe to every topic `pattern` matches, now and later.
    Subscribe {
        /// Request id echoed in the reply.
        req: u32,
        /// A topic name or a prefix pattern (see [`valid_topic_pattern`]).
        pattern: String,
        /// The type expected ([`MessageType::bytes`] accepts any topic's bytes).
        ty: MessageType,
        /// Overflow policy, queue depth, history replay.
        options: SubscribeOptions,
    },
    /// End the subscription with this id.
    Unsubscribe {
        /// Request id echoed in the reply.
        req: u32,
        /// The id from `SubscribeOk`.
        subscription: u32,
    },
    /// Declare queue `name` (idempotent with the same settings).
    DeclareQueue {
        /// Request id echoed in the reply.
        req: u32,
        /// The queue's name.
        name: String,
        /// Its settings.
        spec: QueueSpec,
    },
    /// Become a producer of the declared queue `queue`.
    Produce {
        /// Request id echoed in the reply.
        req: u32,
        /// The queue's name.
        queue: String,
        /// The type produced ([`MessageType::bytes`] for raw bytes).
        ty: MessageType,
    },
    /// Become a consumer of the declared queue `queue`.
    Consume {
        /// Request id echoed in the reply.
        req: u32,
        /// The queue's name.
        queue: String,
        /// The type expected.
        ty: MessageType,
        /// Deliveries this consumer may hold unsettled at once (at least 1).
        prefetch: u32,
        /// Its lease in milliseconds; 0: the queue's default.
        lease_ms: u64,
    },
    /// Ask for a hand-off segment of `len` bytes for one large payload (see
    /// [`crate::segment`]): the engine answers [`EngineFrame::SegmentOk`] with the segment's
    /// memfd, or an error (a memory budget as [`EngineFrame::Limit`]).
    Segment {
        /// Request id echoed in the reply.
        req: u32,
        /// The payload's length (at least 1).
        len: u32,
    },
    /// Instead of `Hello`, as a connection's first frame: ask for a snapshot of the engine
    /// (the inspector). The connection registers no node and gets no block; the engine
    /// answers with [`EngineFrame::InspectChunk`]s, then closes it.
    Inspect {
        /// Request id echoed in every chunk.
        req: u32,
    },
}

/// Frames the engine sends to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineFrame {
    /// Answer to `Hello`; the block and both doorbells ride with it (SCM_RIGHTS).
    Welcome {
        /// The node's id in the registry.
        node: u32,
        /// Messages a session end may have in flight before the peer releases them.
        credits: u32,
        /// Bytes (the sum of [`crate::descriptor::window_charge`]s) a session end may have in
        /// flight; one message larger than that may still go alone.
        window_bytes: u64,
    },
    /// A `Serve` succeeded.
    ServeOk {
        /// The request id.
        req: u32,
        /// The service's id.
        service: u32,
    },
    /// An `Unserve` succeeded.
    UnserveOk {
        /// The request id.
        req: u32,
    },
    /// An `Open` succeeded: `session` is the client's end.
    OpenOk {
        /// The request id.
        req: u32,
        /// The client's session end.
        session: u32,
        /// The serving node's name.
        peer: String,
    },
    /// A client opened a session to a service this node serves: `session` is the server's end.
    Accept {
        /// The service's id.
        service: u32,
        /// The server's session end.
        session: u32,
        /// The client node's name.
        peer: String,
    },
    /// An `Open` failed because the two ends declare different message types: `server` is
    /// what the serving end sends and receives (the client's own schema is in its `Open`).
    SchemaMismatch {
        /// The request id.
        req: u32,
        /// The serving end's schema.
        server: Schema,
    },
    /// A `Publish` succeeded.
    PublishOk {
        /// The request id.
        req: u32,
        /// The publisher's id (what its `DATA` entries name as their session).
        publisher: u32,
        /// The topic's id.
        topic: u32,
        /// The largest message the topic takes: the size of its broadcast segment (the
        /// engine's setting). A publisher checks its messages against it before sending.
        max_message: u64,
    },
    /// An `Unpublish` or `Unsubscribe` succeeded.
    TopicDone {
        /// The request id.
        req: u32,
    },
    /// A `Subscribe` succeeded; a `TopicAttach` follows for every topic it matches.
    SubscribeOk {
        /// The request id.
        req: u32,
        /// The subscription's id (what its `TOPIC_*` entries name as their session).
        subscription: u32,
    },
    /// A topic matched by `subscription`: its broadcast segment's fd rides with this frame
    /// (`SCM_RIGHTS`, exactly one descriptor; see [`EngineFrame::fd_count`]). Sent before any
    /// `TOPIC_DATA` of that topic; a node that sees such an entry first keeps it until the
    /// frame arrives.
    TopicAttach {
        /// The subscription it matched.
        subscription: u32,
        /// The topic's id (the `segment` field of its `TOPIC_DATA` entries).
        topic: u32,
        /// The topic's name.
        name: String,
        /// The segment's size, which the node checks against the fd.
        segment_size: u64,
        /// The topic's type.
        ty: MessageType,
    },
    /// A `DeclareQueue`, `Produce` or `Consume` succeeded: `id` is the queue's id, or the
    /// producer's or consumer's (what its ring entries name as their session).
    QueueOk {
        /// The request id.
        req: u32,
        /// The id.
        id: u32,
    },
    /// A request failed (`req` is 0 for errors not tied to a request, after which the engine
    /// closes the connection).
    Error {
        /// The request id, or 0.
        req: u32,
        /// What kind of failure: an [`ErrorCode`] value.
        code: u16,
        /// A sentence for humans.
        message: String,
    },
    /// A request (or, with `req` 0, the connection itself) was refused because one of the
    /// engine's admission limits is reached; with `req` 0 the engine closes the connection.
    Limit {
        /// The request id, or 0.
        req: u32,
        /// Which limit: a [`Limit`] value.
        limit: u16,
        /// The limit's configured value.
        max: u64,
    },
    /// Answer to [`NodeFrame::Segment`]; the segment's memfd rides with it (SCM_RIGHTS). The
    /// node fills it, unmaps it and names `segment` in a `DATA` entry of its submit ring.
    SegmentOk {
        /// The request id.
        req: u32,
        /// The segment's id in this node's table.
        segment: u32,
        /// Its size in bytes.
        len: u32,
    },
    /// A large payload is on its way: the write-sealed memfd of hand-off segment `segment`
    /// rides with this frame, sent before the `DATA` entry that names it in the deliver ring.
    SegmentDelivery {
        /// The segment's id in this node's table (the release entry names it).
        segment: u32,
        /// Its size in bytes.
        len: u32,
    },
    /// A piece of the answer to [`NodeFrame::Inspect`]: the snapshot's bytes (JSON), split
    /// into frames of at most [`INSPECT_CHUNK`] bytes; at most [`MAX_INSPECT`] bytes in all.
    InspectChunk {
        /// The request id.
        req: u32,
        /// The snapshot's last chunk.
        last: bool,
        /// This chunk's bytes.
        bytes: Vec<u8>,
    },
}

/// The engine's admission and flood limits, as named in [`EngineFrame::Limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum Limit {
    /// Open control connections of one uid (registered or not).
    ConnectionsPerUid = 1,
    /// Connections of one uid that have not finished their rendezvous.
    HandshakesPerUid = 2,
    /// Registered nodes of one uid.
    NodesPerUid = 3,
    /// Live session ends held by the nodes of one uid.
    SessionsPerUid = 4,
    /// Sessions one opener node holds to one server node.
    SessionsPerOpener = 5,
    /// Sessions opened to one listener and not yet accepted by it.
    QueuedSessions = 6,
    /// Control requests of one connection in flight to the engine.
    RequestsPerConnection = 7,
    /// Bytes of one partial control frame the engine buffers for a connection.
    PartialFrameBytes = 8,
    /// Frames queued by the engine for a node that does not read its control socket.
    QueuedFrames = 9,
    /// Bytes of shared memory the engine holds for all nodes together (its memory budget).
    MemoryBudget = 10,
    /// Bytes of shared memory the engine holds for one node (the per-node memory budget).
    NodeMemoryBudget = 11,
}

impl Limit {
    /// The limit for a wire value, if known.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::ConnectionsPerUid,
            2 => Self::HandshakesPerUid,
            3 => Self::NodesPerUid,
            4 => Self::SessionsPerUid,
            5 => Self::SessionsPerOpener,
            6 => Self::QueuedSessions,
            7 => Self::RequestsPerConnection,
            8 => Self::PartialFrameBytes,
            9 => Self::QueuedFrames,
            10 => Self::MemoryBudget,
            11 => Self::NodeMemoryBudget,
            _ => return None,
        })
    }

    /// A short name, as in logs and `shmlinkd` flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectionsPerUid => "connections per uid",
            Self::HandshakesPerUid => "incomplete handshakes per uid",
            Self::NodesPerUid => "nodes per uid",
            Self::SessionsPerUid => "sessions per uid",
            Self::SessionsPerOpener => "sessions from one opener to one server",
            Self::QueuedSessions => "queued sessions per listener",
            Self::RequestsPerConnection => "control requests in flight per connection",
            Self::PartialFrameBytes => "bytes of a partial control frame",
            Self::QueuedFrames => "frames queued for a node",
            Self::MemoryBudget => "bytes of shared memory (the engine's memory budget)",
            Self::NodeMemoryBudget => "bytes of shared memory for one node (its memory budget)",
        }
    }

    /// Whether this is a memory budget (bytes) rather than a count.
    pub fn is_budget(self) -> bool {
        matches!(self, Self::MemoryBudget | Self::NodeMemoryBudget)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The failures the engine reports in [`EngineFrame::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be parsed or was not valid in this state.
    BadFrame = 1,
    /// The node speaks another protocol version.
    Version = 2,
    /// The peer's credentials are not allowed by the engine's policy.
    Denied = 3,
    /// The service name is served already.
    AlreadyServed = 4,
    /// Nobody serves that name.
    NotServed = 5,
    /// The two ends declare different message types.
    SchemaMismatch = 6,
    /// The engine could not set the node up (out of memory or file descriptors).
    Resources = 7,
    /// A topic name or pattern is not valid.
    BadTopic = 8,
    /// No publisher or subscription with that id belongs to this node.
    NotFound = 9,
    /// No queue has that name.
    NoQueue = 10,
    /// The queue exists with other settings, or the declaration is not valid.
    QueueMismatch = 11,
    /// A durable queue on an engine without a data directory (or whose store failed).
    NotDurable = 12,
}

impl ErrorCode {
    /// The code for a wire value, if known.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::BadFrame,
            2 => Self::Version,
            3 => Self::Denied,
            4 => Self::AlreadyServed,
            5 => Self::NotServed,
            6 => Self::SchemaMismatch,
            7 => Self::Resources,
            8 => Self::BadTopic,
            9 => Self::NotFound,
            10 => Self::NoQueue,
            11 => Self::QueueMismatch,
            12 => Self::NotDurable,
            _ => return None,
        })
    }
}

/// Why a frame was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`] (or is too small to hold version and tag).
    #[error("frame length {len} is out of range (2..={MAX_FRAME})")]
    Length {
        /// The length found.
        len: u32,
    },
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version found.
        found: u8,
    },
    /// The tag names no frame.
    #[error("unknown frame tag {tag}")]
    Tag {
        /// The tag found.
        tag: u8,
    },
    /// The frame ended before its fields did.
    #[error("frame truncated")]
    Truncated,
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes after the frame's fields")]
    Trailing(usize),
    /// A string is empty, too long, or not UTF-8.
    #[error("invalid string field: {0}")]
    String(&'static str),
    /// A node or service name breaks the rules of [`check_name`].
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    /// A field holds a value outside its range (a topic name or pattern of the wrong shape,
    /// an unknown policy, a zero queue or timeout).
    #[error("invalid field: {0}")]
    Field(&'static str),
}

/// Why a node or service name is refused (by [`check_name`]).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME`] bytes.
    #[error("the name is {len} bytes long, more than {MAX_NAME}")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The name holds a control character (NUL, a newline, an escape, ...): names end up in
    /// logs, listings and error messages, where such a character could forge or hide text.
    #[error("the name holds the control character {ch:?} at byte {at}")]
    Control {
        /// The character.
        ch: char,
        /// Its byte offset in the name.
        at: usize,
    },
}

/// Checks a node or service name: 1 to [`MAX_NAME`] bytes of UTF-8 without control characters
/// (Unicode category Cc: U+0000 to U+001F and U+007F to U+009F). Nodes check their names with it
/// before sending them; the engine checks every name it parses with it again.
///
/// # Errors
///
/// The [`NameError`] that disqualifies the name.
///
/// # Examples
///
/// ```
/// use ipc_core::control::{NameError, check_name};
///
/// assert_eq!(check_name("billing.quotes"), Ok(()));
/// assert_eq!(check_name(""), Err(NameError::Empty));
/// assert_eq!(check_name("a\0b"), Err(NameError::Control { ch: '\0', at: 1 }));
/// ```
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong { len: name.len() });
    }
    match name.char_indices().find(|(_, ch)| ch.is_control()) {
        Some((at, ch)) => Err(NameError::Control { ch, at }),
        None => Ok(()),
    }
}

// ===== encoding =====

struct Writer(Vec<u8>);

impl Writer {
    fn new(tag: u8) -> Self {
        Self(vec![0, 0, 0, 0, PROTOCOL_VERSION, tag])
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        let bytes = &s.as_bytes()[..s.len().min(MAX_MESSAGE)];
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
        self
    }
    fn schema(&mut self, s: &Schema) -> &mut Self {
        self.str(&s.send.name).u64(s.send.fingerprint);
        self.str(&s.recv.name).u64(s.recv.fingerprint)
    }
    fn ty(&mut self, t: &MessageType) -> &mut Self {
        self.str(&t.name).u64(t.fingerprint)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn options(&mut self, o: &SubscribeOptions) -> &mut Self {
        match o.overflow {
            Overflow::DropOldest => self.u8(0).u64(0),
            Overflow::Block { untether_ms } => self.u8(1).u64(untether_ms),
        };
        self.u32(o.queue).u32(o.history)
    }
    fn finish(&mut self) -> Vec<u8> {
        let len = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        std::mem::take(&mut self.0)
    }
}

mod tag {
    pub(super) const HELLO: u8 = 1;
    pub(super) const READY: u8 = 2;
    pub(super) const SERVE: u8 = 3;
    pub(super) const UNSERVE: u8 = 4;
    pub(super) const OPEN: u8 = 5;
    pub(super) const PUBLISH: u8 = 6;
    pub(super) const UNPUBLISH: u8 = 7;
    pub(super) const SUBSCRIBE: u8 = 8;
    pub(super) const UNSUBSCRIBE: u8 = 9;
    pub(super) const INSPECT: u8 = 10;
    pub(super) const DECLARE_QUEUE: u8 = 11;
    pub(super) const PRODUCE: u8 = 12;
    pub(super) const CONSUME: u8 = 13;
    pub(super) const SEGMENT: u8 = 14;
    pub(super) const WELCOME: u8 = 64;
    pub(super) const SERVE_OK: u8 = 65;
    pub(super) const UNSERVE_OK: u8 = 66;
    pub(super) const OPEN_OK: u8 = 67;
    pub(super) const ACCEPT: u8 = 68;
    pub(super) const ERROR: u8 = 69;
    pub(super) const SCHEMA_MISMATCH: u8 = 70;
    pub(super) const LIMIT: u8 = 71;
    pub(super) const PUBLISH_OK: u8 = 72;
    pub(super) const TOPIC_DONE: u8 = 73;
    pub(super) const SUBSCRIBE_OK: u8 = 74;
    pub(super) const TOPIC_ATTACH: u8 = 75;
    pub(super) const INSPECT_CHUNK: u8 = 76;
    pub(super) const QUEUE_OK: u8 = 77;
    pub(super) const SEGMENT_OK: u8 = 78;
    pub(super) const SEGMENT_DELIVERY: u8 = 79;
}

impl NodeFrame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Hello { name } => Writer::new(tag::HELLO).str(name).finish(),
            Self::Ready => Writer::new(tag::READY).finish(),
            Self::Serve {
                req,
                service,
                schema,
            } => Writer::new(tag::SERVE)
                .u32(*req)
                .str(service)
                .schema(schema)
                .finish(),
            Self::Unserve { req, service } => {
                Writer::new(tag::UNSERVE).u32(*req).u32(*service).finish()
            }
            Self::Open {
                req,
                service,
                schema,
            } => Writer::new(tag::OPEN)
                .u32(*req)
                .str(service)
                .schema(schema)
                .finish(),
            Self::Publish {
                req,
                topic,
                ty,
                history,
            } => Writer::new(tag::PUBLISH)
                .u32(*req)
                .str(topic)
                .ty(ty)
                .u32(*history)
                .finish(),
            Self::Unpublish { req, publisher } => Writer::new(tag::UNPUBLISH)
                .u32(*req)
                .u32(*publisher)
                .finish(),
            Self::Subscribe {
                req,
                pattern,
                ty,
                options,
            } => Writer::new(tag::SUBSCRIBE)
                .u32(*req)
                .str(pattern)
                .ty(ty)
                .options(options)
                .finish(),
            Self::Unsubscribe { req, subscription } => Writer::new(tag::UNSUBSCRIBE)
                .u32(*req)
                .u32(*subscription)
                .finish(),
            Self::Inspect { req } => Writer::new(tag::INSPECT).u32(*req).finish(),
            Self::Segment { req, len } => Writer::new(tag::SEGMENT).u32(*req).u32(*len).finish(),
            Self::DeclareQueue { req, name, spec } => Writer::new(tag::DECLARE_QUEUE)
                .u32(*req)
                .str(name)
                .u8(u8::from(spec.durable))
                .u64(spec.max_length)
                .u8(u8::from(spec.reject_when_full))
                .u32(spec.max_deliveries)
                .str(&spec.dead_letter)
                .u64(spec.lease_ms)
                .finish(),
            Self::Produce { req, queue, ty } => Writer::new(tag::PRODUCE)
                .u32(*req)
                .str(queue)
                .ty(ty)
                .finish(),
            Self::Consume {
                req,
                queue,
                ty,
                prefetch,
                lease_ms,
            } => Writer::new(tag::CONSUME)
                .u32(*req)
                .str(queue)
                .ty(ty)
                .u32(*prefetch)
                .u64(*lease_ms)
                .finish(),
        }
    }
}

impl EngineFrame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Welcome {
                node,
                credits,
                window_bytes,
            } => Writer::new(tag::WELCOME)
                .u32(*node)
                .u32(*credits)
                .u64(*window_bytes)
                .finish(),
            Self::ServeOk { req, service } => {
                Writer::new(tag::SERVE_OK).u32(*req).u32(*service).finish()
            }
            Self::UnserveOk { req } => Writer::new(tag::UNSERVE_OK).u32(*req).finish(),
            Self::OpenOk { req, session, peer } => Writer::new(tag::OPEN_OK)
                .u32(*req)
                .u32(*session)
                .str(peer)
                .finish(),
            Self::Accept {
                service,
                session,
                peer,
            } => Writer::new(tag::ACCEPT)
                .u32(*service)
                .u32(*session)
                .str(peer)
                .finish(),
            Self::SchemaMismatch { req, server } => Writer::new(tag::SCHEMA_MISMATCH)
                .u32(*req)
                .schema(server)
                .finish(),
            Self::Error { req, code, message } => Writer::new(tag::ERROR)
                .u32(*req)
                .u16(*code)
                .str(message)
                .finish(),
            Self::Limit { req, limit, max } => Writer::new(tag::LIMIT)
                .u32(*req)
                .u16(*limit)
                .u64(*max)
                .finish(),
            Self::PublishOk {
                req,
                publisher,
                topic,
                max_message,
            } => Writer::new(tag::PUBLISH_OK)
                .u32(*req)
                .u32(*publisher)
                .u32(*topic)
                .u64(*max_message)
                .finish(),
            Self::TopicDone { req } => Writer::new(tag::TOPIC_DONE).u32(*req).finish(),
            Self::SubscribeOk { req, subscription } => Writer::new(tag::SUBSCRIBE_OK)
                .u32(*req)
                .u32(*subscription)
                .finish(),
            Self::TopicAttach {
                subscription,
                topic,
                name,
                segment_size,
                ty,
            } => Writer::new(tag::TOPIC_ATTACH)
                .u32(*subscription)
                .u32(*topic)
                .str(name)
                .u64(*segment_size)
                .ty(ty)
                .finish(),
            Self::QueueOk { req, id } => Writer::new(tag::QUEUE_OK).u32(*req).u32(*id).finish(),
            Self::SegmentOk { req, segment, len } => Writer::new(tag::SEGMENT_OK)
                .u32(*req)
                .u32(*segment)
                .u32(*len)
                .finish(),
            Self::SegmentDelivery { segment, len } => Writer::new(tag::SEGMENT_DELIVERY)
                .u32(*segment)
                .u32(*len)
                .finish(),
            Self::InspectChunk { req, last, bytes } => {
                let bytes = &bytes[..bytes.len().min(INSPECT_CHUNK)];
                Writer::new(tag::INSPECT_CHUNK)
                    .u32(*req)
                    .u8(u8::from(*last))
                    .u32(bytes.len() as u32)
                    .raw(bytes)
                    .finish()
            }
        }
    }

    /// How many file descriptors ride with this frame (`SCM_RIGHTS`): the receiver takes
    /// that many, in order, from the descriptors that arrived with the frame's bytes.
    pub fn fd_count(&self) -> usize {
        match self {
            Self::Welcome { .. } => 3,
            Self::TopicAttach { .. } | Self::SegmentOk { .. } | Self::SegmentDelivery { .. } => 1,
            _ => 0,
        }
    }
}

// ===== decoding =====

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self, max: usize, allow_empty: bool) -> Result<String, FrameError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(FrameError::String("too long"));
        }
        if len == 0 && !allow_empty {
            return Err(FrameError::String("empty"));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::String("not UTF-8"))
    }
    /// A node or service name: [`check_name`]'s rules.
    fn name(&mut self) -> Result<String, FrameError> {
        let name = self.text(MAX_NAME, false)?;
        check_name(&name)?;
        Ok(name)
    }
    /// A message type's name (chosen by a program, not a user: only length and UTF-8 rules).
    fn type_name(&mut self) -> Result<String, FrameError> {
        self.text(MAX_NAME, false)
    }
    fn schema(&mut self) -> Result<Schema, FrameError> {
        let send = MessageType {
            name: self.type_name()?,
            fingerprint: self.u64()?,
        };
        let recv = MessageType {
            name: self.type_name()?,
            fingerprint: self.u64()?,
        };
        Ok(Schema { send, recv })
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn ty(&mut self) -> Result<MessageType, FrameError> {
        Ok(MessageType {
            name: self.name()?,
            fingerprint: self.u64()?,
        })
    }
    fn topic(&mut self) -> Result<String, FrameError> {
        let name = self.name()?;
        if !valid_topic_name(&name) {
            return Err(FrameError::Field("topic name"));
        }
        Ok(name)
    }
    fn pattern(&mut self) -> Result<String, FrameError> {
        let pattern = self.name()?;
        if !valid_topic_pattern(&pattern) {
            return Err(FrameError::Field("topic pattern"));
        }
        Ok(pattern)
    }
    fn options(&mut self) -> Result<SubscribeOptions, FrameError> {
        let policy = self.u8()?;
        let untether_ms = self.u64()?;
        let overflow = match (policy, untether_ms) {
            (0, 0) => Overflow::DropOldest,
            (0, _) => return Err(FrameError::Field("untether timeout without Block")),
            (1, 0) => return Err(FrameError::Field("zero untether timeout")),
            (1, untether_ms) => Overflow::Block { untether_ms },
            _ => return Err(FrameError::Field("overflow policy")),
        };
        let queue = self.u32()?;
        if queue == 0 {
            return Err(FrameError::Field("zero queue"));
        }
        Ok(SubscribeOptions {
            overflow,
            queue,
            history: self.u32()?,
        })
    }
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Field("flag")),
        }
    }
    fn queue_spec(&mut self) -> Result<QueueSpec, FrameError> {
        let durable = self.flag()?;
        let max_length = self.u64()?;
        let reject_when_full = self.flag()?;
        let max_deliveries = self.u32()?;
        if max_deliveries == 0 {
            return Err(FrameError::Field("zero max deliveries"));
        }
        let dead_letter = self.text(MAX_NAME, true)?;
        if !dead_letter.is_empty() {
            check_name(&dead_letter)?;
        }
        Ok(QueueSpec {
            durable,
            max_length,
            reject_when_full,
            max_deliveries,
            dead_letter,
            lease_ms: self.u64()?,
        })
    }
    fn end(self) -> Result<(), FrameError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(FrameError::Trailing(n)),
        }
    }
}

/// Splits one frame off the front of `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// frame's version-and-fields part and the total bytes it took.
fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes"));
    if !(2..=MAX_FRAME as u32).contains(&len) {
        return Err(FrameError::Length { len });
    }
    let total = 4 + len as usize;
    Ok(buf.get(4..total).map(|body| (body, total)))
}

fn open_body(body: &[u8]) -> Result<(u8, Reader<'_>), FrameError> {
    let mut r = Reader(body);
    let version = r.take(1)?[0];
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { found: version });
    }
    let tag = r.take(1)?[0];
    Ok((tag, r))
}

/// Decodes one node frame from the front of `buf`: `Ok(None)` when `buf` holds only part of a
/// frame; otherwise the frame and how many bytes it used.
///
/// # Errors
///
/// The [`FrameError`] that disqualifies the frame; the connection should then be closed.
pub fn decode_node_frame(buf: &[u8]) -> Result<Option<(NodeFrame, usize)>, FrameError> {
    let Some((body, used)) = split_frame(buf)? else {
        return Ok(None);
    };
    let (t, mut r) = open_body(body)?;
    let frame = match t {
        tag::HELLO => NodeFrame::Hello { name: r.name()? },
        tag::READY => NodeFrame::Ready,
        tag::SERVE => NodeFrame::Serve {
            req: r.u32()?,
            service: r.name()?,
            schema: r.schema()?,
        },
        tag::UNSERVE => NodeFrame::Unserve {
            req: r.u32()?,
            service: r.u32()?,
        },
        tag::OPEN => NodeFrame::Open {
            req: r.u32()?,
            service: r.name()?,
            schema: r.schema()?,
        },
        tag::PUBLISH => NodeFrame::Publish {
            req: r.u32()?,
            topic: r.topic()?,
            ty: r.ty()?,
            history: r.u32()?,
        },
        tag::UNPUBLISH => NodeFrame::Unpublish {
            req: r.u32()?,
            publisher: r.u32()?,
        },
        tag::SUBSCRIBE => NodeFrame::Subscribe {
            req: r.u32()?,
            pattern: r.pattern()?,
            ty: r.ty()?,
            options: r.options()?,
        },
        tag::UNSUBSCRIBE => NodeFrame::Unsubscribe {
            req: r.u32()?,
            subscription: r.u32()?,
        },
        tag::INSPECT => NodeFrame::Inspect { req: r.u32()? },
        tag::DECLARE_QUEUE => NodeFrame::DeclareQueue {
            req: r.u32()?,
            name: r.name()?,
            spec: r.queue_spec()?,
        },
        tag::PRODUCE => NodeFrame::Produce {
            req: r.u32()?,
            queue: r.name()?,
            ty: r.ty()?,
        },
        tag::CONSUME => NodeFrame::Consume {
            req: r.u32()?,
            queue: r.name()?,
            ty: r.ty()?,
            prefetch: match r.u32()? {
                0 => return Err(FrameError::Field("zero prefetch")),
                n => n,
            },
            lease_ms: r.u64()?,
        },
        tag::SEGMENT => NodeFrame::Segment {
            req: r.u32()?,
            len: match r.u32()? {
                0 => return Err(FrameError::Field("empty segment")),
                n => n,
            },
        },
        tag => return Err(FrameError::Tag { tag }),
    };
    r.end()?;
    Ok(Some((frame, used)))
}

/// Decodes one engine frame from the front of `buf` (the node side); as [`decode_node_frame`].
///
/// # Errors
///
/// The [`FrameError`] that disqualifies the frame.
pub fn decode_engine_frame(buf: &[u8]) -> Result<Option<(EngineFrame, usize)>, FrameError> {
    let Some((body, used)) = split_frame(buf)? else {
        return Ok(None);
    };
    let (t, mut r) = open_body(body)?;
    let frame = match t {
        tag::WELCOME => EngineFrame::Welcome {
            node: r.u32()?,
            credits: r.u32()?,
            window_bytes: r.u64()?,
        },
        tag::SERVE_OK => EngineFrame::ServeOk {
            req: r.u32()?,
            service: r.u32()?,
        },
        tag::UNSERVE_OK => EngineFrame::UnserveOk { req: r.u32()? },
        tag::OPEN_OK => EngineFrame::OpenOk {
            req: r.u32()?,
            session: r.u32()?,
            peer: r.name()?,
        },
        tag::ACCEPT => EngineFrame::Accept {
            service: r.u32()?,
            session: r.u32()?,
            peer: r.name()?,
        },
        tag::SCHEMA_MISMATCH => EngineFrame::SchemaMismatch {
            req: r.u32()?,
            server: r.schema()?,
        },
        tag::ERROR => EngineFrame::Error {
            req: r.u32()?,
            code: r.u16()?,
            message: r.text(MAX_MESSAGE, true)?,
        },
        tag::LIMIT => EngineFrame::Limit {
            req: r.u32()?,
            limit: r.u16()?,
            max: r.u64()?,
        },
        tag::PUBLISH_OK => EngineFrame::PublishOk {
            req: r.u32()?,
            publisher: r.u32()?,
            topic: r.u32()?,
            max_message: r.u64()?,
        },
        tag::TOPIC_DONE => EngineFrame::TopicDone { req: r.u32()? },
        tag::SUBSCRIBE_OK => EngineFrame::SubscribeOk {
            req: r.u32()?,
            subscription: r.u32()?,
        },
        tag::TOPIC_ATTACH => EngineFrame::TopicAttach {
            subscription: r.u32()?,
            topic: r.u32()?,
            name: r.topic()?,
            segment_size: r.u64()?,
            ty: r.ty()?,
        },
        tag::QUEUE_OK => EngineFrame::QueueOk {
            req: r.u32()?,
            id: r.u32()?,
        },
        tag::SEGMENT_OK => EngineFrame::SegmentOk {
            req: r.u32()?,
            segment: r.u32()?,
            len: r.u32()?,
        },
        tag::SEGMENT_DELIVERY => EngineFrame::SegmentDelivery {
            segment: r.u32()?,
            len: r.u32()?,
        },
        tag::INSPECT_CHUNK => {
            let req = r.u32()?;
            let last = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(FrameError::Field("last flag")),
            };
            let len = r.u32()? as usize;
            if len > INSPECT_CHUNK {
                return Err(FrameError::Field("inspect chunk length"));
            }
            EngineFrame::InspectChunk {
                req,
                last,
                bytes: r.take(len)?.to_vec(),
            }
        }
        tag => return Err(FrameError::Tag { tag }),
    };
    r.end()?;
    Ok(Some((frame, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            send: MessageType {
                name: "Req".into(),
                fingerprint: 1,
            },
            recv: MessageType {
                name: "Resp".into(),
                fingerprint: 2,
            },
        }
    }

    #[test]
    fn node_frames_round_trip() {
        let frames = [
            NodeFrame::Hello {
                name: "billing".into(),
            },
            NodeFrame::Ready,
            NodeFrame::Serve {
                req: 1,
                service: "quotes".into(),
                schema: schema(),
            },
            NodeFrame::Unserve { req: 2, service: 9 },
            NodeFrame::Open {
                req: 3,
                service: "quotes".into(),
                schema: Schema::bytes(),
            },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend(f.encode());
        }
        let mut at = 0;
        for f in &frames {
            let (got, used) = decode_node_frame(&stream[at..]).unwrap().unwrap();
            assert_eq!(&got, f);
            at += used;
        }
        assert_eq!(at, stream.len());
        // Every strict prefix of a frame asks for more bytes.
        let one = frames[2].encode();
        for cut in 0..one.len() {
            assert_eq!(decode_node_frame(&one[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn engine_frames_round_trip() {
        let frames = [
            EngineFrame::Welcome {
                node: 4,
                credits: 64,
                window_bytes: 4 << 20,
            },
            EngineFrame::ServeOk { req: 1, service: 2 },
            EngineFrame::UnserveOk { req: 1 },
            EngineFrame::SchemaMismatch {
                req: 2,
                server: schema(),
            },
            EngineFrame::OpenOk {
                req: 3,
                session: 4,
                peer: "p".into(),
            },
            EngineFrame::Accept {
                service: 1,
                session: 5,
                peer: "c".into(),
            },
            EngineFrame::Error {
                req: 0,
                code: ErrorCode::NotServed as u16,
                message: String::new(),
            },
            EngineFrame::Limit {
                req: 7,
                limit: Limit::SessionsPerOpener as u16,
                max: u64::MAX,
            },
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(decode_engine_frame(&bytes).unwrap(), Some((f, bytes.len())));
        }
    }

    #[test]
    fn hostile_frames_are_errors() {
        let huge = [0xff, 0xff, 0xff, 0x7f, 1, 1];
        assert!(matches!(
            decode_node_frame(&huge),
            Err(FrameError::Length { .. })
        ));
        let short = [1, 0, 0, 0, 1];
        assert!(matches!(
            decode_node_frame(&short),
            Err(FrameError::Length { len: 1 })
        ));
        let mut wrong_version = NodeFrame::Ready.encode();
        wrong_version[4] = 9;
        assert_eq!(
            decode_node_frame(&wrong_version),
            Err(FrameError::Version { found: 9 })
        );
        let mut unknown = NodeFrame::Ready.encode();
        unknown[5] = 200;
        assert_eq!(
            decode_node_frame(&unknown),
            Err(FrameError::Tag { tag: 200 })
        );
        // A Hello whose string claims more bytes than the frame holds.
        let lying = [5, 0, 0, 0, PROTOCOL_VERSION, 1, 10, 0, b'a'];
        assert_eq!(decode_node_frame(&lying), Err(FrameError::Truncated));
        // Trailing bytes.
        let mut trailing = NodeFrame::Ready.encode();
        trailing.push(0);
        trailing[0] += 1;
        assert_eq!(decode_node_frame(&trailing), Err(FrameError::Trailing(1)));
        // Empty name and invalid UTF-8.
        let empty = NodeFrame::Hello {
            name: String::new(),
        }
        .encode();
        assert!(matches!(
            decode_node_frame(&empty),
            Err(FrameError::String(_))
        ));
        let bad_utf8 = [5, 0, 0, 0, PROTOCOL_VERSION, 1, 1, 0, 0xff];
        assert_eq!(
            decode_node_frame(&bad_utf8),
            Err(FrameError::String("not UTF-8"))
        );
    }

    fn typed() -> MessageType {
        MessageType {
            name: "Tick".into(),
            fingerprint: 0xfeed,
        }
    }

    #[test]
    fn topic_frames_round_trip() {
        let node = [
            NodeFrame::Publish {
                req: 1,
                topic: "sensors/temp".into(),
                ty: typed(),
                history: 8,
            },
            NodeFrame::Unpublish {
                req: 2,
                publisher: 3,
            },
            NodeFrame::Subscribe {
                req: 3,
                pattern: "sensors/**".into(),
                ty: MessageType::bytes(),
                options: SubscribeOptions::default(),
            },
            NodeFrame::Subscribe {
                req: 4,
                pattern: "**".into(),
                ty: typed(),
                options: SubscribeOptions {
                    overflow: Overflow::Block { untether_ms: 250 },
                    queue: 1,
                    history: u32::MAX,
                },
            },
            NodeFrame::Unsubscribe {
                req: 5,
                subscription: 6,
            },
            NodeFrame::Inspect { req: 7 },
            NodeFrame::DeclareQueue {
                req: 8,
                name: "jobs".into(),
                spec: QueueSpec::default(),
            },
            NodeFrame::DeclareQueue {
                req: 9,
                name: "jobs".into(),
                spec: QueueSpec {
                    durable: true,
                    max_length: 10,
                    reject_when_full: true,
                    max_deliveries: 3,
                    dead_letter: "jobs.dead".into(),
                    lease_ms: 500,
                },
            },
            NodeFrame::Produce {
                req: 10,
                queue: "jobs".into(),
                ty: typed(),
            },
            NodeFrame::Consume {
                req: 11,
                queue: "jobs".into(),
                ty: MessageType::bytes(),
                prefetch: 64,
                lease_ms: 0,
            },
        ];
        for f in node {
            let bytes = f.encode();
            assert_eq!(decode_node_frame(&bytes).unwrap(), Some((f, bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(decode_node_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
        }
        let engine = [
            EngineFrame::PublishOk {
                req: 1,
                publisher: 2,
                topic: 3,
                max_message: 8 << 20,
            },
            EngineFrame::TopicDone { req: 4 },
            EngineFrame::QueueOk { req: 4, id: 9 },
            EngineFrame::SubscribeOk {
                req: 5,
                subscription: 6,
            },
            EngineFrame::TopicAttach {
                subscription: 6,
                topic: 3,
                name: "sensors/temp".into(),
                segment_size: 1 << 20,
                ty: typed(),
            },
            EngineFrame::InspectChunk {
                req: 7,
                last: false,
                bytes: vec![b'{'; INSPECT_CHUNK],
            },
            EngineFrame::InspectChunk {
                req: 7,
                last: true,
                bytes: Vec::new(),
            },
        ];
        for f in engine {
            let bytes = f.encode();
            assert_eq!(
                f.fd_count(),
                usize::from(matches!(f, EngineFrame::TopicAttach { .. }))
            );
            assert_eq!(decode_engine_frame(&bytes).unwrap(), Some((f, bytes.len())));
        }
        assert_eq!(
            EngineFrame::Welcome {
                node: 1,
                credits: 1,
                window_bytes: 1,
            }
            .fd_count(),
            3
        );
        // A chunk that claims more than INSPECT_CHUNK bytes, or a bad flag, is an error.
        let mut chunk = EngineFrame::InspectChunk {
            req: 1,
            last: true,
            bytes: vec![1],
        }
        .encode();
        chunk[10] = 2;
        assert_eq!(
            decode_engine_frame(&chunk),
            Err(FrameError::Field("last flag"))
        );
        chunk[10] = 1;
        chunk[11..15].copy_from_slice(&(INSPECT_CHUNK as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_engine_frame(&chunk),
            Err(FrameError::Field("inspect chunk length"))
        );
        assert_eq!(ErrorCode::from_u16(8), Some(ErrorCode::BadTopic));
        assert_eq!(ErrorCode::from_u16(9), Some(ErrorCode::NotFound));
    }

    #[test]
    fn hostile_topic_frames_are_errors() {
        let publish = |topic: &str| {
            NodeFrame::Publish {
                req: 1,
                topic: topic.into(),
                ty: MessageType::bytes(),
                history: 0,
            }
            .encode()
        };
        for bad in ["a/**", "**", "a//b", "/a", "a/", "a/*/b", "a*"] {
            assert_eq!(
                decode_node_frame(&publish(bad)),
                Err(FrameError::Field("topic name")),
                "{bad}"
            );
        }
        let subscribe = |pattern: &str, options: SubscribeOptions| {
            NodeFrame::Subscribe {
                req: 1,
                pattern: pattern.into(),
                ty: MessageType::bytes(),
                options,
            }
            .encode()
        };
        let ok = SubscribeOptions::default();
        for bad in ["a/**/b", "**/a", "a/*", "a**", "/**", "a//**", "***"] {
            assert_eq!(
                decode_node_frame(&subscribe(bad, ok)),
                Err(FrameError::Field("topic pattern")),
                "{bad}"
            );
        }
        for good in ["a", "a/b", "a/**", "a/b/**", "**"] {
            assert!(decode_node_frame(&subscribe(good, ok)).is_ok(), "{good}");
        }
        let zero_queue = SubscribeOptions { queue: 0, ..ok };
        assert_eq!(
            decode_node_frame(&subscribe("a", zero_queue)),
            Err(FrameError::Field("zero queue"))
        );
        let zero_untether = SubscribeOptions {
            overflow: Overflow::Block { untether_ms: 0 },
            ..ok
        };
        assert_eq!(
            decode_node_frame(&subscribe("a", zero_untether)),
            Err(FrameError::Field("zero untether timeout"))
        );
        // Policy byte 7, and a DropOldest carrying a timeout, patched into a valid frame.
        let mut frame = subscribe("a", ok);
        let policy_at = frame.len() - 17;
        assert_eq!(frame[policy_at], 0);
        frame[policy_at] = 7;
        assert_eq!(
            decode_node_frame(&frame),
            Err(FrameError::Field("overflow policy"))
        );
        frame[policy_at] = 0;
        frame[policy_at + 1] = 1;
        assert_eq!(
            decode_node_frame(&frame),
            Err(FrameError::Field("untether timeout without Block"))
        );
        // A cut-short Subscribe and trailing bytes after Unsubscribe.
        let whole = subscribe("a/**", ok);
        let mut short = whole[..whole.len() - 1].to_vec();
        short[0] -= 1;
        assert_eq!(decode_node_frame(&short), Err(FrameError::Truncated));
        let mut trailing = NodeFrame::Unsubscribe {
            req: 1,
            subscription: 2,
        }
        .encode();
        trailing.push(0);
        trailing[0] += 1;
        assert_eq!(decode_node_frame(&trailing), Err(FrameError::Trailing(1)));
        // An attach naming a pattern instead of a topic.
        let attach = EngineFrame::TopicAttach {
            subscription: 1,
            topic: 1,
            name: "a/**".into(),
            segment_size: 1,
            ty: MessageType::bytes(),
        }
        .encode();
        assert_eq!(
            decode_engine_frame(&attach),
            Err(FrameError::Field("topic name"))
        );
    }

    #[test]
    fn topic_names_and_patterns() {
        assert!(valid_topic_name("sensors"));
        assert!(valid_topic_name("sensors/temp/room-1"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(&"a".repeat(MAX_NAME + 1)));
        assert!(valid_topic_name(&"a".repeat(MAX_NAME)));
        assert!(valid_topic_pattern("sensors/**"));
        assert!(!valid_topic_pattern(&format!(
            "{}/**",
            "a".repeat(MAX_NAME - 2)
        )));
        assert!(!valid_topic_pattern("sensors/*"));
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        for (name, ch, at) in [
            ("a\0b", '\0', 1),
            ("\nx", '\n', 0),
            ("x\u{1b}[2J", '\u{1b}', 1),
        ] {
            let want = FrameError::Name(NameError::Control { ch, at });
            let hello = NodeFrame::Hello { name: name.into() }.encode();
            assert_eq!(decode_node_frame(&hello), Err(want.clone()), "{name:?}");
            for frame in [
                NodeFrame::Serve {
                    req: 1,
                    service: name.into(),
                    schema: schema(),
                },
                NodeFrame::Open {
                    req: 1,
                    service: name.into(),
                    schema: Schema::bytes(),
                },
            ] {
                assert_eq!(decode_node_frame(&frame.encode()), Err(want.clone()));
            }
        }
        // The C1 range is control too; ordinary non-ASCII text is not.
        assert_eq!(
            check_name("a\u{85}"),
            Err(NameError::Control {
                ch: '\u{85}',
                at: 1
            })
        );
        assert_eq!(check_name("grüße/日本"), Ok(()));
        assert_eq!(
            check_name(&"n".repeat(MAX_NAME + 1)),
            Err(NameError::TooLong { len: MAX_NAME + 1 })
        );
        // A message type's name is the program's, not checked for control characters.
        let mut typed = schema();
        typed.send.name = "odd\ttype".into();
        let serve = NodeFrame::Serve {
            req: 1,
            service: "ok".into(),
            schema: typed,
        };
        assert!(decode_node_frame(&serve.encode()).is_ok());
    }

    #[test]
    fn limits_round_trip_their_wire_values() {
        for value in 0..=16u16 {
            if let Some(limit) = Limit::from_u16(value) {
                assert_eq!(limit as u16, value);
                assert!(!limit.name().is_empty());
            }
        }
        assert_eq!(Limit::from_u16(9), Some(Limit::QueuedFrames));
        assert_eq!(Limit::from_u16(11), Some(Limit::NodeMemoryBudget));
        assert!(Limit::NodeMemoryBudget.is_budget() && !Limit::QueuedFrames.is_budget());
        assert_eq!(Limit::from_u16(12), None);
    }

    #[test]
    fn schemas_match_crosswise() {
        let server = schema();
        let client = Schema {
            send: server.recv.clone(),
            recv: server.send.clone(),
        };
        assert!(client.matches(&server));
        assert!(!server.matches(&server));
        assert!(Schema::bytes().matches(&Schema::bytes()));
    }
}
