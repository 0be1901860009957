//! A hostile "engine" answering the inspector with garbage: the CLI reports an error and
//! exits 1, and never panics, whatever the bytes.

use ipc_core::control::{EngineFrame, ErrorCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::ctl;
use crate::support::{Rng, TestDir, within};

fn chunk(req: u32, last: bool, bytes: &[u8]) -> Vec<u8> {
    EngineFrame::InspectChunk {
        req,
        last,
        bytes: bytes.to_vec(),
    }
    .encode()
}

/// A raw frame: length, version, tag, body.
fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 2) as u32).to_le_bytes().to_vec();
    f.push(PROTOCOL_VERSION);
    f.push(tag);
    f.extend_from_slice(body);
    f
}

fn answers() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = Rng::new(0x16);
    let noise: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
    let deep = "[".repeat(200_000);
    let mut nested = Vec::new();
    for piece in deep.as_bytes().chunks(ipc_core::control::INSPECT_CHUNK) {
        nested.extend(chunk(1, false, piece));
    }
    nested.extend(chunk(1, true, b""));
    vec![
        ("nothing", Vec::new()),
        ("noise", noise),
        ("a length past MAX_FRAME", u32::MAX.to_le_bytes().to_vec()),
        ("a truncated frame", chunk(1, true, b"{\"version\":1}")[..9].to_vec()),
        ("invalid JSON", chunk(1, true, b"{\"version\":1,\"nodes\":[")),
        ("not UTF-8", chunk(1, true, b"{\"version\":1,\xff\xfe}")),
        ("the wrong shape", chunk(1, true, b"{\"version\":1}")),
        ("wrong field types", chunk(1, true, br#"{"version":1,"engine":7,"nodes":"x","services":[],"sessions":[],"counters":{}}"#)),
        ("a newer version", chunk(1, true, b"{\"version\":4000000000}")),
        ("a negative version", chunk(1, true, b"{\"version\":-1}")),
        ("another request's chunk", chunk(2, true, b"{}")),
        ("deep nesting", nested),
        ("no last chunk", chunk(1, false, b"{\"version\":1")),
        ("a bad last flag", {
            let mut f = chunk(1, true, b"{}");
            f[10] = 7;
            f
        }),
        ("an unknown tag", raw_frame(200, &[0; 8])),
        ("a welcome instead", EngineFrame::Welcome { node: 1, credits: 1, window_bytes: 1 }.encode()),
        ("a refusal", EngineFrame::Error { req: 0, code: ErrorCode::Denied as u16, message: "no".into() }.encode()),
        ("a chunk claiming 4 GiB", {
            let mut body = 1u32.to_le_bytes().to_vec();
            body.push(1);
            body.extend_from_slice(&u32::MAX.to_le_bytes());
            raw_frame(76, &body)
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_never_panic_the_cli() {
    let dir = TestDir::new("inspect-garbage");
    let socket = dir.socket();
    let listener = UnixListener::bind(&socket).expect("bind");
    for (what, answer) in answers() {
        let fake = async {
            let (mut conn, _) = listener.accept().await.expect("accept");
            // The inspect request: length, version, tag, req.
            let mut request = [0u8; 10];
            conn.read_exact(&mut request).await.expect("request");
            assert_eq!(request[5], 10, "{what}: an Inspect frame");
            let _ = conn.write_all(&answer).await;
            let _ = conn.shutdown().await;
        };
        let (_, (code, stdout, stderr)) = within(what, async {
            tokio::join!(fake, ctl(&socket, &["nodes", "--json"]))
        })
        .await;
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: {stdout}");
        assert!(stderr.starts_with("shmlinkctl: "), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}
