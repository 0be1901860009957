//! Typed messages: the [`Message`] trait, its schema fingerprint, and the [`codec`]s that turn a
//! message into bytes in a loaned sub-block and back.
//!
//! Every type sent over a session implements [`Message`], almost always through
//! `#[derive(Message)]` (crate `ipc-macros`, re-exported by `shmlink`). The trait gives the type a
//! stable [`NAME`](Message::NAME) and a 64-bit [`FINGERPRINT`](Message::FINGERPRINT) of its
//! definition, computed at compile time. When a session opens, both ends compare name and
//! fingerprint; if they differ the open fails with an error that names both, instead of one end
//! decoding bytes that were written for another layout.
//!
//! The bytes themselves are written by a [`Codec`]: [`Bincode`] by default, `Postcard` behind
//! the `postcard` cargo feature. A codec measures a value first ([`Codec::encoded_len`]), so the
//! sender can loan exactly that many bytes of shared memory, then serialises straight into the
//! loan ([`Codec::encode_into`]), with no intermediate `Vec`. The receiver decodes straight from
//! the received slice ([`Codec::decode`]).
//!
//! # Examples
//!
//! ```
//! use ipc_tokio::message::{Bincode, Codec, Message, fingerprint_of};
//! use serde::{Deserialize, Serialize};
//!
//! // What `#[derive(Message)]` writes for you, by hand.
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct GetQuote {
//!     sku: String,
//! }
//!
//! impl Message for GetQuote {
//!     const NAME: &'static str = "GetQuote";
//!     const FINGERPRINT: u64 = fingerprint_of("GetQuote { sku: String }");
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let msg = GetQuote { sku: "A-42".to_owned() };
//! let mut loan = vec![0u8; Bincode::encoded_len(&msg)?]; // stands in for shared memory
//! let written = Bincode::encode_into(&msg, &mut loan)?;
//! assert_eq!(written, loan.len());
//! assert_eq!(Bincode::decode::<GetQuote>(&loan)?, msg);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod codec;
pub mod shared_bytes;

#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Bincode, Codec, DecodeError, EncodeError};

/// A type that can travel over a session: serialisable, owned, and identified by a stable name
/// and a fingerprint of its definition.
///
/// Implement it with `#[derive(Message)]`; a hand-written impl is possible (see the example) but
/// then keeping [`FINGERPRINT`](Message::FINGERPRINT) in step with the definition is up to you.
///
/// # Deriving
///
/// `#[derive(Message, Serialize, Deserialize)]` works on structs (named, tuple and unit) and enums,
/// generic ones included; unions and lifetime parameters are rejected with a compile error. It
/// accepts one optional container attribute, `#[message(...)]`, with these keys, each at most
/// once:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `name = "billing.GetQuote"` | the stable [`NAME`](Message::NAME); a non-empty string | the type's identifier |
/// | `version = 3` | the [`VERSION`](Message::VERSION), a `u32` mixed into the fingerprint | `0` |
/// | `crate = "path"` | where the expansion finds `shmlink` (for re-exports) | `::shmlink` |
///
/// The fingerprint is FNV-1a 64 ([`fingerprint_of`]) of a canonical description of the type's
/// shape, built while the macro expands: whether it is a struct or an enum, the name, the
/// version, the names of its type and const parameters, every field name and field type *as
/// written* (tokens, so whitespace does not matter
/// but `String` and `std::string::String` differ), every variant name in order with its fields,
/// and the tokens of every `#[serde(...)]` attribute (they can change the wire shape: `rename`,
/// `skip`, `tag`, ...). Doc comments, other attributes, spans, file paths and the module the type
/// lives in do not enter it, so the value is the same across builds, machines and compiler
/// versions.
///
/// # Generic messages
///
/// A fingerprint of `Batch<T>` that ignored `T` would let `Batch<Tick>` and `Batch<Quote>` pass
/// for each other. So every type parameter of a derived message gets a `T: Message` bound in the
/// impl, and the fingerprint of the instance mixes in each parameter's fingerprint in order with
/// [`mix_fingerprint`] (const parameters mix in their value, as `u64`). [`NAME`](Message::NAME)
/// stays the bare name (`"Batch"`): const evaluation cannot build strings.
///
/// # Examples
///
/// A generic message written by hand, the way the derive does it:
///
/// ```
/// use ipc_tokio::message::{Message, fingerprint_of, mix_fingerprint};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Tick(u64);
/// impl Message for Tick {
///     const NAME: &'static str = "Tick";
///     const FINGERPRINT: u64 = fingerprint_of("Tick(u64)");
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Stamp(u64);
/// impl Message for Stamp {
///     const NAME: &'static str = "Stamp";
///     const FINGERPRINT: u64 = fingerprint_of("Stamp(u64)");
/// }
///
/// #[derive(Serialize, Deserialize)]
/// struct Batch<T> {
///     items: Vec<T>,
/// }
/// impl<T: Message> Message for Batch<T> {
///     const NAME: &'static str = "Batch";
///     const FINGERPRINT: u64 =
///         mix_fingerprint(fingerprint_of("Batch { items: Vec<T> }"), T::FINGERPRINT);
/// }
///
/// // Same shape and same name, yet different fingerprints.
/// assert_ne!(Tick::FINGERPRINT, Stamp::FINGERPRINT);
/// assert_ne!(<Batch<Tick>>::FINGERPRINT, <Batch<Stamp>>::FINGERPRINT);
/// assert_eq!(<Batch<Tick>>::NAME, <Batch<Stamp>>::NAME);
/// ```
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {
    /// The stable name both ends of a session agree on: the type's identifier unless
    /// `#[message(name = "...")]` says otherwise. Never includes the module path, which differs
    /// between the crates of two programs sharing a message definition.
    const NAME: &'static str;

    /// The explicit schema version from `#[message(version = N)]`, `0` when absent. It is part of
    /// [`FINGERPRINT`](Message::FINGERPRINT): bumping it declares an incompatible change even when
    /// the fields look the same (for example a field whose meaning or unit changed).
    const VERSION: u32 = 0;

    /// The 64-bit fingerprint of the type's definition (see [Deriving](Message#deriving)).
    /// Two ends whose fingerprints differ refuse to talk.
    const FINGERPRINT: u64;
}

// ===== fingerprints =====

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The FNV-1a 64 hash of `shape`'s UTF-8 bytes: the function `#[derive(Message)]` applies, at
/// expansion time, to its canonical description of a type.
///
/// It is a `const fn` so a hand-written [`Message`] impl can compute its fingerprint at compile
/// time from a description of its own. FNV-1a is not a cryptographic hash; the fingerprint
/// guards against mistakes (two builds of a message that drifted apart), not against a peer
/// that lies on purpose.
///
/// # Examples
///
/// ```
/// use ipc_tokio::message::fingerprint_of;
///
/// const FP: u64 = fingerprint_of("Tick(u64)");
/// assert_eq!(fingerprint_of(""), 0xcbf2_9ce4_8422_2325); // the FNV-1a offset basis
/// assert_ne!(FP, fingerprint_of("Tick(u32)"));
/// ```
#[must_use]
pub const fn fingerprint_of(shape: &str) -> u64 {
    let bytes = shape.as_bytes();
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// Mixes `part` into the fingerprint `acc`: FNV-1a 64 continued over the 8 little-endian bytes of
/// `part`. Order matters, so `Pair<A, B>` and `Pair<B, A>` differ.
///
/// `#[derive(Message)]` uses it to fold each type parameter's
/// [`FINGERPRINT`](Message::FINGERPRINT) (and each const parameter's value) into the fingerprint
/// of a generic message, in declaration order.
///
/// # Examples
///
/// ```
/// use ipc_tokio::message::{fingerprint_of, mix_fingerprint};
///
/// let base = fingerprint_of("Pair<A, B>(A, B)");
/// let (a, b) = (fingerprint_of("A"), fingerprint_of("B"));
/// let ab = mix_fingerprint(mix_fingerprint(base, a), b);
/// let ba = mix_fingerprint(mix_fingerprint(base, b), a);
/// assert_ne!(ab, ba);
/// ```
#[must_use]
pub const fn mix_fingerprint(acc: u64, part: u64) -> u64 {
    let bytes = part.to_le_bytes();
    let mut hash = acc;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published FNV-1a 64 test vectors: the hash must never change.
    #[test]
    fn fnv1a_vectors() {
        assert_eq!(fingerprint_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint_of("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint_of("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix_is_fnv_over_le_bytes() {
        let acc = fingerprint_of("x");
        let mut expected = String::from("x");
        expected.extend(0x0102_0304_0506_0708_u64.to_le_bytes().map(char::from));
        assert_eq!(
            mix_fingerprint(acc, 0x0102_0304_0506_0708),
            fingerprint_of(&expected)
        );
        assert_ne!(mix_fingerprint(acc, 1), mix_fingerprint(acc, 2));
    }
}
