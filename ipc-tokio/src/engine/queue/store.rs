//! The durable queues' store: a redb database owned by a thread of its own.
//!
//! The router never waits on a disk (invariant 4): it hands each batch of operations to
//! [`Store::submit`] under an increasing *ticket* and goes on. The store's thread takes
//! everything queued since its last commit, applies it in ticket order inside **one** write
//! transaction, commits it with an fsync (`Durability::Immediate`), and only then reports
//! [`Committed`] for every ticket it carried on the engine's Tokio channel: the publisher
//! confirms a producer waits for. Submissions that arrive while a commit is in flight share
//! the next one (group commit), so the fsync rate, not the message rate, bounds throughput.
//!
//! ```text
//!  router ──submit(ticket, ops)──▶ std mpsc ──▶ store thread: begin_write, apply all queued,
//!     ▲                                         commit + fsync
//!     └──────── Committed { upto, result } ◀──── tokio unbounded channel
//! ```
//!
//! # The file
//!
//! `queues.redb` in the engine's data directory, four tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"format"` | [`FORMAT`] (a file without it is not a queue store) |
//! | `queues` | queue name | the queue's options, encoded by the engine |
//! | `messages` | (queue, id) | payload |
//! | `deliveries` | (queue, id) | delivery count, present only once non-zero |
//!
//! Ids order a queue's messages (the engine allocates them increasing), so recovery returns
//! each queue's messages in FIFO order by one range scan.
//!
//! # Failures
//!
//! Nothing reports success it did not have. A ticket whose operations name a queue that is
//! not declared is refused alone ([`StoreError::UnknownQueue`]) and applies nothing. A failed
//! write transaction reports its error for every ticket of the batch, then the thread reopens
//! the database (redb repairs what the failed commit left); if that fails too, every later
//! ticket is reported [`StoreError::Unusable`]. Opening a file that is truncated, overwritten
//! or otherwise not a queue store is an error, never an empty store: the open verifies every
//! page's checksum (`set_check_integrity_on_open`).

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, TableDefinition,
};
use tokio::sync::mpsc::UnboundedSender;

use writer::Writer;

/// The store's file name inside the data directory.
pub(crate) const FILE_NAME: &str = "queues.redb";
/// The layout version written in the `meta` table.
pub(crate) const FORMAT: u32 = 1;
/// At most this many tickets share one write transaction (bounds its memory and latency
/// under a flood; the rest wait for the next commit).
const MAX_BATCH: usize = 16_384;

const META: TableDefinition<'_, &str, u32> = TableDefinition::new("meta");
const QUEUES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("queues");
const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");
const DELIVERIES: TableDefinition<'_, (&str, u64), u32> = TableDefinition::new("deliveries");

/// One change to the store. The operations of one ticket apply in order, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreOp {
    /// Creates the queue, or replaces its options.
    Declare { queue: String, options: Vec<u8> },
    /// Stores a message (replacing one with the same id).
    Put {
        queue: String,
        id: u64,
        payload: Bytes,
    },
    /// Deletes a message and its delivery count; a missing one is already gone (no-op).
    Ack { queue: String, id: u64 },
    /// Records a message's delivery count (0 clears it); no-op if the message is gone.
    Deliveries { queue: String, id: u64, count: u32 },
    /// Moves a message to another queue under a new id, its delivery count reset, in one
    /// step; no-op if the message is gone.
    DeadLetter {
        from: String,
        id: u64,
        to: String,
        new_id: u64,
    },
    /// Deletes a queue and every message in it; no-op if it does not exist.
    #[allow(dead_code)] // no queue deletion in the API yet
    Drop { queue: String },
}

/// The outcome of every ticket not reported yet that is `<= upto`.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) upto: u64,
    pub(crate) result: Result<(), StoreError>,
}

/// What the store held at open.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Every declared queue, by name.
    pub(crate) queues: Vec<RecoveredQueue>,
}

/// One queue as recovered.
#[derive(Debug)]
pub(crate) struct RecoveredQueue {
    pub(crate) name: String,
    pub(crate) options: Vec<u8>,
    /// `(id, payload, deliveries)` in id order.
    pub(crate) messages: Vec<(u64, Bytes, u32)>,
}

/// Why the durable queue store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory or the store file could not be created, opened or read.
    #[error("queue store {}: {source}", path.display())]
    Io {
        /// The store file (or its directory).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file is not a readable queue store: truncated, overwritten, damaged, or some
    /// other file. Nothing was recovered; the file was left as it is.
    #[error("queue store {} is corrupted or not a queue store: {detail}", path.display())]
    Corrupted {
        /// The store file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The file is a queue store of another layout version.
    #[error(
        "queue store {} has layout version {found}; this engine reads version {expected}",
        path.display()
    )]
    Incompatible {
        /// The store file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this engine reads.
        expected: u32,
    },
    /// Another process (an engine on the same data directory) has the store open.
    #[error("queue store {} is already open in another process", path.display())]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// A write transaction failed; the operations it carried are not confirmed.
    #[error("queue store {}: a write failed: {detail}", path.display())]
    Write {
        /// The store file.
        path: PathBuf,
        /// The database's error.
        detail: String,
    },
    /// The store could not be reopened after an earlier failure: nothing more is written.
    #[error("queue store {} is unusable: {detail}", path.display())]
    Unusable {
        /// The store file.
        path: PathBuf,
        /// The failure that made it so.
        detail: String,
    },
    /// The operations named a queue that is not declared in the store; none was applied.
    #[error("queue {queue:?} is not declared in the durable store")]
    UnknownQueue {
        /// The queue's name.
        queue: String,
    },
    /// The store's thread has stopped; nothing more is written.
    #[error("the queue store has stopped")]
    Stopped,
}

type Request = (u64, Vec<StoreOp>);

/// Handle to the thread that owns the store's database. Dropping it commits what is queued,
/// then ends and joins the thread.
pub(crate) struct Store {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    done: UnboundedSender<Committed>,
    path: PathBuf,
    #[cfg(test)]
    commits: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

// ===== impl Store =====

impl Store {
    /// Opens (creating) `dir/queues.redb` and recovers every queue, then starts the store's
    /// thread, which reports on `done`.
    ///
    /// Blocks the caller while it reads the file (at engine start).
    pub(crate) fn open(
        dir: &Path,
        done: UnboundedSender<Committed>,
    ) -> Result<(Store, Recovered), StoreError> {
        Self::start(
            dir,
            done,
            #[cfg(test)]
            Hooks::default(),
        )
    }

    fn start(
        dir: &Path,
        done: UnboundedSender<Committed>,
        #[cfg(test)] hooks: Hooks,
    ) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_owned(),
            source: Arc::new(e),
        })?;
        let path = dir.join(FILE_NAME);
        let (db, recovered) = open_database(
            &path,
            #[cfg(test)]
            hooks.faults.as_ref(),
        )?;
        let queues = recovered.queues.iter().map(|q| q.name.clone()).collect();
        let (requests, inbox) = mpsc::channel();
        #[cfg(test)]
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer {
            db: Some(db),
            path: path.clone(),
            queues,
            broken: None,
            done: done.clone(),
            #[cfg(test)]
            hooks,
            #[cfg(test)]
            commits: commits.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("shmlink-queue-store".into())
            .spawn(move || writer.run(inbox))
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                source: Arc::new(e),
            })?;
        let store = Store {
            requests: Some(requests),
            thread: Some(thread),
            done,
            path,
            #[cfg(test)]
            commits,
        };
        Ok((store, recovered))
    }

    /// Queues `ops` under `ticket` (greater than every earlier ticket). Never blocks: the
    /// outcome arrives as a [`Committed`] covering `ticket`.
    pub(crate) fn submit(&self, ticket: u64, ops: Vec<StoreOp>) {
        let queued = match &self.requests {
            Some(requests) => requests.send((ticket, ops)).is_ok(),
            None => false,
        };
        if !queued {
            // The thread is gone: say so rather than leave the ticket unanswered.
            let _ = self.done.send(Committed {
                upto: ticket,
                result: Err(StoreError::Stopped),
            });
        }
    }

    /// The store file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed so far.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish what is queued, then return.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Test hooks on the store's thread.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// Before each commit: tell the test (first), then wait for its go-ahead (second).
    pub(crate) before_commit: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    /// I/O errors to inject, on every open of the file.
    pub(crate) faults: Option<Arc<fault::Faults>>,
}

#[cfg(test)]
impl Store {
    /// [`Store::open`] with test hooks.
    pub(crate) fn open_with_hooks(
        dir: &Path,
        done: UnboundedSender<Committed>,
        hooks: Hooks,
    ) -> Result<(Store, Recovered), StoreError> {
        Self::start(dir, done, hooks)
    }
}

// ===== open and recover =====

/// Opens or creates the database at `path` and reads every queue.
fn open_database(
    path: &Path,
    #[cfg(test)] faults: Option<&Arc<fault::Faults>>,
) -> Result<(Database, Recovered), StoreError> {
    let existed = match std::fs::metadata(path) {
        Ok(meta) => meta.len() > 0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: Arc::new(e),
            });
        }
    };
    // redb may panic on a file damaged outside it (its debug assertions); that is a corrupt
    // store too, never a crash of the engine.
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<_, StoreError> {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        #[cfg(test)]
        let db = match faults {
            Some(faults) => fault::create(&builder, path, faults),
            None => builder.create(path),
        };
        #[cfg(not(test))]
        let db = builder.create(path);
        let db = db.map_err(|e| open_error(path, e))?;
        if !existed {
            initialise(&db).map_err(|e| corrupted(path, e))?;
        }
        let recovered = recover(&db, path)?;
        Ok((db, recovered))
    }));
    match opened {
        Ok(result) => result,
        Err(panic) => Err(StoreError::Corrupted {
            path: path.to_owned(),
            detail: format!("the database failed reading it: {}", panic_text(&panic)),
        }),
    }
}

/// Writes the marker and creates the tables of a new store.
fn initialise(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?.insert("format", FORMAT)?;
        txn.open_table(QUEUES)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(DELIVERIES)?;
    }
    txn.commit()?;
    Ok(())
}

/// Reads every queue and its messages.
fn recover(db: &Database, path: &Path) -> Result<Recovered, StoreError> {
    let bad = |e: redb::Error| corrupted(path, e);
    let txn = db.begin_read().map_err(|e| bad(e.into()))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::Corrupted {
                path: path.to_owned(),
                detail: "a database without the queue store's format marker".into(),
            });
        }
        Err(e) => return Err(bad(e.into())),
    };
    let found = meta.get("format").map_err(|e| bad(e.into()))?;
    let found = found.map(|v| v.value());
    if found != Some(FORMAT) {
        return Err(match found {
            Some(found) => StoreError::Incompatible {
                path: path.to_owned(),
                found,
                expected: FORMAT,
            },
            None => StoreError::Corrupted {
                path: path.to_owned(),
                detail: "the format marker is missing".into(),
            },
        });
    }
    let queues = txn.open_table(QUEUES).map_err(|e| bad(e.into()))?;
    let messages = txn.open_table(MESSAGES).map_err(|e| bad(e.into()))?;
    let deliveries = txn.open_table(DELIVERIES).map_err(|e| bad(e.into()))?;
    let mut recovered = Recovered::default();
    for entry in queues.iter().map_err(|e| bad(e.into()))? {
        let (name, options) = entry.map_err(|e| bad(e.into()))?;
        let name = name.value().to_owned();
        let range = (name.as_str(), 0)..=(name.as_str(), u64::MAX);
        // Counts exist only for delivered messages: few, and in id order like the messages.
        let mut counts = Vec::new();
        for entry in deliveries.range(range.clone()).map_err(|e| bad(e.into()))? {
            let (key, count) = entry.map_err(|e| bad(e.into()))?;
            counts.push((key.value().1, count.value()));
        }
        let mut counts = counts.into_iter().peekable();
        let mut kept = Vec::new();
        for message in messages.range(range).map_err(|e| bad(e.into()))? {
            let (key, payload) = message.map_err(|e| bad(e.into()))?;
            let id = key.value().1;
            while counts.next_if(|(at, _)| *at < id).is_some() {}
            let count = counts.next_if(|(at, _)| *at == id).map_or(0, |(_, n)| n);
            kept.push((id, Bytes::copy_from_slice(payload.value()), count));
        }
        recovered.queues.push(RecoveredQueue {
            name,
            options: options.value().to_vec(),
            messages: kept,
        });
    }
    Ok(recovered)
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        // redb reports a file that holds no redb database as an InvalidData I/O error, and
        // one cut short inside its header as an early end of file: both are damage to the
        // file, not a failing disk.
        DatabaseError::Storage(StorageError::Io(io))
            if !matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            StoreError::Io {
                path: path.to_owned(),
                source: Arc::new(io),
            }
        }
        other => corrupted(path, other.into()),
    }
}

fn corrupted(path: &Path, e: redb::Error) -> StoreError {
    StoreError::Corrupted {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

mod writer;

#[cfg(test)]
mod fault;
#[cfg(test)]
mod tests;
