//! Half a rendezvous by hand: hello, then the welcome frame with its descriptors (block,
//! engine doorbell, node doorbell), and no `Ready`. The engine has created and mapped a block
//! for a connection that is not a node yet.

use std::os::fd::OwnedFd;

use ipc_core::control::{self, EngineFrame, NodeFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Says hello as `name` and reads the welcome; returns the connection and the descriptors.
pub(crate) async fn hello_and_welcome(
    socket: &str,
    name: &str,
) -> Result<(UnixStream, Vec<OwnedFd>), String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let hello = NodeFrame::Hello { name: name.into() }.encode();
    stream
        .write_all(&hello)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        match control::decode_engine_frame(&bytes) {
            Ok(Some((EngineFrame::Welcome { .. }, _))) => break,
            Ok(Some((other, _))) => return Err(format!("expected Welcome, got {other:?}")),
            Ok(None) => {}
            Err(e) => return Err(format!("decode: {e}")),
        }
        let n = ipc_tokio::__fuzz::recv_with_fds(&stream, &mut chunk, &mut fds)
            .await
            .map_err(|e| format!("recvmsg: {e}"))?;
        if n == 0 {
            return Err("the engine closed the connection during rendezvous".into());
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    if fds.len() != 3 {
        return Err(format!("expected 3 descriptors, got {}", fds.len()));
    }
    Ok((stream, fds))
}
