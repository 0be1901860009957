//! The store against a real redb file: recovery across a reopen, group commit, refusal of
//! undeclared queues, damaged files, and a writer process SIGKILLed mid-stream.

use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use testkit::{STEP, TestDir};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::*;

/// The store's `Committed` reports, read with a bound that only catches hangs.
struct Done {
    rt: tokio::runtime::Runtime,
    rx: UnboundedReceiver<Committed>,
    /// The highest ticket reported so far.
    reported: u64,
}

impl Done {
    fn new() -> (UnboundedSender<Committed>, Done) {
        let (tx, rx) = unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        (
            tx,
            Done {
                rt,
                rx,
                reported: 0,
            },
        )
    }

    fn next(&mut self) -> Committed {
        let next = self
            .rt
            .block_on(async { tokio::time::timeout(STEP, self.rx.recv()).await })
            .expect("no Committed within the bound: the store hangs")
            .expect("the store's channel closed");
        assert!(
            next.upto > self.reported,
            "Committed went backwards: {} after {}",
            next.upto,
            self.reported
        );
        self.reported = next.upto;
        next
    }

    /// Reads reports until `ticket` is covered; every one must be a success.
    fn ok_upto(&mut self, ticket: u64) {
        while self.reported < ticket {
            let c = self.next();
            if let Err(e) = c.result {
                panic!("tickets up to {} failed: {e}", c.upto);
            }
        }
    }

    /// Reads reports until `ticket` is covered; returns each ticket's outcome for
    /// `tickets` (the tickets submitted, increasing).
    fn outcomes(&mut self, tickets: &[u64]) -> Vec<(u64, Result<(), StoreError>)> {
        let mut out = Vec::new();
        let mut pending = tickets.iter().copied().peekable();
        while pending.peek().is_some() {
            let c = self.next();
            while let Some(&t) = pending.peek() {
                if t > c.upto {
                    break;
                }
                out.push((t, c.result.clone()));
                pending.next();
            }
        }
        out
    }
}

fn open(dir: &Path) -> (Store, Recovered, Done) {
    let (tx, done) = Done::new();
    let (store, recovered) = Store::open(dir, tx).expect("open the store");
    (store, recovered, done)
}

/// What a fresh open of `dir` recovers (no runtime needed: nothing is submitted).
fn reopen(dir: &Path) -> Recovered {
    let (tx, _rx) = unbounded_channel();
    Store::open(dir, tx).expect("reopen the store").1
}

fn declare(queue: &str) -> StoreOp {
    StoreOp::Declare {
        queue: queue.into(),
        options: format!("options of {queue}").into_bytes(),
    }
}

fn payload(id: u64) -> Bytes {
    Bytes::from(testkit::pattern(7, id, 16 + (id % 64) as usize * 8))
}

fn put(queue: &str, id: u64) -> StoreOp {
    StoreOp::Put {
        queue: queue.into(),
        id,
        payload: payload(id),
    }
}

fn ack(queue: &str, id: u64) -> StoreOp {
    StoreOp::Ack {
        queue: queue.into(),
        id,
    }
}

/// `(id, deliveries)` of `queue`'s messages in order; `None` if the queue is not there.
fn contents(recovered: &Recovered, queue: &str) -> Option<Vec<(u64, u32)>> {
    let q = recovered.queues.iter().find(|q| q.name == queue)?;
    assert_eq!(q.options, format!("options of {queue}").into_bytes());
    Some(
        q.messages
            .iter()
            .map(|(id, _, count)| (*id, *count))
            .collect(),
    )
}

fn payload_of(recovered: &Recovered, queue: &str, id: u64) -> Bytes {
    let q = recovered
        .queues
        .iter()
        .find(|q| q.name == queue)
        .expect("queue");
    q.messages
        .iter()
        .find(|(at, _, _)| *at == id)
        .map(|(_, bytes, _)| bytes.clone())
        .expect("message")
}

#[test]
fn puts_acks_deliveries_and_dead_letters_survive_a_reopen() {
    let dir = TestDir::new("store-recovery");
    {
        let (store, recovered, mut done) = open(dir.path());
        assert!(recovered.queues.is_empty(), "a new store is empty");
        store.submit(1, vec![declare("work"), declare("dead")]);
        store.submit(2, (1..=6).map(|id| put("work", id)).collect());
        store.submit(
            3,
            vec![
                ack("work", 2),
                StoreOp::Deliveries {
                    queue: "work".into(),
                    id: 3,
                    count: 2,
                },
                StoreOp::DeadLetter {
                    from: "work".into(),
                    id: 4,
                    to: "dead".into(),
                    new_id: 100,
                },
            ],
        );
        store.submit(
            4,
            vec![
                StoreOp::Deliveries {
                    queue: "work".into(),
                    id: 3,
                    count: 3,
                },
                StoreOp::Deliveries {
                    queue: "work".into(),
                    id: 5,
                    count: 1,
                },
                // Already gone: no-ops, and no count is left behind for them.
                ack("work", 2),
                StoreOp::Deliveries {
                    queue: "work".into(),
                    id: 2,
                    count: 9,
                },
            ],
        );
        store.submit(
            5,
            vec![StoreOp::Deliveries {
                queue: "work".into(),
                id: 5,
                count: 0,
            }],
        );
        done.ok_upto(5);
    }
    let recovered = reopen(dir.path());
    assert_eq!(
        contents(&recovered, "work"),
        Some(vec![(1, 0), (3, 3), (5, 0), (6, 0)])
    );
    assert_eq!(contents(&recovered, "dead"), Some(vec![(100, 0)]));
    for id in [1, 3, 5, 6] {
        assert_eq!(payload_of(&recovered, "work", id), payload(id));
    }
    assert_eq!(payload_of(&recovered, "dead", 100), payload(4));
    drop(recovered);

    // A dropped queue takes its messages and counts with it; the other stays.
    {
        let (store, _, mut done) = open(dir.path());
        store.submit(
            6,
            vec![StoreOp::Drop {
                queue: "work".into(),
            }],
        );
        done.ok_upto(6);
    }
    let recovered = reopen(dir.path());
    assert_eq!(contents(&recovered, "work"), None);
    assert_eq!(contents(&recovered, "dead"), Some(vec![(100, 0)]));
    // Declared again, the queue starts empty: no count of the old id 3 survived.
    {
        let (store, _, mut done) = open(dir.path());
        store.submit(7, vec![declare("work"), put("work", 3)]);
        done.ok_upto(7);
    }
    assert_eq!(contents(&reopen(dir.path()), "work"), Some(vec![(3, 0)]));
}

#[test]
fn submits_during_a_commit_share_the_next_transaction() {
    let dir = TestDir::new("store-group-commit");
    let (told_tx, told) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let hooks = Hooks {
        before_commit: Some((told_tx, go_rx)),
        faults: None,
    };
    let (tx, mut done) = Done::new();
    let (store, _) = Store::open_with_hooks(dir.path(), tx, hooks).expect("open");
    store.submit(1, vec![declare("q")]);
    // The thread is inside the first transaction, about to commit it.
    told.recv_timeout(STEP).expect("first commit starts");
    for ticket in 2..=200 {
        store.submit(ticket, vec![put("q", ticket)]);
    }
    go.send(()).expect("go");
    // Everything submitted meanwhile is one transaction.
    told.recv_timeout(STEP).expect("second commit starts");
    go.send(()).expect("go");
    let first = done.next();
    assert_eq!(first.upto, 1);
    first.result.expect("first commit");
    let second = done.next();
    assert_eq!(second.upto, 200, "199 submits, one Committed");
    second.result.expect("second commit");
    assert_eq!(store.commits(), 2, "two write transactions in all");
    drop(go);
    drop(store);
    let ids: Vec<u64> = contents(&reopen(dir.path()), "q")
        .expect("queue")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, (2..=200).collect::<Vec<_>>());
}

#[test]
fn dropping_the_store_commits_what_is_queued() {
    let dir = TestDir::new("store-drop");
    let (store, _, mut done) = open(dir.path());
    store.submit(1, vec![declare("q")]);
    for ticket in 2..=300 {
        store.submit(ticket, vec![put("q", ticket)]);
    }
    drop(store);
    done.ok_upto(300);
    assert!(
        done.rx.try_recv().is_err(),
        "nothing is reported after the last ticket"
    );
    assert_eq!(
        contents(&reopen(dir.path()), "q").expect("queue").len(),
        299
    );
}

#[test]
fn a_ticket_naming_an_undeclared_queue_is_refused_alone() {
    let dir = TestDir::new("store-unknown");
    {
        let (store, _, mut done) = open(dir.path());
        store.submit(1, vec![declare("a")]);
        store.submit(2, vec![put("a", 1)]);
        store.submit(3, vec![put("a", 2), put("b", 1)]);
        // Declared, then dropped, then used, in one ticket: refused whole, the
        // declaration too.
        store.submit(
            4,
            vec![
                declare("c"),
                put("c", 1),
                StoreOp::Drop { queue: "c".into() },
                put("c", 2),
            ],
        );
        store.submit(
            5,
            vec![StoreOp::DeadLetter {
                from: "a".into(),
                id: 1,
                to: "nowhere".into(),
                new_id: 1,
            }],
        );
        store.submit(6, vec![declare("d"), put("d", 1), put("a", 3)]);
        let outcomes = done.outcomes(&[1, 2, 3, 4, 5, 6]);
        let refused: Vec<(u64, String)> = outcomes
            .iter()
            .filter_map(|(t, r)| match r {
                Ok(()) => None,
                Err(StoreError::UnknownQueue { queue }) => Some((*t, queue.clone())),
                Err(e) => panic!("ticket {t}: unexpected {e}"),
            })
            .collect();
        assert_eq!(
            refused,
            vec![(3, "b".into()), (4, "c".into()), (5, "nowhere".into())]
        );
    }
    let recovered = reopen(dir.path());
    let names: Vec<&str> = recovered.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["a", "d"]);
    assert_eq!(contents(&recovered, "a"), Some(vec![(1, 0), (3, 0)]));
    assert_eq!(contents(&recovered, "d"), Some(vec![(1, 0)]));
}

fn open_faulty(dir: &Path) -> (Store, Done, Arc<fault::Faults>) {
    let faults = Arc::new(fault::Faults::default());
    let hooks = Hooks {
        before_commit: None,
        faults: Some(faults.clone()),
    };
    let (tx, done) = Done::new();
    let (store, _) = Store::open_with_hooks(dir, tx, hooks).expect("open");
    (store, done, faults)
}

#[test]
fn a_failed_commit_is_reported_and_later_tickets_commit() {
    let dir = TestDir::new("store-failed-commit");
    {
        let (store, mut done, faults) = open_faulty(dir.path());
        store.submit(1, vec![declare("q"), put("q", 1)]);
        done.ok_upto(1);
        faults
            .failing_syncs
            .store(1, std::sync::atomic::Ordering::SeqCst);
        store.submit(2, vec![put("q", 2)]);
        let failed = done.next();
        assert_eq!(failed.upto, 2);
        assert!(
            matches!(&failed.result, Err(StoreError::Write { detail, .. }) if detail.contains("injected")),
            "{:?}",
            failed.result
        );
        // The thread reopened the file and goes on.
        store.submit(3, vec![put("q", 3)]);
        done.ok_upto(3);
    }
    let ids: Vec<u64> = contents(&reopen(dir.path()), "q")
        .expect("queue")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // Message 2's commit failed at its fsync: it may or may not have reached the file (redb
    // says as much), but it was never reported committed.
    assert!(ids == [1, 3] || ids == [1, 2, 3], "{ids:?}");
}

#[test]
fn a_store_that_cannot_be_reopened_fails_every_later_ticket() {
    let dir = TestDir::new("store-unusable");
    {
        let (store, mut done, faults) = open_faulty(dir.path());
        store.submit(1, vec![declare("q"), put("q", 1)]);
        done.ok_upto(1);
        faults
            .broken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        store.submit(2, vec![put("q", 2)]);
        let failed = done.next();
        assert_eq!(failed.upto, 2);
        assert!(
            matches!(failed.result, Err(StoreError::Write { .. })),
            "{:?}",
            failed.result
        );
        for ticket in 3..=5 {
            store.submit(ticket, vec![put("q", ticket)]);
            let c = done.next();
            assert_eq!(c.upto, ticket);
            assert!(
                matches!(&c.result, Err(StoreError::Unusable { detail, .. }) if detail.contains("injected")),
                "ticket {ticket}: {:?}",
                c.result
            );
        }
        faults
            .broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
    // What was committed before the failure is still there.
    let recovered = reopen(dir.path());
    let ids: Vec<u64> = contents(&recovered, "q")
        .expect("queue")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(ids == [1] || ids == [1, 2], "{ids:?}");
}

/// Writes a store holding a few hundred messages; returns the file's path.
fn filled_store(dir: &Path) -> std::path::PathBuf {
    let (store, _, mut done) = open(dir);
    store.submit(1, vec![declare("q")]);
    for ticket in 2..=40 {
        store.submit(ticket, (0..10).map(|i| put("q", ticket * 10 + i)).collect());
    }
    done.ok_upto(40);
    store.path().to_owned()
}

fn open_err(dir: &Path) -> StoreError {
    let (tx, _rx) = unbounded_channel();
    match Store::open(dir, tx) {
        Ok((_, recovered)) => panic!(
            "a damaged store opened, with {} queues",
            recovered.queues.len()
        ),
        Err(e) => e,
    }
}

#[test]
fn a_truncated_store_is_an_error_at_open() {
    let dir = TestDir::new("store-truncated");
    let path = filled_store(dir.path());
    let len = std::fs::metadata(&path).expect("metadata").len();
    for keep in [len / 2, 4096, 100] {
        let bytes = std::fs::read(&path).expect("read");
        let copy = TestDir::new(&format!("store-truncated-{keep}"));
        std::fs::write(copy.path().join(FILE_NAME), &bytes[..keep as usize]).expect("write");
        let e = open_err(copy.path());
        assert!(
            matches!(e, StoreError::Corrupted { .. }),
            "truncated to {keep} of {len} bytes: {e:?}"
        );
        assert!(e.to_string().contains(FILE_NAME), "names the file: {e}");
    }
}

#[test]
fn a_garbage_file_is_an_error_at_open() {
    let dir = TestDir::new("store-garbage");
    std::fs::write(
        dir.path().join(FILE_NAME),
        testkit::pattern(1, 1, 64 * 1024),
    )
    .expect("write");
    let e = open_err(dir.path());
    assert!(matches!(e, StoreError::Corrupted { .. }), "{e:?}");
    assert!(
        e.to_string().contains("corrupted or not a queue store"),
        "{e}"
    );
    // The file is left as it was, for whoever investigates.
    assert_eq!(
        std::fs::read(dir.path().join(FILE_NAME)).expect("read"),
        testkit::pattern(1, 1, 64 * 1024)
    );
}

#[test]
fn a_damaged_page_is_an_error_at_open() {
    let dir = TestDir::new("store-damaged");
    let path = filled_store(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    // Flip bytes across the data pages (past the header), not the length.
    let len = bytes.len();
    for at in (8192..len).step_by(4096) {
        bytes[at + 100] ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write");
    let e = open_err(dir.path());
    assert!(matches!(e, StoreError::Corrupted { .. }), "{e:?}");
}

#[test]
fn another_database_or_version_is_refused() {
    let dir = TestDir::new("store-foreign");
    let path = dir.path().join(FILE_NAME);
    {
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        {
            let other: TableDefinition<'_, u64, u64> = TableDefinition::new("other");
            txn.open_table(other)
                .expect("table")
                .insert(1, 2)
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    let e = open_err(dir.path());
    assert!(
        matches!(&e, StoreError::Corrupted { detail, .. } if detail.contains("format marker")),
        "{e:?}"
    );

    let dir = TestDir::new("store-version");
    drop(reopen(dir.path()));
    {
        let db = Database::create(dir.path().join(FILE_NAME)).expect("open");
        let txn = db.begin_write().expect("write");
        txn.open_table(META)
            .expect("meta")
            .insert("format", FORMAT + 1)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let e = open_err(dir.path());
    assert!(
        matches!(e, StoreError::Incompatible { found, expected, .. } if found == FORMAT + 1 && expected == FORMAT),
        "{e:?}"
    );
}

#[test]
fn a_store_open_elsewhere_is_locked() {
    let dir = TestDir::new("store-locked");
    let (_store, _, _done) = open(dir.path());
    let e = open_err(dir.path());
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
}

// ===== a writer SIGKILLed mid-stream =====

/// This test's path in the unit-test binary, for re-running it as a child.
const CHILD: &str = "engine::queue::store::tests::child_entry";
const JOBS: &str = "jobs";
/// Ticket `t` acknowledges the odd message of ticket `t - ACK_LAG`.
const ACK_LAG: u64 = 5;

/// Ticket `t` of the crash workload: puts `2t` and `2t + 1`, acks `2(t - ACK_LAG) + 1`;
/// the first one declares the queue.
fn workload(t: u64) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    if t == 1 {
        ops.push(declare(JOBS));
    }
    ops.push(put(JOBS, 2 * t));
    ops.push(put(JOBS, 2 * t + 1));
    if t > ACK_LAG {
        ops.push(ack(JOBS, 2 * (t - ACK_LAG) + 1));
    }
    ops
}

/// Checks that the store holds exactly tickets `1..=T` of [`workload`], each whole, for
/// some `T`; returns `T`.
fn check_workload(recovered: &Recovered) -> u64 {
    let Some(q) = recovered.queues.iter().find(|q| q.name == JOBS) else {
        assert!(recovered.queues.is_empty(), "only the jobs queue exists");
        return 0;
    };
    assert_eq!(recovered.queues.len(), 1);
    let last = q
        .messages
        .iter()
        .map(|(id, _, _)| id / 2)
        .max()
        .unwrap_or(0);
    let mut want = Vec::new();
    for t in 1..=last {
        want.push(2 * t);
        if t + ACK_LAG > last {
            want.push(2 * t + 1);
        }
    }
    let ids: Vec<u64> = q.messages.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, want, "tickets 1..={last} applied whole, in order");
    for (id, bytes, count) in &q.messages {
        assert_eq!(*bytes, payload(*id), "payload of {id}");
        assert_eq!(*count, 0);
    }
    last
}

#[test]
fn child_entry() {
    let Some(spec) = testkit::child_spec() else {
        return;
    };
    testkit::run_child(spec, |spec, commands| async move {
        if spec.role != "writer" {
            return Err(format!("unknown role {:?}", spec.role));
        }
        let dir = spec.args.first().ok_or("no directory")?;
        let (tx, mut done) = unbounded_channel();
        let (store, recovered) = Store::open(Path::new(dir), tx).map_err(testkit::ctx("open"))?;
        let last = check_workload(&recovered);
        testkit::say(format!("recovered {last}"));
        let mut next = last + 1;
        let mut reported = last;
        // Runs until the parent kills it; a bound keeps a forgotten child from running on.
        while reported < last + 100_000 {
            while next <= reported + 32 {
                store.submit(next, workload(next));
                next += 1;
            }
            let c = done.recv().await.ok_or("the store's channel closed")?;
            c.result
                .map_err(testkit::ctx(format!("tickets up to {}", c.upto)))?;
            reported = c.upto;
            testkit::say(format!("committed {reported}"));
        }
        drop(store);
        commands.done("finished").await
    });
}

#[tokio::test(flavor = "current_thread")]
async fn a_sigkilled_writer_keeps_every_committed_ticket_whole() {
    let dir = TestDir::new("store-sigkill");
    let arg = dir.path().to_str().expect("utf-8 temp dir").to_owned();
    let mut before = 0;
    for cycle in 0..4u64 {
        let mut child = testkit::spawn_child_test(CHILD, "writer", std::slice::from_ref(&arg), &[]);
        let recovered: u64 = child.expect("recovered").await.parse().expect("number");
        assert_eq!(recovered, before, "the child recovered what the parent saw");
        // Kill it at a different depth each cycle, while it keeps 32 tickets in flight.
        let target = before + 20 + 17 * cycle;
        let mut seen = before;
        while seen < target {
            seen = child.expect("committed").await.parse().expect("number");
        }
        child.sigkill();
        child.reap_killed().await;
        let last = check_workload(&reopen(dir.path()));
        assert!(
            last >= seen,
            "cycle {cycle}: ticket {seen} was reported committed, the store ends at {last}"
        );
        before = last;
    }
}
