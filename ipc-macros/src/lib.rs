//! `#[derive(Message)]` (in progress).
#![forbid(unsafe_code)]
