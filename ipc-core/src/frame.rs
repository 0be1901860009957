//! Frames: several small messages of one session in one sub-block.
//!
//! A frame is a run of length-prefixed records that tiles its payload exactly: each record is
//! a little-endian `u32` length followed by that many bytes, with no padding; the first record
//! starts at byte 0 and the last one ends at the frame's last byte. A frame carries at least
//! one record, and a record may be empty (4 bytes of prefix, no body).
//!
//! ```text
//!  0      4            4+a    8+a          8+a+b  12+a+b  (empty record)
//!  +------+------------+------+------------+------+
//!  |  a   | a bytes    |  b   | b bytes    |  0   |
//!  +------+------------+------+------------+------+
//! ```
//!
//! The frame travels as a `FRAME` descriptor (`len` = frame bytes, `aux` = record count). The
//! engine scans the record boundaries of every frame before it copies it ([`scan`], reading
//! each length once into its own memory): a frame whose records overrun it, fall short of its
//! end, or whose count differs from the descriptor's is a [`FrameError`], and the node that
//! submitted it is closed. The receiving node splits the frame again with [`Records`], which
//! checks every boundary itself (the engine copied the frame honestly, but a hostile sender can
//! rewrite its transmit sub-block between the engine's scan and its copy, which garbles only
//! that sender's own frame).

use thiserror::Error;

/// Bytes of a record's length prefix.
pub const RECORD_HEADER: u32 = 4;

/// What was wrong with a frame's records.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer than [`RECORD_HEADER`] bytes remain for a record's length prefix.
    #[error("record at byte {at} of a {frame}-byte frame has no room for its length")]
    Truncated {
        /// Where the record starts.
        at: u32,
        /// The frame's length.
        frame: u32,
    },
    /// A record's length runs past the end of the frame.
    #[error("record at byte {at} of {len} bytes overruns the {frame}-byte frame")]
    Overrun {
        /// Where the record starts.
        at: u32,
        /// The length it declares.
        len: u32,
        /// The frame's length.
        frame: u32,
    },
    /// The frame holds a different number of records than its descriptor says.
    #[error("frame declares {declared} records and holds {found}")]
    Count {
        /// The descriptor's count.
        declared: u64,
        /// The records found.
        found: u32,
    },
}

/// Walks the records of a frame of `len` bytes, reading each length prefix once through
/// `read_len(at)` (the four bytes at offset `at`, which the caller has checked lie inside the
/// frame: `at + 4 <= len`). Returns the number of records.
///
/// # Errors
///
/// [`FrameError::Truncated`] or [`FrameError::Overrun`] at the first record that does not fit,
/// [`FrameError::Count`] if the frame is empty or holds other than `declared` records.
pub fn scan(
    len: u32,
    declared: u64,
    mut read_len: impl FnMut(u32) -> u32,
) -> Result<u32, FrameError> {
    let mut at: u32 = 0;
    let mut found: u32 = 0;
    while at < len {
        if len - at < RECORD_HEADER {
            return Err(FrameError::Truncated { at, frame: len });
        }
        let record = read_len(at);
        let body = at + RECORD_HEADER;
        match body.checked_add(record) {
            Some(end) if end <= len => at = end,
            _ => {
                return Err(FrameError::Overrun {
                    at,
                    len: record,
                    frame: len,
                });
            }
        }
        // At most len / 4 records: no overflow.
        found += 1;
    }
    if found == 0 || u64::from(found) != declared {
        return Err(FrameError::Count { declared, found });
    }
    Ok(found)
}

/// [`scan`] over a frame in the caller's own memory.
///
/// # Errors
///
/// As [`scan`].
pub fn scan_slice(frame: &[u8], declared: u64) -> Result<u32, FrameError> {
    let Ok(len) = u32::try_from(frame.len()) else {
        return Err(FrameError::Count { declared, found: 0 });
    };
    scan(len, declared, |at| read_u32(frame, at as usize))
}

fn read_u32(frame: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&frame[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The records of a frame, as byte ranges of it, each checked against the frame's end. Yields
/// `Err` once (and then nothing) at the first record that does not fit.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    frame: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Iterates the records of `frame`.
    pub fn new(frame: &'a [u8]) -> Self {
        Self {
            frame,
            at: 0,
            failed: false,
        }
    }

    /// Iterates the records of `frame` from byte `at` (a [`Records::position`] of it).
    pub fn resume(frame: &'a [u8], at: usize) -> Self {
        Self {
            frame,
            at,
            failed: false,
        }
    }

    /// Where the next record starts (the frame's length once every record was read).
    pub fn position(&self) -> usize {
        self.at
    }
}

impl Iterator for Records<'_> {
    type Item = Result<std::ops::Range<usize>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.frame.len() {
            return None;
        }
        let frame = u32::try_from(self.frame.len()).unwrap_or(u32::MAX);
        let at = u32::try_from(self.at).unwrap_or(u32::MAX);
        let rest = self.frame.len() - self.at;
        if rest < RECORD_HEADER as usize {
            self.failed = true;
            return Some(Err(FrameError::Truncated { at, frame }));
        }
        let len = read_u32(self.frame, self.at);
        let body = self.at + RECORD_HEADER as usize;
        if len as usize > self.frame.len() - body {
            self.failed = true;
            return Some(Err(FrameError::Overrun { at, len, frame }));
        }
        let end = body + len as usize;
        self.at = end;
        Some(Ok(body..end))
    }
}

/// Appends records to a frame being written (the sending side): `buf` is the frame's memory,
/// `used` how much of it holds records.
///
/// Returns the range the record's body takes, or `None` if a record of `len` bytes does not
/// fit in what is left.
pub fn reserve_record(buf: &mut [u8], used: usize, len: usize) -> Option<std::ops::Range<usize>> {
    let len32 = u32::try_from(len).ok()?;
    let body = used.checked_add(RECORD_HEADER as usize)?;
    let end = body.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    buf[used..body].copy_from_slice(&len32.to_le_bytes());
    Some(body..end)
}

/// Sets the length prefix of the record whose body starts at `body` to `len` (a record
/// reserved longer than its encoding turned out).
///
/// # Panics
///
/// If `body` is less than [`RECORD_HEADER`] or past the end of `buf`.
pub fn set_record_len(buf: &mut [u8], body: usize, len: u32) {
    buf[body - RECORD_HEADER as usize..body].copy_from_slice(&len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    #[test]
    fn records_tile_the_frame() {
        let f = frame(&[b"abc", b"", b"0123456789"]);
        assert_eq!(scan_slice(&f, 3), Ok(3));
        let ranges: Vec<_> = Records::new(&f).map(Result::unwrap).collect();
        assert_eq!(ranges, vec![4..7, 11..11, 15..25]);
        assert_eq!(&f[ranges[2].clone()], b"0123456789");
    }

    #[test]
    fn bad_frames_are_refused() {
        let f = frame(&[b"abc", b"de"]);
        assert_eq!(
            scan_slice(&f, 3),
            Err(FrameError::Count {
                declared: 3,
                found: 2
            })
        );
        assert_eq!(
            scan_slice(&[], 0),
            Err(FrameError::Count {
                declared: 0,
                found: 0
            })
        );
        // A length that runs past the end, and one that would overflow a u32.
        let mut over = frame(&[b"abc"]);
        over[0] = 4;
        assert!(matches!(
            scan_slice(&over, 1),
            Err(FrameError::Overrun { at: 0, len: 4, .. })
        ));
        let mut huge = frame(&[b"abc"]);
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            scan_slice(&huge, 1),
            Err(FrameError::Overrun { .. })
        ));
        assert!(matches!(
            Records::new(&huge).next(),
            Some(Err(FrameError::Overrun { .. }))
        ));
        // Trailing bytes too few for a length.
        let mut tail = frame(&[b"abc"]);
        tail.extend_from_slice(&[0, 0]);
        assert_eq!(
            scan_slice(&tail, 2),
            Err(FrameError::Truncated { at: 7, frame: 9 })
        );
        let got: Vec<_> = Records::new(&tail).collect();
        assert_eq!(got.len(), 2);
        assert!(got[1].is_err());
    }

    #[test]
    fn writing_then_reading_round_trips() {
        let mut buf = vec![0u8; 32];
        let mut used = 0;
        for body in [&b"hello"[..], b"", b"xy"] {
            let r = reserve_record(&mut buf, used, body.len() + 3).unwrap();
            buf[r.start..r.start + body.len()].copy_from_slice(body);
            set_record_len(&mut buf, r.start, body.len() as u32);
            used = r.start + body.len();
        }
        assert!(reserve_record(&mut buf, used, 32).is_none());
        let f = &buf[..used];
        assert_eq!(scan_slice(f, 3), Ok(3));
        let bodies: Vec<_> = Records::new(f).map(|r| &f[r.unwrap()]).collect();
        assert_eq!(bodies, vec![&b"hello"[..], b"", b"xy"]);
    }
}
