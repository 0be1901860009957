//! Integration tests of topics (issue 12): a real engine embedded in the test process, real
//! child processes (this binary re-executed), real broadcast segments.
//!
//! No test sleeps to synchronise or asserts on time; timeouts only catch hangs.

#[path = "../support/mod.rs"]
mod support;

mod children;

mod basics;
mod fanout;
mod hostile;
mod isolation;
mod loan;
mod segment;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
