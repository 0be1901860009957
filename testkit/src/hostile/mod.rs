//! The whole-engine fuzz harness: the entry point of the `engine` fuzz target
//! (`fuzz/fuzz_targets/engine.rs`, one line there) and of its regression tests
//! (`tests/fuzz_regressions`).
//!
//! [`engine`] plays a *hostile node* against a real engine. It uses only what any process
//! can use: the public API of this crate and ipc-core, a raw Unix socket, `recvmsg` with
//! `SCM_RIGHTS`, and `pwrite`/`pread` on the block's memfd. Nothing here reaches into the
//! engine's internals, so the engine under test is the engine users run.
//!
//! Once per process (a `OnceLock`): a current-thread runtime (one thread, so an iteration is
//! a deterministic interleaving of the engine's tasks and ours), an engine on a socket in a
//! temporary directory (small blocks, 8 credits, no spinning), and two legitimate nodes,
//! `fuzz-a` and `fuzz-b`, with a byte session between them; `fuzz-b` serves `fuzz`.
//!
//! Each call then:
//!
//! 1. registers a fresh hostile node by hand (hello, welcome with the block and both
//!    doorbells, ready) and opens a byte session to `fuzz`; `fuzz-b`'s end of every session
//!    the hostile node opens echoes what arrives, without ever waiting on the hostile node;
//! 2. runs the input as a list of the hostile node's operations ([`Op`]);
//! 3. checks the engine's invariants 3 (shared memory is untrusted input) and 6 (a dead node
//!    is cleaned up), panicking (a crash to the fuzzer) if one breaks:
//!    - the legitimate pair still exchanges a message, intact and in order, after the
//!      operations and again after the hostile node is gone;
//!    - while the hostile node never touched its deliver ring or forged a `DATA` entry,
//!      every entry the engine delivers to it is valid and every `TX_DONE` names a loan it
//!      has in flight (the engine completes each loan exactly once);
//!    - once the hostile node's socket closes, the engine's counts return to the baseline
//!      (2 nodes, 2 session ends, 1 service), and so do the process's descriptors and file
//!      mappings: no block, doorbell or socket of the hostile node stays open or mapped;
//!    - no task panicked (under libFuzzer a panic aborts at once anyway).
//!
//! # Input
//!
//! A sequence of operations, each an opcode byte (`% 14`) and its fields (little-endian;
//! missing bytes read as zero, so every input is valid). At most [`MAX_OPS`] operations.
//!
//! | op | fields | what the hostile node does |
//! |---|---|---|
//! | 0 write | region u8, offset u16, len u8, bytes | `pwrite`s up to 64 bytes into a region of its block: header page, submit / deliver / release ring (header and slots), tx arena, rx arena |
//! | 1 index | ring u8, word u8, mode u8 [, value u32] | moves a ring word (head, tail, waiting, space_waiting) by a delta (`mode` even) or sets it (`mode` odd) |
//! | 2 submit | session u8 [, u32], kind u8, shape u8, len u32, offset u64, aux u64 | pushes a descriptor on its submit ring: `shape` picks which fields stay plausible and which are raw |
//! | 3 send | session u8 [, u32], len u16, fill u8 | sends a real loan (allocated in its tx arena) as `DATA` |
//! | 4 release | how u8 [, u32] | pushes a release: the oldest received sub-block, the last released one again, a raw offset, or an offset inside a held sub-block |
//! | 5 deliver | | drains its deliver ring: records `DATA`, completes `TX_DONE` |
//! | 6 bell | | rings the engine's doorbell |
//! | 7 frame | len u8, bytes | writes raw bytes on the control socket |
//! | 8 control | kind u8, req u8, name u8 | sends a well-formed hello, ready, serve, unserve or open frame; from `kind` 0xf0 on, a request for a hand-off segment (which a `submit` with `segment` 1 then names) |
//! | 9 settle | | waits until the legitimate pair exchanged a message (the engine made a pass over every node) |
//! | 10 yield | n u8 | yields to the runtime `n % 8 + 1` times |
//! | 11 replies | | reads the engine's frames; `OpenOk` and `Accept` add session ends it may name |
//! | 12 leave | | shuts the write half of its socket (the engine sees it go; its rings stay mapped) |
//! | 13 repeat | n u8 | repeats the previous operation `n % 32 + 1` times |
//!
//! A session byte names: its first session (`% 6 == 0`), one of the ends it learned
//! (`1`), the peer's end of its first session (`2`), the legitimate pair's ends (`3`: end 1
//! or 2), end 0 (`4`), or a raw u32 that follows (`5`).
//!
//! The process leaves a small directory `shmlink-fuzz-<pid>-<n>` in the temp dir (the
//! fuzzer exits without running destructors); the next process removes those of dead pids.

mod node;
mod world;

use std::time::Duration;

use ipc_core::BlockConfig;

use self::world::{HARNESS, Harness, IN_ENGINE, OnDrop, World};

/// Most operations run per input.
pub const MAX_OPS: usize = 256;

/// Bound on any wait: the engine answers in microseconds; this only catches hangs.
const STEP: Duration = Duration::from_secs(10);

/// Small blocks: every region is reachable with small offsets, and arenas fill quickly.
const BLOCK: BlockConfig = BlockConfig {
    submit_capacity: 64,
    deliver_capacity: 64,
    release_capacity: 64,
    tx_arena: 64 << 10,
    rx_arena: 64 << 10,
    min_block: 64,
};

/// Few credits, so exceeding them is reachable.
const CREDITS: u32 = 8;

/// The service `fuzz-b` serves.
const SERVICE: &str = "fuzz";

/// Runs `data` as the operations of a hostile node against a shared engine.
///
/// # Panics
///
/// When the engine breaks an invariant (see the module docs); the message names the
/// invariant, the engine's counts and the operations.
pub fn engine(data: &[u8]) {
    let ops = parse(data);
    let harness = HARNESS.get_or_init(Harness::new);
    // A failed iteration (a panic, under `cargo test`) leaves its world in an unknown state:
    // the next one starts over with a new engine.
    let mut world = harness.world.lock().unwrap_or_else(|poisoned| {
        let mut guard = poisoned.into_inner();
        *guard = None;
        guard
    });
    IN_ENGINE.set(true);
    let _reset = OnDrop(|| IN_ENGINE.set(false));
    harness.runtime.block_on(async {
        if world.is_none() {
            *world = Some(World::new().await);
        }
        world.as_mut().expect("just built").iteration(&ops).await;
    });
}

/// The operations `data` parses to (what a failure report prints).
pub fn parse(data: &[u8]) -> Vec<Op> {
    let mut input = Input(data);
    let mut ops: Vec<Op> = Vec::new();
    while !input.0.is_empty() && ops.len() < MAX_OPS {
        let op = match input.u8() % 14 {
            0 => {
                let region = input.u8();
                let offset = input.u16();
                let len = usize::from(input.u8() % 65);
                Op::Write {
                    region,
                    offset,
                    bytes: input.bytes(len),
                }
            }
            1 => {
                let ring = input.u8();
                let word = input.u8();
                let mode = input.u8();
                let value = if mode & 1 == 1 {
                    input.u32()
                } else {
                    (i32::from(mode as i8) >> 1) as u32
                };
                Op::Index {
                    ring,
                    word,
                    set: mode & 1 == 1,
                    value,
                }
            }
            2 => Op::Submit {
                session: SessionSel::parse(&mut input),
                kind: input.u8(),
                shape: input.u8(),
                len: input.u32(),
                offset: input.u64(),
                aux: input.u64(),
            },
            3 => Op::Send {
                session: SessionSel::parse(&mut input),
                len: input.u16(),
                fill: input.u8(),
            },
            4 => {
                let how = input.u8();
                let raw = if how % 4 == 2 { input.u32() } else { 0 };
                Op::Release { how, raw }
            }
            5 => Op::Deliver,
            6 => Op::Bell,
            7 => {
                let len = usize::from(input.u8());
                Op::Frame(input.bytes(len))
            }
            8 => Op::Control {
                kind: input.u8(),
                req: input.u8(),
                name: input.u8(),
            },
            9 => Op::Settle,
            10 => Op::Yield(input.u8() % 8 + 1),
            11 => Op::Replies,
            12 => Op::Leave,
            _ => {
                let times = usize::from(input.u8() % 32) + 1;
                if let Some(last) = ops.last().cloned() {
                    for _ in 0..times.min(MAX_OPS - ops.len()) {
                        ops.push(last.clone());
                    }
                }
                continue;
            }
        };
        ops.push(op);
    }
    ops
}

/// One operation of the hostile node (see the module docs for the encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `pwrite` into a region of the block.
    Write {
        /// Region selector.
        region: u8,
        /// Offset in the region (modulo its length).
        offset: u16,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Moves or sets a ring word.
    Index {
        /// Ring selector.
        ring: u8,
        /// Word selector.
        word: u8,
        /// Set (true) or add (false).
        set: bool,
        /// The value or delta.
        value: u32,
    },
    /// Pushes a descriptor on the submit ring.
    Submit {
        /// Which session end it names.
        session: SessionSel,
        /// Kind selector.
        kind: u8,
        /// Which fields are raw.
        shape: u8,
        /// Length.
        len: u32,
        /// Offset.
        offset: u64,
        /// Extra word.
        aux: u64,
    },
    /// Sends a real loan.
    Send {
        /// Which session end it names.
        session: SessionSel,
        /// Length minus one (modulo the arena).
        len: u16,
        /// The byte it is filled with.
        fill: u8,
    },
    /// Pushes a release.
    Release {
        /// Which offset.
        how: u8,
        /// A raw offset.
        raw: u32,
    },
    /// Drains the deliver ring.
    Deliver,
    /// Rings the engine's doorbell.
    Bell,
    /// Raw bytes on the control socket.
    Frame(Vec<u8>),
    /// A well-formed control frame.
    Control {
        /// Frame selector.
        kind: u8,
        /// Request id.
        req: u8,
        /// Name and schema selector.
        name: u8,
    },
    /// Waits for a message of the legitimate pair.
    Settle,
    /// Yields to the runtime this many times.
    Yield(u8),
    /// Reads the engine's frames.
    Replies,
    /// Shuts the socket's write half.
    Leave,
}

/// Which session end a descriptor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSel {
    sel: u8,
    raw: u32,
}

impl SessionSel {
    fn parse(input: &mut Input<'_>) -> Self {
        let sel = input.u8();
        let raw = if sel % 6 == 5 { input.u32() } else { 0 };
        Self { sel, raw }
    }
}

// ===== input =====

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let n = len.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_input() {
        assert_eq!(parse(&[]), Vec::new());
        assert_eq!(parse(&[9, 5, 6]), vec![Op::Settle, Op::Deliver, Op::Bell]);
        // A repeat with nothing before it adds nothing; one after an op copies it.
        assert_eq!(parse(&[13, 0, 6, 13, 2]).len(), 4);
        assert!(parse(&[13, 31].repeat(1000)).is_empty());
        assert_eq!(parse(&[6, 13, 31].repeat(100)).len(), MAX_OPS);
    }
}
