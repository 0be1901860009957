//! A message that does not decode is an error on that message, never a panic, and the session
//! goes on. The two ends agree on name and fingerprint (the receiver's `Strict` is written by
//! hand with `Wire`'s), but `Strict` refuses text that is not UTF-8 and flags other than 0/1.

use futures::{SinkExt, StreamExt};
use shmlink::{CallError, CodecError, DecodeError, SessionError};
use tower::ServiceExt;

use crate::harness::{World, within};
use crate::messages::*;

fn strict_of(wire: &Wire) -> Strict {
    Strict {
        id: wire.id,
        text: String::from_utf8(wire.text.clone()).expect("valid sample"),
        flag: wire.flag == 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_from_a_child_are_errors_and_the_stream_goes_on() {
    let world = World::start("decode-stream-in", 64, "wire", &[], 4).await;
    let node = world.node("parent").await;
    let samples = wire_messages();

    // The child sends the `Wire` samples; this end reads them as `Strict`.
    let mut session = within("open", node.open::<Strict>("wire"))
        .await
        .expect("open");
    let mut items = Vec::new();
    while let Some(item) = within("the next item", session.next()).await {
        items.push(item);
    }
    assert_eq!(
        items.len(),
        4,
        "one item per message, then the end: {items:?}"
    );
    assert_eq!(items[0], Ok(strict_of(&samples[0])));
    assert!(
        matches!(
            &items[1],
            Err(SessionError::Codec(CodecError::Decode {
                type_name: "Wire",
                codec: "bincode2",
                source: DecodeError::Invalid { .. },
            }))
        ),
        "not UTF-8: {:?}",
        items[1]
    );
    assert!(
        matches!(
            &items[2],
            Err(SessionError::Codec(CodecError::Decode {
                type_name: "Wire",
                source: DecodeError::Invalid { .. },
                ..
            }))
        ),
        "flag 7: {:?}",
        items[2]
    );
    assert_eq!(
        items[3],
        Ok(strict_of(&samples[3])),
        "the message after the bad ones"
    );

    drop((session, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_to_a_child_are_errors_and_the_stream_goes_on() {
    let world = World::start("decode-stream-out", 64, "wire", &[], 4).await;
    let node = world.node("parent").await;
    let samples = wire_messages();

    // This end sends `Wire`; the child reads `Strict` and echoes what decodes, or the error.
    let mut session = within("open", node.open::<Wire>("strict"))
        .await
        .expect("open");
    for message in samples.iter().chain(&samples) {
        within("send", session.send(message.clone()))
            .await
            .expect("send");
    }
    within("half-close", session.close()).await.expect("close");
    let mut answers = Vec::new();
    while let Some(item) = within("the next answer", session.next()).await {
        answers.push(item.expect("the child's answers decode as Wire"));
    }
    assert_eq!(answers.len(), 8, "{answers:?}");
    for (i, answer) in answers.iter().enumerate() {
        match i % 4 {
            0 | 3 => assert_eq!(answer, &samples[i % 4], "answer {i}"),
            _ => {
                assert_eq!(
                    answer.id, DECODE_ERROR_ID,
                    "answer {i} reports an error: {answer:?}"
                );
                let text = String::from_utf8_lossy(&answer.text);
                assert!(!text.is_empty(), "answer {i}: the error has a message");
            }
        }
    }

    drop((session, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_and_replies_fail_that_call_only() {
    let world = World::start("decode-rpc", 64, "wire", &[], 4).await;
    let node = world.node("parent").await;
    let samples = wire_messages();

    // Requests: the server reads `Strict`; a bad one is answered with an error.
    let client = within("client", node.client::<Wire, Wire>("strict-rpc"))
        .await
        .expect("client");
    for round in 0..2 {
        for (i, sample) in samples.iter().enumerate() {
            let reply = within("a call", client.clone().oneshot(sample.clone())).await;
            match i {
                0 | 3 => assert_eq!(reply.as_ref(), Ok(sample), "round {round}, request {i}"),
                _ => match &reply {
                    Err(CallError::Remote(message)) => {
                        assert!(
                            message.contains("decode"),
                            "round {round}, request {i}: {message:?}"
                        );
                    }
                    other => panic!(
                        "round {round}, request {i}: expected a remote decode error, got {other:?}"
                    ),
                },
            }
        }
    }

    // Replies: the server answers flag 0 with text that is not UTF-8; this end reads `Strict`.
    let client = within("client", node.client::<Strict, Strict>("wire-rpc"))
        .await
        .expect("client");
    for id in 0..6 {
        let request = Strict {
            id,
            text: format!("request {id} ✓"),
            flag: id % 2 == 1,
        };
        let reply = within("a call", client.clone().oneshot(request.clone())).await;
        if request.flag {
            assert_eq!(reply, Ok(request), "a reply that decodes");
        } else {
            assert!(
                matches!(
                    &reply,
                    Err(CallError::Codec(CodecError::Decode {
                        source: DecodeError::Invalid { .. },
                        ..
                    }))
                ),
                "call {id}: expected a codec error, got {reply:?}"
            );
        }
    }

    drop((client, node));
    world.finish().await;
}
