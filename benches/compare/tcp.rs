//! Tokio `TcpStream` on 127.0.0.1 with `TCP_NODELAY`, `LengthDelimitedCodec` frames.

use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::{Measured, Res, Spec};

/// The measuring client: listens on a free port, starts the server, measures.
pub(crate) async fn measure(spec: &Spec) -> Res<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = spawn_role("serve", &server_spec(spec, port.to_string()), false)?;
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    measure_framed(spec, stream, server).await
}

/// The server: connects to the client's port and serves the pattern.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    let stream = TcpStream::connect(("127.0.0.1", spec.addr.parse::<u16>()?)).await?;
    stream.set_nodelay(true)?;
    serve_conn(&mut FramedConn::new(stream), spec.pattern).await
}
