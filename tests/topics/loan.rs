//! `Publisher::loan`: a message written in place in the publisher's transmit arena.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Node, PublishError, Publisher, SubscribeOptions, Subscription};

use crate::support::{self, TestDir, pattern, within};

/// Loans written in place and sent, interleaved with ordinary sends, arrive in order and
/// intact (a truncated loan as its shorter length, an empty one as an empty message); a loan
/// that can never fit is refused at once, and one lent by another node is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loans_are_published_in_order_and_intact() {
    let dir = TestDir::new("topics-loan");
    let _engine = support::engine(&dir);
    let socket = dir.socket();
    let pub_node = within("connect", Node::connect(&socket, "pub"))
        .await
        .expect("connect");
    let sub_node = within("connect", Node::connect(&socket, "sub"))
        .await
        .expect("connect");
    let deep = SubscribeOptions {
        queue: 256,
        ..SubscribeOptions::default()
    };
    let mut sub: Subscription<Bytes> = within("subscribe", sub_node.subscribe_with("loans", deep))
        .await
        .expect("subscribe");
    let mut publisher: Publisher<Bytes> = within("publish", pub_node.publish("loans"))
        .await
        .expect("publish");

    let mut sent = Vec::new();
    for i in 0..60u64 {
        let len = [0, 1, 300, 4096, 64 << 10][(i % 5) as usize];
        let body = pattern(7, i, len);
        if i % 3 == 0 {
            // An ordinary send between loans.
            within("send", publisher.send(Bytes::from(body.clone())))
                .await
                .expect("send");
            sent.push(body);
        } else {
            let mut loan = within("loan", publisher.loan(len + 10))
                .await
                .expect("loan");
            assert_eq!(loan.len(), len + 10);
            loan[..len].copy_from_slice(&body);
            loan.truncate(len);
            within("send loan", publisher.send(loan))
                .await
                .expect("send loan");
            sent.push(body);
        }
    }
    // A loan fed without a flush goes with the next flush.
    let mut loan = within("loan", publisher.loan(5)).await.expect("loan");
    loan.copy_from_slice(b"fed!!");
    within("feed", publisher.feed(loan)).await.expect("feed");
    within("flush", publisher.flush()).await.expect("flush");
    sent.push(b"fed!!".to_vec());
    for (i, want) in sent.iter().enumerate() {
        let got = within("receive", sub.next())
            .await
            .expect("open")
            .expect("message");
        assert_eq!(&got[..], &want[..], "message {i}");
    }

    // Too large for any topic message: refused at once, nothing lent.
    let max = publisher.max_message();
    let too_large = within("loan", publisher.loan(max as usize + 1)).await;
    assert_eq!(
        too_large.map(|l| l.len()),
        Err(PublishError::TooLarge { len: max + 1, max })
    );

    // A loan of another node's arena names none of this node's bytes: refused, and the
    // publisher goes on.
    let mut other: Publisher<Bytes> = within("publish", sub_node.publish("elsewhere"))
        .await
        .expect("publish");
    let foreign = within("loan", other.loan(16)).await.expect("loan");
    assert_eq!(
        within("send foreign", publisher.send(foreign)).await,
        Err(PublishError::ForeignLoan)
    );
    within("send", publisher.send(Bytes::from_static(b"after")))
        .await
        .expect("send");
    let got = within("receive", sub.next())
        .await
        .expect("open")
        .expect("message");
    assert_eq!(got, Bytes::from_static(b"after"));
}
