//! The engine, nodes and sessions (in progress).
#![forbid(unsafe_code)]
