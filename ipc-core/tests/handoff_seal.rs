//! A hand-off segment across real processes: the writer is a child process holding the
//! segment's fd, as a sender node would.
//!
//! A writer that keeps its mapping blocks the engine's seal (a typed `StillMapped`, not a
//! crash), and the segment can be sealed as soon as that mapping is gone: when the writer
//! calls `finish` while it lives on, or when it is SIGKILLed. Either way the receiver then
//! reads exactly what the writer wrote.
//!
//! The child test function does nothing unless [`CHILD_ENV`] is set, so an ordinary
//! `cargo test` or `cargo nextest run` passes it.

use std::io::{BufRead, BufReader, Lines, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdout, Command, Stdio};

use ipc_core::{BlockError, SealError, SealedView, Segment, SegmentWriter};

const LEN: u64 = 1 << 20;
/// Set in the child's environment: `keep` (keep the mapping) or `finish` (unmap, stay alive).
const CHILD_ENV: &str = "IPC_CORE_HANDOFF_CHILD";
const CHILD_TEST: &str = "child_writer_entry";
const MESSAGE: &[u8] = b"written by the child";
const AT: u64 = LEN - 4096;

/// Kills the child when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_writer(segment: &Segment, mode: &str) -> (ChildGuard, Lines<BufReader<ChildStdout>>) {
    let fd = segment.fd().try_clone_to_owned().expect("dup the memfd");
    let mut child = Command::new(std::env::current_exe().expect("own test binary"))
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdin(Stdio::from(fd))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (ChildGuard(child), lines)
}

/// Reads the child's lines until one ends with `want` (the test harness prints its own
/// text, "test child_writer_entry ... ", on the same line before the test runs).
fn wait_for(lines: &mut Lines<BufReader<ChildStdout>>, want: &str) {
    loop {
        let line = lines
            .next()
            .expect("the child ended early")
            .expect("read the child's stdout");
        if line.ends_with(want) {
            return;
        }
    }
}

fn read_message(segment: &Segment) -> Vec<u8> {
    let fd = segment.fd().try_clone_to_owned().expect("dup the memfd");
    let view = SealedView::open(fd, LEN).expect("a sealed segment opens");
    view[AT as usize..AT as usize + MESSAGE.len()].to_vec()
}

#[test]
fn a_writer_that_keeps_its_mapping_blocks_the_seal_until_it_dies() {
    let segment = Segment::create(LEN, "handoff-keep").expect("create");
    let (mut child, mut lines) = spawn_writer(&segment, "keep");
    wait_for(&mut lines, "MAPPED");
    assert!(matches!(segment.seal_write(), Err(SealError::StillMapped)));
    // Unsealed, the segment is refused by a receiver meanwhile.
    let fd = segment.fd().try_clone_to_owned().expect("dup");
    assert!(matches!(
        SealedView::open(fd, LEN),
        Err(BlockError::NotSealed { .. })
    ));
    // SIGKILL: the kernel tears the mapping down with the process.
    child.0.kill().expect("SIGKILL the writer");
    child.0.wait().expect("reap the writer");
    segment
        .seal_write()
        .expect("sealed once the writer is gone");
    assert_eq!(read_message(&segment), MESSAGE);
}

#[test]
fn a_writer_that_finishes_can_be_sealed_while_it_lives() {
    let segment = Segment::create(LEN, "handoff-finish").expect("create");
    let (mut child, mut lines) = spawn_writer(&segment, "finish");
    wait_for(&mut lines, "FINISHED");
    segment.seal_write().expect("sealed: the writer unmapped");
    // The writer is still alive, holding the fd: unmapping was enough.
    assert!(child.0.try_wait().expect("poll the writer").is_none());
    assert_eq!(read_message(&segment), MESSAGE);
}

/// The child's side: does nothing unless started by the tests above.
#[test]
fn child_writer_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("PR_SET_PDEATHSIG");
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdin");
    let _held = fd.try_clone().expect("dup");
    let mut writer = SegmentWriter::open(fd, LEN).expect("open");
    writer.write_at(AT, MESSAGE).expect("write");
    let mut stdout = std::io::stdout();
    if mode == "finish" {
        writer.finish();
        writeln!(stdout, "FINISHED").unwrap();
    } else {
        writeln!(stdout, "MAPPED").unwrap();
    }
    stdout.flush().unwrap();
    // Stay alive, holding the fd (and, for `keep`, the mapping), until the parent kills us.
    loop {
        std::thread::park();
    }
}
