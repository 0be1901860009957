//! What two bridges say to each other, and its encoding.
//!
//! Every message goes to the receiving bridge's inbox, a Zenoh key of its own
//! (`<ns>/bridge/<receiver>/in/<sender>`), so the sender is known from the key and never
//! spelled in the payload. One publisher per peer, reliable with `CongestionControl::Block`,
//! keeps the messages of a peer in order; per-session credits bound what is in flight.
//!
//! ```text
//! byte 0        tag
//! Describe      req:u64 service:str
//! Described     req:u64 answer
//! Open          tunnel:u64 service:str schema
//! Opened        tunnel:u64
//! Refused       tunnel:u64 answer
//! Data          tunnel:u64 from_opener:u8 payload (the rest)
//! Credit        tunnel:u64 from_opener:u8 n:u32
//! Fin           tunnel:u64 from_opener:u8
//!
//! str    = len:u16 bytes (UTF-8)
//! type   = fingerprint:u64 name:str
//! schema = send:type recv:type
//! answer = 0 schema (served, with the server's schema) | 1 (not served) | 2 (not exported)
//!        | 3 schema (the server's schema: the opener's did not match it) | 4 str (other)
//! ```
//!
//! Integers are little-endian. A malformed message is a [`WireError`]: the receiver logs it
//! and drops it (a peer bridge is trusted no more than the network it came over).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ipc_tokio::{MessageType, Schema};
use thiserror::Error;

/// One message between two bridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire {
    /// What does `service` look like on your side?
    Describe { req: u64, service: String },
    /// The answer to `Describe { req }`.
    Described { req: u64, answer: Answer },
    /// Open a session to your local `service` declaring `schema` (the opener's end), and
    /// tunnel it as `tunnel`.
    Open {
        tunnel: u64,
        service: String,
        schema: Schema,
    },
    /// The tunnel is open: data may flow.
    Opened { tunnel: u64 },
    /// The tunnel could not be opened.
    Refused { tunnel: u64, answer: Answer },
    /// One message of the tunnelled session.
    Data {
        tunnel: u64,
        from_opener: bool,
        payload: Bytes,
    },
    /// The receiver delivered `n` more messages locally: the sender may send `n` more.
    Credit {
        tunnel: u64,
        from_opener: bool,
        n: u32,
    },
    /// The sender's side of the session finished sending.
    Fin { tunnel: u64, from_opener: bool },
}

/// The state of a service on the exporting side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Served, by a server declaring this schema (the serving end's).
    Served(Schema),
    /// Nobody serves it there.
    NotServed,
    /// That bridge does not export the name.
    NotExported,
    /// The opener's schema does not match the server's, which is this.
    Mismatch(Schema),
    /// Another refusal, in words.
    Other(String),
}

/// A message from a peer bridge that does not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The message ended before a field it announces.
    #[error("bridge message truncated")]
    Truncated,
    /// An unknown message tag.
    #[error("unknown bridge message tag {0}")]
    Tag(u8),
    /// An unknown answer code.
    #[error("unknown answer code {0}")]
    Answer(u8),
    /// A string is not UTF-8.
    #[error("a string in a bridge message is not UTF-8")]
    Utf8,
    /// A string is longer than the encoding allows.
    #[error("string of {0} bytes is longer than 65535")]
    TooLong(usize),
}

const DESCRIBE: u8 = 1;
const DESCRIBED: u8 = 2;
const OPEN: u8 = 3;
const OPENED: u8 = 4;
const REFUSED: u8 = 5;
const DATA: u8 = 6;
const CREDIT: u8 = 7;
const FIN: u8 = 8;

// ===== impl Wire =====

impl Wire {
    /// The encoding.
    ///
    /// # Errors
    ///
    /// [`WireError::TooLong`] for a name longer than 65535 bytes (the engine refuses names
    /// over 255 bytes, so this means a bug).
    pub(crate) fn encode(&self) -> Result<Bytes, WireError> {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Wire::Describe { req, service } => {
                b.put_u8(DESCRIBE);
                b.put_u64_le(*req);
                put_str(&mut b, service)?;
            }
            Wire::Described { req, answer } => {
                b.put_u8(DESCRIBED);
                b.put_u64_le(*req);
                put_answer(&mut b, answer)?;
            }
            Wire::Open {
                tunnel,
                service,
                schema,
            } => {
                b.put_u8(OPEN);
                b.put_u64_le(*tunnel);
                put_str(&mut b, service)?;
                put_schema(&mut b, schema)?;
            }
            Wire::Opened { tunnel } => {
                b.put_u8(OPENED);
                b.put_u64_le(*tunnel);
            }
            Wire::Refused { tunnel, answer } => {
                b.put_u8(REFUSED);
                b.put_u64_le(*tunnel);
                put_answer(&mut b, answer)?;
            }
            Wire::Data {
                tunnel,
                from_opener,
                payload,
            } => {
                b.reserve(payload.len() + 10);
                b.put_u8(DATA);
                b.put_u64_le(*tunnel);
                b.put_u8(u8::from(*from_opener));
                b.put_slice(payload);
            }
            Wire::Credit {
                tunnel,
                from_opener,
                n,
            } => {
                b.put_u8(CREDIT);
                b.put_u64_le(*tunnel);
                b.put_u8(u8::from(*from_opener));
                b.put_u32_le(*n);
            }
            Wire::Fin {
                tunnel,
                from_opener,
            } => {
                b.put_u8(FIN);
                b.put_u64_le(*tunnel);
                b.put_u8(u8::from(*from_opener));
            }
        }
        Ok(b.freeze())
    }

    /// Decodes one message; a `Data` payload is a slice of `bytes`, not a copy.
    ///
    /// # Errors
    ///
    /// [`WireError`] when `bytes` is not a whole, well-formed message.
    pub(crate) fn decode(mut bytes: Bytes) -> Result<Self, WireError> {
        let tag = get_u8(&mut bytes)?;
        let wire = match tag {
            DESCRIBE => Wire::Describe {
                req: get_u64(&mut bytes)?,
                service: get_str(&mut bytes)?,
            },
            DESCRIBED => Wire::Described {
                req: get_u64(&mut bytes)?,
                answer: get_answer(&mut bytes)?,
            },
            OPEN => Wire::Open {
                tunnel: get_u64(&mut bytes)?,
                service: get_str(&mut bytes)?,
                schema: get_schema(&mut bytes)?,
            },
            OPENED => Wire::Opened {
                tunnel: get_u64(&mut bytes)?,
            },
            REFUSED => Wire::Refused {
                tunnel: get_u64(&mut bytes)?,
                answer: get_answer(&mut bytes)?,
            },
            DATA => Wire::Data {
                tunnel: get_u64(&mut bytes)?,
                from_opener: get_u8(&mut bytes)? != 0,
                payload: bytes.split_off(0),
            },
            CREDIT => Wire::Credit {
                tunnel: get_u64(&mut bytes)?,
                from_opener: get_u8(&mut bytes)? != 0,
                n: get_u32(&mut bytes)?,
            },
            FIN => Wire::Fin {
                tunnel: get_u64(&mut bytes)?,
                from_opener: get_u8(&mut bytes)? != 0,
            },
            other => return Err(WireError::Tag(other)),
        };
        Ok(wire)
    }
}

/// The encoding of a topic message as it crosses: its type, then its bytes.
pub(crate) fn encode_topic(ty: &MessageType, payload: &[u8]) -> Result<Bytes, WireError> {
    let mut b = BytesMut::with_capacity(payload.len() + ty.name.len() + 10);
    put_type(&mut b, ty)?;
    b.put_slice(payload);
    Ok(b.freeze())
}

/// Splits a crossing topic message into its type and its bytes.
pub(crate) fn decode_topic(mut bytes: Bytes) -> Result<(MessageType, Bytes), WireError> {
    let ty = get_type(&mut bytes)?;
    Ok((ty, bytes))
}

fn put_str(b: &mut BytesMut, s: &str) -> Result<(), WireError> {
    let len = u16::try_from(s.len()).map_err(|_| WireError::TooLong(s.len()))?;
    b.put_u16_le(len);
    b.put_slice(s.as_bytes());
    Ok(())
}

fn put_type(b: &mut BytesMut, ty: &MessageType) -> Result<(), WireError> {
    b.put_u64_le(ty.fingerprint);
    put_str(b, &ty.name)
}

fn put_schema(b: &mut BytesMut, schema: &Schema) -> Result<(), WireError> {
    put_type(b, &schema.send)?;
    put_type(b, &schema.recv)
}

fn put_answer(b: &mut BytesMut, answer: &Answer) -> Result<(), WireError> {
    match answer {
        Answer::Served(schema) => {
            b.put_u8(0);
            put_schema(b, schema)
        }
        Answer::NotServed => {
            b.put_u8(1);
            Ok(())
        }
        Answer::NotExported => {
            b.put_u8(2);
            Ok(())
        }
        Answer::Mismatch(schema) => {
            b.put_u8(3);
            put_schema(b, schema)
        }
        Answer::Other(text) => {
            b.put_u8(4);
            put_str(b, text)
        }
    }
}

fn need(bytes: &Bytes, n: usize) -> Result<(), WireError> {
    if bytes.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(bytes: &mut Bytes) -> Result<u8, WireError> {
    need(bytes, 1)?;
    Ok(bytes.get_u8())
}

fn get_u32(bytes: &mut Bytes) -> Result<u32, WireError> {
    need(bytes, 4)?;
    Ok(bytes.get_u32_le())
}

fn get_u64(bytes: &mut Bytes) -> Result<u64, WireError> {
    need(bytes, 8)?;
    Ok(bytes.get_u64_le())
}

fn get_str(bytes: &mut Bytes) -> Result<String, WireError> {
    need(bytes, 2)?;
    let len = usize::from(bytes.get_u16_le());
    need(bytes, len)?;
    let raw = bytes.split_to(len);
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::Utf8)
}

fn get_type(bytes: &mut Bytes) -> Result<MessageType, WireError> {
    let fingerprint = get_u64(bytes)?;
    let name = get_str(bytes)?;
    Ok(MessageType { name, fingerprint })
}

fn get_schema(bytes: &mut Bytes) -> Result<Schema, WireError> {
    Ok(Schema {
        send: get_type(bytes)?,
        recv: get_type(bytes)?,
    })
}

fn get_answer(bytes: &mut Bytes) -> Result<Answer, WireError> {
    Ok(match get_u8(bytes)? {
        0 => Answer::Served(get_schema(bytes)?),
        1 => Answer::NotServed,
        2 => Answer::NotExported,
        3 => Answer::Mismatch(get_schema(bytes)?),
        4 => Answer::Other(get_str(bytes)?),
        other => return Err(WireError::Answer(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            send: MessageType {
                name: "Quote".into(),
                fingerprint: 0xdead_beef,
            },
            recv: MessageType {
                name: "GetQuote".into(),
                fingerprint: 7,
            },
        }
    }

    #[test]
    fn every_message_round_trips() {
        let all = [
            Wire::Describe {
                req: 3,
                service: "quotes".into(),
            },
            Wire::Described {
                req: 3,
                answer: Answer::Served(schema()),
            },
            Wire::Described {
                req: 4,
                answer: Answer::NotServed,
            },
            Wire::Described {
                req: 5,
                answer: Answer::NotExported,
            },
            Wire::Open {
                tunnel: 9,
                service: "quotes".into(),
                schema: schema(),
            },
            Wire::Opened { tunnel: 9 },
            Wire::Refused {
                tunnel: 9,
                answer: Answer::Mismatch(schema()),
            },
            Wire::Refused {
                tunnel: 10,
                answer: Answer::Other("engine limit".into()),
            },
            Wire::Data {
                tunnel: 9,
                from_opener: true,
                payload: Bytes::from_static(b"hello"),
            },
            Wire::Data {
                tunnel: 9,
                from_opener: false,
                payload: Bytes::new(),
            },
            Wire::Credit {
                tunnel: 9,
                from_opener: false,
                n: 64,
            },
            Wire::Fin {
                tunnel: 9,
                from_opener: true,
            },
        ];
        for wire in all {
            let bytes = wire.encode().unwrap();
            assert_eq!(Wire::decode(bytes).unwrap(), wire);
        }
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let wire = Wire::Open {
            tunnel: 1,
            service: "quotes".into(),
            schema: schema(),
        };
        let bytes = wire.encode().unwrap();
        for len in 0..bytes.len() {
            assert_eq!(
                Wire::decode(bytes.slice(..len)),
                Err(WireError::Truncated),
                "prefix of {len} bytes"
            );
        }
        assert_eq!(
            Wire::decode(Bytes::from_static(&[99])),
            Err(WireError::Tag(99))
        );
        assert_eq!(
            Wire::decode(Bytes::from_static(&[REFUSED, 0, 0, 0, 0, 0, 0, 0, 0, 77])),
            Err(WireError::Answer(77))
        );
    }

    #[test]
    fn topic_messages_carry_their_type() {
        let ty = schema().send;
        let bytes = encode_topic(&ty, b"tick").unwrap();
        let (got, payload) = decode_topic(bytes).unwrap();
        assert_eq!(got, ty);
        assert_eq!(&payload[..], b"tick");
    }
}
