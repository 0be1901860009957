//! Integration tests of the engine (issue 3): a real engine embedded in the test process,
//! real child processes (this binary re-executed), real SIGKILL.
//!
//! Every test uses its own socket under a fresh temp dir, so tests run in parallel under
//! `cargo nextest run` and `cargo test` alike. No test sleeps to synchronise or asserts on
//! time; timeouts only catch hangs.

#[path = "../support/mod.rs"]
mod support;

mod children;
mod fake_engine;

mod close;
mod connect;
mod daemon;
mod driver_panic;
mod flow;
mod frames;
mod isolation;

mod kill;
mod large;
mod mesh;
mod names;
mod payloads;
mod pressure;
mod rendezvous;
mod restart;
mod spawn;
mod too_large;
mod unserve;
mod window;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
