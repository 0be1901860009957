//! One node's connection, from accept to close: rendezvous (or an inspector's request),
//! then control frames both ways with a bounded, never-blocking write queue.

use super::*;

pub(super) fn error_frame(req: u32, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    EngineFrame::Error {
        req,
        code: code as u16,
        message: message.into(),
    }
    .encode()
}

/// The frame that tells a node why its frame was refused: a [`Limit`] for a frame longer
/// than the engine buffers, an error code otherwise.
pub(super) fn frame_error_frame(e: &io::Error) -> Vec<u8> {
    let inner = e.get_ref();
    if let Some(too_large) = inner.and_then(|i| i.downcast_ref::<PartialFrameTooLarge>()) {
        return EngineFrame::Limit {
            req: 0,
            limit: Limit::PartialFrameBytes as u16,
            max: too_large.max as u64,
        }
        .encode();
    }
    let code = match inner.and_then(|i| i.downcast_ref::<FrameError>()) {
        Some(FrameError::Version { .. }) => ErrorCode::Version,
        _ => ErrorCode::BadFrame,
    };
    error_frame(0, code, e.to_string())
}

/// One node's connection, from accept to close.
pub(super) async fn connection(
    mut stream: UnixStream,
    node: u32,
    config: Arc<Config>,
    commands: mpsc::UnboundedSender<Command>,
    admitted: Admitted,
) {
    // The slots are given back only once the socket is closed: the counts never run
    // behind the descriptors they stand for.
    let Admitted {
        cred,
        connection: slot,
        handshake,
    } = admitted;
    let (frames, handover) = match rendezvous(&mut stream, node, &config, &cred).await {
        Ok(Arrival::Node(frames, handover)) => (frames, handover),
        Ok(Arrival::Inspect { req }) => {
            answer_inspect(&mut stream, req, &config, &commands, &cred).await;
            drop(stream);
            drop(handshake);
            drop(slot);
            return;
        }
        Err(reason) => {
            tracing::info!(node, %reason, "rendezvous failed");
            drop(stream);
            drop(handshake);
            drop(slot);
            return;
        }
    };
    drop(handshake);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let name = handover.name.clone();
    let registration = Registration {
        node,
        frames: out_tx,
        handover,
    };
    if commands
        .send(Command::Register(Box::new(registration)))
        .is_err()
    {
        return;
    }
    tracing::debug!(node, %name, "node registered");
    let ended = serve(stream, node, frames, out_rx, &commands, &config.limits).await;
    if let Ended::NotReading { .. } = ended {
        tracing::warn!(node, %name, reason = %ended, "closing node");
    } else {
        tracing::debug!(node, %name, reason = %ended, "node connection closed");
    }
    let _ = commands.send(Command::Gone {
        node,
        violation: ended.is_violation(),
        reason: ended.to_string(),
    });
    drop(slot);
}

/// What a connection turned out to be after its first frame.
#[derive(Debug)]
pub(super) enum Arrival {
    /// A node, ready.
    Node(FrameBuf, Handover),
    /// An inspector: it gets one snapshot, then the connection closes.
    Inspect { req: u32 },
}

/// Answers an inspector: the router builds the snapshot, this task serialises and writes
/// it (bounded by the handshake timeout: a client that does not read only holds its own
/// connection slot).
pub(super) async fn answer_inspect(
    stream: &mut UnixStream,
    req: u32,
    config: &Config,
    commands: &mpsc::UnboundedSender<Command>,
    cred: &UCred,
) {
    let (reply, snapshot) = oneshot::channel();
    if commands.send(Command::Inspect { reply }).is_err() {
        return;
    }
    let Ok(snapshot) = snapshot.await else {
        return;
    };
    let Some(frames) = crate::engine::inspect::chunk_frames(req, &snapshot) else {
        let _ = write_frame(
            stream,
            &error_frame(req, ErrorCode::Resources, "the snapshot is too large"),
        )
        .await;
        return;
    };
    let write_all = async {
        for frame in &frames {
            write_frame(stream, frame).await?;
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(config.handshake_timeout, write_all).await {
        Ok(Ok(())) => tracing::debug!(uid = cred.uid(), frames = frames.len(), "snapshot sent"),
        Ok(Err(e)) => tracing::debug!(error = %e, "inspector left early"),
        Err(_) => tracing::debug!("inspector did not read its snapshot in time"),
    }
}

/// Hello, block and doorbells, ready (credentials were checked at accept); or an inspector's
/// request. Errors are reported to the peer (when it can be told) and returned as a reason
/// for the log.
pub(super) async fn rendezvous(
    stream: &mut UnixStream,
    node: u32,
    config: &Config,
    cred: &UCred,
) -> Result<Arrival, String> {
    let mut frames = FrameBuf::with_limit(config.limits.partial_frame_bytes);
    let hello = tokio::time::timeout(
        config.handshake_timeout,
        frames.next(stream, control::decode_node_frame),
    )
    .await;
    let name = match hello {
        Err(_) => return Err("no hello before the handshake timeout".into()),
        Ok(Ok(Some(NodeFrame::Hello { name }))) => {
            tracing::Span::current().record("name", name.as_str());
            name
        }
        Ok(Ok(Some(NodeFrame::Inspect { req }))) => return Ok(Arrival::Inspect { req }),
        Ok(Ok(Some(other))) => {
            let _ = write_frame(
                stream,
                &error_frame(0, ErrorCode::BadFrame, "expected Hello"),
            )
            .await;
            return Err(format!("expected Hello, got {other:?}"));
        }
        Ok(Ok(None)) => return Err("closed before hello".into()),
        Ok(Err(e)) => {
            let _ = stream.try_write(&frame_error_frame(&e));
            return Err(format!("bad hello: {e}"));
        }
    };
    // The block's memory is charged before the memfd exists: past a budget, nothing is made.
    let size = ipc_core::Layout::compute(&config.block)
        .map_err(|e| e.to_string())?
        .total_size;
    let memory = match config.memory.charge_node(node, size) {
        Ok(charge) => charge,
        Err((limit, max)) => {
            let refusal = EngineFrame::Limit {
                req: 0,
                limit: limit as u16,
                max,
            };
            let _ = write_frame(stream, &refusal.encode()).await;
            return Err(format!("{limit} of {max} reached"));
        }
    };
    #[allow(clippy::type_complexity)]
    let setup = || -> Result<(Block, (Doorbell, Doorbell), (Doorbell, Doorbell)), String> {
        let block = Block::create(&config.block, &format!("shmlink-node-{node}"))
            .map_err(|e| e.to_string())?;
        // Each doorbell is a socket pair: the node gets its own end of each (one to ring the
        // engine, one to wait on), the engine keeps the other ends.
        let (engine_wait, node_ring) = Doorbell::pair().map_err(|e| e.to_string())?;
        let (engine_ring, node_wait) = Doorbell::pair().map_err(|e| e.to_string())?;
        Ok((block, (engine_wait, node_ring), (engine_ring, node_wait)))
    };
    let (block, (engine_bell, node_ring), (node_bell, node_wait)) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            let _ = write_frame(stream, &error_frame(0, ErrorCode::Resources, e.clone())).await;
            return Err(format!("cannot create the block: {e}"));
        }
    };
    let welcome = EngineFrame::Welcome {
        node,
        credits: config.credits,
        window_bytes: config.window_bytes,
    }
    .encode();
    send_with_fds(
        stream,
        &welcome,
        &[block.fd(), node_ring.as_fd(), node_wait.as_fd()],
    )
    .await
    .map_err(|e| format!("sending the block: {e}"))?;
    let ready = tokio::time::timeout(
        config.handshake_timeout,
        frames.next(stream, control::decode_node_frame),
    )
    .await;
    match ready {
        Ok(Ok(Some(NodeFrame::Ready))) => {}
        Err(_) => return Err("no ready before the handshake timeout".into()),
        Ok(Ok(None)) => return Err("closed before ready (the node refused the block?)".into()),
        Ok(Ok(Some(other))) => {
            let _ = write_frame(
                stream,
                &error_frame(0, ErrorCode::BadFrame, "expected Ready"),
            )
            .await;
            return Err(format!("expected Ready, got {other:?}"));
        }
        Ok(Err(e)) => {
            let _ = stream.try_write(&frame_error_frame(&e));
            return Err(format!("bad ready: {e}"));
        }
    }
    Ok(Arrival::Node(
        frames,
        Handover {
            name,
            pid: cred.pid(),
            uid: cred.uid(),
            block: Arc::new(block),
            memory,
            engine_bell,
            node_bell,
        },
    ))
}

/// Why a registered node's connection ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum Ended {
    /// The node closed its socket.
    #[error("closed by the node")]
    ByNode,
    /// The router let go of the node (a violation, or shutdown).
    #[error("closed by the engine")]
    ByEngine,
    /// The router is gone.
    #[error("engine shutting down")]
    Shutdown,
    /// The node sent a frame that is not valid after rendezvous.
    #[error("protocol violation: unexpected {0}")]
    Unexpected(&'static str),
    /// The node's bytes are not a valid frame (or one longer than the engine buffers), or
    /// reading them failed.
    #[error("protocol violation: {0}")]
    BadFrame(io::Error),
    /// Reading or writing the socket failed.
    #[error("control socket: {0}")]
    Io(io::Error),
    /// The node sent a request with id 0, which only the engine's own frames carry.
    #[error("protocol violation: a request with the reserved id 0")]
    ReservedRequestId,
    /// The node leaves its control socket unread while frames for it pile up.
    #[error("it does not read its control socket ({queued} frames wait, limit {max})")]
    NotReading {
        /// Frames waiting.
        queued: usize,
        /// The limit.
        max: usize,
    },
}

impl Ended {
    /// Whether the node broke the protocol (counted in `EngineStats::violations`).
    pub(super) fn is_violation(&self) -> bool {
        match self {
            Self::Unexpected(_) | Self::ReservedRequestId => true,
            Self::BadFrame(e) => e.kind() == io::ErrorKind::InvalidData,
            _ => false,
        }
    }
}

/// The id of a request frame, whose answer [`is_answer`] counts; `None` for other frames.
fn request_id(frame: &NodeFrame) -> Option<u32> {
    match frame {
        NodeFrame::Serve { req, .. }
        | NodeFrame::Unserve { req, .. }
        | NodeFrame::Open { req, .. }
        | NodeFrame::Publish { req, .. }
        | NodeFrame::Unpublish { req, .. }
        | NodeFrame::Subscribe { req, .. }
        | NodeFrame::Unsubscribe { req, .. }
        | NodeFrame::DeclareQueue { req, .. }
        | NodeFrame::Produce { req, .. }
        | NodeFrame::Consume { req, .. }
        | NodeFrame::Segment { req, .. } => Some(*req),
        _ => None,
    }
}

/// Whether `frame` answers a request (and so ends one in flight).
pub(super) fn is_answer(frame: &EngineFrame) -> bool {
    match frame {
        EngineFrame::ServeOk { req, .. }
        | EngineFrame::UnserveOk { req }
        | EngineFrame::OpenOk { req, .. }
        | EngineFrame::Error { req, .. }
        | EngineFrame::Limit { req, .. }
        | EngineFrame::SchemaMismatch { req, .. }
        | EngineFrame::PublishOk { req, .. }
        | EngineFrame::TopicDone { req }
        | EngineFrame::SubscribeOk { req, .. }
        | EngineFrame::QueueOk { req, .. }
        | EngineFrame::SegmentOk { req, .. } => *req != 0,
        EngineFrame::Welcome { .. }
        | EngineFrame::Accept { .. }
        | EngineFrame::TopicAttach { .. }
        | EngineFrame::InspectChunk { .. }
        | EngineFrame::SegmentDelivery { .. } => false,
    }
}

/// Frames on their way to the node, written as its socket takes them: the connection never
/// waits on a node that does not read (the engine never blocks on a node), and the queue is
/// bounded.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    /// Encoded frames, each with the descriptor that rides with its first byte.
    pub(super) frames: VecDeque<(Vec<u8>, Option<OwnedFd>)>,
    /// Bytes of the front frame already written.
    pub(super) written: usize,
}

impl Outgoing {
    /// Writes what the socket takes now. `Ok` when it would block or all is written.
    pub(super) fn flush(&mut self, wr: &OwnedWriteHalf) -> io::Result<()> {
        while let Some((front, fd)) = self.frames.front_mut() {
            let sent = match fd.take() {
                // The descriptor goes with the frame's first bytes, in one `sendmsg`; the
                // kernel holds its own reference from then on.
                Some(owned) => match send_fd(wr, &front[self.written..], owned.as_fd()) {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        *fd = Some(owned);
                        Err(e)
                    }
                },
                None => wr.try_write(&front[self.written..]),
            };
            match sent {
                Ok(n) => {
                    self.written += n;
                    if self.written == front.len() {
                        self.frames.pop_front();
                        self.written = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Writes the start of `bytes` with `fd` attached (`SCM_RIGHTS`), without waiting.
pub(super) fn send_fd(wr: &OwnedWriteHalf, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let sock: &UnixStream = wr.as_ref();
    sock.try_io(tokio::io::Interest::WRITABLE, || {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor"));
        }
        let iov = [std::io::IoSlice::new(bytes)];
        Ok(rustix::net::sendmsg(
            sock.as_fd(),
            &iov,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    })
}

/// Forwards the node's control frames to the router and the router's frames to the node,
/// until either side closes. Returns why.
///
/// Bounded per connection: at most `requests_per_connection` requests in flight to the
/// router (past it this socket is not read until answers come back), at most
/// `partial_frame_bytes` of an unfinished frame buffered, and at most `queued_frames`
/// frames waiting for the node to read (past it the node is closed: it does not read).
pub(super) async fn serve(
    stream: UnixStream,
    node: u32,
    mut frames: FrameBuf,
    mut out: mpsc::UnboundedReceiver<Outbound>,
    commands: &mpsc::UnboundedSender<Command>,
    limits: &Limits,
) -> Ended {
    let (mut rd, wr) = stream.into_split();
    let mut outgoing = Outgoing::default();
    let mut in_flight = 0usize;
    loop {
        tokio::select! {
            frame = frames.next(&mut rd, control::decode_node_frame), if in_flight < limits.requests_per_connection => {
                // Request id 0 marks the engine's unsolicited frames, so an answer to it could
                // not be told from one and would never free its place in flight: refused.
                if let Ok(Some(request)) = &frame
                    && request_id(request) == Some(0)
                {
                    let _ = outgoing.flush(&wr);
                    let _ = wr.try_write(&error_frame(0, ErrorCode::BadFrame, "request id 0 is reserved for the engine"));
                    break Ended::ReservedRequestId;
                }
                let command = match frame {
                    Ok(Some(NodeFrame::Serve { req, service, schema })) => Command::Serve { node, req, service, schema },
                    Ok(Some(NodeFrame::Unserve { req, service })) => Command::Unserve { node, req, service },
                    Ok(Some(NodeFrame::Open { req, service, schema })) => Command::Open { node, req, service, schema },
                    Ok(Some(NodeFrame::Publish { req, topic, ty, history })) => Command::Publish { node, req, topic, ty, history },
                    Ok(Some(NodeFrame::Unpublish { req, publisher })) => Command::Unpublish { node, req, publisher },
                    Ok(Some(NodeFrame::Subscribe { req, pattern, ty, options })) => Command::Subscribe { node, req, pattern, ty, options },
                    Ok(Some(NodeFrame::Unsubscribe { req, subscription })) => Command::Unsubscribe { node, req, subscription },
                    Ok(Some(NodeFrame::DeclareQueue { req, name, spec })) => Command::DeclareQueue { node, req, name, spec },
                    Ok(Some(NodeFrame::Produce { req, queue, ty })) => Command::Produce { node, req, queue, ty },
                    Ok(Some(NodeFrame::Consume { req, queue, ty, prefetch, lease_ms })) => Command::Consume { node, req, queue, ty, prefetch, lease_ms },
                    Ok(Some(NodeFrame::Segment { req, len })) => Command::Segment { node, req, len },
                    Ok(Some(other)) => {
                        let _ = wr.try_write(&error_frame(0, ErrorCode::BadFrame, "unexpected frame after rendezvous"));
                        break Ended::Unexpected(match other {
                            NodeFrame::Hello { .. } => "Hello",
                            NodeFrame::Inspect { .. } => "Inspect",
                            _ => "Ready",
                        });
                    }
                    Ok(None) => break Ended::ByNode,
                    Err(e) => {
                        let _ = outgoing.flush(&wr);
                        let _ = wr.try_write(&frame_error_frame(&e));
                        break Ended::BadFrame(e);
                    }
                };
                if commands.send(command).is_err() {
                    break Ended::Shutdown;
                }
                in_flight += 1;
            }
            frame = out.recv() => match frame {
                Some(Outbound { frame, fd }) => {
                    if is_answer(&frame) {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    if outgoing.frames.len() >= limits.queued_frames {
                        break Ended::NotReading {
                            queued: outgoing.frames.len() + 1,
                            max: limits.queued_frames,
                        };
                    }
                    outgoing.frames.push_back((frame.encode(), fd));
                    if let Err(e) = outgoing.flush(&wr) {
                        break Ended::Io(e);
                    }
                }
                // The router dropped this node (a violation, or shutdown): what it said
                // last goes out if the socket takes it now, then the socket closes.
                None => {
                    let _ = outgoing.flush(&wr);
                    break Ended::ByEngine;
                }
            },
            ready = wr.writable(), if !outgoing.frames.is_empty() => {
                if let Err(e) = ready.and_then(|()| outgoing.flush(&wr)) {
                    break Ended::Io(e);
                }
            }
        }
    }
}
