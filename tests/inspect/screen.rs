//! `top`'s screen, rendered from real snapshots on ratatui's `TestBackend`: it shows the
//! nodes, and a session's rate that moves with the traffic.

use bytes::Bytes;
use futures::SinkExt;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use shmlink::inspect::Snapshot;
use shmlink::{Engine, Node};

use crate::Receiver;
use crate::support::{self, TestDir, within};
use crate::top::{Sort, render};

fn screen(prev: &Snapshot, cur: &Snapshot) -> String {
    let mut terminal = Terminal::new(TestBackend::new(100, 24)).expect("terminal");
    render(&mut terminal, Some(prev), cur, 1.0, Sort::Messages).expect("render");
    let buffer = terminal.backend().buffer();
    let width = buffer.area.width as usize;
    let cells: Vec<&str> = buffer.content().iter().map(|c| c.symbol()).collect();
    cells
        .chunks(width)
        .map(|row| row.concat().trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The session row's msg/s column.
fn rate(screen: &str) -> String {
    let row = screen
        .lines()
        .find(|l| l.contains("tester <-> "))
        .unwrap_or_else(|| panic!("no session row:\n{screen}"));
    row.split_whitespace().nth(4).expect("msg/s").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_nodes_and_a_moving_rate() {
    let dir = TestDir::new("inspect-top");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");
    let mut rx = Receiver::spawn(&socket, "screen");
    within("served", engine.wait_for_stats(|s| s.services == 1)).await;
    let node = within("connect", Node::connect(&socket, "tester"))
        .await
        .expect("connect");
    let (mut sink, _stream) = within("open", node.open::<Bytes>("screen"))
        .await
        .expect("open")
        .split();

    let mut send = async |n: usize| {
        for i in 0..n {
            within("send", sink.send(Bytes::from(format!("m{i}"))))
                .await
                .expect("send");
        }
        for i in 0..n {
            assert_eq!(rx.line().await, format!("m{i}"));
        }
    };
    let s0 = engine.inspect().await.expect("snapshot");
    send(12).await;
    let s1 = engine.inspect().await.expect("snapshot");
    let busy = screen(&s0, &s1);
    // The nodes, with their arena bars.
    assert!(busy.contains("tester"), "{busy}");
    assert!(busy.contains("shmlinkctl-recv-"), "{busy}");
    assert!(busy.contains("RX ARENA") && busy.contains('%'), "{busy}");
    assert_eq!(rate(&busy), "12", "{busy}");
    // No traffic between two snapshots: the rate falls to zero ...
    let s2 = engine.inspect().await.expect("snapshot");
    assert_eq!(rate(&screen(&s1, &s2)), "0");
    // ... and rises with the next burst.
    send(30).await;
    let s3 = engine.inspect().await.expect("snapshot");
    let again = screen(&s2, &s3);
    assert_eq!(rate(&again), "30", "{again}");
    println!("{again}");
    drop(sink);
    drop(node);
    engine.shutdown().await;
}
