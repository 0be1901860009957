//! Integration tests of queues (issue 13): a real engine, real nodes and real child processes
//! (this binary re-executed), SIGKILLed for real.
//!
//! No test sleeps to synchronise or asserts on time; timeouts only catch hangs.

#[path = "../support/mod.rs"]
mod support;

mod children;
mod common;

mod basics;
mod durable;
mod hostile;
mod kill;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
