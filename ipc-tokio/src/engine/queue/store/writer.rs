//! The store's thread: takes everything queued since its last commit, validates and applies it
//! in ticket order in one write transaction, commits with an fsync, and reports [`Committed`].

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
#[cfg(test)]
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::mpsc::UnboundedSender;

#[cfg(test)]
use super::Hooks;
use super::{
    Committed, DELIVERIES, MAX_BATCH, MESSAGES, QUEUES, Request, StoreError, StoreOp,
    open_database, panic_text,
};

/// The store's thread: the only user of the database after open.
pub(super) struct Writer {
    /// `None` once unusable.
    pub(super) db: Option<Database>,
    pub(super) path: PathBuf,
    /// The declared queues as committed.
    pub(super) queues: BTreeSet<String>,
    /// Why the store is unusable, once it is.
    pub(super) broken: Option<String>,
    pub(super) done: UnboundedSender<Committed>,
    #[cfg(test)]
    pub(super) hooks: Hooks,
    #[cfg(test)]
    pub(super) commits: Arc<std::sync::atomic::AtomicU64>,
}

impl Writer {
    pub(super) fn run(mut self, inbox: mpsc::Receiver<Request>) {
        // `recv` fails once the Store is dropped and everything sent has been received.
        while let Ok(first) = inbox.recv() {
            let mut batch = vec![first];
            batch.extend(inbox.try_iter().take(MAX_BATCH - 1));
            let last = batch.last().map_or(0, |(ticket, _)| *ticket);
            let written = catch_unwind(AssertUnwindSafe(|| self.write_batch(batch)));
            if let Err(panic) = written {
                let detail = format!("the store's thread panicked: {}", panic_text(&panic));
                tracing::error!(path = %self.path.display(), "{detail}");
                self.db = None;
                self.broken = Some(detail);
                self.report(last, Err(self.unusable()));
            }
        }
    }

    fn unusable(&self) -> StoreError {
        StoreError::Unusable {
            path: self.path.clone(),
            detail: self.broken.clone().unwrap_or_default(),
        }
    }

    fn report(&self, upto: u64, result: Result<(), StoreError>) {
        // The engine may have gone first; nothing is waiting then.
        let _ = self.done.send(Committed { upto, result });
    }

    /// Writes one batch: runs of valid tickets as one transaction each (one in the usual
    /// case), a ticket naming an undeclared queue refused alone.
    fn write_batch(&mut self, batch: Vec<Request>) {
        let Some(last) = batch.last().map(|(ticket, _)| *ticket) else {
            return;
        };
        if self.broken.is_some() {
            self.report(last, Err(self.unusable()));
            return;
        }
        let mut known = self.queues.clone();
        let mut run: Vec<Request> = Vec::new();
        for (ticket, ops) in batch {
            match validate(&ops, &mut known) {
                Ok(()) => run.push((ticket, ops)),
                Err(refused) => {
                    if !self.commit_run(std::mem::take(&mut run), &known, last) {
                        return;
                    }
                    self.report(ticket, Err(refused));
                }
            }
        }
        self.commit_run(run, &known, last);
    }

    /// Commits `run` in one transaction and reports it. On failure, reports every ticket up
    /// to `last` (the rest of the batch was validated against this run's effects) and
    /// reopens the database; returns false.
    fn commit_run(&mut self, run: Vec<Request>, known: &BTreeSet<String>, last: u64) -> bool {
        let Some(upto) = run.last().map(|(ticket, _)| *ticket) else {
            return true;
        };
        match self.transact(&run) {
            Ok(()) => {
                self.queues.clone_from(known);
                self.report(upto, Ok(()));
                true
            }
            Err(e) => {
                let detail = e.to_string();
                tracing::error!(path = %self.path.display(), "queue store write failed: {detail}");
                self.report(
                    last,
                    Err(StoreError::Write {
                        path: self.path.clone(),
                        detail: detail.clone(),
                    }),
                );
                self.reopen(detail);
                false
            }
        }
    }

    fn transact(&mut self, run: &[Request]) -> Result<(), redb::Error> {
        let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        apply_all(&txn, run)?;
        #[cfg(test)]
        if let Some((told, go)) = &self.hooks.before_commit {
            let _ = told.send(());
            let _ = go.recv();
        }
        txn.commit()?;
        #[cfg(test)]
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// After a failed write: close and reopen the database (redb repairs what the failed
    /// transaction left) and reload the declared queues; if that fails, the store is
    /// unusable from now on.
    fn reopen(&mut self, failure: String) {
        self.db = None;
        match open_database(
            &self.path,
            #[cfg(test)]
            self.hooks.faults.as_ref(),
        ) {
            Ok((db, recovered)) => {
                self.queues = recovered.queues.into_iter().map(|q| q.name).collect();
                self.db = Some(db);
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "queue store unusable: {e}");
                self.broken = Some(format!("{failure}; reopening it failed: {e}"));
            }
        }
    }
}

/// Checks that every operation of one ticket names a declared queue, given the
/// declarations and drops before it; on success, `known` takes the ticket's effect.
fn validate(ops: &[StoreOp], known: &mut BTreeSet<String>) -> Result<(), StoreError> {
    // This ticket's own declarations and drops, latest last.
    let mut overlay: Vec<(&str, bool)> = Vec::new();
    let exists = |name: &str, overlay: &[(&str, bool)]| {
        overlay
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map_or_else(|| known.contains(name), |(_, live)| *live)
    };
    for op in ops {
        let needs: &[&str] = match op {
            StoreOp::Declare { queue, .. } => {
                overlay.push((queue, true));
                &[]
            }
            StoreOp::Drop { queue } => {
                overlay.push((queue, false));
                &[]
            }
            StoreOp::Put { queue, .. }
            | StoreOp::Ack { queue, .. }
            | StoreOp::Deliveries { queue, .. } => &[queue.as_str()],
            StoreOp::DeadLetter { from, to, .. } => &[from.as_str(), to.as_str()],
        };
        if let Some(missing) = needs.iter().find(|q| !exists(q, &overlay)) {
            return Err(StoreError::UnknownQueue {
                queue: (*missing).to_owned(),
            });
        }
    }
    for (name, live) in overlay {
        if live {
            known.insert(name.to_owned());
        } else {
            known.remove(name);
        }
    }
    Ok(())
}

/// Applies a run of tickets inside `txn`.
fn apply_all(txn: &WriteTransaction, run: &[Request]) -> Result<(), redb::Error> {
    let mut queues = txn.open_table(QUEUES)?;
    let mut messages = txn.open_table(MESSAGES)?;
    let mut deliveries = txn.open_table(DELIVERIES)?;
    for (_, ops) in run {
        for op in ops {
            apply(op, &mut queues, &mut messages, &mut deliveries)?;
        }
    }
    Ok(())
}

type Messages<'t> = Table<'t, (&'static str, u64), &'static [u8]>;
type Counts<'t> = Table<'t, (&'static str, u64), u32>;

fn apply(
    op: &StoreOp,
    queues: &mut Table<'_, &'static str, &'static [u8]>,
    messages: &mut Messages<'_>,
    deliveries: &mut Counts<'_>,
) -> Result<(), redb::Error> {
    match op {
        StoreOp::Declare { queue, options } => {
            queues.insert(queue.as_str(), options.as_slice())?;
        }
        StoreOp::Put { queue, id, payload } => {
            messages.insert((queue.as_str(), *id), &payload[..])?;
        }
        StoreOp::Ack { queue, id } => {
            messages.remove((queue.as_str(), *id))?;
            deliveries.remove((queue.as_str(), *id))?;
        }
        StoreOp::Deliveries { queue, id, count } => {
            let key = (queue.as_str(), *id);
            if messages.get(key)?.is_some() {
                if *count == 0 {
                    deliveries.remove(key)?;
                } else {
                    deliveries.insert(key, *count)?;
                }
            }
        }
        StoreOp::DeadLetter {
            from,
            id,
            to,
            new_id,
        } => {
            let payload = messages
                .remove((from.as_str(), *id))?
                .map(|p| p.value().to_vec());
            deliveries.remove((from.as_str(), *id))?;
            if let Some(payload) = payload {
                messages.insert((to.as_str(), *new_id), payload.as_slice())?;
            }
        }
        StoreOp::Drop { queue } => {
            queues.remove(queue.as_str())?;
            let range = (queue.as_str(), 0)..=(queue.as_str(), u64::MAX);
            messages.retain_in(range.clone(), |_, _| false)?;
            deliveries.retain_in(range, |_, _| false)?;
        }
    }
    Ok(())
}
