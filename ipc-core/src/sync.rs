//! The loom shim: every atomic and cell of ipc-core comes from here.
//!
//! Under `--cfg loom` these are loom's model-checked types; otherwise the standard ones. The
//! ring and the arena are written against this module only, so one implementation serves
//! loom, Miri, proptest and the real shared memory (the pattern of tokio's `src/loom`).
//! `ipc-core/clippy.toml` forbids the std types elsewhere in the crate.

#![allow(clippy::disallowed_types)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{Ordering, fence};

/// Declares a `repr(transparent)` wrapper over a std atomic, so the std type itself can be
/// banned by `clippy.toml` everywhere else while the layout in shared memory stays a plain
/// atomic word.
#[cfg(not(loom))]
macro_rules! atomic_newtype {
    ($name:ident, $std:ty, $int:ty) => {
        #[repr(transparent)]
        #[derive(Debug, Default)]
        pub(crate) struct $name($std);

        impl $name {
            #[allow(dead_code)]
            pub(crate) const fn new(value: $int) -> Self {
                Self(<$std>::new(value))
            }
            pub(crate) fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }
            pub(crate) fn store(&self, value: $int, order: Ordering) {
                self.0.store(value, order)
            }
            #[allow(dead_code)]
            pub(crate) fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_add(value, order)
            }
        }
    };
}

#[cfg(not(loom))]
atomic_newtype!(AtomicU32, std::sync::atomic::AtomicU32, u32);
#[cfg(not(loom))]
atomic_newtype!(AtomicU64, std::sync::atomic::AtomicU64, u64);

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// An `UnsafeCell` with loom's closure API, so access to ring slots is checked under loom.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
