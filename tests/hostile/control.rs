//! Hostile children on the control socket: frames a registered node must not send, frames
//! before (or instead of) registering, and what is no violation at all (a frame dribbled one
//! byte at a time, requests about services of others, descriptors attached to a frame).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use ipc_core::RawDescriptor;
use ipc_core::control::{self, EngineFrame, MAX_FRAME, NodeFrame, PROTOCOL_VERSION, Schema};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::attacks::{Attack, Outcome, TARGET, closed, release_of, survived};
use crate::raw::{RawNode, TAIL, connect_raw, hello, recv_frame_with_fds};

/// A name nobody serves.
const NOBODY: &str = "nobody-serves-this";

/// Sends a control frame after two valid messages, then waits to be closed.
fn bad_frame(socket: &str, me: &str, frame: impl FnOnce(&mut RawNode) -> Vec<u8>) -> Attack {
    let mut node = RawNode::register_open(socket, me, TARGET)?;
    node.exchange(2)?;
    let bytes = frame(&mut node);
    // The engine may close as soon as it has seen enough: a failed write is fine.
    let _ = node.send(&bytes);
    closed(node, TARGET, 2, true)
}

/// A frame with the given body (version byte, tag, fields) and its true length prefix.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn open_frame(req: u32, service: &str) -> Vec<u8> {
    NodeFrame::Open {
        req,
        service: service.into(),
        schema: Schema::bytes(),
    }
    .encode()
}

/// Reads the one frame a refused connection gets, then the end of the connection.
fn refused(frame: EngineFrame, mut sock: UnixStream) -> Attack {
    let (code, reason) = match frame {
        EngineFrame::Error {
            req: 0,
            code,
            message,
        } => (code, message),
        other => return Err(format!("expected an Error frame, got {other:?}")),
    };
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    if control::decode_engine_frame(&rest).is_ok_and(|f| f.is_some()) {
        return Err(format!("more frames after the error: {rest:?}"));
    }
    Ok(Outcome {
        opened: "none".into(),
        closed: true,
        code,
        reason,
        ..Outcome::default()
    })
}

fn expect_not_served(node: &mut RawNode, req: u32) -> Result<(), String> {
    match node.wait_reply(req)? {
        EngineFrame::Error { code: 5, .. } => Ok(()),
        other => Err(format!("open of an unserved name: {other:?}")),
    }
}

/// Runs the control-socket attack `name`; `Ok(None)` if it is not one.
pub(crate) fn attack(socket: &str, me: &str, name: &str) -> Result<Option<Outcome>, String> {
    let outcome: Attack = match name {
        // ===== after registration =====
        "ctl-truncated-then-eof" => {
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let open = open_frame(node.req(), NOBODY);
            node.send(&open[..open.len() / 2])?;
            node.sock
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            closed(node, TARGET, 2, true)
        }
        "ctl-length-over-limit" => bad_frame(socket, me, |_| {
            let mut f = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&[PROTOCOL_VERSION, 5]);
            f
        }),
        "ctl-length-u32-max" => bad_frame(socket, me, |_| u32::MAX.to_le_bytes().to_vec()),
        "ctl-length-zero" => bad_frame(socket, me, |_| 0u32.to_le_bytes().to_vec()),
        "ctl-unknown-version" => bad_frame(socket, me, |n| {
            let mut f = open_frame(n.req(), NOBODY);
            f[4] = PROTOCOL_VERSION.wrapping_add(1);
            f
        }),
        "ctl-unknown-tag" => bad_frame(socket, me, |_| frame(&[PROTOCOL_VERSION, 200, 1, 2])),
        "ctl-engine-frame" => bad_frame(socket, me, |_| {
            EngineFrame::Welcome {
                node: 1,
                credits: 1 << 30,
                window_bytes: 1 << 40,
            }
            .encode()
        }),
        "ctl-second-hello" => bad_frame(socket, me, |_| {
            NodeFrame::Hello {
                name: "again".into(),
            }
            .encode()
        }),
        "ctl-second-ready" => bad_frame(socket, me, |_| NodeFrame::Ready.encode()),
        "ctl-trailing-bytes" => bad_frame(socket, me, |n| {
            let mut f = NodeFrame::Unserve {
                req: n.req(),
                service: 1,
            }
            .encode();
            f.push(0);
            let len = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&len.to_le_bytes());
            f
        }),
        "ctl-string-longer-than-frame" => bad_frame(socket, me, |n| {
            let mut body = vec![PROTOCOL_VERSION, 5];
            body.extend_from_slice(&n.req().to_le_bytes());
            body.extend_from_slice(&200u16.to_le_bytes());
            body.extend_from_slice(b"short");
            frame(&body)
        }),
        // Request id 0 is the engine's: 64 of them once stopped the engine reading the
        // socket for good (their answers freed no place in flight), so the node's leaving
        // went unseen and its sessions stayed open (found by the engine fuzz target).
        "ctl-request-id-zero" => bad_frame(socket, me, |_| open_frame(0, TARGET)),
        "ctl-open-name-nul" => bad_frame(socket, me, |n| open_frame(n.req(), "tar\0get")),
        "ctl-serve-name-escape" => bad_frame(socket, me, |n| {
            NodeFrame::Serve {
                req: n.req(),
                service: "svc\u{1b}[2J".into(),
                schema: Schema::bytes(),
            }
            .encode()
        }),
        "ctl-frame-dribbled" => {
            // A valid frame one byte per write, with data flowing in between: not a
            // violation, the engine just waits for the rest.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            let req = node.req();
            let open = open_frame(req, NOBODY);
            for (i, byte) in open.iter().enumerate() {
                node.send(&[*byte])?;
                if i % 8 == 0 {
                    node.exchange(1)?;
                }
            }
            expect_not_served(&mut node, req)?;
            let sent = open.len().div_ceil(8) as u64;
            survived(node, TARGET, sent, 5)
        }
        "ctl-unserve-foreign" => {
            // Service ids 1.. belong to the target and the stream's server: not ours.
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            for service in 1..=4 {
                let req = node.req();
                node.send(&NodeFrame::Unserve { req, service }.encode())?;
                match node.wait_reply(req)? {
                    EngineFrame::Error { code: 5, .. } => {}
                    other => return Err(format!("unserve of service {service}: {other:?}")),
                }
            }
            survived(node, TARGET, 0, 10)
        }
        "ctl-fds-attached" => {
            // Descriptors ride along with a frame: the engine reads the bytes and must not
            // keep the descriptors (the test counts its own).
            let mut node = RawNode::register_open(socket, me, TARGET)?;
            node.exchange(2)?;
            let req = node.req();
            let open = open_frame(req, NOBODY);
            let fds = [
                node.block.fd(),
                node.engine_bell.as_fd(),
                node.node_bell.as_fd(),
            ];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
            let mut cmsg = SendAncillaryBuffer::new(&mut space);
            assert!(cmsg.push(SendAncillaryMessage::ScmRights(&fds)));
            let sent = rustix::net::sendmsg(
                node.sock_fd(),
                &[std::io::IoSlice::new(&open)],
                &mut cmsg,
                SendFlags::NOSIGNAL,
            )
            .map_err(|e| format!("sendmsg: {e}"))?;
            if sent != open.len() {
                return Err(format!("sendmsg sent {sent} of {} bytes", open.len()));
            }
            expect_not_served(&mut node, req)?;
            survived(node, TARGET, 2, 10)
        }

        // ===== before registration =====
        "open-before-hello" => {
            let mut sock = connect_raw(socket)?;
            sock.write_all(&open_frame(1, TARGET))
                .map_err(|e| format!("write: {e}"))?;
            let (frame, _, fds) = recv_frame_with_fds(&sock)?;
            if !fds.is_empty() {
                return Err(format!(
                    "{} descriptors sent to a node that never said hello",
                    fds.len()
                ));
            }
            refused(frame, sock)
        }
        "hello-unknown-version" => {
            let mut sock = connect_raw(socket)?;
            let mut f = NodeFrame::Hello { name: me.into() }.encode();
            f[4] = 9;
            sock.write_all(&f).map_err(|e| format!("write: {e}"))?;
            let (frame, _, fds) = recv_frame_with_fds(&sock)?;
            if !fds.is_empty() {
                return Err(format!("{} descriptors sent after a bad hello", fds.len()));
            }
            refused(frame, sock)
        }
        "hello-name-newline" => {
            let mut sock = connect_raw(socket)?;
            let f = NodeFrame::Hello {
                name: format!("{me}\nforged log line"),
            }
            .encode();
            sock.write_all(&f).map_err(|e| format!("write: {e}"))?;
            let (frame, _, fds) = recv_frame_with_fds(&sock)?;
            if !fds.is_empty() {
                return Err(format!("{} descriptors sent after a bad name", fds.len()));
            }
            refused(frame, sock)
        }
        "open-instead-of-ready" => {
            // The engine created a block and doorbells for us and handed them over: the
            // frame that is not Ready must make it drop all of them.
            let mut w = hello(socket, me)?;
            w.sock
                .write_all(&open_frame(1, TARGET))
                .map_err(|e| format!("write: {e}"))?;
            let (frame, _, _) = recv_frame_with_fds(&w.sock)?;
            refused(frame, w.sock)
        }
        "close-instead-of-ready" => {
            let w = hello(socket, me)?;
            drop(w);
            Ok(Outcome {
                opened: "none".into(),
                ..Outcome::default()
            })
        }
        "submit-entry-before-ready" => {
            // An entry on the good stream's session end (1), written and rung before Ready:
            // the engine must judge it as this node's once it is registered.
            let mut node = RawNode::from_welcome(hello(socket, me)?);
            let l = node.layout;
            node.write_slot(&l.submit, 0, &RawDescriptor::data(1, 0, 10));
            node.poke_u32(l.submit.offset + TAIL, 1);
            node.ring()?;
            node.send(&NodeFrame::Ready.encode())?;
            closed(node, "none", 0, true)
        }
        "release-entry-before-ready" => {
            let mut node = RawNode::from_welcome(hello(socket, me)?);
            let l = node.layout;
            node.write_slot(&l.release, 0, &release_of(0));
            node.poke_u32(l.release.offset + TAIL, 1);
            node.ring()?;
            node.send(&NodeFrame::Ready.encode())?;
            closed(node, "none", 0, true)
        }
        _ => return Ok(None),
    };
    outcome.map(Some)
}
