//! The integration tests' support module: the shared kit lives in the `shmlink-testkit`
//! crate (`testkit/`); this module re-exports it under the names the tests use.
#![allow(unused_imports, unreachable_pub)]

pub use testkit::*;
