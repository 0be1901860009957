//! `send` and `recv` in real shell pipelines, through the built binary.

use std::process::Stdio;

use shmlink::Engine;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::CTL;
use crate::support::{self, TestDir, within};

fn sh(script: &str, socket: &std::path::Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .env("SHMLINK_SOCKET", socket)
        .env("CTL", CTL)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_and_raw_records_through_shell_pipelines() {
    let dir = TestDir::new("inspect-pipeline");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");

    // Lines: `printf | shmlinkctl send` into `shmlinkctl recv | grep`.
    let mut rx = sh(r#""$CTL" recv logs --count 4 | grep x"#, &socket)
        .spawn()
        .expect("recv pipeline");
    within("served", engine.wait_for_stats(|s| s.services == 1)).await;
    let send = within(
        "send pipeline",
        sh(
            r#"printf 'x1\nskip\nx2 and more\n\n' | "$CTL" send logs"#,
            &socket,
        )
        .output(),
    )
    .await
    .expect("run send");
    assert!(send.status.success(), "{send:?}");
    let mut out = String::new();
    let mut stdout = rx.stdout.take().expect("stdout");
    within("recv output", stdout.read_to_string(&mut out))
        .await
        .expect("read");
    assert_eq!(out, "x1\nx2 and more\n");
    assert!(
        within("recv exit", rx.wait())
            .await
            .expect("wait")
            .success()
    );
    within("gone", engine.wait_for_stats(|s| s.nodes == 0)).await;

    // Raw: 4-byte little-endian lengths, any bytes (a newline and a zero inside).
    let mut rx = sh(r#""$CTL" recv blobs --raw --count 2"#, &socket)
        .spawn()
        .expect("raw recv");
    within("served", engine.wait_for_stats(|s| s.services == 1)).await;
    let send = within(
        "raw send",
        sh(
            r#"printf '\003\000\000\000a\nb\000\000\000\000' | "$CTL" send blobs --raw"#,
            &socket,
        )
        .output(),
    )
    .await
    .expect("run raw send");
    assert!(send.status.success(), "{send:?}");
    let mut bytes = Vec::new();
    let mut stdout = rx.stdout.take().expect("stdout");
    within("raw output", stdout.read_to_end(&mut bytes))
        .await
        .expect("read");
    assert_eq!(bytes, b"\x03\x00\x00\x00a\nb\x00\x00\x00\x00");
    assert!(within("raw exit", rx.wait()).await.expect("wait").success());

    // Nobody serves the name: a clear error.
    let send = within(
        "send to nobody",
        sh(r#"echo hi | "$CTL" send nobody"#, &socket)
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("run");
    assert_eq!(send.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&send.stderr);
    assert!(stderr.contains("cannot open \"nobody\""), "{stderr}");
    engine.shutdown().await;
}

/// `shmlinkctl pub` and `shmlinkctl sub` on a raw topic, in real shell pipelines:
/// `printf | shmlinkctl pub logs` into `shmlinkctl sub logs | grep`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_and_sub_through_shell_pipelines() {
    let dir = TestDir::new("inspect-pubsub");
    let socket = dir.socket();
    let engine = Engine::builder()
        .socket(&socket)
        .block(support::small_block())
        .spawn()
        .expect("engine");
    let mut sub = sh(r#""$CTL" sub logs --count 3 | grep -v skip"#, &socket)
        .spawn()
        .expect("sub pipeline");
    // The subscription exists once the topic does: nothing published after it is missed.
    within("subscribed", engine.wait_for_stats(|s| s.topics == 1)).await;
    let publish = within(
        "pub pipeline",
        sh(
            r#"printf 'ERROR one\nskip\nERROR two\n' | "$CTL" pub logs"#,
            &socket,
        )
        .output(),
    )
    .await
    .expect("run pub");
    assert!(publish.status.success(), "{publish:?}");
    let mut out = String::new();
    let mut stdout = sub.stdout.take().expect("stdout");
    within("sub output", stdout.read_to_string(&mut out))
        .await
        .expect("read");
    assert_eq!(out, "ERROR one\nERROR two\n");
    assert!(
        within("sub exit", sub.wait())
            .await
            .expect("wait")
            .success()
    );
    within("gone", engine.wait_for_stats(|s| s.nodes == 0)).await;
    engine.shutdown().await;
}
