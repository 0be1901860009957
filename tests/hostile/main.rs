//! Hostile nodes against a real engine (issue 6, item 1; docs/ARCHITECTURE.md, invariant 3
//! "shared memory is untrusted input", and 4, 5, 6 as seen from a well-behaved node).
//!
//! Each attack runs in a real child process (this binary re-executed) that registers by hand
//! ([`raw`]: a raw `UnixStream`, `Hello`, the `Welcome` and its three descriptors taken with
//! `recvmsg`/`SCM_RIGHTS`, `Block::open`, `Ready`), then writes adversarial values into its own
//! block, its doorbells or its control socket ([`attacks`]). The engine is embedded in the
//! test process ([`world`]), next to two well-behaved nodes exchanging a numbered stream and a
//! target node that checks every byte the hostile nodes manage to send. After every attack:
//! the engine closed that node alone (or served it on, where there is nothing to punish),
//! counted the violation, lost or duplicated nothing of the good stream, still accepts and
//! serves new nodes, and this process's descriptors and block mappings are back to their
//! baseline.
//!
//! Each test runs its attacks one after another on its own engine, alone in a copy of this
//! binary (`support::isolate`: descriptor counts are per process). No test sleeps to
//! synchronise or asserts on time; timeouts only catch hangs.

#[path = "../support/mod.rs"]
mod support;

mod attacks;
mod cases;
mod control;
mod races;
mod raw;
mod segments;
mod world;

/// The entry point of child processes: returns at once unless this process was started as
/// a child by [`support::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        attacks::run(spec);
    }
}
