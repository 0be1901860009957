//! Stress tests (issue 6): a crash storm (hundreds of nodes SIGKILLed at random points while
//! a well-behaved pair streams without loss) and a load test (64 nodes in 8 processes, 4
//! sessions each, mixed sizes up to 256 KiB, every message checked).
//!
//! Each test starts a real engine in the test process and real child processes (this binary
//! re-executed, see `support`). No test sleeps to synchronise or asserts on time; timeouts
//! only catch hangs. Randomised choices come from one seed, printed, and replayable with
//! `SHMLINK_STORM_SEED=<seed>`.

#[path = "../support/mod.rs"]
mod support;

mod children;
mod payload;

mod load;
mod storm;

/// The entry point of child processes: returns at once unless this process was started
/// as a child by [`support::spawn_child`].
#[test]
fn child_entry() {
    if let Some(spec) = support::child_spec() {
        children::run(spec);
    }
}
