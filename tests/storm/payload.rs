//! Checked messages that are cheap to make and to verify even in a debug build: a header
//! (stream id, sequence number, total length) and a body cut from a fixed table of random
//! bytes at an offset derived from (stream, seq). Making one is a `memcpy`, checking one a
//! `memcmp`; a message that is lost, duplicated, reordered, truncated, mixed with another or
//! corrupted anywhere fails the check.
//!
//! ```text
//!  0        4                12        16                          len
//!  +--------+----------------+---------+---------------------------+
//!  | stream | seq            | len     | NOISE[off .. off+len-16]  |   off = f(stream, seq)
//!  +--------+----------------+---------+---------------------------+
//! ```

use std::sync::OnceLock;

use crate::support::Rng;

/// Bytes of the header.
pub(crate) const HEADER: usize = 16;
/// The longest message this format carries.
pub(crate) const MAX_LEN: usize = 256 << 10;
const NOISE_LEN: usize = 1 << 20;

fn noise() -> &'static [u8] {
    static NOISE: OnceLock<Vec<u8>> = OnceLock::new();
    NOISE.get_or_init(|| {
        let mut rng = Rng::new(0x5EED_5707);
        let mut out = Vec::with_capacity(NOISE_LEN);
        while out.len() < NOISE_LEN {
            out.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        out
    })
}

fn body_offset(stream: u32, seq: u64) -> usize {
    let span = (NOISE_LEN - MAX_LEN) as u64;
    (Rng::derive(0xB0D1, u64::from(stream), seq).next_u64() % span) as usize
}

/// Writes message (`stream`, `seq`) into `buf`, whose length is the message's
/// (`HEADER..=MAX_LEN`).
pub(crate) fn fill(buf: &mut [u8], stream: u32, seq: u64) {
    let len = buf.len();
    assert!(
        (HEADER..=MAX_LEN).contains(&len),
        "message length {len} out of range"
    );
    buf[..4].copy_from_slice(&stream.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    let off = body_offset(stream, seq);
    buf[HEADER..].copy_from_slice(&noise()[off..off + len - HEADER]);
}

/// Message (`stream`, `seq`) of `len` bytes.
pub(crate) fn make(stream: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill(&mut out, stream, seq);
    out
}

/// The (stream, seq) a message claims, without checking its body.
pub(crate) fn peek(bytes: &[u8]) -> Option<(u32, u64)> {
    if bytes.len() < HEADER {
        return None;
    }
    let stream = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    Some((stream, seq))
}

/// Checks that `bytes` is exactly message (`stream`, `seq`), `len` bytes long if given.
pub(crate) fn check(bytes: &[u8], stream: u32, seq: u64, len: Option<usize>) -> Result<(), String> {
    let Some((s, q)) = peek(bytes) else {
        return Err(format!(
            "stream {stream} seq {seq}: a message of {} bytes has no header",
            bytes.len()
        ));
    };
    if (s, q) != (stream, seq) {
        return Err(format!(
            "expected stream {stream} seq {seq}, got stream {s} seq {q} (lost, duplicated or reordered)"
        ));
    }
    let claimed = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if claimed != bytes.len() || len.is_some_and(|l| l != bytes.len()) || claimed > MAX_LEN {
        return Err(format!(
            "stream {stream} seq {seq}: {} bytes, header says {claimed}, expected {len:?}",
            bytes.len()
        ));
    }
    let off = body_offset(stream, seq);
    let want = &noise()[off..off + claimed - HEADER];
    if &bytes[HEADER..] != want {
        let at = bytes[HEADER..]
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .expect("differs");
        return Err(format!(
            "stream {stream} seq {seq} ({claimed} bytes): byte {} corrupted",
            HEADER + at
        ));
    }
    Ok(())
}
