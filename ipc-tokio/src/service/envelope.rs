//! The envelope of a request or reply: `[id: u64 LE][kind: u8]`, then the body.
//!
//! ```text
//!  0                 8      9
//!  +-----------------+------+----------------------------------+
//!  | request id      | kind | body: codec bytes (Request,      |
//!  |                 |      | Reply), UTF-8 (Error, Panic), or |
//!  |                 |      | len and max, u64 LE (TooLarge)   |
//!  +-----------------+------+----------------------------------+
//! ```

use crate::error::{SessionError, encode_error};
use crate::message::{Codec, Message};
use crate::session::SessionSink;
use bytes::Bytes;

pub(crate) const HEADER: usize = 9;

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Request = 0,
    Reply = 1,
    Error = 2,
    Panic = 3,
    /// The reply could never fit the session: its length and the limit.
    TooLarge = 4,
}

/// A parsed envelope: id, kind, and the body (still in shared memory).
pub(crate) struct Envelope {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) body: Bytes,
}

impl Envelope {
    /// Splits a received message; `None` if it is too short or of an unknown kind.
    pub(crate) fn parse(bytes: Bytes) -> Option<Self> {
        if bytes.len() < HEADER {
            return None;
        }
        let id = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        let kind = match bytes[8] {
            0 => Kind::Request,
            1 => Kind::Reply,
            2 => Kind::Error,
            3 => Kind::Panic,
            4 => Kind::TooLarge,
            _ => return None,
        };
        Some(Self {
            id,
            kind,
            body: bytes.slice(HEADER..),
        })
    }
}

/// The envelope's size for `body`: at most `max_payload`, or [`SessionError::TooLarge`] with
/// the body's length and the largest body that fits (the lower of the codec's limit and the
/// session's, less the header).
pub(crate) fn encoded_size<C: Codec, T: Message>(
    body: &T,
    max_payload: u64,
) -> Result<usize, SessionError> {
    let max_body = max_payload.saturating_sub(HEADER as u64);
    let len = C::encoded_len(body).map_err(|e| match encode_error::<T, C>(e) {
        SessionError::TooLarge { len, max } => SessionError::TooLarge {
            len,
            max: max.min(max_body),
        },
        other => other,
    })?;
    if len as u64 > max_body {
        return Err(SessionError::TooLarge {
            len: len as u64,
            max: max_body,
        });
    }
    Ok(HEADER + len)
}

/// Feeds the envelope to `sink`, header and body encoded in place: into the sink's open frame
/// when small (so that a burst of calls or replies travels as one frame), else into a loan
/// of its own. (`body` is moved into the writer, not borrowed across the waits, so it need
/// not be `Sync`.)
pub(crate) async fn feed_encoded<C: Codec, T: Message>(
    sink: &mut SessionSink<Bytes, C>,
    id: u64,
    kind: Kind,
    body: T,
) -> Result<(), SessionError> {
    let size = encoded_size::<C, T>(&body, sink.max_payload())?;
    sink.feed_with(size, move |buf| {
        write_header(buf, id, kind);
        let written = C::encode_into(&body, &mut buf[HEADER..]).map_err(encode_error::<T, C>)?;
        Ok(HEADER + written)
    })
    .await
}

/// Feeds an envelope whose body is raw bytes (text, or a [`Kind::TooLarge`]'s figures).
pub(crate) async fn feed_raw<C>(
    sink: &mut SessionSink<Bytes, C>,
    id: u64,
    kind: Kind,
    body: &[u8],
) -> Result<(), SessionError> {
    let body = body.to_vec();
    sink.feed_with(HEADER + body.len(), move |buf| {
        write_header(buf, id, kind);
        buf[HEADER..HEADER + body.len()].copy_from_slice(&body);
        Ok(HEADER + body.len())
    })
    .await
}

/// Reads the body of a [`Kind::TooLarge`] envelope: `(len, max)`.
pub(crate) fn parse_too_large(body: &[u8]) -> Option<(u64, u64)> {
    let len = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let max = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    (body.len() == 16).then_some((len, max))
}

fn write_header(buf: &mut [u8], id: u64, kind: Kind) {
    buf[..8].copy_from_slice(&id.to_le_bytes());
    buf[8] = kind as u8;
}
