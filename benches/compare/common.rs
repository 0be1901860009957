//! What every transport shares: payloads written and checked whole, CPU time, the child
//! processes of a measurement, the measuring loops, and the `Conn` every message channel
//! implements with its client (`drive_conn`) and server (`serve_conn`) sides.

use std::collections::VecDeque;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::{Measured, Pattern, Res, Spec};

// ===== Payload: written whole by the sender, read whole by the receiver =====

/// A stream's end marker and the quit request (shorter than any payload).
pub(crate) const MARKER_LEN: usize = 1;
pub(crate) const QUIT_LEN: usize = 2;
/// Messages between two flushes (or notifications) of a stream.
pub(crate) const BATCH: u64 = 256;
/// The smallest payload: the control messages above are told apart by their length.
pub(crate) const MIN_SIZE: usize = 8;
/// Round-trip samples kept at most per measurement.
pub(crate) const MAX_SAMPLES: usize = 4_000_000;
/// Round trips measured at least, however long they take: a 1 GiB round trip takes a second
/// or more, so the sizes whose round trip outlasts the window (256 MiB and up on this
/// machine) are measured this many times, and their p99 is the slowest of these few.
pub(crate) const MIN_ITERS: usize = 5;
/// Warm-up round trips at least, however long they take (the first maps and faults in the
/// buffers of both sides).
pub(crate) const MIN_WARMUP_ITERS: u64 = 2;
/// The largest payload of the harness (`--sizes`), and so the length-delimited codec's
/// largest frame: 1 GiB (`LengthDelimitedCodec` refuses frames over 8 MiB by default).
pub(crate) const MAX_SIZE: usize = 1 << 30;

/// The byte a sender fills message `i` with (never 0, so a zeroed buffer is caught).
pub(crate) fn seed_byte(i: u64) -> u8 {
    (i % 251) as u8 + 1
}

/// The byte a server fills its reply with, from the request's checksum.
pub(crate) fn reply_byte(sum: u64) -> u8 {
    (sum % 251) as u8 + 1
}

/// Buffers payloads are written into, each reused once the transport has let go of the
/// message written in it: a fresh 64 KiB allocation per message would measure the allocator
/// and its page faults, not the transport.
pub(crate) struct Payloads {
    bufs: Vec<BytesMut>,
    next: usize,
}

impl Payloads {
    /// A ring of `count` buffers: at least as many as the sender may hold at once.
    pub(crate) fn new(count: usize) -> Self {
        Self {
            bufs: (0..count.max(1)).map(|_| BytesMut::new()).collect(),
            next: 0,
        }
    }

    /// `n` bytes of `b`, every byte written, in the next buffer of the ring (a new one only if
    /// its last message is still held).
    pub(crate) fn fill(&mut self, n: usize, b: u8) -> Bytes {
        let at = self.next;
        self.next = (at + 1) % self.bufs.len();
        let buf = &mut self.bufs[at];
        buf.put_bytes(b, n);
        buf.split().freeze()
    }
}

/// Wrapping sum of the little-endian 64-bit words, then of the trailing bytes: reads every byte.
pub(crate) fn checksum(buf: &[u8]) -> u64 {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    let mut sum = 0u64;
    for w in words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
    }
    for &b in tail {
        sum = sum.wrapping_add(u64::from(b));
    }
    sum
}

/// The checksum of `n` bytes of `b`.
pub(crate) fn expected(n: usize, b: u8) -> u64 {
    let word = u64::from(b).wrapping_mul(0x0101_0101_0101_0101);
    ((n / 8) as u64)
        .wrapping_mul(word)
        .wrapping_add((n % 8) as u64 * u64::from(b))
}

/// Checks a reply to a request of `n` bytes of `b`.
pub(crate) fn check_reply(reply: &[u8], n: usize, b: u8) -> Res<()> {
    if reply.len() != n {
        return Err(format!("wrong data: reply of {} bytes to {n}", reply.len()).into());
    }
    let want = expected(n, reply_byte(expected(n, b)));
    let got = checksum(reply);
    if got != want {
        return Err(format!("wrong data: reply checksum {got:#x}, expected {want:#x}").into());
    }
    Ok(())
}

/// Checks message `i` of a stream.
pub(crate) fn check_streamed(msg: &[u8], i: u64) -> Res<()> {
    let want = expected(msg.len(), seed_byte(i));
    let got = checksum(msg);
    if got != want {
        return Err(format!(
            "wrong data: streamed message {i} of {} bytes has checksum {got:#x}, expected {want:#x}",
            msg.len()
        )
        .into());
    }
    Ok(())
}

// ===== CPU time =====

pub(crate) fn self_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// CPU seconds of a live process: the sum of its threads' run time (nanoseconds, from
/// `/proc/PID/task/*/schedstat`), or `utime + stime` from `/proc/PID/stat` (clock ticks).
pub(crate) fn proc_cpu_s(pid: u32) -> f64 {
    let mut total = 0u64;
    let mut ok = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat"))
                && let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                total += ns;
                ok = true;
            }
        }
    }
    if ok {
        return total as f64 * 1e-9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// CPU seconds of this process (unless `own` is false) and, if any, of another process.
pub(crate) struct CpuProbe {
    own: bool,
    other: Option<u32>,
}

impl CpuProbe {
    /// This process and its server child.
    pub(crate) fn client_and(server: u32) -> Self {
        Self {
            own: true,
            other: Some(server),
        }
    }

    /// Process `pid` alone (`idle-nodes`: the engine's process).
    pub(crate) fn only(pid: u32) -> Self {
        Self {
            own: false,
            other: Some(pid),
        }
    }

    pub(crate) fn now(&self) -> f64 {
        let own = if self.own { self_cpu_s() } else { 0.0 };
        own + self.other.map_or(0.0, proc_cpu_s)
    }
}

pub(crate) fn pin(cpu: Option<usize>) -> Res<()> {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)?;
    }
    Ok(())
}

pub(crate) fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => Vec::new(),
    }
}

// ===== Child processes =====

/// A child that is killed (if still running) and reaped when dropped.
pub(crate) struct ChildGuard(pub(crate) Child);

impl ChildGuard {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `limit` for the child to exit by itself, then kills it.
    pub(crate) fn finish(mut self, limit: Duration) -> Res<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("server exited with {status}").into())
                };
            }
            if Instant::now() >= deadline {
                return Err("server did not exit".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reads one line the child prints on its stdout (its "ready").
    pub(crate) fn ready(&mut self) -> Res<()> {
        let out = self.0.stdout.as_mut().ok_or("no stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte)? {
                0 => return Err("server exited before it was ready".into()),
                _ if byte[0] == b'\n' => break,
                _ => line.push(byte[0]),
            }
        }
        if line != b"ready" {
            return Err(format!("server said {:?}", String::from_utf8_lossy(&line)).into());
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts this binary as `role` with `spec`; stdout piped (for "ready") if `piped`.
pub(crate) fn spawn_role(role: &str, spec: &Spec, piped: bool) -> Res<ChildGuard> {
    let child = Command::new(std::env::current_exe()?)
        .arg(role)
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .spawn()?;
    Ok(ChildGuard(child))
}

pub(crate) fn scratch_dir() -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("shmlink-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn current_thread() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A server spec derived from ours, with its CPU and address.
pub(crate) fn server_spec(spec: &Spec, addr: String) -> Spec {
    Spec {
        addr,
        ..spec.clone()
    }
}

/// Waits for the server to exit by itself (it does once the client has closed its end), off
/// the runtime so that the engine and the transports' tasks go on running meanwhile.
pub(crate) async fn finish(server: ChildGuard) -> Res<()> {
    tokio::task::spawn_blocking(move || server.finish(Duration::from_secs(10))).await?
}

pub(crate) fn path_str(path: &Path) -> Res<String> {
    Ok(path.to_str().ok_or("non-UTF-8 path")?.to_owned())
}

// ===== The measurement loops, shared by every transport =====

/// Round trips: a warm-up, then as many as fit in the window (at least `MIN_ITERS`).
pub(crate) async fn rtt_loop(
    spec: &Spec,
    cpu: &CpuProbe,
    mut one: impl AsyncFnMut(u64) -> Res<()>,
) -> Res<Measured> {
    let mut i = 0u64;
    let start = Instant::now();
    while start.elapsed() < spec.warmup() || i < MIN_WARMUP_ITERS {
        one(i).await?;
        i += 1;
    }
    let mut samples = Vec::with_capacity(1 << 16);
    let cpu0 = cpu.now();
    let t0 = Instant::now();
    while (t0.elapsed() < spec.window() || samples.len() < MIN_ITERS) && samples.len() < MAX_SAMPLES
    {
        let t = Instant::now();
        one(i).await?;
        samples.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    let cpu_s = cpu.now() - cpu0;
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64;
    let messages = 2.0 * samples.len() as f64;
    Ok(Measured {
        p50_ns: Some(pick(0.5)),
        p99_ns: Some(pick(0.99)),
        cpu_s_per_million: Some(cpu_s / messages * 1e6),
        samples: Some(samples.len() as f64),
        ..Measured::default()
    })
}

/// Streams and concurrent requests: a warm-up phase, then a measured one; `phase(d)` runs for
/// about `d` and returns how many messages (stream) or requests (concurrent) completed.
pub(crate) async fn phase_loop(
    spec: &Spec,
    cpu: &CpuProbe,
    mut phase: impl AsyncFnMut(Duration) -> Res<u64>,
) -> Res<Measured> {
    phase(spec.warmup()).await?;
    let cpu0 = cpu.now();
    let t0 = Instant::now();
    let done = phase(spec.window()).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_s = cpu.now() - cpu0;
    let per_op = if spec.pattern == Pattern::Concurrent {
        2.0
    } else {
        1.0
    };
    Ok(Measured {
        msgs_per_s: Some(done as f64 / secs),
        bytes_per_s: Some(done as f64 * spec.size as f64 / secs),
        cpu_s_per_million: Some(cpu_s / (done as f64 * per_op) * 1e6),
        ..Measured::default()
    })
}

// ===== Framed transports: UDS, TCP, shmlink sessions =====

/// A duplex message channel: what the socket transports and shmlink sessions have in common.
pub(crate) trait Conn {
    type Msg: AsRef<[u8]>;
    /// Queues a message of `n` bytes of `b`, written in place where the transport allows.
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()>;
    /// Queues a copy of `data`.
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()>;
    async fn flush(&mut self) -> Res<()>;
    /// The next message; `None` at the end.
    async fn recv(&mut self) -> Res<Option<Self::Msg>>;
    /// A message that is already there, without waiting.
    fn try_recv(&mut self) -> Res<Option<Self::Msg>>;
}

/// Length-delimited frames (a 4-byte big-endian length, then the payload) of up to
/// [`MAX_SIZE`].
pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_SIZE)
        .new_codec()
}

/// Bytes queued in a `Framed`'s write buffer past which it is written out before another
/// frame is queued: `Framed`'s own backpressure boundary (8 KiB), kept by the in-place
/// writes of [`FramedConn::feed_fill`].
const FRAMED_BACKPRESSURE: usize = 8 << 10;

/// Tokio `UnixStream` or `TcpStream` with length-delimited frames; payloads written in place
/// in the `Framed`'s write buffer.
pub(crate) struct FramedConn<T> {
    io: Framed<T, LengthDelimitedCodec>,
    buf: BytesMut,
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> FramedConn<T> {
    pub(crate) fn new(io: T) -> Self {
        Self {
            io: Framed::new(io, codec()),
            buf: BytesMut::new(),
        }
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn for FramedConn<T> {
    type Msg = BytesMut;
    /// The frame's header and payload written straight into the write buffer, as the codec
    /// would encode them, without the copy from a payload buffer that `feed` makes (a
    /// second resident copy of a 1 GiB payload on each side otherwise). As `feed` does, the
    /// frames queued before are written out first once they pass the backpressure boundary.
    async fn feed_fill(&mut self, n: usize, b: u8) -> Res<()> {
        if n > MAX_SIZE {
            return Err(format!("a frame of {n} bytes, over the codec's {MAX_SIZE}").into());
        }
        if self.io.write_buffer().len() >= FRAMED_BACKPRESSURE {
            SinkExt::<Bytes>::flush(&mut self.io).await?;
        }
        let out = self.io.write_buffer_mut();
        out.reserve(4 + n);
        out.put_u32(u32::try_from(n)?);
        out.put_bytes(b, n);
        Ok(())
    }
    async fn feed_copy(&mut self, data: &[u8]) -> Res<()> {
        self.buf.put_slice(data);
        let frame = self.buf.split().freeze();
        self.io.feed(frame).await?;
        Ok(())
    }
    async fn flush(&mut self) -> Res<()> {
        SinkExt::<Bytes>::flush(&mut self.io).await?;
        Ok(())
    }
    async fn recv(&mut self) -> Res<Option<BytesMut>> {
        Ok(self.io.next().await.transpose()?)
    }
    fn try_recv(&mut self) -> Res<Option<BytesMut>> {
        Ok(self.io.next().now_or_never().flatten().transpose()?)
    }
}

/// Measures over a socket the server connected to (length-delimited frames), then closes it
/// and waits for the server to exit.
pub(crate) async fn measure_framed<T>(spec: &Spec, stream: T, server: ChildGuard) -> Res<Measured>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = FramedConn::new(stream);
    let m = drive_conn(spec, &mut conn, server.pid()).await?;
    drop(conn);
    finish(server).await?;
    Ok(m)
}

/// Round trips of `spec.size` bytes over `conn`, CPU time from `cpu`.
pub(crate) async fn conn_rtt<C: Conn>(spec: &Spec, conn: &mut C, cpu: &CpuProbe) -> Res<Measured> {
    let n = spec.size;
    rtt_loop(spec, cpu, async |i| {
        let b = seed_byte(i);
        conn.feed_fill(n, b).await?;
        conn.flush().await?;
        let reply = conn.recv().await?.ok_or("server gone")?;
        check_reply(reply.as_ref(), n, b)
    })
    .await
}

/// The client side of every pattern over a `Conn`.
pub(crate) async fn drive_conn<C: Conn>(spec: &Spec, conn: &mut C, server: u32) -> Res<Measured> {
    let cpu = CpuProbe::client_and(server);
    let n = spec.size;
    match spec.pattern {
        Pattern::Rtt => conn_rtt(spec, conn, &cpu).await,
        Pattern::Stream => {
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut i = 0u64;
                loop {
                    for _ in 0..BATCH {
                        conn.feed_fill(n, seed_byte(i)).await?;
                        i += 1;
                    }
                    conn.flush().await?;
                    if t0.elapsed() >= d {
                        break;
                    }
                }
                conn.feed_copy(&[0xFF; MARKER_LEN]).await?;
                conn.flush().await?;
                let ack = conn.recv().await?.ok_or("server gone")?;
                check_ack(ack.as_ref(), i)?;
                Ok(i)
            })
            .await
        }
        Pattern::StreamFlush => {
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut i = 0u64;
                loop {
                    for _ in 0..BATCH {
                        conn.feed_fill(n, seed_byte(i)).await?;
                        conn.flush().await?;
                        i += 1;
                    }
                    if t0.elapsed() >= d {
                        break;
                    }
                }
                conn.feed_copy(&[0xFF; MARKER_LEN]).await?;
                conn.flush().await?;
                let ack = conn.recv().await?.ok_or("server gone")?;
                check_ack(ack.as_ref(), i)?;
                Ok(i)
            })
            .await
        }
        Pattern::Concurrent => {
            let inflight = spec.inflight;
            phase_loop(spec, &cpu, async |d| {
                let t0 = Instant::now();
                let mut waiting = VecDeque::with_capacity(inflight);
                let mut next = 0u64;
                let mut done = 0u64;
                while waiting.len() < inflight {
                    let b = seed_byte(next);
                    conn.feed_fill(n, b).await?;
                    waiting.push_back(b);
                    next += 1;
                }
                conn.flush().await?;
                while let Some(first) = waiting.pop_front() {
                    let reply = conn.recv().await?.ok_or("server gone")?;
                    check_reply(reply.as_ref(), n, first)?;
                    done += 1;
                    while !waiting.is_empty()
                        && let Some(reply) = conn.try_recv()?
                    {
                        let b = waiting.pop_front().ok_or("extra reply")?;
                        check_reply(reply.as_ref(), n, b)?;
                        done += 1;
                    }
                    if t0.elapsed() < d {
                        while waiting.len() < inflight {
                            let b = seed_byte(next);
                            conn.feed_fill(n, b).await?;
                            waiting.push_back(b);
                            next += 1;
                        }
                        conn.flush().await?;
                    }
                }
                Ok(done)
            })
            .await
        }
        Pattern::Idle | Pattern::IdleNodes | Pattern::Fanout | Pattern::Queue => {
            Err("idle, fanout and queue patterns are measured apart".into())
        }
    }
}

pub(crate) fn check_ack(ack: &[u8], sent: u64) -> Res<()> {
    let got = u64::from_le_bytes(ack.try_into().map_err(|_| "wrong data: ack")?);
    if got != sent {
        return Err(
            format!("wrong data: receiver counted {got} messages, {sent} were sent").into(),
        );
    }
    Ok(())
}

/// The server side over a `Conn`: answers requests, checks and acknowledges streams, and
/// flushes only once no more input is ready.
pub(crate) async fn serve_conn<C: Conn>(conn: &mut C, pattern: Pattern) -> Res<()> {
    let mut count = 0u64;
    while let Some(msg) = conn.recv().await? {
        serve_one(conn, msg.as_ref(), pattern, &mut count).await?;
        while let Some(msg) = conn.try_recv()? {
            serve_one(conn, msg.as_ref(), pattern, &mut count).await?;
        }
        conn.flush().await?;
    }
    Ok(())
}

pub(crate) async fn serve_one<C: Conn>(
    conn: &mut C,
    msg: &[u8],
    pattern: Pattern,
    count: &mut u64,
) -> Res<()> {
    if msg.len() == MARKER_LEN {
        conn.feed_copy(&count.to_le_bytes()).await?;
        *count = 0;
    } else if pattern.is_stream() {
        check_streamed(msg, *count)?;
        *count += 1;
    } else {
        conn.feed_fill(msg.len(), reply_byte(checksum(msg))).await?;
    }
    Ok(())
}
