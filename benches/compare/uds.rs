//! Tokio `UnixStream` with `LengthDelimitedCodec` frames.

use std::path::Path;

use tokio::net::{UnixListener, UnixStream};

use crate::common::*;
use crate::{Measured, Res, Spec};

/// The measuring client: listens, starts the server, measures over its connection.
pub(crate) async fn measure(spec: &Spec, dir: &Path) -> Res<Measured> {
    let path = dir.join("uds.sock");
    let listener = UnixListener::bind(&path)?;
    let server = spawn_role("serve", &server_spec(spec, path_str(&path)?), false)?;
    let (stream, _) = listener.accept().await?;
    measure_framed(spec, stream, server).await
}

/// The server: connects to the client's socket and serves the pattern.
pub(crate) async fn serve(spec: &Spec) -> Res<()> {
    serve_conn(
        &mut FramedConn::new(UnixStream::connect(&spec.addr).await?),
        spec.pattern,
    )
    .await
}
