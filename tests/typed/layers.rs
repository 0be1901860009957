//! The client under `tower::ServiceBuilder` layers: timeout, concurrency limit, load shed,
//! retry, and all of them stacked.

use std::future::{Ready, ready};
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use shmlink::CallError;
use tower::retry::Policy;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::harness::{World, ops_client, within};
use crate::messages::*;

/// Retries a call the handler failed (`CallError::Remote`), at most this many more times.
#[derive(Clone, Debug)]
struct Retries(u32);

impl Retries {
    fn again(&mut self, error: Option<&CallError>) -> Option<Ready<()>> {
        match error {
            Some(CallError::Remote(_)) if self.0 > 0 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }
}

impl<Req: Clone, Res> Policy<Req, Res, CallError> for Retries {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, CallError>) -> Option<Ready<()>> {
        self.again(result.as_ref().err())
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The same under layers that box errors (timeout).
impl<Req: Clone, Res> Policy<Req, Res, BoxError> for Retries {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Ready<()>> {
        self.again(
            result
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<CallError>()),
        )
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_for_a_handler_that_never_answers_and_the_client_goes_on() {
    let world = World::start("layer-timeout", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let mut timed = ServiceBuilder::new()
        .timeout(Duration::from_millis(200))
        .service(client.clone());
    for id in 0..3 {
        let error = within(
            "a timed-out call",
            timed.ready().await.expect("ready").call(Op::Hang { id }),
        )
        .await
        .expect_err("a handler that never answers cannot succeed");
        assert!(
            error.is::<tower::timeout::error::Elapsed>(),
            "expected Elapsed, got {error}"
        );
    }

    // The client and its session are unaffected: plain calls, and calls under a timeout long
    // enough never to fire.
    let mut patient = ServiceBuilder::new()
        .timeout(Duration::from_secs(60))
        .service(client.clone());
    for id in 0..50 {
        let reply = within(
            "a call after the timeouts",
            patient.ready().await.expect("ready").call(echo(id)),
        )
        .await;
        assert_eq!(reply.expect("answered"), echo_reply(id));
    }
    let replies = within(
        "concurrent calls",
        join_all((50..150).map(|id| client.clone().oneshot(echo(id)))),
    )
    .await;
    for (id, reply) in (50..).zip(replies) {
        assert_eq!(reply, Ok(echo_reply(id)));
    }

    drop((timed, patient, client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_bounds_calls_in_flight() {
    let mut world = World::start("layer-limit", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let limited = ServiceBuilder::new()
        .concurrency_limit(3)
        .service(client.clone());
    let calls: Vec<_> = (0..10)
        .map(|id| tokio::spawn(limited.clone().oneshot(Op::Gate { id, gate: 0 })))
        .collect();
    // Three handlers run (the server would take 64)...
    world.child.expect_line("entered 0 3").await;
    // ...and the limit holds the rest back: no fourth slot while those three are blocked.
    let mut probe = limited.clone();
    assert!(
        probe.ready().now_or_never().is_none(),
        "a fourth call was admitted past concurrency_limit(3)"
    );
    world.child.send("release 0").await;
    for (id, call) in (0..).zip(calls) {
        let reply = within("a limited call", call).await.expect("task");
        assert_eq!(reply, Ok(OpReply::Value(id * 7)));
    }
    let max = within(
        "max active",
        client.clone().oneshot(Op::MaxActive { gate: 0 }),
    )
    .await;
    assert_eq!(
        max,
        Ok(OpReply::Value(3)),
        "at most three handlers ran at once"
    );

    drop((probe, limited, client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_refuses_at_once_when_the_limit_is_reached() {
    let mut world = World::start("layer-shed", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let shed = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(client.clone());
    let first = tokio::spawn(shed.clone().oneshot(Op::Gate { id: 1, gate: 1 }));
    world.child.expect_line("entered 1 1").await;
    let error = within("a shed call", shed.clone().oneshot(echo(2)))
        .await
        .expect_err("the only slot is taken");
    assert!(
        error.is::<tower::load_shed::error::Overloaded>(),
        "expected Overloaded, got {error}"
    );

    world.child.send("release 1").await;
    let reply = within("the first call", first).await.expect("task");
    assert_eq!(reply.map_err(|e| e.to_string()), Ok(OpReply::Value(7)));
    let reply = within("a call after the shed", shed.clone().oneshot(echo(3))).await;
    assert_eq!(reply.map_err(|e| e.to_string()), Ok(echo_reply(3)));

    drop((shed, client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_repeats_a_call_the_handler_failed() {
    let world = World::start("layer-retry", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    let retrying = ServiceBuilder::new()
        .retry(Retries(5))
        .service(client.clone());
    let reply = within(
        "a call that fails three times",
        retrying.clone().oneshot(Op::Flaky {
            key: 1,
            failures: 3,
        }),
    )
    .await;
    assert_eq!(
        reply,
        Ok(OpReply::Attempts(4)),
        "three failures, then the fourth attempt answers"
    );
    let reply = within(
        "a call that always fails",
        retrying.clone().oneshot(Op::Flaky {
            key: 2,
            failures: 100,
        }),
    )
    .await;
    assert_eq!(
        reply,
        Err(CallError::Remote("flaky 2: attempt 6 failed".into())),
        "one attempt and five retries, then the last error"
    );
    // A panic is not retried by this policy.
    let reply = within(
        "a panicking call",
        retrying.clone().oneshot(Op::Panic {
            id: 3,
            reason: "once".into(),
        }),
    )
    .await;
    assert_eq!(
        reply,
        Err(CallError::Panicked("op 3 panicked: once".into()))
    );

    drop((retrying, client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_stack_retry_timeout_limit_and_shed() {
    let world = World::start("layer-stack", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    // Retry outside, then a timeout per attempt that never fires, then a limit of 8 in flight.
    let stack = ServiceBuilder::new()
        .retry(Retries(2))
        .timeout(Duration::from_secs(60))
        .concurrency_limit(8)
        .service(client.clone());
    let calls = (0..100).map(|id| {
        let op = if id % 4 == 0 {
            Op::Flaky {
                key: id,
                failures: 2,
            }
        } else {
            echo(id)
        };
        stack.clone().oneshot(op)
    });
    for (id, reply) in (0..).zip(within("100 calls through the stack", join_all(calls)).await) {
        let reply = reply.map_err(|e| e.to_string());
        if id % 4 == 0 {
            assert_eq!(reply, Ok(OpReply::Attempts(3)), "call {id}: two retries");
        } else {
            assert_eq!(reply, Ok(echo_reply(id)), "call {id}");
        }
    }

    // Load shedding in front of the same stack: nothing is shed while there is room.
    let mut shedding = ServiceBuilder::new().load_shed().service(stack.clone());
    for id in 100..110 {
        let reply = within(
            "a call through load_shed",
            shedding.ready().await.expect("ready").call(echo(id)),
        )
        .await;
        assert_eq!(reply.map_err(|e| e.to_string()), Ok(echo_reply(id)));
    }

    drop((shedding, stack, client, node));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_composes_and_every_call_is_answered() {
    let world = World::start("layer-rate", 64, "ops", &["64"], 1).await;
    let (node, client) = ops_client(&world).await;

    // 5 calls per 5 ms: 40 calls need several windows; the test asserts only the answers.
    let mut limited = ServiceBuilder::new()
        .rate_limit(5, Duration::from_millis(5))
        .service(client.clone());
    for id in 0..40 {
        let reply = within(
            "a rate-limited call",
            limited.ready().await.expect("ready").call(echo(id)),
        )
        .await;
        assert_eq!(reply, Ok(echo_reply(id)));
    }

    drop((limited, client, node));
    world.finish().await;
}
