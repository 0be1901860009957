//! shmlink's internal test kit, shared by the integration tests (`tests/`), the fuzz targets
//! (`fuzz/`) and their regression tests. Not published, and no dependency of the library:
//! only a dev-dependency.
//!
//! - [`setup`]: temp dirs, engines with small blocks, in-process node pairs, bounded waits;
//! - [`child`]: child processes that are the test binary re-executed, and [`isolate`];
//! - [`payload`] and [`rng`]: deterministic payloads and a seedable generator;
//! - [`procfs`]: descriptor and mapping counts from `/proc`;
//! - [`rendezvous`]: a rendezvous by hand (raw socket, `recvmsg` with `SCM_RIGHTS`);
//! - [`hostile`]: the hostile-node harness of the whole-engine fuzz target.
//!
//! The items the tests use most are re-exported at the root under the names the tests'
//! `support` module has always had.
#![forbid(unsafe_code)]

pub mod child;
pub mod hostile;
pub mod payload;
pub mod procfs;
pub mod rendezvous;
pub mod rng;
pub mod setup;

pub use child::{
    CHILD_ENV, CHILD_TEST, CHILD_TIMEOUT_ENV, ChildProc, ChildSpec, Commands, ISOLATED_ENV, MARK,
    REPORT, child_spec, connect, ctx, isolate, ok_field, report, run_child, run_isolated, say,
    spawn_child, spawn_child_test, spawn_child_with_env,
};
pub use payload::{
    SEQ_HEADER, check_pattern, expect_seq, parse_seq, pattern, seq_len, seq_message,
};
pub use procfs::{block_mappings, open_fds};
pub use rendezvous::{Welcomed, hello_and_welcome, recv_with_fds};
pub use rng::{Rng, seed_from_env};
pub use setup::{
    Pair, STEP, TestDir, all_gone, echo_exchange, engine, engine_builder, listen, open, pair,
    ready_now, small_block, stats_until, within,
};
