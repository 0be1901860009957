//! shmlink: fast, safe messaging between processes on one host through shared memory.
#![forbid(unsafe_code)]

pub use ipc_core as core;

#[doc(hidden)]
pub mod __private;
