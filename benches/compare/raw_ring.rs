//! `raw-ring`: the physical floor of shmlink's design on this machine, with no engine and no
//! async runtime. Two processes share one ipc-core block (a sealed memfd) through its safe
//! API: the measuring process plays the engine's delivering half (it allocates in the block's
//! receive arena with the engine's buddy allocator, copies each payload in once with
//! `copy_in`, and pushes a batch of descriptors on the deliver ring), the server plays a
//! node's (it pops a batch, validates each descriptor, checks every byte in place through an
//! `RxView`, and returns the batch's sub-blocks on the release ring, which the measuring
//! process frees). Both sides work in batches (up to 256 messages, one push and one pop of a
//! ring each) and wait by spinning, never by a doorbell: there is no syscall at all while
//! the stream runs, so this is the floor below every wake-up policy. A side that finds
//! nothing to do yields its CPU every 64 empty polls (under `free` placement both processes
//! may share one CPU).
//!
//! The server maps the block through `/proc/<client>/fd/<n>` (the same memfd, sealed by
//! `Block::create`); every payload is written whole (a copy of a buffer of its byte, as the
//! engine's one copy) and checked whole. Patterns: `stream` only (with no wake-ups, a flush
//! per message would measure the same loop).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_core::{
    BlockConfig, BuddyAllocator, Consumer, Delivery, Producer, RawDescriptor, ShmRing, copy_in,
    kind, validate_deliver, validate_release,
};

use crate::common::{
    BATCH, CpuProbe, MARKER_LEN, QUIT_LEN, check_ack, check_streamed, current_thread, phase_loop,
    seed_byte, server_spec, spawn_role,
};
use crate::{Measured, Pattern, Res, Spec};

/// Descriptors popped at once.
const POP: usize = BATCH as usize;

/// Deep rings (16384 entries each way, as deep as shmipc's queue is by default a quarter of):
/// a loaded machine deschedules either side for milliseconds, and the floor should measure
/// the design's per-message work, not how few entries cover a time slice.
fn config() -> BlockConfig {
    BlockConfig {
        submit_capacity: 64,
        deliver_capacity: 16384,
        release_capacity: 16384,
        tx_arena: 64 << 10,
        rx_arena: 32 << 20,
        ..BlockConfig::default()
    }
}

/// Spins politely: a CPU hint, and the CPU handed over every 64 empty polls.
struct Spin(u32);

impl Spin {
    fn idle(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The delivering side: the receive arena's allocator and both rings' ends.
struct Writer {
    block: ipc_core::Block,
    rx: BuddyAllocator<Vec<u8>>,
    deliver: Producer<ShmRing>,
    release: Consumer<ShmRing>,
    scratch: Vec<RawDescriptor>,
    batch: Vec<RawDescriptor>,
    /// The last acknowledgement the server sent (`CREDIT`, count in `aux`).
    ack: Option<u64>,
    spin: Spin,
}

impl Writer {
    /// Frees what the server released; whether anything came back.
    fn reclaim(&mut self) -> Res<bool> {
        let n = self.release.pop_batch(&mut self.scratch)?;
        let bounds = self.block.layout().rx.bounds();
        for raw in &self.scratch[..n] {
            if raw.kind == kind::CREDIT {
                self.ack = Some(raw.aux);
                continue;
            }
            let offset = validate_release(raw, &bounds)?;
            self.rx.free(offset)?;
        }
        Ok(n > 0)
    }

    /// Copies `data` into a fresh sub-block of the receive arena and batches its descriptor.
    fn write(&mut self, data: &[u8]) -> Res<()> {
        let len = u32::try_from(data.len())?;
        let at = loop {
            match self.rx.alloc(u64::from(len)) {
                Ok(at) => break at,
                Err(ipc_core::AllocError::Full { .. }) => {
                    // Room comes back only from releases: push what is batched first.
                    self.push()?;
                    if !self.reclaim()? {
                        self.spin.idle();
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        copy_in(&self.block, at.offset, data)?;
        self.batch.push(RawDescriptor::data(1, at.offset, len));
        Ok(())
    }

    /// Pushes the batch on the deliver ring (one push when there is room).
    fn push(&mut self) -> Res<()> {
        while !self.batch.is_empty() {
            let n = self.deliver.push_batch(&self.batch)?;
            self.batch.drain(..n);
            if !self.batch.is_empty() && !self.reclaim()? {
                self.spin.idle();
            }
        }
        Ok(())
    }
}

/// The measuring client: creates the block, starts the server, streams.
pub(crate) fn client(spec: &Spec) -> Res<Measured> {
    if spec.pattern != Pattern::Stream {
        return Err("raw-ring measures the stream pattern only".into());
    }
    let block = ipc_core::Block::create(&config(), "raw-ring")?;
    let addr = format!("/proc/{}/fd/{}", std::process::id(), block.fd().as_raw_fd());
    let layout = *block.layout();
    let tree = BuddyAllocator::<Vec<u8>>::tree_len(layout.rx.size, layout.rx.min_block)?;
    let mut w = Writer {
        rx: BuddyAllocator::new(vec![0u8; tree], layout.rx.size, layout.rx.min_block)?,
        deliver: Producer::new(block.deliver_ring()),
        release: Consumer::new(block.release_ring()),
        block,
        scratch: vec![RawDescriptor::default(); POP],
        batch: Vec::with_capacity(POP),
        ack: None,
        spin: Spin(0),
    };
    let mut server = spawn_role("serve", &server_spec(spec, addr), true)?;
    server.ready()?;
    let cpu = CpuProbe::client_and(server.pid());
    let n = spec.size;
    // A buffer of each message byte: every payload is one copy into shared memory.
    let filled: Vec<Vec<u8>> = (0..251u64).map(|i| vec![seed_byte(i); n]).collect();
    let m = current_thread()?.block_on(phase_loop(spec, &cpu, async |d| {
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            for _ in 0..BATCH {
                w.write(&filled[(i % 251) as usize])?;
                i += 1;
            }
            w.push()?;
            w.reclaim()?;
            if t0.elapsed() >= d {
                break;
            }
        }
        w.ack = None;
        w.write(&[0xFF; MARKER_LEN])?;
        w.push()?;
        let ack = loop {
            if !w.reclaim()? {
                w.spin.idle();
            }
            if let Some(ack) = w.ack.take() {
                break ack;
            }
        };
        check_ack(&ack.to_le_bytes(), i)?;
        Ok(i)
    }))?;
    w.write(&[0xFE; QUIT_LEN])?;
    w.push()?;
    server.finish(Duration::from_secs(10))?;
    Ok(m)
}

/// The server: maps the client's block, checks and releases every payload until the quit
/// message.
pub(crate) fn serve(spec: &Spec) -> Res<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&spec.addr)?;
    let block = Arc::new(ipc_core::Block::open(OwnedFd::from(file))?);
    let layout = *block.layout();
    let (rx, tx) = (layout.rx.bounds(), layout.tx.bounds());
    let mut deliver = Consumer::new(block.deliver_ring());
    let mut release = Producer::new(block.release_ring());
    let mut scratch = vec![RawDescriptor::default(); POP];
    let mut out: Vec<RawDescriptor> = Vec::with_capacity(POP + 1);
    let mut spin = Spin(0);
    let mut count = 0u64;
    let mut quit = false;
    println!("ready");
    while !quit {
        let n = deliver.pop_batch(&mut scratch)?;
        if n == 0 {
            spin.idle();
            continue;
        }
        for raw in &scratch[..n] {
            let Delivery::Data { offset, len, .. } = validate_deliver(raw, &rx, &tx)? else {
                return Err(format!("unexpected entry {raw:?}").into());
            };
            let view = block.rx_view(offset, len)?;
            match len as usize {
                QUIT_LEN => quit = true,
                MARKER_LEN => {
                    out.push(RawDescriptor::offset_only(kind::RELEASE, offset));
                    out.push(RawDescriptor::control(kind::CREDIT, 0, count));
                    count = 0;
                    continue;
                }
                _ => {
                    check_streamed(view.as_ref(), count)?;
                    count += 1;
                }
            }
            out.push(RawDescriptor::offset_only(kind::RELEASE, offset));
        }
        while !out.is_empty() {
            let pushed = release.push_batch(&out)?;
            out.drain(..pushed);
            if !out.is_empty() {
                spin.idle();
            }
        }
    }
    Ok(())
}
