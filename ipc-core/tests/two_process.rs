//! A ring driven across two real processes sharing one sealed memfd.
//!
//! The test process creates a block and two doorbells, re-executes its own test binary as a
//! child (`--exact child_process_entry`, with [`CHILD_ENV`] saying what to do), and hands it
//! the memfd and both doorbells over a Unix socket with `SCM_RIGHTS`, as the engine does at
//! rendezvous. One side then pushes a million numbered descriptors in batches, the other pops
//! them and checks that none is lost, reordered or torn. Both sides sleep only through the
//! ring's flags (`prepare_sleep`/`needs_wake` when empty, `prepare_wait_space`/
//! `needs_space_wake` when full) and their doorbell, with `poll(2)`; the long timeouts only
//! turn a lost wake-up into a failure instead of a hang.
//!
//! The child test function does nothing when [`CHILD_ENV`] is absent, so an ordinary
//! `cargo test` or `cargo nextest run` passes it.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use ipc_core::{
    Block, BlockConfig, Consumer, Doorbell, Producer, RawDescriptor, RingStorage, ShmRing,
};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Set in the child's environment: `<direction>:<abstract socket name>`.
const CHILD_ENV: &str = "IPC_CORE_TWO_PROCESS_CHILD";
/// The name of the test function the child runs.
const CHILD_TEST: &str = "child_process_entry";
/// What the child prints on success, followed by its count.
const CHILD_REPORT: &str = "two-process child done: ";
/// Descriptors per run.
const COUNT: u64 = 1_000_000;
/// Descriptors per push.
const BATCH: usize = 32;
/// A wait longer than this many one-second polls is a lost wake-up (or a dead peer).
const HANG_SECS: u32 = 30;

fn config() -> BlockConfig {
    BlockConfig {
        submit_capacity: 256,
        deliver_capacity: 256,
        release_capacity: 16,
        tx_arena: 1 << 16,
        rx_arena: 1 << 16,
        min_block: 64,
    }
}

/// Entry `n`: every word derived from `n`, so a torn or misplaced slot cannot match.
fn entry(n: u64) -> RawDescriptor {
    RawDescriptor {
        session: (n as u32) ^ 0xA5A5_A5A5,
        kind: (n % 65_521) as u16,
        flags: (n >> 16) as u16,
        segment: (n as u32).rotate_left(7),
        len: (n as u32).wrapping_mul(7),
        offset: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        aux: n,
    }
}

/// Which way the data flows. Each direction uses the ring that really flows that way: the
/// parent created the block (the engine's side), the child opened it (the node's side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// The parent produces on the deliver ring, the child consumes.
    EngineToNode,
    /// The child produces on the submit ring, the parent consumes.
    NodeToEngine,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::EngineToNode => "engine-to-node",
            Self::NodeToEngine => "node-to-engine",
        }
    }

    fn parse(name: &str) -> Self {
        match name {
            "engine-to-node" => Self::EngineToNode,
            "node-to-engine" => Self::NodeToEngine,
            other => panic!("unknown direction {other:?}"),
        }
    }

    fn ring(self, block: &Block) -> ShmRing {
        match self {
            Self::EngineToNode => block.deliver_ring(),
            Self::NodeToEngine => block.submit_ring(),
        }
    }
}

// ===== waiting =====

/// Sleeps until `bell` is rung, then resets it. `check` runs after every quiet second (the
/// parent uses it to notice a child that died).
fn wait(bell: &Doorbell, check: &mut dyn FnMut()) {
    let second = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    for _ in 0..HANG_SECS {
        let mut fds = [PollFd::new(bell, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&second)) {
            Ok(0) | Err(Errno::INTR) => check(),
            Ok(_) => {
                bell.drain().expect("drain the doorbell");
                return;
            }
            Err(e) => panic!("poll: {e}"),
        }
    }
    panic!("no wake-up within {HANG_SECS} s: a lost wake-up or a dead peer");
}

fn wait_readable(fd: BorrowedFd<'_>, check: &mut dyn FnMut()) {
    let second = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    for _ in 0..HANG_SECS {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&second)) {
            Ok(0) | Err(Errno::INTR) => check(),
            Ok(_) => return,
            Err(e) => panic!("poll: {e}"),
        }
    }
    panic!("the child did not connect within {HANG_SECS} s");
}

// ===== the two ends of a ring =====

/// Pushes [`COUNT`] entries in batches of [`BATCH`]; sleeps on `own_bell` while the ring is
/// full. Returns how often it slept.
fn produce(
    ring: ShmRing,
    own_bell: &Doorbell,
    peer_bell: &Doorbell,
    check: &mut dyn FnMut(),
) -> u64 {
    let mut producer = Producer::new(ring);
    let mut batch = Vec::with_capacity(BATCH);
    let mut next = 0u64;
    let mut sleeps = 0;
    while next < COUNT {
        batch.clear();
        batch.extend((next..COUNT.min(next + BATCH as u64)).map(entry));
        let pushed = producer
            .push_batch(&batch)
            .expect("the consumer's index is sane");
        if pushed > 0 {
            next += pushed as u64;
            if producer.needs_wake() {
                peer_bell.ring().expect("ring the consumer");
            }
            continue;
        }
        // Full: announce it, and sleep only if it is still full after the announcement.
        if producer
            .prepare_wait_space()
            .expect("the consumer's index is sane")
        {
            sleeps += 1;
            wait(own_bell, check);
            producer.woke_space();
        }
    }
    sleeps
}

/// Pops until [`COUNT`] entries arrived, checking each; sleeps on `own_bell` while the ring
/// is empty. Returns how many entries it received.
fn consume(
    ring: ShmRing,
    own_bell: &Doorbell,
    peer_bell: &Doorbell,
    check: &mut dyn FnMut(),
) -> u64 {
    let capacity = ring.capacity();
    let mut consumer = Consumer::new(ring);
    let mut out = [RawDescriptor::default(); BATCH];
    let mut expected = 0u64;
    while expected < COUNT {
        let popped = consumer
            .pop_batch(&mut out)
            .expect("the producer's index is sane");
        if popped > 0 {
            for got in &out[..popped] {
                if *got != entry(expected) {
                    panic!(
                        "entry {expected}: got {got:?}, want {:?} (lost, reordered or torn)",
                        entry(expected)
                    );
                }
                expected += 1;
            }
            if consumer.needs_space_wake() {
                peer_bell.ring().expect("ring the producer");
            }
            continue;
        }
        // Empty: announce it, and sleep only if it is still empty after the announcement.
        if consumer
            .prepare_sleep()
            .expect("the producer's index is sane")
        {
            wait(own_bell, check);
            consumer.woke();
        }
    }
    assert_eq!(consumer.pop(), Ok(None), "more than {COUNT} entries");
    assert!(consumer.available().expect("sane index") <= capacity);
    expected
}

// ===== fd passing =====

fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>; 3]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(b"fds")],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg");
    assert_eq!(sent, 3);
}

fn receive_fds(stream: &UnixStream) -> [OwnedFd; 3] {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 3];
    rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    fds.try_into()
        .unwrap_or_else(|fds: Vec<OwnedFd>| panic!("expected 3 fds, got {}", fds.len()))
}

// ===== the parent =====

/// Kills the child if the parent's side fails first.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn check_alive(child: &mut Child) {
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!("the child exited early with {status}");
    }
}

fn run_parent(direction: Direction) {
    let block = Block::create(&config(), "two-process").expect("create the block");
    // Two doorbells, each a connected pair: the parent waits on one end of the first and
    // rings one end of the second; the child gets the other two ends.
    let (parent_bell, child_ring) = Doorbell::pair().expect("socketpair");
    let (child_bell, parent_ring) = Doorbell::pair().expect("socketpair");

    let socket_name = format!(
        "ipc-core-two-process-{}-{}",
        std::process::id(),
        direction.name()
    );
    let address = SocketAddr::from_abstract_name(socket_name.as_bytes()).expect("socket name");
    let listener = UnixListener::bind_addr(&address).expect("bind the abstract socket");
    listener.set_nonblocking(true).expect("non-blocking");

    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture"])
        .env(CHILD_ENV, format!("{}:{socket_name}", direction.name()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut guard = ChildGuard(Some(child));
    let mut check = || check_alive(guard.0.as_mut().expect("child"));

    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_readable(listener.as_fd(), &mut check);
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking stream");
    send_fds(
        &stream,
        &[block.fd(), child_bell.as_fd(), child_ring.as_fd()],
    );

    let ring = direction.ring(&block);
    match direction {
        Direction::EngineToNode => {
            let sleeps = produce(ring, &parent_bell, &parent_ring, &mut check);
            eprintln!("parent pushed {COUNT} entries, slept {sleeps} times on a full ring");
        }
        Direction::NodeToEngine => {
            let received = consume(ring, &parent_bell, &parent_ring, &mut check);
            assert_eq!(received, COUNT);
        }
    }

    let output = guard
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("wait for the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    let count = stdout
        .lines()
        .find_map(|line| line.strip_prefix(CHILD_REPORT))
        .unwrap_or_else(|| panic!("no report from the child\n--- stdout\n{stdout}"));
    assert_eq!(count.trim(), COUNT.to_string(), "child's count");
}

#[test]
fn engine_to_node_across_processes() {
    run_parent(Direction::EngineToNode);
}

#[test]
fn node_to_engine_across_processes() {
    run_parent(Direction::NodeToEngine);
}

// ===== the child =====

/// The child's side. A no-op unless [`CHILD_ENV`] is set (by [`run_parent`]).
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    // Die with the parent, so a failed parent leaves no child behind.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("PR_SET_PDEATHSIG");
    let (direction, socket_name) = spec.split_once(':').expect("direction:socket");
    let direction = Direction::parse(direction);
    let address = SocketAddr::from_abstract_name(socket_name.as_bytes()).expect("socket name");
    let stream = UnixStream::connect_addr(&address).expect("connect to the parent");
    let [memfd, own_bell, peer_bell] = receive_fds(&stream);

    let block = Block::open(memfd).expect("open the block as the node");
    assert_eq!(
        *block.layout(),
        ipc_core::Layout::compute(&config()).unwrap()
    );
    let own_bell = Doorbell::from_fd(own_bell).expect("doorbell");
    let peer_bell = Doorbell::from_fd(peer_bell).expect("doorbell");
    let ring = direction.ring(&block);
    let count = match direction {
        Direction::EngineToNode => consume(ring, &own_bell, &peer_bell, &mut || {}),
        Direction::NodeToEngine => {
            produce(ring, &own_bell, &peer_bell, &mut || {});
            COUNT
        }
    };
    println!("{CHILD_REPORT}{count}");
}
