//! Codec tests: round trips, exact-size buffers, and hostile payloads. Each check runs against
//! every codec through the generic helpers at the top.

use super::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    id: u64,
    label: String,
    scores: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Tick,
    Moved(i64, i64),
    Renamed { from: String, to: String },
    Nested(Box<Outer>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outer {
    name: String,
    inner: Inner,
    maybe: Option<Inner>,
    events: Vec<Event>,
    table: BTreeMap<String, (u8, bool, char)>,
    wide: u128,
    real: f64,
}

fn sample() -> Outer {
    let inner = Inner {
        id: u64::MAX,
        label: "héllo, wörld ✓".to_owned(),
        scores: vec![-1, 0, 1, i32::MIN, i32::MAX],
    };
    Outer {
        name: "outer".to_owned(),
        inner: inner.clone(),
        maybe: Some(inner),
        events: vec![
            Event::Tick,
            Event::Moved(-5, 1 << 40),
            Event::Renamed {
                from: String::new(),
                to: "to".to_owned(),
            },
            Event::Nested(Box::new(Outer {
                name: "inside".to_owned(),
                inner: Inner {
                    id: 0,
                    label: String::new(),
                    scores: Vec::new(),
                },
                maybe: None,
                events: vec![Event::Tick],
                table: BTreeMap::new(),
                wide: 0,
                real: -0.0,
            })),
        ],
        table: [
            ("a".to_owned(), (1, true, 'é')),
            ("b".to_owned(), (255, false, '✓')),
        ]
        .into_iter()
        .collect(),
        wide: u128::MAX,
        real: std::f64::consts::PI,
    }
}

/// Encodes `value` into a buffer of exactly `encoded_len` bytes and checks every promise made
/// on the way; returns the bytes.
fn encode_exact<C: Codec, T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let len = C::encoded_len(value).expect("encoded_len");
    let mut buf = vec![0u8; len];
    let written = C::encode_into(value, &mut buf).expect("encode_into");
    assert_eq!(
        written,
        len,
        "{}: encode_into wrote a different length",
        C::NAME
    );
    buf
}

fn round_trip<C: Codec, T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let buf = encode_exact::<C, T>(value);
    let back: T = C::decode(&buf).expect("decode");
    assert_eq!(&back, value, "{}: round trip changed the value", C::NAME);
}

/// A deterministic xorshift64* stream, so garbage tests are reproducible.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ===== suites, generic over the codec =====

fn suite_round_trips<C: Codec>() {
    round_trip::<C, _>(&sample());
    round_trip::<C, _>(&Event::Tick);
    round_trip::<C, _>(&Event::Moved(i64::MIN, i64::MAX));
    round_trip::<C, _>(&Event::Renamed {
        from: "x".repeat(1000),
        to: "✓".repeat(1000),
    });
    round_trip::<C, _>(&String::new());
    round_trip::<C, _>(&"a string with\0nul and ünïcödé".to_owned());
    round_trip::<C, _>(&());
    round_trip::<C, _>(&Some(vec![Some(1u16), None]));
    // Several MiB of bytes, with a pattern so a shifted copy would not pass.
    let big: Vec<u8> = (0..5 * (1 << 20) + 3)
        .map(|i: usize| (i % 251) as u8)
        .collect();
    round_trip::<C, _>(&big);
    round_trip::<C, _>(&(big.len() as u64, big, "tail".to_owned()));
}

fn suite_buffers<C: Codec>() {
    let value = sample();
    let exact = encode_exact::<C, _>(&value);
    let n = exact.len();

    // A longer buffer: the same bytes at the front, the rest untouched.
    let mut roomy = vec![0xAAu8; n + 17];
    assert_eq!(C::encode_into(&value, &mut roomy).unwrap(), n);
    assert_eq!(&roomy[..n], &exact[..]);
    assert!(roomy[n..].iter().all(|&b| b == 0xAA));

    // Too small, by one byte and by everything.
    let mut short = vec![0u8; n - 1];
    assert_eq!(
        C::encode_into(&value, &mut short),
        Err(EncodeError::BufferTooSmall { capacity: n - 1 })
    );
    assert_eq!(
        C::encode_into(&value, &mut []),
        Err(EncodeError::BufferTooSmall { capacity: 0 })
    );
}

fn suite_truncated_and_trailing<C: Codec>() {
    let value = sample();
    let buf = encode_exact::<C, _>(&value);
    for cut in 0..buf.len() {
        let err = C::decode::<Outer>(&buf[..cut]).expect_err("a truncated payload decoded");
        assert!(
            matches!(
                err,
                DecodeError::UnexpectedEnd | DecodeError::Invalid { .. }
            ),
            "{}: cut at {cut}: {err:?}",
            C::NAME
        );
    }
    let mut longer = buf.clone();
    longer.push(0);
    assert_eq!(
        C::decode::<Outer>(&longer),
        Err(DecodeError::TrailingBytes {
            used: buf.len(),
            len: buf.len() + 1
        })
    );
    // A payload meant for a smaller type is trailing garbage for it, never a silent success.
    let two = encode_exact::<C, _>(&(1u8, 2u8));
    assert!(matches!(
        C::decode::<u8>(&two),
        Err(DecodeError::TrailingBytes { used: 1, len: 2 })
    ));
}

fn suite_garbage<C: Codec>() {
    let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
    let valid = encode_exact::<C, _>(&sample());
    for round in 0..3000 {
        let len = (rng.next() % 256) as usize;
        let junk = rng.bytes(len);
        // Any outcome but a panic or an abort is fine.
        let _ = C::decode::<Outer>(&junk);
        let _ = C::decode::<Event>(&junk);
        let _ = C::decode::<Vec<String>>(&junk);
        let _ = C::decode::<(String, Vec<u8>, u128)>(&junk);
        // Flip bytes of a valid payload: length prefixes and tags become hostile.
        let mut flipped = valid.clone();
        for _ in 0..1 + round % 4 {
            let at = (rng.next() as usize) % flipped.len();
            flipped[at] = rng.next() as u8;
        }
        let _ = C::decode::<Outer>(&flipped);
    }
}

fn suite_invalid_values<C: Codec>() {
    // A bool that is neither 0 nor 1.
    assert!(matches!(
        C::decode::<bool>(&[2]),
        Err(DecodeError::Invalid { .. })
    ));
    // An enum variant index past the last variant (one byte in both formats).
    assert!(matches!(
        C::decode::<Event>(&[99]),
        Err(DecodeError::Invalid { .. })
    ));
    // A string that is not UTF-8: length 2, then an invalid sequence.
    assert!(matches!(
        C::decode::<String>(&[2, 0xC3, 0x28]),
        Err(DecodeError::Invalid { .. })
    ));
}

/// A value whose `Serialize` impl fails.
struct Unserialisable;

impl Serialize for Unserialisable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused on purpose"))
    }
}

fn suite_serialize_error<C: Codec>() {
    let len = C::encoded_len(&Unserialisable);
    assert!(matches!(len, Err(EncodeError::Serialize { .. })), "{len:?}");
    let mut buf = [0u8; 64];
    let written = C::encode_into(&Unserialisable, &mut buf);
    assert!(
        matches!(written, Err(EncodeError::Serialize { .. })),
        "{written:?}"
    );
}

// ===== bincode =====

/// bincode's varint: one byte below 251, else a tag and the value in little-endian.
fn bincode_varint(v: u64) -> Vec<u8> {
    if v < 251 {
        vec![v as u8]
    } else {
        let mut out = vec![253];
        out.extend(v.to_le_bytes());
        out
    }
}

#[test]
fn bincode_round_trips() {
    suite_round_trips::<Bincode>();
}

#[test]
fn bincode_buffers() {
    suite_buffers::<Bincode>();
}

#[test]
fn bincode_truncated_and_trailing() {
    suite_truncated_and_trailing::<Bincode>();
}

#[test]
fn bincode_garbage_never_panics() {
    suite_garbage::<Bincode>();
}

#[test]
fn bincode_invalid_values() {
    suite_invalid_values::<Bincode>();
}

#[test]
fn bincode_serialize_error() {
    suite_serialize_error::<Bincode>();
}

#[test]
fn bincode_matches_the_documented_wire_format() {
    // standard(): varint integers, little-endian; strings are a length then bytes.
    let buf = encode_exact::<Bincode, _>(&(300u16, "hi".to_owned(), true));
    assert_eq!(buf, [251, 0x2c, 0x01, 2, b'h', b'i', 1]);
}

#[test]
fn bincode_hostile_length_prefixes_do_not_allocate() {
    // 2^60 bytes of string, 2^60 bytes of Vec<u8>, 2^60 u64s, with a 9-byte payload: the claim is
    // refused before any allocation (String), or serde's capped reservation is made and the
    // missing elements end the decode (sequences).
    let huge = bincode_varint(1 << 60);
    assert_eq!(
        Bincode::decode::<String>(&huge),
        Err(DecodeError::LimitExceeded { limit: 64 << 10 })
    );
    assert_eq!(
        Bincode::decode::<Vec<u8>>(&huge),
        Err(DecodeError::UnexpectedEnd)
    );
    assert_eq!(
        Bincode::decode::<Vec<u64>>(&huge),
        Err(DecodeError::UnexpectedEnd)
    );
    assert!(Bincode::decode::<Vec<String>>(&huge).is_err());
    // usize::MAX as a length overflows the claim arithmetic: still a clean error.
    let max = bincode_varint(u64::MAX);
    assert!(Bincode::decode::<String>(&max).is_err());
    // A claim just over the tier for a short payload is refused too: a 100 KiB string from
    // a 9-byte payload would otherwise allocate 100 KiB.
    let mut medium = bincode_varint(100 << 10);
    medium.extend([b'x'; 8]);
    assert_eq!(
        Bincode::decode::<String>(&medium),
        Err(DecodeError::LimitExceeded { limit: 64 << 10 })
    );
}

#[test]
fn bincode_limit_tiers_never_refuse_valid_payloads() {
    // u128 zeros are the worst case: 1 byte on the wire, 16 claimed. Sizes straddle each tier.
    for count in [0usize, 1, 4093, 4094, 4095, 65_000, 65_533, 65_534, 70_000] {
        round_trip::<Bincode, _>(&vec![0u128; count]);
    }
    round_trip::<Bincode, _>(&0u128);
    round_trip::<Bincode, _>(&vec![vec![0u128; 3]; 1000]);
    // A string fills its own claim one for one.
    round_trip::<Bincode, _>(&"s".repeat((1 << 20) + 1));
}

/// Serialises as a byte string of the given length without touching its memory.
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

#[test]
fn bincode_refuses_to_encode_past_the_limit() {
    // Zeroed allocations of this size are mapped lazily; measuring never reads them.
    let big = Bytes(vec![0u8; Bincode::MAX_ENCODING + 1]);
    assert!(matches!(
        Bincode::encoded_len(&big),
        Err(EncodeError::TooLarge {
            max: Bincode::MAX_ENCODING,
            ..
        })
    ));
    drop(big);
    let at_limit = Bytes(vec![0u8; Bincode::MAX_ENCODING - 16]);
    assert!(Bincode::encoded_len(&at_limit).is_ok());
}

// ===== postcard =====

#[cfg(feature = "postcard")]
mod postcard_codec {
    use super::*;

    /// postcard's varint: 7 bits a byte, low bits first, high bit = more.
    fn leb128(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn postcard_round_trips() {
        suite_round_trips::<Postcard>();
    }

    #[test]
    fn postcard_buffers() {
        suite_buffers::<Postcard>();
    }

    #[test]
    fn postcard_truncated_and_trailing() {
        suite_truncated_and_trailing::<Postcard>();
    }

    #[test]
    fn postcard_garbage_never_panics() {
        suite_garbage::<Postcard>();
    }

    #[test]
    fn postcard_invalid_values() {
        suite_invalid_values::<Postcard>();
    }

    #[test]
    fn postcard_serialize_error() {
        suite_serialize_error::<Postcard>();
    }

    #[test]
    fn postcard_hostile_length_prefixes_do_not_allocate() {
        let huge = leb128(1 << 60);
        assert_eq!(
            Postcard::decode::<String>(&huge),
            Err(DecodeError::UnexpectedEnd)
        );
        assert_eq!(
            Postcard::decode::<Vec<u8>>(&huge),
            Err(DecodeError::UnexpectedEnd)
        );
        assert_eq!(
            Postcard::decode::<Vec<u64>>(&huge),
            Err(DecodeError::UnexpectedEnd)
        );
        assert!(Postcard::decode::<String>(&leb128(u64::MAX)).is_err());
    }

    #[test]
    fn codecs_differ_on_the_wire() {
        assert_ne!(Bincode::NAME, Postcard::NAME);
        let value = (300u16, "hi".to_owned());
        assert_eq!(
            encode_exact::<Postcard, _>(&value),
            [0xac, 0x02, 2, b'h', b'i']
        );
    }
}
