//! Request/response against a server in a child process: many requests in flight on one
//! client, handler errors and handler panics.

use futures::StreamExt;
use futures::future::join_all;
use shmlink::CallError;
use tower::ServiceExt;

use crate::harness::{World, ops_client, within};
use crate::messages::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_one_client_each_get_their_own_reply() {
    // Few credits: the thousand requests and replies also go through flow control.
    let world = World::start("rpc-thousand", 16, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let calls = (0..1000).map(|id| client.clone().oneshot(echo(id)));
    let replies = within("1000 concurrent replies", join_all(calls)).await;
    assert_eq!(replies.len(), 1000);
    for (id, reply) in (0..).zip(replies) {
        assert_eq!(reply, Ok(echo_reply(id)), "reply to request {id}");
    }

    // The same through `call_all` (ready/call driven by tower, answers in request order).
    let requests = futures::stream::iter((1000..1300).map(echo));
    let replies: Vec<_> = within("call_all", client.clone().call_all(requests).collect()).await;
    assert_eq!(replies.len(), 300);
    for (id, reply) in (1000..).zip(replies) {
        assert_eq!(reply, Ok(echo_reply(id)), "call_all reply to request {id}");
    }

    drop((client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_comes_back_as_remote_with_its_message() {
    let world = World::start("rpc-remote-error", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let reason = "no such sku «X-1» ✗";
    let reply = within(
        "a failing call",
        client.clone().oneshot(Op::Fail {
            id: 1,
            reason: reason.into(),
        }),
    )
    .await;
    assert_eq!(
        reply,
        Err(CallError::Remote(format!("op 1 refused: {reason}")))
    );

    // The client goes on: one call, then failures and successes mixed, in flight together.
    assert_eq!(
        within("a call after the error", client.clone().oneshot(echo(2))).await,
        Ok(echo_reply(2))
    );
    let calls = (0..200).map(|id| {
        let op = if id % 3 == 0 {
            Op::Fail {
                id,
                reason: format!("reason {id}"),
            }
        } else {
            echo(id)
        };
        client.clone().oneshot(op)
    });
    for (id, reply) in (0..).zip(within("mixed calls", join_all(calls)).await) {
        if id % 3 == 0 {
            assert_eq!(
                reply,
                Err(CallError::Remote(format!("op {id} refused: reason {id}")))
            );
        } else {
            assert_eq!(reply, Ok(echo_reply(id)));
        }
    }

    drop((client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_comes_back_as_panicked_and_the_server_goes_on() {
    // Four at once: a panicking handler must give its slot back, or the server would stall
    // after four panics.
    let world = World::start("rpc-panic", 64, "ops", &["4"], 1).await;
    let (node, client) = ops_client(&world).await;

    let reason = "boom ✗ «7»";
    let reply = within(
        "a panicking call",
        client.clone().oneshot(Op::Panic {
            id: 7,
            reason: reason.into(),
        }),
    )
    .await;
    assert_eq!(
        reply,
        Err(CallError::Panicked(format!("op 7 panicked: {reason}")))
    );
    assert_eq!(
        within("a call after the panic", client.clone().oneshot(echo(8))).await,
        Ok(echo_reply(8))
    );

    let calls = (0..60).map(|id| {
        let op = if id % 2 == 0 {
            Op::Panic {
                id,
                reason: format!("p{id}"),
            }
        } else {
            echo(id)
        };
        client.clone().oneshot(op)
    });
    for (id, reply) in (0..).zip(within("panics and calls mixed", join_all(calls)).await) {
        if id % 2 == 0 {
            assert_eq!(
                reply,
                Err(CallError::Panicked(format!("op {id} panicked: p{id}")))
            );
        } else {
            assert_eq!(reply, Ok(echo_reply(id)));
        }
    }
    assert_eq!(
        within("a call after 31 panics", client.clone().oneshot(echo(99))).await,
        Ok(echo_reply(99))
    );

    drop((client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_replies_fail_that_call_only() {
    let world = World::start("rpc-oversized", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;
    // Past the arenas, payloads travel in hand-off segments, up to the session's maximum.
    let max = shmlink::MAX_SESSION_PAYLOAD;
    let too_long = usize::try_from(max).expect("fits") + 1;

    // A request that can never fit fails at once with its size and the limit: the session's
    // maximum payload less the 9-byte envelope header.
    let body_max = max - 9;
    let reply = within(
        "an oversized request",
        client.clone().oneshot(Op::Echo {
            id: 1,
            text: String::from_utf8(vec![0; too_long]).expect("NUL is UTF-8"),
        }),
    )
    .await;
    match reply {
        Err(CallError::TooLarge { len, max: limit }) => {
            assert!(
                len > max,
                "reported length {len} is not above the maximum {max}"
            );
            assert_eq!(limit, body_max);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        within("a call after it", client.clone().oneshot(echo(2))).await,
        Ok(echo_reply(2))
    );

    // A reply that can never fit (the server, another process, cannot send it) comes back
    // with its size and the limit.
    let reply = within(
        "an oversized reply",
        client.clone().oneshot(Op::Grow {
            id: 3,
            len: max + 1,
        }),
    )
    .await;
    match reply {
        Err(CallError::ReplyTooLarge { len, max: limit }) => {
            assert!(
                len > body_max,
                "reported length {len} is not above {body_max}"
            );
            assert_eq!(limit, body_max);
        }
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }
    // A large reply that fits is fine, and so is the session after it.
    let reply = within(
        "a large reply",
        client.clone().oneshot(Op::Grow {
            id: 4,
            len: 3 << 20,
        }),
    )
    .await;
    assert!(
        matches!(reply, Ok(OpReply::Echoed { id: 4, ref reversed, sum }) if reversed.len() == 3 << 20 && sum == 3 << 20)
    );
    // So is one past the arenas (a hand-off segment), and a request as large.
    let past = (node.max_payload() as usize) * 2 + 5;
    let reply = within(
        "a reply past the arenas",
        client.clone().oneshot(Op::Grow {
            id: 6,
            len: past as u64,
        }),
    )
    .await;
    assert!(
        matches!(reply, Ok(OpReply::Echoed { id: 6, ref reversed, sum }) if reversed.len() == past && sum == past as u64),
        "a reply of {past} bytes"
    );
    assert_eq!(
        within("a call after them", client.clone().oneshot(echo(5))).await,
        Ok(echo_reply(5))
    );

    drop((client, node));
    world.finish().await;
}
