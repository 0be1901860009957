//! The node against an engine played by the test itself (raw frames, real block, real
//! doorbells), to reach orders of events a real engine produces only by chance: here, the
//! engine's ends of the doorbells closing while its socket stays open (when a real engine
//! dies, which of the two the node sees first is up to the kernel).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use shmlink::core::control::{self, EngineFrame, NodeFrame};
use shmlink::core::{Block, Doorbell};
use shmlink::{Node, OpenError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::support::{self, TestDir, within};

/// Reads one whole node frame.
async fn node_frame(stream: &mut UnixStream, buf: &mut Vec<u8>) -> NodeFrame {
    loop {
        if let Some((frame, used)) = control::decode_node_frame(buf).expect("a valid node frame") {
            buf.drain(..used);
            return frame;
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the node closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Plays the engine's side of the rendezvous for one node: answers its hello with a welcome
/// carrying a real block and the node's ends of two doorbells. Returns the socket and the
/// engine's ends of the doorbells (ring the node, and be rung).
async fn welcome(listener: &UnixListener) -> (UnixStream, Block, Doorbell, Doorbell) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let mut buf = Vec::new();
    let hello = node_frame(&mut stream, &mut buf).await;
    assert!(matches!(hello, NodeFrame::Hello { .. }), "{hello:?}");
    let block = Block::create(&support::small_block(), "fake-engine").expect("block");
    let (engine_in, node_ring) = Doorbell::pair().expect("doorbell");
    let (engine_out, node_wait) = Doorbell::pair().expect("doorbell");
    let frame = EngineFrame::Welcome {
        node: 1,
        credits: 16,
        window_bytes: 1 << 20,
    }
    .encode();
    let fds = [block.fd(), node_ring.as_fd(), node_wait.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    stream.writable().await.expect("writable");
    let sent = rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&frame)],
        &mut control,
        rustix::net::SendFlags::NOSIGNAL,
    )
    .expect("sendmsg");
    assert_eq!(sent, frame.len(), "the welcome fits one sendmsg");
    let ready = node_frame(&mut stream, &mut buf).await;
    assert_eq!(ready, NodeFrame::Ready);
    (stream, block, engine_in, engine_out)
}

#[tokio::test(flavor = "current_thread")]
async fn an_engine_closing_its_doorbells_disconnects_the_node_even_with_its_socket_open() {
    let dir = TestDir::new("fake");
    let socket = dir.socket();
    let listener = UnixListener::bind(&socket).expect("bind");
    let (node, (mut stream, block, engine_in, engine_out)) = within(
        "rendezvous",
        futures::future::join(Node::connect(&socket, "lonely"), welcome(&listener)),
    )
    .await;
    let node = node.expect("the node accepts the fake engine's welcome");

    // The engine lets go of the node's doorbells but keeps its socket open. The node must
    // take that as the engine gone (a closed doorbell stays readable forever: a node that
    // ignored it would spin, and on this one-thread runtime nothing else would ever run).
    drop((engine_in, engine_out));
    assert_eq!(
        within(
            "open after the doorbells closed",
            node.open::<bytes::Bytes>("svc")
        )
        .await
        .map(drop),
        Err(OpenError::Disconnected)
    );
    // It also closed its side of the connection.
    let mut rest = Vec::new();
    let read = within("the node closes its socket", stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "{read:?}");
    let _ = stream.shutdown().await;
    drop(block);
}
