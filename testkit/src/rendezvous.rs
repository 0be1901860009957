//! A rendezvous by hand, as any process could do it: a raw Unix socket, `Hello` encoded with
//! `ipc_core::control`, and the `Welcome` with its three descriptors (block, engine doorbell,
//! node doorbell) taken with `recvmsg` and `SCM_RIGHTS`. Nothing here reaches into the engine.
//!
//! Async ([`hello_and_welcome`], [`recv_with_fds`]) for tests on a runtime, blocking
//! ([`recv_frame_blocking`]) for hostile children that drive one attack on one thread.

use std::io::{self, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use ipc_core::control::{self, EngineFrame, NodeFrame};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Descriptors a welcome carries: the block, the engine's doorbell, the node's doorbell.
pub const WELCOME_FDS: usize = 3;

/// One blocking `recvmsg` on `sock` into `buf`, appending the descriptors that came along
/// (close-on-exec, at most three) to `fds`. Returns the bytes read (0 at end of stream).
///
/// # Errors
///
/// As `recvmsg(2)`; `InvalidData` if more descriptors came.
pub fn recvmsg_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recvmsg_once(sock, buf, fds)
}

/// One `recvmsg` on `sock` into `buf`, appending the descriptors that came along
/// (close-on-exec) to `fds`. Returns the bytes read (0 at end of stream).
fn recvmsg_once(sock: impl AsFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(WELCOME_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors attached than a welcome carries (MSG_CTRUNC)",
        ));
    }
    Ok(msg.bytes)
}

/// The node's own `recvmsg` of a welcome (bytes, and up to three descriptors, close-on-exec),
/// for tests that register by hand.
///
/// # Errors
///
/// As `recvmsg(2)`; `InvalidData` if more descriptors came than a welcome carries.
pub async fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    sock.async_io(Interest::READABLE, || recvmsg_once(sock, buf, fds))
        .await
}

/// Everything a rendezvous by hand brought, before `Ready`.
#[derive(Debug)]
pub struct Welcomed {
    /// The control connection.
    pub stream: UnixStream,
    /// The node's id, from the welcome.
    pub node: u32,
    /// Credits per session end, from the welcome.
    pub credits: u32,
    /// Block, engine doorbell, node doorbell, in that order.
    pub fds: Vec<OwnedFd>,
    /// Bytes the engine sent after the welcome.
    pub rest: Vec<u8>,
}

/// Connects to `socket`, says `Hello` as `name` and reads the `Welcome` and its three
/// descriptors. Sends no `Ready`: the engine has made a block for a connection that is not a
/// node yet.
///
/// # Errors
///
/// A failed connect, write or `recvmsg`; the engine closing the connection, sending another
/// frame or a bad one, or attaching other than three descriptors.
pub async fn hello_and_welcome(socket: impl AsRef<Path>, name: &str) -> io::Result<Welcomed> {
    let mut stream = UnixStream::connect(socket).await?;
    stream
        .write_all(&NodeFrame::Hello { name: name.into() }.encode())
        .await?;
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let (frame, used) = loop {
        if let Some(decoded) = control::decode_engine_frame(&bytes).map_err(io::Error::other)? {
            break decoded;
        }
        let n = recv_with_fds(&stream, &mut chunk, &mut fds).await?;
        if n == 0 {
            return Err(closed(bytes.len()));
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let EngineFrame::Welcome { node, credits, .. } = frame else {
        return Err(io::Error::other(format!("expected Welcome, got {frame:?}")));
    };
    if fds.len() != WELCOME_FDS {
        return Err(io::Error::other(format!(
            "expected {WELCOME_FDS} descriptors, got {}",
            fds.len()
        )));
    }
    Ok(Welcomed {
        stream,
        node,
        credits,
        fds,
        rest: bytes[used..].to_vec(),
    })
}

/// Sends `Hello` as `name` on a blocking stream.
///
/// # Errors
///
/// As `write(2)`.
pub fn hello_blocking(sock: &mut std::os::unix::net::UnixStream, name: &str) -> io::Result<()> {
    sock.write_all(&NodeFrame::Hello { name: name.into() }.encode())
}

/// Reads from a blocking `sock` with `recvmsg` until one whole engine frame is in; returns
/// it, the bytes after it, and every descriptor that came along (close-on-exec).
///
/// # Errors
///
/// A failed `recvmsg`, a frame that does not decode, or the engine closing the connection
/// before a whole frame came.
pub fn recv_frame_blocking(
    sock: &std::os::unix::net::UnixStream,
) -> io::Result<(EngineFrame, Vec<u8>, Vec<OwnedFd>)> {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, used)) =
            control::decode_engine_frame(&bytes).map_err(io::Error::other)?
        {
            return Ok((frame, bytes[used..].to_vec(), fds));
        }
        let n = recvmsg_once(sock, &mut chunk, &mut fds)?;
        if n == 0 {
            return Err(closed(bytes.len()));
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

fn closed(read: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the engine closed the connection during rendezvous ({read} bytes read)"),
    )
}
