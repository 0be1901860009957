//! Zero-copy byte fields (`shmlink::message::shared_bytes`) through a typed stream and a
//! tower service: the values arrive intact, and a field kept after its message (a view of
//! the received shared memory) stays intact while many later messages reuse that memory.

use futures::{SinkExt, StreamExt};
use tower::{Service, ServiceExt};

use crate::harness::{TestDir, engine, within};
use crate::messages::{Frame, frame};

const FRAMES: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_byte_fields_arrive_intact_and_outlive_their_message() {
    let dir = TestDir::new("shared-bytes");
    let engine = engine(&dir, 4);
    let server = within("connect", shmlink::Node::connect(dir.socket(), "viewer"))
        .await
        .expect("connect");
    let client = within("connect", shmlink::Node::connect(dir.socket(), "camera"))
        .await
        .expect("connect");
    let mut listener = within("listen", server.listen::<Frame>("frames"))
        .await
        .expect("listen");
    let mut tx = within("open", client.open::<Frame>("frames"))
        .await
        .expect("open");
    let mut rx = within("accept", listener.accept()).await.expect("accept");

    let sender = tokio::spawn(async move {
        for seq in 0..FRAMES {
            tx.send(frame(seq)).await.expect("send");
        }
        tx.close().await.expect("close");
        tx
    });
    // Keep the pixels of the first large frame; drop every other message at once.
    let mut kept = None;
    for seq in 0..FRAMES {
        let got = within("a frame", rx.next())
            .await
            .expect("open")
            .expect("decoded");
        assert_eq!(got, frame(seq));
        if seq == 3 {
            kept = Some(got.pixels);
        }
    }
    assert!(within("the end", rx.next()).await.is_none());
    let kept = kept.expect("frame 3");
    assert_eq!(
        kept,
        frame(3).pixels,
        "a kept view must not be reused under it"
    );
    drop(kept);
    within("the sender", sender).await.expect("sender");

    // The same through a tower service, both ways.
    let echo = tower::service_fn(|req: Frame| async move {
        Ok::<_, std::convert::Infallible>(Frame {
            seq: req.seq + 1,
            pixels: req.pixels,
        })
    });
    let serving = within("serve", server.serve("echo", echo))
        .await
        .expect("serve");
    let mut calls = within("client", client.client::<Frame, Frame>("echo"))
        .await
        .expect("client");
    for seq in 0..20 {
        let reply = within("a call", async {
            calls.ready().await.expect("ready").call(frame(seq)).await
        })
        .await
        .expect("reply");
        assert_eq!(reply.seq, seq + 1);
        assert_eq!(reply.pixels, frame(seq).pixels);
    }
    drop(calls);
    within("server shutdown", serving.shutdown()).await;
    drop((rx, listener, server, client));
    within("engine shutdown", engine.shutdown()).await;
}
