//! The control socket: framed reads and writes, and file descriptors over `SCM_RIGHTS`.
//!
//! Frames themselves ([`ipc_core::control`]) are parsed in ipc-core; this module moves bytes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::{Buf, BytesMut};
use ipc_core::control::{EngineFrame, FrameError, MAX_FRAME, decode_engine_frame};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// How many descriptors ride with the welcome frame: the block, the node's end of the
/// engine's doorbell (to ring it), the node's end of its own doorbell (to wait on).
pub(crate) const WELCOME_FDS: usize = 3;

/// A buffer of bytes read from a control socket, split into frames by a decoder.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: BytesMut,
    /// The most bytes buffered at once: a frame that does not fit is refused
    /// ([`PartialFrameTooLarge`]) before more is read.
    limit: usize,
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::with_limit(MAX_FRAME + 4)
    }
}

/// A peer's frame is longer than the bytes this side buffers for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a control frame longer than {max} bytes (the engine's limit)")]
pub(crate) struct PartialFrameTooLarge {
    /// The bound.
    pub(crate) max: usize,
}

impl FrameBuf {
    /// A buffer that holds at most `limit` bytes (at least a frame header).
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            limit: limit.max(8),
        }
    }

    /// Decodes the next frame with `decode` (one of ipc-core's decoders), reading from the
    /// socket as needed. `Ok(None)` on a clean end of stream between frames.
    pub(crate) async fn next<F>(
        &mut self,
        sock: &mut (impl AsyncReadExt + Unpin),
        decode: impl Fn(&[u8]) -> Result<Option<(F, usize)>, FrameError>,
    ) -> io::Result<Option<F>> {
        loop {
            match decode(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.advance(used);
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            // No whole frame at the front: what is buffered is (part of) one frame.
            let room = self.limit.saturating_sub(self.buf.len());
            if room == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    PartialFrameTooLarge { max: self.limit },
                ));
            }
            let want = room.min(4096);
            self.buf.reserve(want);
            // Never read past the limit: the buffer stays within it whatever the peer sends.
            let read = (&mut *sock)
                .take(want as u64)
                .read_buf(&mut self.buf)
                .await?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    ))
                };
            }
        }
    }
}

/// Writes a whole frame.
pub(crate) async fn write_frame(
    sock: &mut (impl AsyncWriteExt + Unpin),
    frame: &[u8],
) -> io::Result<()> {
    sock.write_all(frame).await
}

/// Writes a whole frame through a shared reference (the node's driver reads the same socket
/// with [`EngineFrames`] meanwhile).
pub(crate) async fn write_shared(sock: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < frame.len() {
        sock.writable().await?;
        match sock.try_write(&frame[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `frame` with `fds` attached (`SCM_RIGHTS`), all bytes in one `sendmsg`.
pub(crate) async fn send_with_fds(
    sock: &UnixStream,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(WELCOME_FDS))];
    let mut sent_fds = false;
    let mut at = 0;
    while at < frame.len() {
        let n = sock
            .async_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !sent_fds && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("too many fds for the control buffer"));
                }
                let iov = [IoSlice::new(&frame[at..])];
                Ok(rustix::net::sendmsg(
                    sock.as_fd(),
                    &iov,
                    &mut control,
                    SendFlags::NOSIGNAL,
                )?)
            })
            .await?;
        sent_fds = true;
        at += n;
    }
    Ok(())
}

/// Receives bytes with any descriptors attached; returns the bytes read (0 at end of stream)
/// and appends received descriptors to `fds` (close-on-exec).
pub(crate) async fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(WELCOME_FDS))];
    sock.async_io(Interest::READABLE, || {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = rustix::net::recvmsg(
            sock.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors attached",
            ));
        }
        Ok(msg.bytes)
    })
    .await
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// A frame longer than the buffer's limit is refused once the limit is buffered, never
    /// read further; one that fits is decoded.
    #[tokio::test]
    async fn a_partial_frame_is_refused_at_the_limit() {
        let (mut a, mut b) = UnixStream::pair().expect("socket pair");
        let mut frame = 60_000u32.to_le_bytes().to_vec();
        frame.resize(4 + 60_000, 0);
        a.write_all(&frame).await.expect("write");
        let mut buf = FrameBuf::with_limit(1024);
        let err = buf
            .next(&mut b, ipc_core::control::decode_node_frame)
            .await
            .expect_err("too large");
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<PartialFrameTooLarge>());
        assert_eq!(inner, Some(&PartialFrameTooLarge { max: 1024 }));
        assert_eq!(buf.buf.len(), 1024, "read no further than the limit");

        let hello = ipc_core::control::NodeFrame::Hello { name: "n".into() };
        a.write_all(&hello.encode()).await.expect("write");
        let mut buf = FrameBuf::with_limit(1024);
        let mut c = b;
        // What is left of the long frame is still in the socket: drain it first.
        let mut rest = vec![0u8; frame.len() - 1024];
        c.read_exact(&mut rest).await.expect("drain");
        let got = buf
            .next(&mut c, ipc_core::control::decode_node_frame)
            .await
            .expect("read");
        assert_eq!(got, Some(hello));
    }
}

/// Engine frames read together with the descriptors that ride with them (`SCM_RIGHTS`): the
/// node side after rendezvous, where a `TopicAttach` carries a topic's broadcast segment.
///
/// A plain `read` would make the kernel close descriptors attached to the bytes it returns,
/// so this reads with `recvmsg` and keeps descriptors in arrival order. The engine sends each
/// frame with its descriptors in one `sendmsg` ([`send_with_fds`]), and the kernel hands the
/// descriptors over with the frame's first byte, so when a frame is complete its
/// [`EngineFrame::fd_count`] descriptors are at the front of the queue.
#[derive(Debug, Default)]
pub(crate) struct EngineFrames {
    buf: BytesMut,
    fds: VecDeque<OwnedFd>,
}

impl EngineFrames {
    /// Starts with bytes and descriptors already read (the tail of the rendezvous).
    pub(crate) fn new(bytes: &[u8], fds: Vec<OwnedFd>) -> Self {
        Self {
            buf: BytesMut::from(bytes),
            fds: fds.into(),
        }
    }

    /// The next frame and its descriptors; `Ok(None)` on a clean end of stream.
    ///
    /// Cancel-safe: everything read stays in `self`.
    ///
    /// # Errors
    ///
    /// `InvalidData` for a frame that does not decode, or that arrived without the
    /// descriptors it must carry; other I/O errors as they come.
    pub(crate) async fn next(
        &mut self,
        sock: &UnixStream,
    ) -> io::Result<Option<(EngineFrame, Vec<OwnedFd>)>> {
        let mut chunk = [0u8; 4096];
        loop {
            match decode_engine_frame(&self.buf) {
                Ok(Some((frame, used))) => {
                    let want = frame.fd_count();
                    if self.fds.len() < want {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "frame carries {want} descriptors, {} arrived",
                                self.fds.len()
                            ),
                        ));
                    }
                    self.buf.advance(used);
                    if self.buf.is_empty() {
                        // Let the consumed allocation go: an emptied `BytesMut` keeps a pointer
                        // one past its end, which leak checkers (LeakSanitizer, the fuzz
                        // targets') cannot tell from a leak while the node waits.
                        self.buf = BytesMut::new();
                    }
                    let fds = self.fds.drain(..want).collect();
                    return Ok(Some((frame, fds)));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.buf.len() > MAX_FRAME + 4 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "frame too large",
                ));
            }
            let mut fds = Vec::new();
            let n = recv_with_fds(sock, &mut chunk, &mut fds).await?;
            self.fds.extend(fds);
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    ))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use ipc_core::broadcast::{BroadcastSegment, ReadOnlySegment};
    use ipc_core::control::{EngineFrame, MessageType};
    use tokio::net::UnixStream;

    use super::{EngineFrames, send_with_fds, write_frame};

    #[tokio::test]
    async fn a_topic_segment_rides_with_its_attach_frame() {
        let (engine, node) = UnixStream::pair().expect("socketpair");
        let segment = BroadcastSegment::create(1 << 16, "topic").expect("segment");
        segment.write(64, b"first tick").expect("write");
        let attach = EngineFrame::TopicAttach {
            subscription: 2,
            topic: 7,
            name: "sensors/temp".into(),
            segment_size: segment.size(),
            ty: MessageType::bytes(),
        };
        let before = EngineFrame::SubscribeOk {
            req: 1,
            subscription: 2,
        };
        let after = EngineFrame::TopicDone { req: 3 };
        // Three frames, the middle one with a descriptor, written back to back so that the
        // node's reads may cut them anywhere.
        let mut engine_w = engine;
        write_frame(&mut engine_w, &before.encode()).await.unwrap();
        send_with_fds(&engine_w, &attach.encode(), &[segment.fd()])
            .await
            .unwrap();
        write_frame(&mut engine_w, &after.encode()).await.unwrap();
        drop(engine_w);

        let mut frames = EngineFrames::default();
        let (f1, fds1) = frames.next(&node).await.unwrap().unwrap();
        assert_eq!((f1, fds1.len()), (before, 0));
        let (f2, mut fds2) = frames.next(&node).await.unwrap().unwrap();
        assert_eq!(f2, attach);
        assert_eq!(fds2.len(), 1);
        let mapped = ReadOnlySegment::open(fds2.pop().unwrap(), 1 << 16).expect("map");
        assert_eq!(mapped.view(64, 10).unwrap().as_ref(), b"first tick");
        let (f3, fds3) = frames.next(&node).await.unwrap().unwrap();
        assert_eq!((f3, fds3.len()), (after, 0));
        assert!(frames.next(&node).await.unwrap().is_none(), "clean end");
    }

    #[tokio::test]
    async fn an_attach_without_its_descriptor_is_refused() {
        let (mut engine, node) = UnixStream::pair().expect("socketpair");
        let attach = EngineFrame::TopicAttach {
            subscription: 2,
            topic: 7,
            name: "t".into(),
            segment_size: 4096,
            ty: MessageType::bytes(),
        };
        write_frame(&mut engine, &attach.encode()).await.unwrap();
        let err = EngineFrames::default().next(&node).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // A descriptor may arrive with the bytes of the frame before its own (the kernel may
        // join them in one read): it waits in the queue, and a frame that carries none gets none.
        let (engine, node) = UnixStream::pair().expect("socketpair");
        let segment = BroadcastSegment::create(4096, "t").unwrap();
        let plain = EngineFrame::TopicDone { req: 1 };
        send_with_fds(&engine, &plain.encode(), &[segment.fd()])
            .await
            .unwrap();
        let mut frames = EngineFrames::new(&[], Vec::new());
        let (frame, fds) = frames.next(&node).await.unwrap().unwrap();
        assert_eq!((frame, fds.len()), (plain, 0));
    }
}
