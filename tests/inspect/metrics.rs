//! A real HTTP scrape of `shmlinkd --metrics-addr`: Prometheus text whose counters rise by
//! the messages sent through the daemon.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::support::{TestDir, within};
use crate::{CTL, Daemon, Receiver};

/// Scrapes `addr` once: every sample, by its series name (labels included).
async fn scrape(addr: &str) -> HashMap<String, f64> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    let mut samples = HashMap::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            // `# HELP name text` or `# TYPE name counter|gauge|...`.
            let mut words = comment.split_whitespace();
            let kind = words.next().expect("comment kind");
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            assert!(
                words.next().is_some_and(|n| n.starts_with("shmlink_")),
                "{line}"
            );
            continue;
        }
        // `name{labels} value [timestamp]`: the name is a Prometheus identifier.
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// Scrapes until `pred` holds (the exporter sees the engine's counts a moment later).
pub(crate) async fn scrape_until(
    addr: &str,
    pred: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    within("metrics to reach the expected values", async {
        loop {
            let samples = scrape(addr).await;
            if pred(&samples) {
                return samples;
            }
            // A poll interval, not a synchronisation: the loop waits for a state.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

pub(crate) fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_counts_the_messages_sent() {
    let dir = TestDir::new("inspect-metrics");
    let socket = dir.socket();
    let (daemon, addr) = Daemon::metered(&socket).await;

    let before = scrape(&addr).await;
    let messages0 = value(&before, "shmlink_messages_total");
    let bytes0 = value(&before, "shmlink_bytes_total");
    let mut rx = Receiver::spawn(&socket, "metered");
    scrape_until(&addr, |s| value(s, "shmlink_services") == 1.0).await;
    let lines_sent = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggg"];
    let input = lines_sent.join("\n") + "\n";
    let send = within(
        "send",
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '{}' | \"$CTL\" send metered",
                input.replace('\n', "\\n")
            ))
            .env("CTL", CTL)
            .env("SHMLINK_SOCKET", &socket)
            .output(),
    )
    .await
    .expect("run send");
    assert!(send.status.success(), "{send:?}");
    for l in lines_sent {
        assert_eq!(rx.line().await, l);
    }
    let total_bytes: usize = lines_sent.iter().map(|l| l.len()).sum();
    let after = scrape_until(&addr, |s| {
        value(s, "shmlink_messages_total") >= messages0 + lines_sent.len() as f64
    })
    .await;
    assert_eq!(
        value(&after, "shmlink_messages_total"),
        messages0 + lines_sent.len() as f64
    );
    assert_eq!(
        value(&after, "shmlink_bytes_total"),
        bytes0 + total_bytes as f64
    );
    assert!(after.contains_key("shmlink_nodes"), "{after:?}");
    assert!(
        after.contains_key("shmlink_rx_arena_bytes_in_use"),
        "{after:?}"
    );

    // A topic: one subscriber process, three lines published by another.
    let mut sub = Command::new(CTL)
        .args(["sub", "metered/topic", "--count", "3"])
        .env("SHMLINK_SOCKET", &socket)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shmlinkctl sub");
    let mut sub_lines = BufReader::new(sub.stdout.take().expect("stdout")).lines();
    scrape_until(&addr, |s| value(s, "shmlink_topics") == 1.0).await;
    let publish = within(
        "pub",
        Command::new("sh")
            .arg("-c")
            .arg("printf 'x\\nyy\\nzzz\\n' | \"$CTL\" pub metered/topic")
            .env("CTL", CTL)
            .env("SHMLINK_SOCKET", &socket)
            .output(),
    )
    .await
    .expect("run pub");
    assert!(publish.status.success(), "{publish:?}");
    for l in ["x", "yy", "zzz"] {
        let got = within("a line from shmlinkctl sub", sub_lines.next_line())
            .await
            .expect("read");
        assert_eq!(got.as_deref(), Some(l));
    }
    let topics = scrape_until(&addr, |s| value(s, "shmlink_topic_delivered_total") >= 3.0).await;
    assert_eq!(value(&topics, "shmlink_topic_published_total"), 3.0);
    assert_eq!(value(&topics, "shmlink_topic_delivered_total"), 3.0);
    assert_eq!(value(&topics, "shmlink_topic_lagged_total"), 0.0);
    assert!(topics.contains_key("shmlink_topic_segments"), "{topics:?}");
    drop(sub);
    drop(rx);
    let _ = daemon.kill().await;
}

#[test]
fn a_remote_metrics_address_is_refused_unless_asked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shmlinkd"))
        .args(["--metrics-addr", "0.0.0.0:9464"])
        .env(
            "SHMLINK_SOCKET",
            "/nonexistent-shmlink-test/a/b/engine.sock",
        )
        .output()
        .expect("run shmlinkd");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
