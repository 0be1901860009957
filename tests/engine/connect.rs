//! The node side of the rendezvous (issue 9, items 4 and 7): a deadline on the whole
//! rendezvous, typed errors that name the socket, and node names checked before anything is
//! sent.

use std::time::Duration;

use shmlink::{ConnectError, NameError, Node, NodeOptions};
use tokio::net::UnixListener;

use crate::support::{TestDir, within};

/// Something that accepts every connection and holds it without ever answering (an engine
/// stopped with SIGSTOP looks the same from the node). Returns how many it accepted.
fn silent_listener(listener: UnixListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_accepts_and_never_answers_times_out() {
    let dir = TestDir::new("connect-silent");
    let socket = dir.socket();
    let holder = silent_listener(UnixListener::bind(&socket).expect("bind"));

    // A short deadline: the error names the socket and the deadline.
    let timeout = Duration::from_millis(300);
    let options = NodeOptions::default().connect_timeout(timeout);
    match within("connect", Node::connect_with(&socket, "n", options)).await {
        Err(ConnectError::Timeout { path, timeout: t }) => {
            assert_eq!(path, socket);
            assert_eq!(t, timeout);
        }
        other => panic!("expected Timeout, got {:?}", other.map(drop)),
    }
    // The default deadline applies without any option (5 s): `connect` never waits forever.
    assert_eq!(
        NodeOptions::default().connect_timeout,
        Duration::from_secs(5)
    );
    let err = within("connect", Node::connect(&socket, "n"))
        .await
        .map(drop)
        .unwrap_err();
    match &err {
        ConnectError::Timeout { path, timeout } => {
            assert_eq!(path, &socket);
            assert_eq!(*timeout, Duration::from_secs(5));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&socket.display().to_string()),
        "the message names the socket: {text}"
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_nobody_accepts_on_times_out() {
    // Bound and listening, but never accepting: the kernel completes the connection and the
    // hello sits in the socket's buffer.
    let dir = TestDir::new("connect-backlog");
    let socket = dir.socket();
    let _listener = UnixListener::bind(&socket).expect("bind");
    let options = NodeOptions::default().connect_timeout(Duration::from_millis(300));
    assert!(matches!(
        within("connect", Node::connect_with(&socket, "n", options)).await,
        Err(ConnectError::Timeout { path, .. }) if path == socket
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_listener_is_gone_is_unreachable() {
    let dir = TestDir::new("connect-stale");
    let socket = dir.socket();
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "the socket file stays behind its listener");
    let err = within("connect", Node::connect(&socket, "n"))
        .await
        .map(drop)
        .unwrap_err();
    match &err {
        ConnectError::Unreachable { path, source } => {
            assert_eq!(path, &socket);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );

    // No file at all.
    let missing = dir.path().join("missing.sock");
    assert!(matches!(
        within("connect", Node::connect(&missing, "n")).await,
        Err(ConnectError::Unreachable { path, source })
            if path == missing && source.kind() == std::io::ErrorKind::NotFound
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_with_control_characters_are_refused_before_connecting() {
    // The path does not exist: a name error proves nothing was tried on the socket.
    let dir = TestDir::new("connect-names");
    let missing = dir.path().join("missing.sock");
    let cases = [
        ("", NameError::Empty),
        ("a\0b", NameError::Control { ch: '\0', at: 1 }),
        ("line\nbreak", NameError::Control { ch: '\n', at: 4 }),
        (
            "esc\u{1b}[2J",
            NameError::Control {
                ch: '\u{1b}',
                at: 3,
            },
        ),
        (
            "del\u{7f}",
            NameError::Control {
                ch: '\u{7f}',
                at: 3,
            },
        ),
    ];
    for (name, reason) in cases {
        match within("connect", Node::connect(&missing, name)).await {
            Err(ConnectError::Name { name: n, reason: r }) => {
                assert_eq!(n, name);
                assert_eq!(r, reason, "{name:?}");
            }
            other => panic!("{name:?}: expected Name, got {:?}", other.map(drop)),
        }
    }
    let long = "n".repeat(256);
    assert!(matches!(
        within("connect", Node::connect(&missing, &long)).await,
        Err(ConnectError::Name {
            reason: NameError::TooLong { len: 256 },
            ..
        })
    ));
}
