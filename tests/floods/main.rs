//! Floods (issue 10): a process of the engine's own uid floods the listener side of the
//! engine, and the engine stays alive, bounded and serving.
//!
//! Each test runs a real engine, a bystander pair that exchanges during and after the flood,
//! and checks that every refusal is the typed error naming its limit, that a fresh node
//! connects afterwards, and (for engines in this process, run alone with
//! [`support::isolate`]) that the engine's descriptors return to baseline and its memory
//! stays near it:
//!
//! - `connections`: a connection flood of one uid, and half-open handshakes (hello, never
//!   ready) that only the handshake timeout ends;
//! - `frames`: many connections each sending a 64 KiB frame in part;
//! - `deaf`: a server that never reads its control socket while a peer opens sessions to it;
//! - `emfile`: an engine whose descriptor limit is reached (in a child with a low
//!   `RLIMIT_NOFILE`): the accept loop backs off instead of spinning;
//! - `dumpable`: the non-dumpable options close `/proc/<pid>/fd` to other processes of the
//!   same uid.

#[path = "../support/mod.rs"]
mod support;

mod children;
mod common;
mod connections;
mod deaf;
mod dumpable;
mod emfile;
mod frames;
mod memory;
mod requests;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`] (or `dumpable`'s foreign-uid command).
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
