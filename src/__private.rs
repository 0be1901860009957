//! Items the derive macro expands to. Not public API: no stability promise, may change in any
//! release. `#[derive(Message)]` (crate `ipc-macros`) writes paths such as
//! `::shmlink::__private::Message`, so user crates need no direct dependency on `ipc-tokio`.

pub use ipc_tokio::message::{Message, mix_fingerprint};
