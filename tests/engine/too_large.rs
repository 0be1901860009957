//! Errors say the truth (issue 9, item 3): a payload that can never fit fails at once with
//! `TooLarge { len, max }` carrying the limit that applies (the session's maximum payload, less
//! the 9-byte envelope header for requests and replies), raw or typed, session or
//! request/response; and the session goes on. Before the fix, a typed message or request
//! over 256 MiB failed with `Codec("… more than the limit of 268435456")`, and a reply too
//! large came back as a `Remote` string.
//!
//! Since hand-off segments (issue 15) a session carries payloads past its arenas, up to
//! `MAX_SESSION_PAYLOAD` (4 GiB - 1): only past that is a payload too large. Those are made
//! of zeroes, which the kernel maps lazily, so a 4 GiB payload that is refused costs nothing.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use shmlink::{CallError, Message, Node, SessionError};
use tower::ServiceExt;

use crate::support::{self, TestDir, within};

/// The largest payload a session carries.
const MAX: u64 = shmlink::MAX_SESSION_PAYLOAD;
/// Far over it.
const HUGE: usize = 5 << 30;
/// The envelope header of a request or reply.
const HEADER: u64 = 9;

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Text(String);

#[derive(Message, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Len(u64);

impl Text {
    fn of_len(n: usize) -> Self {
        Self("x".repeat(n))
    }

    /// `n` zero bytes: never touched unless sent.
    fn zeros(n: usize) -> Self {
        Self(String::from_utf8(vec![0; n]).expect("NUL is UTF-8"))
    }
}

/// bincode's encoding of a `Text` of `n` bytes: a varint length, then the bytes.
fn encoded_len(n: usize) -> u64 {
    let prefix = match n {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    };
    (n + prefix) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_typed_sends_that_can_never_fit_are_too_large_with_the_session_limit() {
    let dir = TestDir::new("too-large-send");
    let engine = support::engine(&dir);
    let pair = support::pair(&engine, "big").await;
    let arenas = pair.client.max_payload();
    assert_eq!(arenas, 4 << 20, "the test blocks' arenas");
    let max = MAX;
    let (mut opened, mut accepted) = (pair.opened, pair.accepted);

    // Raw: one byte over the maximum, and far over.
    for len in [max + 1, HUGE as u64] {
        let payload = Bytes::from(vec![0u8; len as usize]);
        assert_eq!(
            within("send", opened.send(payload)).await,
            Err(SessionError::TooLarge { len, max }),
        );
    }
    // The session goes on: a payload past the arenas fits.
    let past = Bytes::from(vec![1u8; 3 * arenas as usize]);
    within("send", opened.send(past.clone()))
        .await
        .expect("a payload past the arenas fits");
    assert_eq!(
        within("recv", accepted.next()).await,
        Some(Ok(past)),
        "it arrives"
    );

    // Typed: over the session's maximum, and over the codec's own limit of 256 MiB.
    let mut typed_listener = within("listen", pair.server.listen::<Text>("typed"))
        .await
        .expect("listen typed");
    let mut typed = within("open", pair.client.open::<Text>("typed"))
        .await
        .expect("open typed");
    let mut typed_accepted = within("accept", typed_listener.accept())
        .await
        .expect("accept");
    for n in [max as usize + 1, HUGE] {
        assert_eq!(
            within("typed send", typed.send(Text::zeros(n))).await,
            Err(SessionError::TooLarge {
                len: encoded_len(n),
                max
            }),
            "a Text of {n} bytes"
        );
    }
    within("typed send", typed.send(Text::of_len(10)))
        .await
        .expect("a small message after the refused ones");
    assert_eq!(
        within("typed recv", typed_accepted.next()).await,
        Some(Ok(Text::of_len(10)))
    );

    drop((opened, accepted, typed, typed_accepted, typed_listener));
    drop((pair.listener, pair.server, pair.client));
    support::all_gone(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_replies_that_can_never_fit_are_too_large_with_the_limit() {
    let dir = TestDir::new("too-large-rpc");
    let engine = support::engine(&dir);
    let socket = dir.socket();
    let server_node = within("connect", Node::connect(&socket, "server"))
        .await
        .expect("connect");
    let client_node = within("connect", Node::connect(&socket, "client"))
        .await
        .expect("connect");
    let max = MAX - HEADER;

    // The handler answers a request `n` with a `Text` of n bytes.
    let handler =
        tower::service_fn(|Len(n)| async move { Ok::<_, String>(Text::zeros(n as usize)) });
    let _numbers = within("serve", server_node.serve("numbers", handler))
        .await
        .expect("serve");
    let echo = tower::service_fn(|t: Text| async move { Ok::<_, String>(Len(t.0.len() as u64)) });
    let _lengths = within("serve", server_node.serve("lengths", echo))
        .await
        .expect("serve");

    // Requests: over the session's maximum, and over the codec's limit.
    let lengths = within("client", client_node.client::<Text, Len>("lengths"))
        .await
        .expect("client");
    for n in [max as usize + 1, HUGE] {
        assert_eq!(
            within("call", lengths.clone().oneshot(Text::zeros(n))).await,
            Err(CallError::TooLarge {
                len: encoded_len(n),
                max
            }),
            "a request of {n} bytes"
        );
    }
    assert_eq!(
        within("call", lengths.clone().oneshot(Text::of_len(1000))).await,
        Ok(Len(1000)),
        "the client goes on"
    );

    // Replies: the server cannot send them; the caller learns the figures.
    let numbers = within("client", client_node.client::<Len, Text>("numbers"))
        .await
        .expect("client");
    for n in [max as usize + 1, HUGE] {
        assert_eq!(
            within("call", numbers.clone().oneshot(Len(n as u64))).await,
            Err(CallError::ReplyTooLarge {
                len: encoded_len(n),
                max
            }),
            "a reply of {n} bytes"
        );
    }
    assert_eq!(
        within("call", numbers.clone().oneshot(Len(5))).await,
        Ok(Text::zeros(5)),
        "the server goes on"
    );

    drop((
        lengths,
        numbers,
        _numbers,
        _lengths,
        server_node,
        client_node,
    ));
    support::all_gone(engine).await;
}
