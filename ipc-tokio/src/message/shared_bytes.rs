//! Zero-copy `Bytes` fields: `#[serde(with = "shmlink::message::shared_bytes")]`.
//!
//! A typed message is decoded straight from the received shared memory, but serde's own
//! byte types (`Vec<u8>`, `serde_bytes::ByteBuf`, and `bytes::Bytes` with its serde feature)
//! copy their bytes out into the heap. A [`Bytes`] field marked with this module does not:
//! when a session or service decodes a message, the field becomes a view into the received
//! payload itself, like the items of a byte session. Large blobs inside typed messages then
//! cost no copy and no allocation on the receiving side.
//!
//! Like those items, the view holds its payload's sub-block of the receive arena, and with
//! it one of the sender's credits, until the last clone is dropped: keep it as long as you
//! need it, but copy out (`Bytes::copy_from_slice`) what you store for long.
//!
//! Outside a session (a codec called directly, or a format that does not lend its input),
//! the field decodes as an ordinary copy. It serialises as serde bytes, so the other end may
//! use `Vec<u8>` with `serde_bytes` for the same layout.
//!
//! ```
//! use bytes::Bytes;
//! use ipc_tokio::message::{Bincode, Codec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Frame {
//!     seq: u64,
//!     #[serde(with = "ipc_tokio::message::shared_bytes")]
//!     pixels: Bytes,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let frame = Frame { seq: 1, pixels: Bytes::from(vec![7; 4096]) };
//! let mut buf = vec![0u8; Bincode::encoded_len(&frame)?];
//! Bincode::encode_into(&frame, &mut buf)?;
//! // Decoded outside a session (as here) the field is a copy; from a session, a view.
//! assert_eq!(Bincode::decode::<Frame>(&buf)?, frame);
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

thread_local! {
    /// The payload being decoded on this thread, if the decode was started by a session.
    static OWNER: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `owner` as the payload that fields of this module may borrow from.
pub(crate) fn with_owner<R>(owner: &Bytes, decode: impl FnOnce() -> R) -> R {
    /// Restores the previous owner even if `decode` panics (a decode inside a decode).
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OWNER.with(|o| *o.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(OWNER.with(|o| o.borrow_mut().replace(owner.clone())));
    decode()
}

/// A view of `bytes` into the payload being decoded, or a copy if they lie elsewhere.
fn share(bytes: &[u8]) -> Bytes {
    OWNER
        .with(|o| {
            let owner = o.borrow();
            let owner = owner.as_ref()?;
            let (start, end) = (
                owner.as_ptr() as usize,
                owner.as_ptr() as usize + owner.len(),
            );
            let at = bytes.as_ptr() as usize;
            (!bytes.is_empty() && at >= start && at + bytes.len() <= end)
                .then(|| owner.slice_ref(bytes))
        })
        .unwrap_or_else(|| Bytes::copy_from_slice(bytes))
}

/// Serialises `bytes` as serde bytes.
///
/// # Errors
///
/// The serializer's.
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserialises serde bytes: a view into the received payload when a session decodes, else
/// a copy.
///
/// # Errors
///
/// The deserializer's, or a type error if the input holds no bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        // Formats that write bytes as a sequence of numbers.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Bincode, Codec};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Frame {
        seq: u64,
        #[serde(with = "super")]
        pixels: Bytes,
        name: String,
    }

    fn encoded(frame: &Frame) -> Bytes {
        let mut buf = vec![0u8; Bincode::encoded_len(frame).unwrap()];
        Bincode::encode_into(frame, &mut buf).unwrap();
        Bytes::from(buf)
    }

    fn frame() -> Frame {
        Frame {
            seq: 7,
            pixels: Bytes::from(vec![0xAB; 1000]),
            name: "cam".into(),
        }
    }

    #[test]
    fn inside_a_session_decode_the_field_is_a_view_of_the_payload() {
        let payload = encoded(&frame());
        let decoded: Frame = with_owner(&payload, || Bincode::decode(&payload)).unwrap();
        assert_eq!(decoded, frame());
        let range = payload.as_ptr_range();
        let field = decoded.pixels.as_ptr_range();
        assert!(range.start <= field.start && field.end <= range.end);
    }

    #[test]
    fn elsewhere_it_is_a_copy_and_the_owner_is_restored() {
        let payload = encoded(&frame());
        let other = Bytes::from_static(b"not the payload");
        let decoded: Frame = with_owner(&other, || {
            let inner: Frame = with_owner(&payload, || Bincode::decode(&payload)).unwrap();
            assert_eq!(inner, frame());
            // Back to `other`: bytes from `payload` are copied now.
            Bincode::decode(&payload).unwrap()
        });
        let range = payload.as_ptr_range();
        assert!(!range.contains(&decoded.pixels.as_ptr()));
        let plain: Frame = Bincode::decode(&payload).unwrap();
        assert_eq!(plain, frame());
        assert!(!range.contains(&plain.pixels.as_ptr()));
    }

    #[test]
    fn the_layout_is_that_of_serde_bytes() {
        #[derive(Serialize, Deserialize)]
        struct Plain {
            seq: u64,
            #[serde(with = "serde_bytes")]
            pixels: Vec<u8>,
            name: String,
        }
        let payload = encoded(&frame());
        let plain: Plain = Bincode::decode(&payload).unwrap();
        assert_eq!(plain.pixels, vec![0xAB; 1000]);
    }
}
