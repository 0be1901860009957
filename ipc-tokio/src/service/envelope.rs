//! The envelope of a request or reply: `[id: u64 LE][kind: u8]`, then the body.
//!
//! ```text
//!  0                 8      9
//!  +-----------------+------+----------------------------------+
//!  | request id      | kind | body: codec bytes (Request,      |
//!  |                 |      | Reply) or UTF-8 (Error, Panic)   |
//!  +-----------------+------+----------------------------------+
//! ```

use bytes::Bytes;
use serde::Serialize;

use crate::error::SessionError;
use crate::message::Codec;
use crate::session::{Loan, SessionSink};

pub(crate) const HEADER: usize = 9;

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Request = 0,
    Reply = 1,
    Error = 2,
    Panic = 3,
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
            _ => return None,
        };
        Some(Self {
            id,
            kind,
            body: bytes.slice(HEADER..),
        })
    }
}

/// The envelope's size for `body`.
pub(crate) fn encoded_size<C: Codec, T: Serialize>(body: &T) -> Result<usize, SessionError> {
    C::encoded_len(body)
        .map(|len| HEADER + len)
        .map_err(|e| SessionError::Codec(e.to_string()))
}

/// Writes header and body into a loan of [`encoded_size`] bytes, in place.
pub(crate) fn fill<C: Codec, T: Serialize>(
    loan: &mut Loan,
    id: u64,
    kind: Kind,
    body: &T,
) -> Result<(), SessionError> {
    write_header(loan, id, kind);
    let written = C::encode_into(body, &mut loan[HEADER..])
        .map_err(|e| SessionError::Codec(e.to_string()))?;
    loan.truncate(HEADER + written);
    Ok(())
}

/// Loans exactly the envelope's size and writes header and body in place. (`body` is not
/// borrowed across the wait for the loan, so it need not be `Sync`.)
pub(crate) async fn loan_encoded<C: Codec, T: Serialize>(
    sink: &mut SessionSink<Bytes, C>,
    id: u64,
    kind: Kind,
    body: T,
) -> Result<(Loan, T), SessionError> {
    let size = encoded_size::<C, T>(&body)?;
    let mut loan = sink.loan(size).await?;
    fill::<C, T>(&mut loan, id, kind, &body)?;
    Ok((loan, body))
}

/// Loans and writes an envelope whose body is raw text.
pub(crate) async fn loan_text<C>(
    sink: &mut SessionSink<Bytes, C>,
    id: u64,
    kind: Kind,
    text: &str,
) -> Result<Loan, SessionError> {
    let mut loan = sink.loan(HEADER + text.len()).await?;
    write_header(&mut loan, id, kind);
    loan[HEADER..].copy_from_slice(text.as_bytes());
    Ok(loan)
}

fn write_header(buf: &mut [u8], id: u64, kind: Kind) {
    buf[..8].copy_from_slice(&id.to_le_bytes());
    buf[8] = kind as u8;
}
