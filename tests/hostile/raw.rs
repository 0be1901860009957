//! A node driven by hand, as a hostile process would: a raw `UnixStream`, frames encoded with
//! `ipc_core::control`, the welcome's three descriptors taken with `recvmsg`/`SCM_RIGHTS`, the
//! block validated with `Block::open`, and from then on every word of the block written and
//! read through the memfd (`pwrite`/`pread`: the same pages the engine has mapped, no unsafe).
//!
//! It keeps just enough protocol to behave well when it wants to (send within its credits,
//! read its deliver ring, release what it received, sleep on its doorbell), so that each
//! attack can first look like a normal node and then break exactly one rule.
//!
//! Everything here blocks: a hostile child runs one attack on one thread (plus helper threads
//! of its own) and has nothing else to do.

use std::collections::VecDeque;
use std::io::Write;
use std::mem::{offset_of, size_of};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use ipc_core::control::{self, EngineFrame, NodeFrame, Schema};
use ipc_core::layout::RingRegion;
use ipc_core::ring::RingHeader;
use ipc_core::{Block, Delivery, Doorbell, Layout, Producer, RawDescriptor, ShmRing};
use rustix::event::{PollFd, PollFlags, Timespec};
use testkit::{ctx, rendezvous};

/// Offsets of the four words of a ring header (crate-private fields of `RingHeader`, pinned
/// by the const asserts beside it).
pub(crate) const HEAD: u64 = 0;
pub(crate) const TAIL: u64 = 128;
pub(crate) const WAITING: u64 = 256;
pub(crate) const SPACE_WAITING: u64 = 384;

/// Seed of the bytes a hostile node keeps at the start of its transmit arena: every payload
/// it sends validly is a prefix of `pattern(HOSTILE_SEED, 0, PAYLOAD_MAX)` at offset 0.
pub(crate) const HOSTILE_SEED: u64 = 0x4057_11E0;
/// Longest valid payload a hostile node sends.
pub(crate) const PAYLOAD_MAX: usize = 4096;

/// Everything a rendezvous brought, before `Ready`.
pub(crate) struct Welcomed {
    pub(crate) sock: UnixStream,
    pub(crate) inbuf: Vec<u8>,
    pub(crate) credits: u32,
    pub(crate) block: Arc<Block>,
    pub(crate) engine_bell: Doorbell,
    pub(crate) node_bell: Doorbell,
}

/// Connects a raw stream to the engine.
pub(crate) fn connect_raw(socket: &str) -> Result<UnixStream, String> {
    UnixStream::connect(socket).map_err(ctx(format!("connect {socket}")))
}

/// Reads from `sock` with `recvmsg` until one whole engine frame is in; returns it, the
/// bytes after it, and every descriptor that came along (close-on-exec).
pub(crate) fn recv_frame_with_fds(
    sock: &UnixStream,
) -> Result<(EngineFrame, Vec<u8>, Vec<OwnedFd>), String> {
    rendezvous::recv_frame_blocking(sock).map_err(ctx("reading the engine's frame"))
}

/// Hello, then the welcome and its block and doorbells, validated; no `Ready` yet.
pub(crate) fn hello(socket: &str, name: &str) -> Result<Welcomed, String> {
    let mut sock = connect_raw(socket)?;
    rendezvous::hello_blocking(&mut sock, name).map_err(ctx("write hello"))?;
    let (frame, inbuf, fds) = recv_frame_with_fds(&sock)?;
    let credits = match frame {
        EngineFrame::Welcome { credits, .. } => credits,
        other => return Err(format!("expected Welcome, got {other:?}")),
    };
    let [block_fd, engine_fd, node_fd]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| format!("expected 3 descriptors, got {}", fds.len()))?;
    let block = Arc::new(Block::open(block_fd).map_err(ctx("Block::open"))?);
    let engine_bell = Doorbell::from_fd(engine_fd).map_err(ctx("engine doorbell"))?;
    let node_bell = Doorbell::from_fd(node_fd).map_err(ctx("node doorbell"))?;
    Ok(Welcomed {
        sock,
        inbuf,
        credits,
        block,
        engine_bell,
        node_bell,
    })
}

/// The 32 bytes of a descriptor as they lie in a ring slot.
pub(crate) fn descriptor_bytes(d: &RawDescriptor) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut put = |at: usize, field: &[u8]| bytes[at..at + field.len()].copy_from_slice(field);
    put(offset_of!(RawDescriptor, session), &d.session.to_ne_bytes());
    put(offset_of!(RawDescriptor, kind), &d.kind.to_ne_bytes());
    put(offset_of!(RawDescriptor, flags), &d.flags.to_ne_bytes());
    put(offset_of!(RawDescriptor, segment), &d.segment.to_ne_bytes());
    put(offset_of!(RawDescriptor, len), &d.len.to_ne_bytes());
    put(offset_of!(RawDescriptor, offset), &d.offset.to_ne_bytes());
    put(offset_of!(RawDescriptor, aux), &d.aux.to_ne_bytes());
    bytes
}

fn descriptor_from(bytes: &[u8; 32]) -> RawDescriptor {
    let u16_at = |at: usize| u16::from_ne_bytes(bytes[at..at + 2].try_into().expect("2"));
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4"));
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8"));
    RawDescriptor {
        session: u32_at(offset_of!(RawDescriptor, session)),
        kind: u16_at(offset_of!(RawDescriptor, kind)),
        flags: u16_at(offset_of!(RawDescriptor, flags)),
        segment: u32_at(offset_of!(RawDescriptor, segment)),
        len: u32_at(offset_of!(RawDescriptor, len)),
        offset: u64_at(offset_of!(RawDescriptor, offset)),
        aux: u64_at(offset_of!(RawDescriptor, aux)),
    }
}

/// Offset from the block's base of slot `index` (unmasked) of `ring`.
pub(crate) fn slot_offset(ring: &RingRegion, index: u32) -> u64 {
    ring.offset
        + size_of::<RingHeader>() as u64
        + u64::from(index & (ring.capacity - 1)) * size_of::<RawDescriptor>() as u64
}

/// Writes `bytes` at `offset` of the block through its fd.
pub(crate) fn poke_fd(fd: BorrowedFd<'_>, offset: u64, bytes: &[u8]) {
    let written = rustix::io::pwrite(fd, bytes, offset).expect("pwrite into the block");
    assert_eq!(written, bytes.len(), "short pwrite");
}

/// A registered node under the attacker's full control.
pub(crate) struct RawNode {
    pub(crate) sock: UnixStream,
    inbuf: Vec<u8>,
    /// Frames from the engine not yet looked at.
    pub(crate) frames: VecDeque<EngineFrame>,
    /// Every `Error` frame the engine sent: (code, message).
    pub(crate) errors: Vec<(u16, String)>,
    /// The engine closed the connection.
    pub(crate) closed: bool,
    pub(crate) credits: u32,
    pub(crate) block: Arc<Block>,
    pub(crate) layout: Layout,
    pub(crate) engine_bell: Doorbell,
    pub(crate) node_bell: Doorbell,
    submit: Producer<ShmRing>,
    release: Producer<ShmRing>,
    /// Entries pushed on the submit and release rings (the tails we published).
    pub(crate) submit_tail: u32,
    pub(crate) release_tail: u32,
    /// Next deliver-ring index to read (our head).
    pub(crate) deliver_next: u32,
    /// Publish our deliver-ring head as we read (a well-behaved consumer does).
    pub(crate) publish_head: bool,
    epoch: u32,
    next_req: u32,
    /// Our session end (0 before `open`).
    pub(crate) session: u32,
    /// Messages sent on `session` and not yet credited back.
    pub(crate) in_flight: u32,
    /// `TX_DONE` entries received.
    pub(crate) tx_done: u64,
    /// `DATA` entries received and not yet taken.
    pub(crate) received: VecDeque<RawDescriptor>,
    /// Descriptors that came with the engine's frames, not yet matched to one.
    fds: VecDeque<OwnedFd>,
    /// Memfds of hand-off segments the engine lent us (`SegmentOk`), by id.
    pub(crate) segments: std::collections::HashMap<u32, OwnedFd>,
}

impl RawNode {
    /// Full rendezvous: hello, welcome, validation, ready.
    pub(crate) fn register(socket: &str, name: &str) -> Result<Self, String> {
        let mut node = Self::from_welcome(hello(socket, name)?);
        node.send(&NodeFrame::Ready.encode())?;
        Ok(node)
    }

    /// Registers and opens a byte session to `service`.
    pub(crate) fn register_open(socket: &str, name: &str, service: &str) -> Result<Self, String> {
        let mut node = Self::register(socket, name)?;
        node.session = node.open(service)?;
        Ok(node)
    }

    /// Takes over what a rendezvous brought (before or after `Ready`).
    pub(crate) fn from_welcome(w: Welcomed) -> Self {
        let layout = *w.block.layout();
        let node = Self {
            sock: w.sock,
            inbuf: w.inbuf,
            frames: VecDeque::new(),
            errors: Vec::new(),
            closed: false,
            credits: w.credits,
            submit: Producer::new(w.block.submit_ring()),
            release: Producer::new(w.block.release_ring()),
            layout,
            block: w.block,
            engine_bell: w.engine_bell,
            node_bell: w.node_bell,
            submit_tail: 0,
            release_tail: 0,
            deliver_next: 0,
            publish_head: true,
            epoch: 0,
            next_req: 1,
            session: 0,
            in_flight: 0,
            tx_done: 0,
            received: VecDeque::new(),
            fds: VecDeque::new(),
            segments: std::collections::HashMap::new(),
        };
        // The payload every valid message of ours carries a prefix of.
        let payload = crate::support::pattern(HOSTILE_SEED, 0, PAYLOAD_MAX);
        node.poke(layout.tx.offset, &payload);
        node
    }

    // ===== raw memory =====

    /// Writes `bytes` at `offset` of the block (from its base).
    pub(crate) fn poke(&self, offset: u64, bytes: &[u8]) {
        poke_fd(self.block.fd(), offset, bytes);
    }

    pub(crate) fn poke_u32(&self, offset: u64, value: u32) {
        self.poke(offset, &value.to_ne_bytes());
    }

    /// Reads `len` bytes at `offset` of the block.
    pub(crate) fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let read = rustix::io::pread(self.block.fd(), &mut buf, offset).expect("pread");
        assert_eq!(read, len, "short pread");
        buf
    }

    pub(crate) fn peek_u32(&self, offset: u64) -> u32 {
        u32::from_ne_bytes(self.peek(offset, 4).try_into().expect("4"))
    }

    /// Writes a descriptor into slot `index` of `ring` without publishing it.
    pub(crate) fn write_slot(&self, ring: &RingRegion, index: u32, d: &RawDescriptor) {
        self.poke(slot_offset(ring, index), &descriptor_bytes(d));
    }

    fn read_slot(&self, ring: &RingRegion, index: u32) -> RawDescriptor {
        let bytes = self.peek(slot_offset(ring, index), 32);
        descriptor_from(&bytes.try_into().expect("32"))
    }

    // ===== control socket =====

    /// Writes raw bytes on the control socket.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.sock
            .write_all(bytes)
            .map_err(ctx("write on the control socket"))
    }

    /// The next request id.
    pub(crate) fn req(&mut self) -> u32 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    /// Opens a byte session to `service`; returns our end.
    pub(crate) fn open(&mut self, service: &str) -> Result<u32, String> {
        let req = self.req();
        self.send(
            &NodeFrame::Open {
                req,
                service: service.into(),
                schema: Schema::bytes(),
            }
            .encode(),
        )?;
        match self.wait_reply(req)? {
            EngineFrame::OpenOk { session, .. } => Ok(session),
            other => Err(format!("open {service:?}: {other:?}")),
        }
    }

    /// Asks the engine for a hand-off segment of `len` bytes; returns its id and memfd.
    pub(crate) fn lend(&mut self, len: u32) -> Result<(u32, OwnedFd), String> {
        let req = self.req();
        self.send(&NodeFrame::Segment { req, len }.encode())?;
        let answer = |f: &EngineFrame| matches!(f, EngineFrame::SegmentOk { req: r, .. } | EngineFrame::Error { req: r, .. } if *r == req);
        self.wait_until(&format!("the segment of request {req}"), |n| {
            n.frames.iter().any(answer)
        })?;
        let at = self.frames.iter().position(answer).expect("found");
        let segment = match self.frames.remove(at) {
            Some(EngineFrame::SegmentOk { segment, .. }) => segment,
            other => return Err(format!("segment of {len} bytes refused: {other:?}")),
        };
        let fd = self
            .segments
            .remove(&segment)
            .ok_or_else(|| format!("segment {segment} came without its memfd"))?;
        Ok((segment, fd))
    }

    /// Waits for the reply to request `req` (an `OpenOk`, `ServeOk`, `UnserveOk` or `Error`).
    pub(crate) fn wait_reply(&mut self, req: u32) -> Result<EngineFrame, String> {
        let is_reply = |f: &EngineFrame| match f {
            EngineFrame::OpenOk { req: r, .. }
            | EngineFrame::ServeOk { req: r, .. }
            | EngineFrame::UnserveOk { req: r }
            | EngineFrame::Error { req: r, .. } => *r == req,
            _ => false,
        };
        self.wait_until(&format!("the reply to request {req}"), |n| {
            n.frames.iter().any(is_reply)
        })?;
        let at = self.frames.iter().position(is_reply).expect("found");
        Ok(self.frames.remove(at).expect("present"))
    }

    /// Reads what the socket has (it must be readable: the call blocks otherwise).
    fn read_socket(&mut self) {
        let mut chunk = [0u8; 4096];
        let mut fds = Vec::new();
        match rendezvous::recvmsg_with_fds(&self.sock, &mut chunk, &mut fds) {
            Ok(0) | Err(_) => self.closed = true,
            Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
        }
        self.fds.extend(fds);
        loop {
            match control::decode_engine_frame(&self.inbuf) {
                Ok(Some((frame, used))) => {
                    self.inbuf.drain(..used);
                    for _ in 0..frame.fd_count() {
                        let fd = self.fds.pop_front();
                        if let (EngineFrame::SegmentOk { segment, .. }, Some(fd)) = (&frame, fd) {
                            self.segments.insert(*segment, fd);
                        }
                    }
                    if let EngineFrame::Error { code, message, .. } = &frame {
                        self.errors.push((*code, message.clone()));
                    }
                    self.frames.push_back(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    self.errors
                        .push((0, format!("undecodable engine frame: {e}")));
                    self.inbuf.clear();
                    break;
                }
            }
        }
    }

    /// Sleeps until the doorbell rings or the socket has something (one second at most:
    /// only a safety net against a lost wake-up, never needed for correctness).
    fn poll(&mut self) -> Result<(), String> {
        let mut fds = [
            PollFd::new(&self.node_bell, PollFlags::IN),
            PollFd::new(&self.sock, PollFlags::IN),
        ];
        let timeout = Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let (bell, sock) = (fds[0].revents(), fds[1].revents());
        if !bell.is_empty() {
            // A full counter (some attacks saturate it) reads as rung, and is reset here.
            let _ = self.node_bell.drain();
        }
        if !sock.is_empty() && !self.closed {
            self.read_socket();
        }
        Ok(())
    }

    // ===== rings =====

    /// Rings the engine's doorbell. Once the engine has closed this node its end of the
    /// doorbell is gone and a ring reports a broken pipe: that is the engine's answer to an
    /// attack, not a failure of the attacker.
    pub(crate) fn ring(&self) -> Result<(), String> {
        match self.engine_bell.ring() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.map_err(ctx("ring the engine")),
        }
    }

    /// Pushes `entries` on the submit ring (all of them, in one batch) and rings.
    pub(crate) fn submit(&mut self, entries: &[RawDescriptor]) -> Result<(), String> {
        self.submit_quietly(entries)?;
        self.ring()
    }

    /// Pushes `entries` on the submit ring (all of them, in one batch) without ringing.
    pub(crate) fn submit_quietly(&mut self, entries: &[RawDescriptor]) -> Result<(), String> {
        let n = self
            .submit
            .push_batch(entries)
            .map_err(ctx("push on the submit ring"))?;
        if n != entries.len() {
            return Err(format!("submit ring took {n} of {} entries", entries.len()));
        }
        self.submit_tail = self.submit_tail.wrapping_add(n as u32);
        Ok(())
    }

    /// Pushes `entries` on the release ring (all of them, in one batch) without ringing.
    pub(crate) fn release_quietly(&mut self, entries: &[RawDescriptor]) -> Result<(), String> {
        let n = self
            .release
            .push_batch(entries)
            .map_err(ctx("push on the release ring"))?;
        if n != entries.len() {
            return Err(format!(
                "release ring took {n} of {} entries",
                entries.len()
            ));
        }
        self.release_tail = self.release_tail.wrapping_add(n as u32);
        Ok(())
    }

    /// Pushes `entries` on the release ring (all of them, in one batch) and rings.
    pub(crate) fn release(&mut self, entries: &[RawDescriptor]) -> Result<(), String> {
        self.release_quietly(entries)?;
        self.ring()
    }

    /// Reads every entry the engine delivered (without waiting).
    fn pump(&mut self) -> Result<(), String> {
        let ring = self.layout.deliver;
        loop {
            let tail = self.peek_u32(ring.offset + TAIL);
            let available = tail.wrapping_sub(self.deliver_next);
            if available == 0 {
                return Ok(());
            }
            if available > ring.capacity {
                return Err(format!(
                    "the engine published deliver tail {tail} with our head at {}",
                    self.deliver_next
                ));
            }
            let d = self.read_slot(&ring, self.deliver_next);
            self.deliver_next = self.deliver_next.wrapping_add(1);
            if self.publish_head {
                self.poke_u32(ring.offset + HEAD, self.deliver_next);
            }
            let bounds = (self.layout.rx.bounds(), self.layout.tx.bounds());
            match ipc_core::validate_deliver(&d, &bounds.0, &bounds.1) {
                Ok(Delivery::TxDone { .. }) => self.tx_done += 1,
                Ok(Delivery::Credit { session, count, .. }) if session == self.session => {
                    self.in_flight = self.in_flight.saturating_sub(count);
                }
                Ok(Delivery::Data { .. }) => self.received.push_back(d),
                Ok(_) => {}
                Err(e) => return Err(format!("the engine delivered {d:?}: {e}")),
            }
        }
    }

    /// Waits until `done` holds, reading deliveries and frames meanwhile. Fails if the engine
    /// closes the connection first.
    pub(crate) fn wait_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        loop {
            self.pump()?;
            if done(self) {
                return Ok(());
            }
            if self.closed {
                return Err(format!(
                    "the engine closed the connection while we waited for {what}: {:?}",
                    self.errors
                ));
            }
            // Announce sleep on the deliver ring, and wait-for-space on both rings we
            // produce (the engine rings us when it consumes them), then look once more
            // (the Dekker pair of `ipc_core::ring`: the pwrites are stores, the fence orders
            // them before the preads of the re-check).
            self.epoch = self.epoch.wrapping_add(1).max(1);
            let (d, s, r) = (self.layout.deliver, self.layout.submit, self.layout.release);
            self.poke_u32(d.offset + WAITING, self.epoch);
            self.poke_u32(s.offset + SPACE_WAITING, self.epoch);
            self.poke_u32(r.offset + SPACE_WAITING, self.epoch);
            fence(Ordering::SeqCst);
            self.pump()?;
            if !done(self) {
                self.poll()?;
            }
            self.poke_u32(d.offset + WAITING, 0);
        }
    }

    /// Waits until the engine closes the connection (reading nothing from the block: after
    /// some attacks its contents are garbage). Returns the last error message it sent.
    pub(crate) fn wait_closed(&mut self) -> Result<(u16, String), String> {
        while !self.closed {
            self.poll()?;
        }
        Ok(self.errors.last().cloned().unwrap_or((0, String::new())))
    }

    /// A valid `DATA` entry of `len` bytes on our session.
    pub(crate) fn data(&self, len: u32) -> RawDescriptor {
        RawDescriptor::data(self.session, 0, len)
    }

    /// Sends `n` valid messages, each within the credits.
    pub(crate) fn send_valid(&mut self, n: u32) -> Result<(), String> {
        for i in 0..n {
            let credits = self.credits;
            self.wait_until("a credit", |node| node.in_flight < credits)?;
            let len = 1 + (i * 97) % PAYLOAD_MAX as u32;
            let d = self.data(len);
            self.submit(&[d])?;
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Sends `n` valid messages and waits until the engine has copied all of them.
    pub(crate) fn exchange(&mut self, n: u32) -> Result<(), String> {
        let want = self.tx_done + u64::from(n);
        self.send_valid(n)?;
        self.wait_until("our messages copied", |node| node.tx_done >= want)
    }

    /// Waits until the engine has consumed everything we pushed on the submit ring.
    pub(crate) fn wait_submit_consumed(&mut self) -> Result<(), String> {
        let (at, tail) = (self.layout.submit.offset + HEAD, self.submit_tail);
        self.wait_until("the submit ring consumed", |n| n.peek_u32(at) == tail)
    }

    /// Waits until the engine has consumed everything we pushed on the release ring.
    pub(crate) fn wait_release_consumed(&mut self) -> Result<(), String> {
        let (at, tail) = (self.layout.release.offset + HEAD, self.release_tail);
        self.wait_until("the release ring consumed", |n| n.peek_u32(at) == tail)
    }

    /// Waits for a `DATA` delivery and takes it.
    pub(crate) fn next_data(&mut self) -> Result<RawDescriptor, String> {
        self.wait_until("a delivery", |n| !n.received.is_empty())?;
        Ok(self.received.pop_front().expect("waited"))
    }

    /// Leaves: closes the control socket (the engine then buries the node).
    pub(crate) fn leave(self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// The control socket's fd (for `sendmsg`).
    pub(crate) fn sock_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
