//! Typed streams across processes: every kind of serde value, a message of several MiB, and a
//! generic message type, sent to a child that checks each against its own copy of the sample
//! and echoes it back, where it is compared again.

use std::fmt::Debug;

use futures::{SinkExt, StreamExt};
use shmlink::{Message, Node};

use crate::harness::{World, stats_until, within};
use crate::messages::*;

/// Sends `count` samples on a session of `T` to `service`, while reading the echoes and
/// comparing each with `sample(i)` through `check`.
async fn round_trip<T>(
    node: &Node,
    service: &str,
    count: u32,
    sample: fn(u32) -> T,
    check: fn(u32, T, T),
) where
    T: Message + PartialEq + Debug,
{
    let session = within("open", node.open::<T>(service)).await.expect("open");
    let (mut tx, mut rx) = session.split();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            tx.send(sample(i)).await.expect("send");
        }
        tx.close().await.expect("half-close");
    });
    for i in 0..count {
        let got = within("an echo", rx.next())
            .await
            .unwrap_or_else(|| panic!("{service}: stream ended before echo {i}"))
            .unwrap_or_else(|e| panic!("{service}: echo {i}: {e}"));
        check(i, got, sample(i));
    }
    assert!(
        within("the end of the echoes", rx.next()).await.is_none(),
        "{service}: more echoes than messages sent"
    );
    within("the sender", sender).await.expect("sender task");
}

fn check_record(i: u32, mut got: Record, mut want: Record) {
    assert_eq!(got.seq, i, "records come back in order");
    // Compare the blob on its own: a failing `assert_eq!` would print megabytes.
    let (got_blob, want_blob) = (
        std::mem::take(&mut got.blob),
        std::mem::take(&mut want.blob),
    );
    assert_eq!(got_blob.len(), want_blob.len(), "record {i}: blob length");
    if let Some(at) = got_blob.iter().zip(&want_blob).position(|(a, b)| a != b) {
        panic!(
            "record {i}: blob byte {at} is {:#04x}, expected {:#04x}",
            got_blob[at], want_blob[at]
        );
    }
    assert_eq!(got, want, "record {i}");
}

fn check_equal<T: PartialEq + Debug>(i: u32, got: T, want: T) {
    assert_eq!(got, want, "message {i}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_streams_round_trip_across_processes() {
    let world = World::start("stream-round-trip", 64, "echo", &[], 2).await;
    let node = world.node("parent").await;
    assert_eq!(
        record(BIG_RECORD).blob.len(),
        BIG_BLOB,
        "one record is several MiB"
    );

    // Both sessions at once: the big record and the generic messages share the node's arenas.
    tokio::join!(
        round_trip(&node, "records", RECORDS, record, check_record),
        round_trip(&node, "tagged", 200, tagged, check_equal),
    );

    drop(node);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_typed_message_fails_alone_and_gives_its_credit_back() {
    // Four credits: if a refused message kept its credit, the fifth refusal would block.
    let world = World::start("stream-oversized", 4, "echo", &[], 2).await;
    let node = world.node("parent").await;
    let mut session = within("open", node.open::<Record>("records"))
        .await
        .expect("open");
    let max = session.max_payload();

    // (A long string rather than a long `Vec<u8>`: bincode measures it at once.)
    let mut huge = record(0);
    huge.title = "t".repeat(usize::try_from(max).expect("fits"));
    for attempt in 0..10 {
        let error = within("an oversized send", session.send(huge.clone()))
            .await
            .expect_err("a message larger than the arenas cannot be sent");
        assert!(
            matches!(error, shmlink::SessionError::TooLarge { len, max: limit } if len > max && limit == max),
            "attempt {attempt}: {error:?}"
        );
    }
    for i in 0..RECORDS {
        within("send", session.send(record(i)))
            .await
            .expect("send after the refusals");
        let got = within("echo", session.next())
            .await
            .expect("an echo")
            .expect("decoded");
        check_record(i, got, record(i));
    }

    drop((session, node));
    world.finish().await;
}

/// Typed frames: many small typed messages fed without a flush are encoded in place as the
/// records of frames (`records` and `tagged` at once, one flush in the middle splitting a
/// frame), decoded one by one in the child, which echoes each, and compared again here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_frames_cross_processes_record_by_record() {
    let world = World::start("stream-frames", 256, "echo", &[], 2).await;
    let node = world.node("parent").await;
    let count = 2000u32;

    let session = within("open", node.open::<Tagged<Shape>>("tagged"))
        .await
        .expect("open");
    let (mut tx, mut rx) = session.split();
    assert!(tx.frame_size() > 0, "frames are on by default");
    let sender = tokio::spawn(async move {
        for i in 0..count {
            tx.feed(tagged(i)).await.expect("feed");
            if i == count / 2 {
                // A frame split by a flush: what was fed goes now, the rest in new frames.
                tx.flush().await.expect("flush");
            }
        }
        tx.close().await.expect("half-close");
    });
    for i in 0..count {
        let got = within("an echo", rx.next())
            .await
            .unwrap_or_else(|| panic!("stream ended before echo {i}"))
            .unwrap_or_else(|e| panic!("echo {i}: {e}"));
        check_equal(i, got, tagged(i));
    }
    assert!(within("the end", rx.next()).await.is_none());
    within("the sender", sender).await.expect("sender task");

    // Each message crossed twice (there and back); the way there went in frames of many. The
    // counts are published at the end of the engine's pass, which may follow the last delivery.
    let stats = stats_until(&world.engine, "every record counted", |s| {
        s.messages >= 2 * u64::from(count)
    })
    .await;
    assert!(
        stats.frames > 0 && stats.frames < u64::from(count) / 4,
        "{stats:?}"
    );
    assert_eq!(stats.violations, 0, "{stats:?}");
    drop((rx, node));
    world.finish().await;
}
