//! Deterministic payloads: seeded byte patterns and sequenced messages that carry their
//! stream id and sequence number, so a receiver can check every byte and the order.

/// Deterministic bytes for (`seed`, `index`): xorshift64, eight bytes per step.
pub fn pattern(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03))
        | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compares `got` with `pattern(seed, index, len)` byte by byte; describes the first
/// difference.
pub fn check_pattern(seed: u64, index: u64, len: usize, got: &[u8]) -> Result<(), String> {
    if got.len() != len {
        return Err(format!(
            "payload {index}: length {} instead of {len}",
            got.len()
        ));
    }
    let want = pattern(seed, index, len);
    if got != &want[..] {
        let at = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .expect("differs");
        return Err(format!(
            "payload {index} ({len} bytes): byte {at} is {:#04x}, expected {:#04x}",
            got[at], want[at]
        ));
    }
    Ok(())
}

/// Header of a sequenced message: stream id (u32 LE) and sequence number (u64 LE).
pub const SEQ_HEADER: usize = 12;

/// A sequenced message of `len` bytes (at least [`SEQ_HEADER`]): the header, then filler
/// derived from both numbers.
pub fn seq_message(stream: u32, seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(SEQ_HEADER);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&pattern(u64::from(stream), seq, len - SEQ_HEADER));
    out
}

/// A varying length for message `seq` (between 12 B and about 3 KiB).
pub fn seq_len(seq: u64) -> usize {
    SEQ_HEADER + (seq.wrapping_mul(37) % 3000) as usize
}

/// Parses and checks a sequenced message: returns (stream, seq) if its filler is intact.
pub fn parse_seq(bytes: &[u8]) -> Result<(u32, u64), String> {
    if bytes.len() < SEQ_HEADER {
        return Err(format!("message of {} bytes has no header", bytes.len()));
    }
    let stream = u32::from_le_bytes(bytes[..4].try_into().expect("4"));
    let seq = u64::from_le_bytes(bytes[4..12].try_into().expect("8"));
    check_pattern(
        u64::from(stream),
        seq,
        bytes.len() - SEQ_HEADER,
        &bytes[SEQ_HEADER..],
    )
    .map_err(|e| format!("stream {stream} seq {seq}: {e}"))?;
    Ok((stream, seq))
}

/// Checks that `bytes` is message `want` of `stream`.
pub fn expect_seq(bytes: &[u8], stream: u32, want: u64) -> Result<(), String> {
    let (s, seq) = parse_seq(bytes)?;
    if s != stream || seq != want {
        return Err(format!(
            "expected stream {stream} seq {want}, got stream {s} seq {seq} (lost, duplicated or reordered)"
        ));
    }
    Ok(())
}
