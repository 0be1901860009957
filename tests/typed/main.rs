//! Integration tests of typed sessions and request/response (issue 4): a real engine embedded
//! in the test process, servers in real child processes (this binary re-executed), real
//! SIGKILL.
//!
//! Every test has its own socket under a fresh temp dir, so tests run in parallel under
//! `cargo nextest run` and `cargo test` alike. No test sleeps to synchronise or asserts on
//! time; timeouts only catch hangs (and, in `layers`, are the behaviour under test).

mod children;
mod harness;
mod messages;

mod decode;
mod facade;
mod layers;
mod lifecycle;
mod rpc;
mod schema;
mod shared;
mod streams;

/// The entry point of child processes: returns at once unless this process was started as a
/// child by [`harness::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = testkit::child_spec() {
        children::run(spec);
    }
}
