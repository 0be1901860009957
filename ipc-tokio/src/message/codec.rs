//! Codecs: how a [`Message`](super::Message) becomes bytes in shared memory and back.
//!
//! A [`Codec`] works in two steps on the send side, so the payload is serialised straight into
//! the loaned sub-block of the sender's transmit arena, never into an intermediate `Vec`:
//!
//! ```text
//!   encoded_len(&msg) ──► n ──► loan n bytes ──► encode_into(&msg, &mut loan[..n]) ──► submit
//! ```
//!
//! and in one step on the receive side: [`Codec::decode`] reads the received slice in place.
//! The slice comes from a peer, so decoding treats it as hostile input: any byte string either
//! decodes to exactly one value that fills the whole slice or yields a [`DecodeError`]; it never
//! panics, and the memory it may claim is bounded (see [`Bincode::DECODE_LIMIT`]).
//!
//! Two codecs ship: [`Bincode`] (the default; bincode 2 through its serde API) and, with the
//! `postcard` feature, `Postcard` (postcard 1). Both ends of a session must use the same one;
//! [`Codec::NAME`] identifies it.
//!
//! # Examples
//!
//! ```
//! use ipc_tokio::message::{Bincode, Codec, DecodeError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let value = (7u32, "seven".to_owned(), vec![7u8; 7]);
//! let n = Bincode::encoded_len(&value)?;
//! let mut loan = vec![0u8; n]; // stands in for a loaned sub-block
//! assert_eq!(Bincode::encode_into(&value, &mut loan)?, n);
//!
//! let back: (u32, String, Vec<u8>) = Bincode::decode(&loan)?;
//! assert_eq!(back, value);
//!
//! // A truncated payload is an error, not a panic.
//! let err = Bincode::decode::<(u32, String, Vec<u8>)>(&loan[..n - 1]).unwrap_err();
//! assert_eq!(err, DecodeError::UnexpectedEnd);
//! # Ok(())
//! # }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A wire format for messages, designed to write straight into a shared-memory loan.
///
/// A codec is a zero-sized marker type; all its functions are associated functions, so a session
/// is generic over its codec at no cost. Implementations must be deterministic (the same value
/// always encodes to the same bytes, of the length [`encoded_len`](Codec::encoded_len) reported)
/// and must never panic on any input to [`decode`](Codec::decode).
///
/// One limit is beyond a codec's reach: serde decodes recursively, so a *recursive* message type
/// (one that contains itself through a `Box` or a `Vec`) can be nested by a hostile payload as
/// deep as its length allows, and a deep enough nesting exhausts the receiving thread's stack.
/// Keep message types that cross a trust boundary non-recursive.
pub trait Codec: Send + Sync + 'static {
    /// A short, stable name of the wire format (for example `"bincode2"`), exchanged when a
    /// session opens so two ends using different codecs fail early with a clear error.
    const NAME: &'static str;

    /// Returns the exact number of bytes [`encode_into`](Codec::encode_into) will write for
    /// `value`, without writing them anywhere.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Serialize`] if `value` cannot be serialised in this format;
    /// [`EncodeError::TooLarge`] if the encoding exceeds what the codec accepts.
    fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError>;

    /// Serialises `value` in place into `buf`, starting at its first byte, and returns the number
    /// of bytes written.
    ///
    /// `buf` is normally exactly [`encoded_len`](Codec::encoded_len) bytes long. If it is longer,
    /// the bytes after the returned length are left untouched and the caller must submit only
    /// `&buf[..n]` (decoding rejects trailing bytes).
    ///
    /// # Errors
    ///
    /// [`EncodeError::BufferTooSmall`] if the encoding does not fit in `buf` (what was written so
    /// far is garbage); [`EncodeError::Serialize`] and [`EncodeError::TooLarge`] as for
    /// [`encoded_len`](Codec::encoded_len).
    fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError>;

    /// Decodes one `T` that must fill all of `buf`, reading the bytes in place.
    ///
    /// `buf` is untrusted: whatever it holds, this returns a value or an error, never panics, and
    /// never allocates more than the codec's documented bound.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnexpectedEnd`] if `buf` ends inside the value,
    /// [`DecodeError::TrailingBytes`] if the value ends before `buf` does,
    /// [`DecodeError::LimitExceeded`] if the value would claim more memory than allowed, and
    /// [`DecodeError::Invalid`] for any other malformed input.
    fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, DecodeError>;
}

/// Why a value could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The buffer given to [`Codec::encode_into`] is smaller than the encoding.
    #[error("the encoded message does not fit in a buffer of {capacity} bytes")]
    BufferTooSmall {
        /// The length of the buffer that was too small.
        capacity: usize,
    },
    /// The encoding is longer than the codec accepts, so the receiver would refuse it.
    #[error("the encoded message is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// The length of the encoding.
        len: usize,
        /// The largest encoding the codec accepts.
        max: usize,
    },
    /// The value cannot be serialised in this format: its `Serialize` impl returned an error, or
    /// it uses something the format cannot represent (for example a sequence of unknown length).
    #[error("cannot serialise the message: {reason}")]
    Serialize {
        /// The serialiser's description of the failure.
        reason: String,
    },
}

/// Why a received payload could not be decoded. The payload is left as it was; decoding has no
/// side effects.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended before the value did (truncated, or a length prefix pointing past
    /// the end).
    #[error("the message is truncated: the payload ended inside the value")]
    UnexpectedEnd,
    /// The value ended before the payload did; the extra bytes mean sender and receiver disagree
    /// on the type.
    #[error("the message used {used} of the payload's {len} bytes")]
    TrailingBytes {
        /// How many bytes the decoded value used.
        used: usize,
        /// The length of the payload.
        len: usize,
    },
    /// Decoding would claim more memory than allowed (a hostile or corrupt length prefix, or a
    /// message larger than the codec accepts).
    #[error("the message would need more than {limit} bytes of memory to decode")]
    LimitExceeded {
        /// The limit that applied to this payload, in bytes.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the type: a bad enum tag, bool or UTF-8 string, an
    /// error from the type's `Deserialize` impl, or a serde feature the format cannot decode.
    #[error("the message is malformed: {reason}")]
    Invalid {
        /// The deserialiser's description of the failure.
        reason: String,
    },
}

// ===== impl Bincode =====

/// The default codec: bincode 2 through its serde API, with `bincode::config::standard()`
/// (little-endian, variable-length integers).
///
/// Decoding is bounded: bincode charges every value it decodes against a limit (its size in
/// memory, for example 8 bytes for a `u64`, `n` bytes for a string of `n` bytes) and stops with
/// [`DecodeError::LimitExceeded`] *before* allocating when the next claim would pass it, so a
/// hostile length prefix (a `Vec` of 2^60 bytes) costs nothing. The limit is
/// [`DECODE_LIMIT`](Bincode::DECODE_LIMIT), lowered for short payloads: a valid payload
/// claims at most 16 bytes per byte it holds (a `u128` is 1 to 17 bytes on the wire, 16 in
/// memory), so a payload of `len` bytes decodes under the smallest of 64 KiB, 1 MiB, 16 MiB,
/// 256 MiB, 4 GiB and 64 GiB that is at least `16 * len`. A payload of a few bytes therefore can never make bincode
/// allocate more than 64 KiB for a string or a byte buffer (and serde itself reserves at most
/// 1 MiB up front for a sequence, whatever its length prefix says; the rest grows only as
/// elements actually decode). Messages whose encoding is longer than
/// [`MAX_ENCODING`](Bincode::MAX_ENCODING) (the largest payload a session carries, 4 GiB - 1)
/// are refused when encoding ([`EncodeError::TooLarge`]); a message of many small integers can
/// still claim more in memory than it takes on the wire, and is then refused when decoding.
///
/// bincode is not self-describing, so serde features that need `deserialize_any` (untagged or
/// internally tagged enums, `#[serde(flatten)]`) decode to [`DecodeError::Invalid`]; use
/// externally tagged enums (serde's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bincode;

impl Bincode {
    /// The most memory one decode may claim: 16 bytes for each byte of the longest encoding
    /// (64 GiB on 64-bit targets), for a payload that needs it; shorter payloads get the
    /// lower limits of the type docs.
    pub const DECODE_LIMIT: usize = if usize::BITS >= 64 {
        (64u64 << 30) as usize
    } else {
        usize::MAX
    };

    /// The longest encoding accepted: the largest payload a session carries (4 GiB - 1,
    /// see [`MAX_SESSION_PAYLOAD`](crate::MAX_SESSION_PAYLOAD)), in hand-off segments past
    /// the arenas.
    pub const MAX_ENCODING: usize = u32::MAX as usize;

    /// Claimed bytes per payload byte that a valid payload never exceeds (see the type docs).
    const MAX_EXPANSION: usize = 16;
}

/// Bincode's configuration for encoding: the wire format only, no limit.
const fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes with a claim limit of `LIMIT` bytes, which is part of the configuration's type.
fn bincode_decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    buf: &[u8],
) -> Result<T, DecodeError> {
    let config = bincode_config().with_limit::<LIMIT>();
    // The borrowing decoder: it lends slices of `buf` to the visitors, which lets
    // `shared_bytes` fields point into the payload (other types copy, as before).
    let (value, used) = bincode::serde::borrow_decode_from_slice::<T, _>(buf, config)
        .map_err(|e| decode_error_from_bincode(e, LIMIT))?;
    if used != buf.len() {
        return Err(DecodeError::TrailingBytes {
            used,
            len: buf.len(),
        });
    }
    Ok(value)
}

fn decode_error_from_bincode(err: bincode::error::DecodeError, limit: usize) -> DecodeError {
    use bincode::error::DecodeError as E;
    match err {
        E::UnexpectedEnd { .. } => DecodeError::UnexpectedEnd,
        E::LimitExceeded => DecodeError::LimitExceeded { limit },
        other => DecodeError::Invalid {
            reason: other.to_string(),
        },
    }
}

fn encode_error_from_bincode(err: bincode::error::EncodeError, capacity: usize) -> EncodeError {
    match err {
        bincode::error::EncodeError::UnexpectedEnd => EncodeError::BufferTooSmall { capacity },
        other => EncodeError::Serialize {
            reason: other.to_string(),
        },
    }
}

fn check_len(len: usize, max: usize) -> Result<usize, EncodeError> {
    if len > max {
        Err(EncodeError::TooLarge { len, max })
    } else {
        Ok(len)
    }
}

impl Codec for Bincode {
    const NAME: &'static str = "bincode2";

    fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
        let mut counter = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(value, &mut counter, bincode_config())
            .map_err(|e| encode_error_from_bincode(e, usize::MAX))?;
        check_len(counter.bytes_written, Self::MAX_ENCODING)
    }

    fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let capacity = buf.len();
        let written = bincode::serde::encode_into_slice(value, buf, bincode_config())
            .map_err(|e| encode_error_from_bincode(e, capacity))?;
        check_len(written, Self::MAX_ENCODING)
    }

    fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, DecodeError> {
        const KIB: usize = 1 << 10;
        const MIB: usize = 1 << 20;
        let need = buf.len().saturating_mul(Self::MAX_EXPANSION);
        if need <= 64 * KIB {
            bincode_decode_limited::<T, { 64 * KIB }>(buf)
        } else if need <= MIB {
            bincode_decode_limited::<T, MIB>(buf)
        } else if need <= 16 * MIB {
            bincode_decode_limited::<T, { 16 * MIB }>(buf)
        } else if need <= 256 * MIB {
            bincode_decode_limited::<T, { 256 * MIB }>(buf)
        } else if need <= Self::DECODE_LIMIT / 16 {
            bincode_decode_limited::<T, { Bincode::DECODE_LIMIT / 16 }>(buf)
        } else {
            bincode_decode_limited::<T, { Bincode::DECODE_LIMIT }>(buf)
        }
    }
}

// ===== impl Postcard =====

/// The postcard 1 codec (cargo feature `postcard`): a compact, stable, documented wire format
/// (varint integers, no padding), often smaller than bincode for small messages.
///
/// Decoding never allocates more than the payload justifies: strings and byte buffers are
/// length-checked against the payload before they are copied, and sequences grow as their
/// elements decode (serde caps the initial capacity). Like bincode, postcard is not
/// self-describing, so untagged and internally tagged enums and `#[serde(flatten)]` do not
/// decode.
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const NAME: &'static str = "postcard1";

    fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
        postcard::experimental::serialized_size(value).map_err(|e| EncodeError::Serialize {
            reason: e.to_string(),
        })
    }

    fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let capacity = buf.len();
        match postcard::to_slice(value, buf) {
            Ok(used) => Ok(used.len()),
            Err(postcard::Error::SerializeBufferFull) => {
                Err(EncodeError::BufferTooSmall { capacity })
            }
            Err(e) => Err(EncodeError::Serialize {
                reason: e.to_string(),
            }),
        }
    }

    fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, DecodeError> {
        match postcard::take_from_bytes::<T>(buf) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(DecodeError::TrailingBytes {
                used: buf.len() - rest.len(),
                len: buf.len(),
            }),
            Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::UnexpectedEnd),
            Err(e) => Err(DecodeError::Invalid {
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
