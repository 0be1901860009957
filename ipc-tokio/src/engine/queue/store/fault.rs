//! Fault injection for the store's tests: redb's own file backend, with I/O errors on
//! demand (a failing fsync, or a disk that fails everything).

use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, DatabaseError, StorageBackend};

/// The faults to inject, shared by the test and the store's thread.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// This many coming fsyncs fail.
    pub(crate) failing_syncs: AtomicU32,
    /// Every read, write, resize and fsync fails while set.
    pub(crate) broken: AtomicBool,
}

impl Faults {
    fn check(&self, sync: bool) -> Result<(), BackendError> {
        let failing_sync = sync
            && self
                .failing_syncs
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing_sync || self.broken.load(Ordering::SeqCst) {
            return Err(BackendError::Io(std::io::Error::other(
                "injected I/O error",
            )));
        }
        Ok(())
    }
}

/// A file backend that fails when told to.
#[derive(Debug)]
struct FaultyFile {
    inner: FileBackend,
    faults: Arc<Faults>,
}

/// `builder.create(path)`, through a [`FaultyFile`].
pub(crate) fn create(
    builder: &Builder,
    path: &Path,
    faults: &Arc<Faults>,
) -> Result<Database, DatabaseError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    builder.create_with_backend(FaultyFile {
        inner: FileBackend::new(file),
        faults: faults.clone(),
    })
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, BackendError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.faults.check(false)?;
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.faults.check(false)?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.faults.check(true)?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.faults.check(false)?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
