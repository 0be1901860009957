//! A subscriber can read a topic's broadcast segment and can never write it.
//!
//! Many nodes map a topic's segment; the engine alone writes it. These tests play a hostile
//! subscriber holding the segment's fd and try every way the kernel offers to change the
//! file: a writable shared `mmap`, `mprotect` of a read-only mapping to writable, `write`,
//! `pwrite`, `ftruncate` (shrink and grow), `fallocate` hole punching, `madvise(MADV_REMOVE)`,
//! more seals, and reopening `/proc/self/fd/N` read-write then writing and mapping through
//! the new description. Each must fail, while the engine's own writes, made before and after
//! the subscriber mapped the segment, stay visible to it. A private (copy-on-write) writable
//! mapping is allowed by the kernel, so the test checks that writing it changes nothing
//! anyone else sees.
//!
//! The same attempts run in this process and in a real child process that receives the fd
//! as its standard input.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipc_core::RawDescriptor;
use ipc_core::broadcast::{BROADCAST_SEALS, BroadcastLease, BroadcastSegment, ReadOnlySegment};
use rustix::fs::{FallocateFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

const SIZE: u64 = 1 << 16;
const CHILD_ENV: &str = "IPC_CORE_BROADCAST_CHILD";
const CHILD_TEST: &str = "child_subscriber_entry";
const EARLY: &[u8] = b"written before the subscriber mapped it";
const LATE: &[u8] = b"written after the subscriber mapped it";
const LATE_AT: u64 = 8192;

// ===== the hostile subscriber =====

/// One attempt to change the segment: its name and the error it got (`None`: it succeeded).
type Outcome = (&'static str, Option<Errno>);

/// A private mapping of the whole segment, unmapped on drop.
struct Map {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Map {
    fn new(fd: BorrowedFd<'_>, prot: ProtFlags, flags: MapFlags) -> Result<Self, Errno> {
        let len = SIZE as usize;
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object,
        // and the segment is sealed against shrinking, so its pages stay backed.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) }?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned, and no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

fn err<T>(result: Result<T, Errno>) -> Option<Errno> {
    result.err()
}

/// Every write path a subscriber holding `fd` could try. Returns one outcome per attempt.
fn attempt_writes(fd: BorrowedFd<'_>) -> Vec<Outcome> {
    let mut out = Vec::new();
    out.push((
        "mmap(PROT_WRITE, MAP_SHARED)",
        err(Map::new(
            fd,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
        )),
    ));
    let ro = Map::new(fd, ProtFlags::READ, MapFlags::SHARED).expect("a read-only mapping");
    // SAFETY: the range is exactly our own read-only mapping; if the kernel allowed the change
    // we only would have made our own mapping writable (and the test fails).
    let mprotect =
        unsafe { rustix::mm::mprotect(ro.ptr, ro.len, MprotectFlags::READ | MprotectFlags::WRITE) };
    out.push(("mprotect(PROT_WRITE) of a shared mapping", err(mprotect)));
    // SAFETY: MADV_REMOVE on our own mapping: it would punch a hole in the file (zeroing what
    // every subscriber reads) if the kernel allowed it; it must not.
    let madvise = unsafe { rustix::mm::madvise(ro.ptr, ro.len, rustix::mm::Advice::LinuxRemove) };
    out.push(("madvise(MADV_REMOVE)", err(madvise)));
    drop(ro);
    out.push(("write", err(rustix::io::write(fd, b"evil"))));
    out.push(("pwrite", err(rustix::io::pwrite(fd, b"evil", 0))));
    out.push((
        "ftruncate(shrink)",
        err(rustix::fs::ftruncate(fd, SIZE / 2)),
    ));
    out.push(("ftruncate(grow)", err(rustix::fs::ftruncate(fd, SIZE * 2))));
    out.push((
        "fallocate(PUNCH_HOLE)",
        err(rustix::fs::fallocate(
            fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            SIZE,
        )),
    ));
    out.push((
        "fcntl(F_ADD_SEALS, WRITE)",
        err(rustix::fs::fcntl_add_seals(fd, SealFlags::WRITE)),
    ));
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    match rustix::fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        // The kernel may refuse the reopen itself; that is as good.
        Err(e) => out.push(("reopen /proc/self/fd/N O_RDWR", Some(e))),
        Ok(reopened) => {
            out.push((
                "reopened: pwrite",
                err(rustix::io::pwrite(&reopened, b"evil", 0)),
            ));
            out.push((
                "reopened: mmap(PROT_WRITE, MAP_SHARED)",
                err(Map::new(
                    reopened.as_fd(),
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                )),
            ));
            out.push((
                "reopened: ftruncate",
                err(rustix::fs::ftruncate(&reopened, 0)),
            ));
        }
    }
    out
}

/// A private writable mapping is copy-on-write: writing it must change nothing in the file.
fn scribble_privately(fd: BorrowedFd<'_>) {
    let private = Map::new(fd, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE)
        .expect("a private mapping is allowed");
    // SAFETY: the mapping is ours, private and writable, SIZE bytes long; no reference into
    // it exists.
    unsafe { std::ptr::write_bytes(private.ptr.cast::<u8>(), 0xEE, private.len) };
}

fn assert_all_refused(outcomes: &[Outcome]) {
    for (what, outcome) in outcomes {
        assert!(
            outcome.is_some(),
            "a subscriber could {what} the broadcast segment"
        );
    }
    assert!(outcomes.len() >= 10, "every attempt ran: {outcomes:?}");
}

fn read_back(segment: &Arc<ReadOnlySegment>, offset: u64, len: usize) -> Vec<u8> {
    segment
        .view(offset, len as u32)
        .expect("inside")
        .as_ref()
        .to_vec()
}

// ===== in this process =====

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn a_subscriber_cannot_write_the_segment() {
    let engine = BroadcastSegment::create(SIZE, "topic").expect("create");
    engine.write(0, EARLY).expect("engine write");
    let fd = engine.fd().try_clone_to_owned().expect("dup");
    assert!(
        rustix::fs::fcntl_get_seals(&fd)
            .unwrap()
            .contains(BROADCAST_SEALS)
    );
    let subscriber = ReadOnlySegment::open(fd.try_clone().expect("dup"), SIZE).expect("open");
    let other = ReadOnlySegment::open(fd.try_clone().expect("dup"), SIZE).expect("open");

    assert_all_refused(&attempt_writes(fd.as_fd()));
    scribble_privately(fd.as_fd());

    // Nothing changed, for this subscriber or another; the engine still writes, and both see it.
    assert_eq!(read_back(&subscriber, 0, EARLY.len()), EARLY);
    assert_eq!(read_back(&other, 0, EARLY.len()), EARLY);
    engine
        .write(LATE_AT, LATE)
        .expect("engine write after the seal");
    assert_eq!(read_back(&subscriber, LATE_AT, LATE.len()), LATE);
    assert_eq!(read_back(&other, LATE_AT, LATE.len()), LATE);
    assert_eq!(engine.read(0, EARLY.len() as u32).unwrap(), EARLY);
    let stat = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(stat.st_size as u64, SIZE, "size unchanged");
}

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals and mmap are syscalls Miri cannot run
fn a_slot_is_zero_copy_bytes_that_release_on_last_drop() {
    let engine = BroadcastSegment::create(SIZE, "topic").expect("create");
    engine.write(4096, b"market data").unwrap();
    let subscriber =
        ReadOnlySegment::open(engine.fd().try_clone_to_owned().unwrap(), SIZE).expect("open");
    let released = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = released.clone();
    let lease = BroadcastLease::new(subscriber.view(4096, 11).unwrap(), 3, 9, move |entry| {
        sink.lock().unwrap().push(entry)
    });
    let bytes = Bytes::from_owner(lease);
    let view_ptr = bytes.as_ptr();
    let tail = bytes.slice(7..);
    assert_eq!(&bytes[..], b"market data");
    assert_eq!(&tail[..], b"data");
    // Zero copy: the Bytes point into the read-only mapping, where the engine's write shows.
    engine.write(4096, b"MARKET").unwrap();
    assert_eq!(&bytes[..6], b"MARKET");
    assert_eq!(view_ptr, bytes.as_ptr());
    drop(bytes);
    assert!(
        released.lock().unwrap().is_empty(),
        "a clone still holds it"
    );
    drop(tail);
    assert_eq!(
        *released.lock().unwrap(),
        vec![RawDescriptor::topic_release(3, 9, 4096)]
    );
}

// ===== in a child process =====

#[test]
#[cfg_attr(miri, ignore)] // memfd, seals, mmap and fork/exec are syscalls Miri cannot run
fn a_subscriber_process_cannot_write_the_segment() {
    let engine = BroadcastSegment::create(SIZE, "topic").expect("create");
    engine.write(0, EARLY).expect("engine write");
    let fd: OwnedFd = engine.fd().try_clone_to_owned().expect("dup");
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the subscriber");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = |want: &str| loop {
        let line = lines
            .next()
            .expect("the child ended early")
            .expect("read the child's stdout");
        // libtest may print its "test name ... " before our line: look for the marker anywhere.
        if let Some(at) = line.find(want) {
            return line[at + want.len()..].to_owned();
        }
    };
    let report = next_line("REFUSED: ");
    assert_eq!(report, "all", "the child could write: {report}");
    // The child mapped the segment and checked the early bytes; now write more, after the seal.
    engine.write(LATE_AT, LATE).expect("engine write");
    assert_eq!(next_line("SAW: "), "late");
    let status = child.wait().expect("wait");
    assert!(status.success(), "child failed: {status}");
    assert_eq!(engine.read(0, EARLY.len() as u32).unwrap(), EARLY);
}

/// The child's side: does nothing unless started by the test above.
#[test]
fn child_subscriber_entry() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("PR_SET_PDEATHSIG");
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let segment = ReadOnlySegment::open(fd.try_clone().expect("dup"), SIZE).expect("open");
    assert_eq!(read_back(&segment, 0, EARLY.len()), EARLY);
    let outcomes = attempt_writes(fd.as_fd());
    scribble_privately(fd.as_fd());
    let succeeded: Vec<&str> = outcomes
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(w, _)| *w)
        .collect();
    let mut stdout = std::io::stdout();
    if succeeded.is_empty() && outcomes.len() >= 10 {
        writeln!(stdout, "REFUSED: all").unwrap();
    } else {
        writeln!(stdout, "REFUSED: not {succeeded:?}").unwrap();
    }
    stdout.flush().unwrap();
    // Wait (bounded) for the parent's late write to show through our read-only mapping.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if read_back(&segment, LATE_AT, LATE.len()) == LATE {
            break;
        }
        assert!(Instant::now() < deadline, "the engine's write never showed");
        std::thread::yield_now();
    }
    writeln!(stdout, "SAW: late").unwrap();
    stdout.flush().unwrap();
}
