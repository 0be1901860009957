//! The hostile node: a rendezvous by hand, then whatever the input says.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use ipc_core::control::{self, EngineFrame, MessageType, NodeFrame, Schema};
use ipc_core::{
    Block, Consumer, Delivery, Doorbell, Layout, Producer, RawDescriptor, ShmRing, TxArena, kind,
    validate_deliver,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::world::{World, within};
use super::{Op, SERVICE, SessionSel};
use crate::rendezvous::{self, Welcomed};

pub(super) struct Hostile {
    stream: UnixStream,
    block: Arc<Block>,
    layout: Layout,
    engine_bell: Doorbell,
    _own_bell: Doorbell,
    submit: Producer<ShmRing>,
    release: Producer<ShmRing>,
    deliver: Consumer<ShmRing>,
    tx: TxArena,
    /// Session ends it learned; the first is the one opened at setup.
    sessions: Vec<u32>,
    /// Receive sub-blocks delivered and not yet released, oldest first.
    received: VecDeque<u64>,
    last_released: Option<u64>,
    replies: Vec<u8>,
    /// It wrote its submit ring or pushed a forged `DATA`: the engine may then legitimately
    /// copy one loan twice.
    forged_submit: bool,
    /// It wrote its deliver ring: what it reads there proves nothing about the engine.
    forged_deliver: bool,
}

impl Hostile {
    /// The rendezvous, by hand, then one session to `fuzz`.
    pub(super) async fn connect(world: &mut World) -> Self {
        let mut hostile = within(&world.engine, "the hostile node's rendezvous", async {
            Self::rendezvous(&world.socket)
                .await
                .unwrap_or_else(|e| panic!("engine fuzz: rendezvous of the hostile node: {e}"))
        })
        .await;
        let open = NodeFrame::Open {
            req: 1,
            service: SERVICE.into(),
            schema: Schema::bytes(),
        };
        hostile.write(&open.encode()).await;
        let session = within(&world.engine, "OpenOk for the hostile node", async {
            loop {
                match hostile.next_reply().await {
                    Some(EngineFrame::OpenOk {
                        req: 1, session, ..
                    }) => break session,
                    Some(_) => {}
                    None => panic!("engine fuzz: the engine closed a well-behaved node"),
                }
            }
        })
        .await;
        hostile.sessions.push(session);
        let offered = within(&world.engine, "fuzz-b accepts", world.listener.accept())
            .await
            .expect("engine fuzz: fuzz-b's listener ended");
        world.echo(offered);
        hostile
    }

    async fn rendezvous(socket: &Path) -> io::Result<Self> {
        let Welcomed {
            mut stream,
            fds,
            rest,
            ..
        } = rendezvous::hello_and_welcome(socket, "hostile").await?;
        let [block, engine_bell, own_bell]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|fds: Vec<OwnedFd>| io::Error::other(format!("{} descriptors", fds.len())))?;
        let block = Arc::new(Block::open(block).map_err(io::Error::other)?);
        let tx = block.take_tx_arena().map_err(io::Error::other)?;
        stream.write_all(&NodeFrame::Ready.encode()).await?;
        Ok(Self {
            layout: *block.layout(),
            submit: Producer::new(block.submit_ring()),
            release: Producer::new(block.release_ring()),
            deliver: Consumer::new(block.deliver_ring()),
            block,
            stream,
            engine_bell: Doorbell::from_fd(engine_bell)?,
            _own_bell: Doorbell::from_fd(own_bell)?,
            tx,
            sessions: Vec::new(),
            received: VecDeque::new(),
            last_released: None,
            replies: rest,
            forged_submit: false,
            forged_deliver: false,
        })
    }

    /// The next frame from the engine, waiting for it; `None` once the socket is closed.
    async fn next_reply(&mut self) -> Option<EngineFrame> {
        loop {
            match control::decode_engine_frame(&self.replies) {
                Ok(Some((frame, used))) => {
                    self.replies.drain(..used);
                    return Some(frame);
                }
                Ok(None) => {}
                Err(e) => panic!("engine fuzz: the engine sent a bad frame: {e}"),
            }
            let mut chunk = [0u8; 4096];
            if self.stream.readable().await.is_err() {
                return None;
            }
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.replies.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads whatever frames the engine has sent, without waiting.
    fn read_replies(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = self.stream.try_read(&mut chunk) {
            self.replies.extend_from_slice(&chunk[..n]);
        }
        while let Ok(Some((frame, used))) = control::decode_engine_frame(&self.replies) {
            self.replies.drain(..used);
            if let EngineFrame::OpenOk { session, .. } | EngineFrame::Accept { session, .. } = frame
            {
                self.sessions.push(session);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        // A closed socket (the engine closed us, or we left) is part of the game.
        let _ = self.stream.write_all(bytes).await;
    }

    fn session(&self, sel: SessionSel) -> u32 {
        let first = self.sessions[0];
        match sel.sel % 6 {
            0 => first,
            1 => self.sessions[usize::from(sel.sel / 6) % self.sessions.len()],
            2 => first.wrapping_add(1),
            3 => 1 + u32::from(sel.sel / 6 % 2),
            4 => 0,
            _ => sel.raw,
        }
    }

    fn ring(&self, selector: u8) -> (u64, u64, Forged) {
        let (region, forged) = match selector % 3 {
            0 => (self.layout.submit, Forged::Submit),
            1 => (self.layout.deliver, Forged::Deliver),
            _ => (self.layout.release, Forged::Nothing),
        };
        // RingHeader (512 bytes) and the slots.
        (region.offset, 512 + u64::from(region.capacity) * 32, forged)
    }

    fn forge(&mut self, forged: Forged) {
        match forged {
            Forged::Submit => self.forged_submit = true,
            Forged::Deliver => self.forged_deliver = true,
            Forged::Nothing => {}
        }
    }

    fn pwrite(&self, bytes: &[u8], at: u64) {
        // The block is sealed against growing: a write past its end fails, harmlessly.
        let _ = rustix::io::pwrite(self.block.fd(), bytes, at);
    }

    pub(super) async fn run(&mut self, op: &Op, world: &mut World) {
        match op {
            Op::Write {
                region,
                offset,
                bytes,
            } => {
                let (start, len, forged) = match region % 6 {
                    0 => (0, 4096, Forged::Nothing),
                    sel @ 1..=3 => self.ring(sel - 1),
                    4 => (self.layout.tx.offset, self.layout.tx.size, Forged::Nothing),
                    _ => (self.layout.rx.offset, self.layout.rx.size, Forged::Nothing),
                };
                let at = u64::from(*offset) % len;
                let n = bytes.len().min((len - at) as usize);
                self.forge(forged);
                self.pwrite(&bytes[..n], start + at);
            }
            Op::Index {
                ring,
                word,
                set,
                value,
            } => {
                let (start, _, forged) = self.ring(*ring);
                let at = start + u64::from(word % 4) * 128;
                let mut current = [0u8; 4];
                let _ = rustix::io::pread(self.block.fd(), &mut current, at);
                let new = if *set {
                    *value
                } else {
                    u32::from_le_bytes(current).wrapping_add(*value)
                };
                self.forge(forged);
                self.pwrite(&new.to_le_bytes(), at);
            }
            Op::Submit {
                session,
                kind: k,
                shape,
                len,
                offset,
                aux,
            } => {
                let tx = self.layout.tx;
                let kind = if *k < 0xf8 {
                    u16::from(k % 8)
                } else {
                    u16::from(*k) << 8
                };
                let raw = RawDescriptor {
                    session: self.session(*session),
                    kind,
                    flags: if shape & 1 == 1 {
                        u16::from(shape >> 4) + 1
                    } else {
                        0
                    },
                    segment: u32::from(shape & 2 == 2),
                    len: if shape & 8 == 8 {
                        *len
                    } else {
                        len % (tx.size as u32 + 1)
                    },
                    offset: if shape & 4 == 4 {
                        *offset
                    } else {
                        offset % (tx.size / tx.min_block) * tx.min_block
                    },
                    aux: *aux,
                };
                if raw.kind == kind::DATA {
                    self.forged_submit = true;
                }
                let _ = self.submit.push(raw);
            }
            Op::Send { session, len, fill } => {
                let len = 1 + u32::from(*len) % self.layout.tx.size as u32;
                if let Ok(mut loan) = self.tx.alloc(len) {
                    loan.fill(*fill);
                    let sent = loan.submit();
                    let raw = RawDescriptor::data(self.session(*session), sent.offset, sent.len);
                    let _ = self.submit.push(raw);
                }
            }
            Op::Release { how, raw } => {
                let offset = match how % 4 {
                    0 => self.received.pop_front(),
                    1 => self.last_released,
                    2 => Some(u64::from(*raw)),
                    _ => self.received.front().map(|o| o + 1),
                };
                if let Some(offset) = offset {
                    if how % 4 == 0 {
                        self.last_released = Some(offset);
                    }
                    let _ = self
                        .release
                        .push(RawDescriptor::offset_only(kind::RELEASE, offset));
                }
            }
            Op::Deliver => self.drain_deliver(),
            Op::Bell => {
                let _ = self.engine_bell.ring();
            }
            Op::Frame(bytes) => self.write(bytes).await,
            Op::Control { kind: k, req, name } => {
                let service = match name % 4 {
                    0 => SERVICE.to_owned(),
                    1 => "hostile".to_owned(),
                    2 => "nobody".to_owned(),
                    _ => String::new(),
                };
                let schema = if name & 0x10 == 0 {
                    Schema::bytes()
                } else {
                    Schema {
                        send: MessageType {
                            name: "forged".into(),
                            fingerprint: u64::from(*name),
                        },
                        recv: MessageType::bytes(),
                    }
                };
                let req = u32::from(*req);
                let frame = match k % 5 {
                    // A hand-off segment (its id, from 1 on, is what `Submit` names with
                    // `segment` 1): a few KiB, or far past any budget.
                    _ if *k >= 0xf0 => NodeFrame::Segment {
                        req,
                        len: 1 + u32::from(*name) * 64 + u32::from(*k - 0xf0) * (256 << 20),
                    },
                    0 => NodeFrame::Hello { name: service },
                    1 => NodeFrame::Ready,
                    2 => NodeFrame::Serve {
                        req,
                        service,
                        schema,
                    },
                    3 => NodeFrame::Unserve { req, service: req },
                    _ => NodeFrame::Open {
                        req,
                        service,
                        schema,
                    },
                };
                self.write(&frame.encode()).await;
            }
            Op::Settle => world.ping("mid-input").await,
            Op::Yield(n) => {
                for _ in 0..*n {
                    tokio::task::yield_now().await;
                }
            }
            Op::Replies => self.read_replies(),
            Op::Leave => {
                let _ = rustix::net::shutdown(self.stream.as_fd(), rustix::net::Shutdown::Write);
            }
        }
    }

    /// Pops every entry of the deliver ring. Unless the node forged something the engine
    /// could be fooled by, each entry must be valid and each `TX_DONE` must name a loan in
    /// flight.
    fn drain_deliver(&mut self) {
        let strict = !self.forged_deliver;
        let rx = self.layout.rx.bounds();
        let tx = self.layout.tx.bounds();
        let mut batch = [RawDescriptor::default(); 64];
        loop {
            let n = match self.deliver.pop_batch(&mut batch) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if strict => panic!("engine fuzz: the engine corrupted a deliver ring: {e}"),
                Err(_) => return,
            };
            for raw in &batch[..n] {
                match validate_deliver(raw, &rx, &tx) {
                    // Even an empty payload has a sub-block to release.
                    Ok(Delivery::Data { offset, .. }) => self.received.push_back(offset),
                    Ok(Delivery::TxDone { offset }) => {
                        if let Err(e) = self.tx.complete(offset)
                            && strict
                            && !self.forged_submit
                        {
                            panic!("engine fuzz: TX_DONE for a loan not in flight: {e} ({raw:?})");
                        }
                    }
                    Ok(_) => {}
                    Err(e) if strict => {
                        panic!("engine fuzz: the engine delivered an invalid entry: {e} ({raw:?})")
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Forged {
    Submit,
    Deliver,
    Nothing,
}
