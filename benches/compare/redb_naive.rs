//! The naive durable queue, the floor without group commit: one redb file shared by the
//! producer and consumer processes (`ConcurrencyMode::MultiWriter`); every enqueue is a
//! durable write transaction of its own, every ack (a delete) too.

use std::path::Path;
use std::time::Duration;

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Consumed, Produced, check as check_message, fill, mono_ns, ready_then_go};
use crate::common::*;
use crate::{Res, Spec};

/// (sequence, producer) → payload: the oldest message first, producers interleaved.
const QUEUE: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("queue");
/// How long the consumer waits before looking again at an empty queue.
const POLL: Duration = Duration::from_micros(50);

fn open(path: &str) -> Res<Database> {
    Ok(Database::builder()
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .create(path)?)
}

/// Creates the file and its table; returns its path.
pub(crate) fn setup(dir: &Path) -> Res<String> {
    let path = path_str(&dir.join("naive.redb"))?;
    let db = open(&path)?;
    let txn = db.begin_write()?;
    txn.open_table(QUEUE)?;
    txn.commit()?;
    Ok(path)
}

/// A producer: one durable transaction per message.
pub(crate) fn produce(spec: &Spec) -> Res<Produced> {
    let db = open(&spec.addr)?;
    let window = ready_then_go()?;
    let mut produced = Produced::default();
    let mut seq = 0u64;
    while !window.over() {
        let payload = fill(spec.index, seq, spec.size);
        let sent = mono_ns();
        let txn = db.begin_write()?;
        txn.open_table(QUEUE)?
            .insert((seq, spec.index as u32), payload.as_slice())?;
        txn.commit()?;
        if window.contains(sent) {
            produced.latencies_ns.push(mono_ns() - sent);
        }
        seq += 1;
    }
    Ok(produced)
}

/// The consumer: reads the oldest message, checks it, deletes it in a durable transaction.
pub(crate) fn consume(spec: &Spec) -> Res<Consumed> {
    let db = open(&spec.addr)?;
    let window = ready_then_go()?;
    let mut consumed = Consumed::default();
    while !window.over() {
        let oldest = {
            let txn = db.begin_read()?;
            let table = txn.open_table(QUEUE)?;
            table
                .first()?
                .map(|(key, value)| (key.value(), value.value().to_vec()))
        };
        let Some((key, payload)) = oldest else {
            std::thread::sleep(POLL);
            continue;
        };
        check_message(&payload, spec.size)?;
        consumed.checked += 1;
        let txn = db.begin_write()?;
        txn.open_table(QUEUE)?.remove(key)?;
        txn.commit()?;
        if window.contains(mono_ns()) {
            consumed.acked_in_window += 1;
        }
    }
    Ok(consumed)
}
