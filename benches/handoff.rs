//! Large payloads: a sealed hand-off against the engine's copy, between real processes.
//!
//! `cargo bench -p shmlink-benches --bench handoff -- [--sizes 16M,64M,256M,1G] [--runs N]`
//!
//! Three processes per measurement: this one plays the engine, and re-executes itself as a
//! sender and a receiver. Each child gets one end of a Unix socket pair as its standard input;
//! memfds travel over it with `SCM_RIGHTS`, as blocks do at rendezvous.
//!
//! - `copy`, the engine's copy (its path for every payload before hand-off segments, and
//!   still within the arenas) for a payload with memory of its own: the engine creates the
//!   sender's block (a transmit arena of the payload's size) and hands it over; the sender
//!   loans the payload from its arena, writes every byte and submits it. The engine then creates a fresh receiver block,
//!   [`copy_payload`]s the payload into its receive arena (the first touch of its pages is
//!   part of the copy: that is what a new segment costs) and hands it to the receiver, which
//!   maps it and reads every byte.
//! - `copy-warm`, the copy in the steady state of a payload that fits the arenas: as `copy`,
//!   but the sender writes into a loan it has written before, and the engine copies into a
//!   receiver block whose arena pages were touched (by the engine) and mapped and read (by
//!   the receiver) before the measurement, as arenas in use are. Not a cost a payload with a
//!   segment of its own can have (its pages are new); shown for scale.
//! - `handoff`: the engine creates a [`Segment`] and hands it over; the sender writes every
//!   byte through a [`SegmentWriter`] and unmaps it; the engine seals it against writing
//!   ([`Segment::seal_write`]) and hands the same fd to the receiver, which maps it read-only
//!   ([`SealedView`]) and reads every byte. The engine never maps it.
//!
//! The time measured (`deliver`) is from "the sender finished writing" (before the sender's
//! unmap in `handoff`, before its submit in `copy`) to "the receiver finished reading" (a
//! checksum of every byte, checked against the sender's), on `CLOCK_MONOTONIC`, which all
//! processes share. Beside it, `write`: the sender's copy of the payload from its private
//! memory into shared memory (for `handoff`, with its mapping of the segment), where the
//! first touch of new pages shows; the end-to-end ratios add the two. Memory touched is what the kernel allocated for the memfds involved (`st_blocks` of
//! each, after the receiver read). Each figure is the median over `--runs` runs (7), the two
//! modes interleaved within a run so drift hits them alike; the ratio is handoff / copy.
//! Processes are not pinned: on a loaded machine, expect noise, not bias.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use ipc_core::{Block, BlockConfig, SealedView, Segment, SegmentWriter, copy_in, copy_payload};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The engine touches a warm receiver arena in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Smallest size class of the blocks (large: the transmit tree stays small).
const MIN_BLOCK: u64 = 1 << 12;
/// The arenas a block needs but this bench does not use.
const UNUSED_ARENA: u64 = 1 << 16;

/// A message on a control socket: a tag and three words.
type Msg = [u64; 5];
const WRITTEN: u64 = 1;
const READY: u64 = 2;
const READ: u64 = 3;
const BYE: u64 = 4;
const SETUP: u64 = 5;
const PRIMED: u64 = 6;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Copy,
    CopyWarm,
    Handoff,
}

const MODES: [Mode; 3] = [Mode::Copy, Mode::CopyWarm, Mode::Handoff];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Copy => "copy",
            Mode::CopyWarm => "copy-warm",
            Mode::Handoff => "handoff",
        }
    }
    fn parse(s: &str) -> Res<Self> {
        match s {
            "copy" => Ok(Mode::Copy),
            "copy-warm" => Ok(Mode::CopyWarm),
            "handoff" => Ok(Mode::Handoff),
            _ => Err(format!("unknown mode {s}").into()),
        }
    }
}

/// One measurement: nanoseconds from written to read, and bytes of memfd memory touched.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ns: u64,
    /// The sender's write of the payload (and, for `handoff`, its mapping of the segment).
    write_ns: u64,
    touched: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some(role @ ("sender" | "receiver")) => child(role, &args[2..]),
        _ => coordinate(&args[1..]),
    };
    if let Err(e) = result {
        eprintln!(
            "handoff {}: error: {e}",
            args.get(1).map_or("", String::as_str)
        );
        std::process::exit(1);
    }
}

// ===== payload, checksum, clock =====

/// The payload's word at index `i`: position-dependent, so a misplaced or zero page shows.
fn word(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_0F0F_0F0F
}

/// Fills `buf` with the payload's bytes from byte `at` (a multiple of 8).
fn fill(buf: &mut [u8], at: usize) {
    for (k, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word((at / 8 + k) as u64).to_le_bytes());
    }
}

/// Wrapping sum of the little-endian 64-bit words, then of the trailing bytes: reads every
/// byte (the comparison harness's checksum).
fn checksum(buf: &[u8]) -> u64 {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    let mut sum = 0u64;
    for w in words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
    }
    for &b in tail {
        sum = sum.wrapping_add(u64::from(b));
    }
    sum
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Bytes the kernel allocated for a memfd (its pages touched so far).
fn allocated(fd: BorrowedFd<'_>) -> Res<u64> {
    Ok(rustix::fs::fstat(fd)?.st_blocks as u64 * 512)
}

// ===== the control socket =====

fn send(stream: &UnixStream, msg: Msg, fd: Option<BorrowedFd<'_>>) -> Res<()> {
    let mut bytes = [0u8; 40];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(msg) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err("no room for the fd".into());
        }
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != bytes.len() {
        return Err("short sendmsg".into());
    }
    Ok(())
}

fn recv(stream: &UnixStream) -> Res<(Msg, Option<OwnedFd>)> {
    let mut bytes = [0u8; 40];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
    )?;
    if got.bytes != bytes.len() {
        return Err(format!("peer closed or short message ({} bytes)", got.bytes).into());
    }
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut rights) = message {
            fd = rights.next();
        }
    }
    let mut msg = [0u64; 5];
    for (w, chunk) in msg.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into()?);
    }
    Ok((msg, fd))
}

fn expect(stream: &UnixStream, tag: u64) -> Res<(Msg, Option<OwnedFd>)> {
    let (msg, fd) = recv(stream)?;
    if msg[0] != tag {
        return Err(format!("expected message {tag}, got {msg:?}").into());
    }
    Ok((msg, fd))
}

fn sender_config(len: u64) -> BlockConfig {
    BlockConfig {
        tx_arena: len,
        rx_arena: UNUSED_ARENA,
        min_block: MIN_BLOCK,
        ..BlockConfig::default()
    }
}

fn receiver_config(len: u64) -> BlockConfig {
    BlockConfig {
        tx_arena: UNUSED_ARENA,
        rx_arena: len,
        min_block: MIN_BLOCK,
        ..BlockConfig::default()
    }
}

// ===== the children =====

fn child(role: &str, args: &[String]) -> Res<()> {
    let mode = Mode::parse(args.first().ok_or("missing mode")?)?;
    let len: u64 = args.get(1).ok_or("missing size")?.parse()?;
    let socket = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    match role {
        "sender" => sender(&socket, mode, len),
        _ => receiver(&socket, mode, len),
    }
}

/// The payload, made in the sender's private memory before anything is timed.
fn payload(len: usize) -> (Vec<u8>, u64) {
    let mut bytes = vec![0u8; len];
    fill(&mut bytes, 0);
    let sum = checksum(&bytes);
    (bytes, sum)
}

fn sender(socket: &UnixStream, mode: Mode, len: u64) -> Res<()> {
    let (bytes, sum) = payload(usize::try_from(len)?);
    let (_, fd) = recv(socket)?;
    let fd = fd.ok_or("no fd")?;
    match mode {
        Mode::Copy | Mode::CopyWarm => {
            let block = Arc::new(Block::open(fd)?);
            let tx = block.take_tx_arena()?;
            let mut loan = tx.alloc(u32::try_from(len)?)?;
            if mode == Mode::CopyWarm {
                // A node in use writes into arena pages it has written before.
                loan.copy_from_slice(&bytes);
            }
            let start = now_ns();
            loan.copy_from_slice(&bytes);
            let written = now_ns();
            let sub = loan.submit();
            send(
                socket,
                [WRITTEN, sub.offset, written, sum, written - start],
                None,
            )?;
            // A live node keeps its block mapped: stay until the measurement is over.
            expect(socket, BYE)?;
        }
        Mode::Handoff => {
            let start = now_ns();
            let mut writer = SegmentWriter::open(fd, len)?;
            writer.write_at(0, &bytes)?;
            let written = now_ns();
            writer.finish();
            send(socket, [WRITTEN, 0, written, sum, written - start], None)?;
            expect(socket, BYE)?;
        }
    }
    Ok(())
}

fn receiver(socket: &UnixStream, mode: Mode, len: u64) -> Res<()> {
    let len32 = u32::try_from(len)?;
    let sum = match mode {
        Mode::Copy => {
            let (msg, fd) = expect(socket, READY)?;
            let block = Arc::new(Block::open(fd.ok_or("no fd")?)?);
            checksum(block.rx_view(msg[1], len32)?.as_ref())
        }
        Mode::CopyWarm => {
            // Map and read the arena once before the measurement, as a node in use has.
            let (_, fd) = expect(socket, SETUP)?;
            let block = Arc::new(Block::open(fd.ok_or("no fd")?)?);
            let primed = checksum(block.rx_view(0, len32)?.as_ref());
            send(socket, [PRIMED, primed, 0, 0, 0], None)?;
            let (msg, _) = expect(socket, READY)?;
            checksum(block.rx_view(msg[1], len32)?.as_ref())
        }
        Mode::Handoff => {
            let (_, fd) = expect(socket, READY)?;
            checksum(&SealedView::open(fd.ok_or("no fd")?, len)?)
        }
    };
    let read = now_ns();
    send(socket, [READ, read, sum, 0, 0], None)?;
    Ok(())
}

// ===== the engine =====

/// Kills and reaps a child the engine's side gave up on.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn spawn(role: &str, mode: Mode, len: u64, socket: UnixStream) -> Res<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args([role, mode.name(), &len.to_string()])
            .stdin(Stdio::from(OwnedFd::from(socket)))
            .spawn()?;
        Ok(Self(Some(child)))
    }

    fn wait(mut self) -> Res<()> {
        let status = self.0.take().ok_or("already waited")?.wait()?;
        if !status.success() {
            return Err(format!("child failed: {status}").into());
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One measurement: a fresh sender and receiver, one payload of `len` bytes.
fn measure(mode: Mode, len: u64) -> Res<Sample> {
    let (to_sender, sender_end) = UnixStream::pair()?;
    let (to_receiver, receiver_end) = UnixStream::pair()?;
    let sender = ChildGuard::spawn("sender", mode, len, sender_end)?;
    let receiver = ChildGuard::spawn("receiver", mode, len, receiver_end)?;
    let sample = match mode {
        Mode::Copy => {
            let source = Block::create(&sender_config(len), "bench-sender")?;
            send(&to_sender, [READY, 0, 0, 0, 0], Some(source.fd()))?;
            let (written, _) = expect(&to_sender, WRITTEN)?;
            // The window: a fresh receiver block, the copy, the hand-over, the read.
            let target = Block::create(&receiver_config(len), "bench-receiver")?;
            copy_payload(&source, written[1], &target, 0, u32::try_from(len)?)?;
            send(&to_receiver, [READY, 0, 0, 0, 0], Some(target.fd()))?;
            let (read, _) = expect(&to_receiver, READ)?;
            check(written, read)?;
            let touched = allocated(source.fd())? + allocated(target.fd())?;
            Sample {
                ns: read[1].saturating_sub(written[2]),
                write_ns: written[4],
                touched,
            }
        }
        Mode::CopyWarm => {
            let source = Block::create(&sender_config(len), "bench-sender")?;
            let target = Block::create(&receiver_config(len), "bench-receiver")?;
            let zeros = vec![0u8; CHUNK];
            for at in (0..len).step_by(CHUNK) {
                copy_in(&target, at, &zeros[..CHUNK.min((len - at) as usize)])?;
            }
            send(&to_receiver, [SETUP, 0, 0, 0, 0], Some(target.fd()))?;
            expect(&to_receiver, PRIMED)?;
            // Only now may the sender write: the window starts when it is done.
            send(&to_sender, [READY, 0, 0, 0, 0], Some(source.fd()))?;
            let (written, _) = expect(&to_sender, WRITTEN)?;
            copy_payload(&source, written[1], &target, 0, u32::try_from(len)?)?;
            send(&to_receiver, [READY, 0, 0, 0, 0], None)?;
            let (read, _) = expect(&to_receiver, READ)?;
            check(written, read)?;
            Sample {
                ns: read[1].saturating_sub(written[2]),
                write_ns: written[4],
                touched: allocated(source.fd())? + allocated(target.fd())?,
            }
        }
        Mode::Handoff => {
            let segment = Segment::create(len, "bench-handoff")?;
            send(&to_sender, [READY, 0, 0, 0, 0], Some(segment.fd()))?;
            let (written, _) = expect(&to_sender, WRITTEN)?;
            segment.seal_write()?;
            send(&to_receiver, [READY, 0, 0, 0, 0], Some(segment.fd()))?;
            let (read, _) = expect(&to_receiver, READ)?;
            check(written, read)?;
            Sample {
                ns: read[1].saturating_sub(written[2]),
                write_ns: written[4],
                touched: allocated(segment.fd())?,
            }
        }
    };
    send(&to_sender, [BYE, 0, 0, 0, 0], None)?;
    sender.wait()?;
    receiver.wait()?;
    Ok(sample)
}

fn check(written: Msg, read: Msg) -> Res<()> {
    if written[3] != read[2] {
        return Err(format!(
            "checksum mismatch: sender {:#x}, receiver {:#x}",
            written[3], read[2]
        )
        .into());
    }
    Ok(())
}

fn parse_size(s: &str) -> Res<u64> {
    let s = s.trim();
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let size = num.parse::<u64>()? << shift;
    if !size.is_power_of_two() || !(MIN_BLOCK..=1 << 31).contains(&size) {
        return Err(format!("size {s}: a power of two from 4K to 2G (an arena's size)").into());
    }
    Ok(size)
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{:.0} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{} KiB", b >> 10),
    }
}

fn coordinate(args: &[String]) -> Res<()> {
    let mut sizes = vec![16 << 20, 64 << 20, 256 << 20, 1 << 30];
    let mut runs = 7usize;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => {
                let list = it.next().ok_or("--sizes needs a list")?;
                sizes = list.split(',').map(parse_size).collect::<Res<_>>()?;
            }
            "--runs" => runs = it.next().ok_or("--runs needs a number")?.parse()?,
            _ => {} // cargo bench passes --bench
        }
    }
    let runs = runs.max(1);
    println!(
        "{:>8} | {:>22} | {:>22} | {:>6} {:>6} | {:>8} {:>8} | {:>8} {:>8}",
        "payload",
        "deliver: copy/warm/h-o",
        "write: copy/warm/h-o",
        "h/copy",
        "h/warm",
        "e2e/copy",
        "e2e/warm",
        "mem copy",
        "mem h/o"
    );
    for &len in &sizes {
        let mut deliver = [Vec::new(), Vec::new(), Vec::new()];
        let mut write = [Vec::new(), Vec::new(), Vec::new()];
        let mut touched = [0u64; 3];
        for _ in 0..runs {
            for (k, mode) in MODES.into_iter().enumerate() {
                let sample = measure(mode, len)?;
                deliver[k].push(sample.ns);
                write[k].push(sample.write_ns);
                touched[k] = touched[k].max(sample.touched);
            }
        }
        let [copy, warm, handoff] = deliver.each_mut().map(|t| median(t) as f64 / 1e6);
        let [w_copy, w_warm, w_handoff] = write.each_mut().map(|t| median(t) as f64 / 1e6);
        println!(
            "{:>8} | {:>6.1} {:>6.1} {:>6.1} ms | {:>6.1} {:>6.1} {:>6.1} ms | {:>6.3} {:>6.3} | {:>8.3} {:>8.3} | {:>8} {:>8}",
            human(len),
            copy,
            warm,
            handoff,
            w_copy,
            w_warm,
            w_handoff,
            handoff / copy,
            handoff / warm,
            (w_handoff + handoff) / (w_copy + copy),
            (w_handoff + handoff) / (w_warm + warm),
            human(touched[0]),
            human(touched[2]),
        );
    }
    println!(
        "p50 of {runs} runs. deliver: from \"sender finished writing\" to \"receiver finished \
         reading\"; write: the sender's write of the payload (handoff: with its mapping of the \
         segment); h/copy = handoff / copy and h/warm = handoff / copy-warm (deliver); e2e/copy \
         and e2e/warm: the same ratios of write + deliver; mem = memfd pages touched."
    );
    Ok(())
}
