//! Access control and isolation of blocks (issue 6): who can reach the engine, and what a
//! node can reach of its own block and of others'.
//!
//! - the socket is private (0600, its directory 0700 when the engine creates it);
//! - a process of another uid is refused at rendezvous: by the socket's mode, and, when the
//!   test makes the socket world-accessible, by `SO_PEERCRED` against the policy, before any
//!   block exists (these tests switch a child to uid 65534 and need root; otherwise they
//!   print `SKIP: not root, cannot switch uid` and pass);
//! - blocks have no name: they are memfds, never files under `/dev/shm` or elsewhere, and
//!   each is held by exactly two processes, the engine and its node;
//! - a node cannot resize or reseal its block, and two nodes never get the same block;
//! - known gaps, ignored until fixed (`squat`): the engine trusts an existing socket
//!   directory, and a node trusts whatever engine listens at the path.

#[path = "../support/mod.rs"]
mod support;

use support::procfs;

mod children;
mod echo;
mod foreign;
mod names;
mod seals;
mod squat;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`] (or `foreign::run_as`).
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
