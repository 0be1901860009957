//! Items the derive macro expands to. Not public API.
