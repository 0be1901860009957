//! What a session carries: raw [`Bytes`], or any [`Message`] through a [`Codec`].

use bytes::Bytes;
use ipc_core::control::MessageType;

use crate::error::{CodecError, SessionError, encode_error};
use crate::message::{Codec, Message};

/// A payload type of a session: how it is named in the schema check, measured, written
/// into a loan and read back from received shared memory.
///
/// Implemented for [`Bytes`] (raw sessions, zero-copy receive) and for every [`Message`]
/// (typed sessions, encoded in place with the codec `C`).
pub trait Payload<C>: Sized + Send + 'static {
    /// The name and fingerprint both ends must agree on.
    fn message_type() -> MessageType;

    /// Bytes the encoding needs.
    ///
    /// # Errors
    ///
    /// [`SessionError::Codec`] if the value cannot be encoded, [`SessionError::TooLarge`] if
    /// its encoding is longer than the codec accepts.
    fn encoded_len(&self) -> Result<usize, SessionError>;

    /// Writes the encoding into `buf` (exactly `encoded_len` bytes); returns the bytes written.
    ///
    /// # Errors
    ///
    /// [`SessionError::Codec`] if the value cannot be encoded.
    fn encode_into(&self, buf: &mut [u8]) -> Result<usize, SessionError>;

    /// Reads a payload from received bytes (which point into shared memory).
    ///
    /// # Errors
    ///
    /// [`SessionError::Codec`] if the bytes do not decode; the session goes on.
    fn decode(bytes: Bytes) -> Result<Self, SessionError>;
}

impl<C> Payload<C> for Bytes {
    fn message_type() -> MessageType {
        MessageType::bytes()
    }

    fn encoded_len(&self) -> Result<usize, SessionError> {
        Ok(self.len())
    }

    fn encode_into(&self, buf: &mut [u8]) -> Result<usize, SessionError> {
        buf[..self.len()].copy_from_slice(self);
        Ok(self.len())
    }

    fn decode(bytes: Bytes) -> Result<Self, SessionError> {
        Ok(bytes)
    }
}

impl<T: Message, C: Codec> Payload<C> for T {
    fn message_type() -> MessageType {
        MessageType {
            name: format!("{}/{}", T::NAME, C::NAME),
            fingerprint: T::FINGERPRINT,
        }
    }

    fn encoded_len(&self) -> Result<usize, SessionError> {
        C::encoded_len(self).map_err(encode_error::<T, C>)
    }

    fn encode_into(&self, buf: &mut [u8]) -> Result<usize, SessionError> {
        C::encode_into(self, buf).map_err(encode_error::<T, C>)
    }

    fn decode(bytes: Bytes) -> Result<Self, SessionError> {
        crate::message::shared_bytes::with_owner(&bytes, || C::decode(&bytes))
            .map_err(|e| CodecError::decode::<T, C>(e).into())
    }
}
