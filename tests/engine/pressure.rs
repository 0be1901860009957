//! No trap on unflushed data: loans a sink was fed but not yet told to flush hold transmit-
//! arena memory. A task that feeds one session and then waits for arena room on another,
//! without flushing the first, would wait forever on its own memory; instead, an allocation
//! that finds the arena full pushes every other sink's fed batch to the engine, whose
//! `TX_DONE`s give the memory back.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, Session};

use crate::support::{self, TestDir, small_block, within};

/// The transmit arena of the tests' blocks ([`small_block`]).
const ARENA: usize = 4 << 20;

/// Reads the next payload of `session` and checks it is `len` bytes of `tag`.
async fn expect_next(session: &mut Session, what: &str, tag: u8, len: usize) {
    let m = within(what, session.next())
        .await
        .expect("the session ended")
        .expect("a payload");
    assert!(
        m.len() == len && m.iter().all(|&b| b == tag),
        "{what}: expected {len} bytes of {tag}, got {} bytes starting {:?}",
        m.len(),
        m.first()
    );
}

/// Opens `n` sessions from `client` to `service` and accepts each on `listener`.
async fn sessions(
    client: &Node,
    listener: &mut shmlink::Listener,
    service: &str,
    n: usize,
) -> Vec<(Session, Session)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let opened = within("open", support::open(client, service))
            .await
            .expect("open");
        let accepted = within("accept", listener.accept()).await.expect("accept");
        out.push((opened, accepted));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fed_loan_does_not_starve_another_sink_of_the_same_task() {
    assert_eq!(small_block().tx_arena, ARENA as u64);
    let dir = TestDir::new("pressure-loan");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        mut listener,
        client,
        opened: mut a,
        accepted: mut a_end,
    } = support::pair(&engine, "pressure-loan").await;
    let mut pairs = sessions(&client, &mut listener, "pressure-loan", 1).await;
    let (mut b, mut b_end) = pairs.pop().expect("one session");

    // Three quarters of the arena, written in place and fed to A, not flushed: its buddy
    // class is the whole arena.
    let big = 3 * ARENA / 4;
    let mut loan = within("a loan on A", a.loan(big)).await.expect("loan");
    loan.fill(1);
    within("feed A", a.feed(loan)).await.expect("feed");

    // B needs a quarter of the arena: only A's loan, once the engine is done with it, leaves
    // room. The same task never flushes A.
    let small = ARENA / 4;
    within(
        "a send on B while A holds its fed loan",
        b.send(Bytes::from(vec![2u8; small])),
    )
    .await
    .expect("send on B");

    // Both arrive whole.
    expect_next(&mut a_end, "A's payload", 1, big).await;
    expect_next(&mut b_end, "B's payload", 2, small).await;
    assert_eq!(engine.stats().violations, 0);
    drop((a, a_end, b, b_end, listener, server, client));
    support::all_gone(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fed_to_many_sinks_do_not_starve_a_large_send() {
    /// Sessions fed and left unflushed.
    const FED: usize = 56;
    /// Messages fed to each; the last stays unencoded until the next flush, the rest sit in
    /// the sink's batch (below its 32 descriptors and 64 KiB).
    const MESSAGES: usize = 32;
    /// Just over 1 KiB: each message takes a 2 KiB block of the arena.
    const LEN: usize = 1025;
    // The batches hold 56 * 31 * 2 KiB = 3.4 MiB of the 4 MiB arena: a quarter is not left.
    const _: () = assert!(FED * (MESSAGES - 1) * 2048 > 3 * ARENA / 4);

    let dir = TestDir::new("pressure-batches");
    let engine = support::engine(&dir);
    let support::Pair {
        server,
        mut listener,
        client,
        opened: mut b,
        accepted: mut b_end,
    } = support::pair(&engine, "pressure-batches").await;
    let mut fed = sessions(&client, &mut listener, "pressure-batches", FED).await;

    for (i, (sink, _)) in fed.iter_mut().enumerate() {
        for _ in 0..MESSAGES {
            within("feed", sink.feed(Bytes::from(vec![i as u8; LEN])))
                .await
                .expect("feed");
        }
    }
    // None of it was flushed; B's quarter of the arena only comes back from the batches.
    let large = ARENA / 4;
    within(
        "a large send while many sinks hold fed batches",
        b.send(Bytes::from(vec![0xB0u8; large])),
    )
    .await
    .expect("send on B");

    // Everything arrives, in order: what the batches held, B's payload, and each sink's last
    // message once it is flushed.
    for (i, (_, end)) in fed.iter_mut().enumerate() {
        for _ in 0..MESSAGES - 1 {
            expect_next(end, "a batched message", i as u8, LEN).await;
        }
    }
    expect_next(&mut b_end, "B's payload", 0xB0, large).await;
    for (i, (sink, end)) in fed.iter_mut().enumerate() {
        within("flush", sink.flush()).await.expect("flush");
        expect_next(end, "the last fed message", i as u8, LEN).await;
    }
    assert_eq!(engine.stats().violations, 0);
    drop((fed, b, b_end, listener, server, client));
    support::all_gone(engine).await;
}
