//! The roles child processes play. Each returns `Err(diagnostic)` on any surprise; the
//! runner prints it on stderr and exits non-zero.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rustix::fs::{FallocateFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use shmlink::{ConnectError, Engine, Node, Policy};

use crate::echo::ECHO_SERVICE;
use crate::procfs;
use crate::support::{self, ChildSpec, Commands, connect, ctx, say};

pub(crate) fn run(spec: ChildSpec) {
    support::run_child(spec, |spec, cmds| async move {
        let a = &spec.args;
        match spec.role.as_str() {
            "idle-node" => idle_node(&a[0], &a[1], cmds).await,
            "resizer" => resizer(&a[0], cmds).await,
            "foreign-connect" => foreign_connect(&a[0], &a[1], cmds).await,
            "foreign-proc" => foreign_proc(&a[0], &a[1], cmds).await,
            "foreign-engine" => foreign_engine(&a[0], cmds).await,
            other => Err(format!("unknown role {other:?}")),
        }
    });
}

/// Sends one message to the echo and checks it comes back.
async fn exchange(node: &Node, text: &str) -> Result<(), String> {
    let mut session = support::open(node, ECHO_SERVICE)
        .await
        .map_err(ctx("open the echo"))?;
    session
        .send(Bytes::from(text.as_bytes().to_vec()))
        .await
        .map_err(ctx("send"))?;
    let echo = session
        .next()
        .await
        .ok_or("the echo ended")?
        .map_err(ctx("echo"))?;
    if &echo[..] != text.as_bytes() {
        return Err(format!("echo {echo:?} instead of {text:?}"));
    }
    Ok(())
}

/// Connects, then reports `CONNECTED` and stays until let go.
async fn idle_node(socket: &str, name: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, name).await?;
    say("CONNECTED");
    cmds.done(format!("node={}", node.id())).await
}

/// Connects, finds its own block among its descriptors (the only `memfd:shmlink-node-`),
/// and tries to shrink it, grow it (ftruncate, fallocate) and add a seal: each must fail with
/// EPERM and leave the size unchanged. Then checks the engine still serves it.
async fn resizer(socket: &str, cmds: Commands) -> Result<(), String> {
    let node = connect(socket, "resizer").await?;
    let blocks: Vec<_> = procfs::fds("self")
        .into_iter()
        .filter(|f| procfs::is_block(&f.target))
        .collect();
    let [block] = &blocks[..] else {
        return Err(format!("expected one block descriptor, found {blocks:?}"));
    };
    // A second descriptor of the same file, read-write (the node's own one stays private to
    // the library): seals belong to the file, so they hold for every descriptor of it.
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", block.fd),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ctx("reopen the block read-write"))?;
    let size = rustix::fs::fstat(&fd).map_err(ctx("fstat"))?.st_size as u64;
    let seals = rustix::fs::fcntl_get_seals(&fd).map_err(ctx("F_GET_SEALS"))?;
    let required = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    if !seals.contains(required) {
        return Err(format!("block seals {seals:?} lack {required:?}"));
    }
    let attempts: [(&str, Result<(), Errno>); 6] = [
        ("ftruncate to half", rustix::fs::ftruncate(&fd, size / 2)),
        ("ftruncate to 0", rustix::fs::ftruncate(&fd, 0)),
        ("ftruncate to double", rustix::fs::ftruncate(&fd, size * 2)),
        (
            "ftruncate one byte more",
            rustix::fs::ftruncate(&fd, size + 1),
        ),
        (
            "fallocate past the end",
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), size, 4096),
        ),
        (
            "F_ADD_SEALS(WRITE)",
            rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE),
        ),
    ];
    for (what, result) in attempts {
        if result != Err(Errno::PERM) {
            return Err(format!("{what}: expected EPERM, got {result:?}"));
        }
    }
    let after = rustix::fs::fstat(&fd).map_err(ctx("fstat"))?.st_size as u64;
    if after != size {
        return Err(format!("the block's size changed from {size} to {after}"));
    }
    exchange(&node, "still served after trying to resize").await?;
    cmds.done(format!("size={size} seals={:#x}", seals.bits()))
        .await
}

/// Run as another uid: reports `UID <uid>`, then how `Node::connect` to the engine's socket
/// ends, `attempts` times: one `CONNECT ok|io <kind> …|refused <message>|other <error>` line
/// per distinct outcome (so a race shows as a second line); then how a raw `connect(2)`
/// ends (`RAW ok|<kind>`). If connected, exchanges a message with the echo and reports
/// `EXCHANGED`.
async fn foreign_connect(socket: &str, attempts: &str, cmds: Commands) -> Result<(), String> {
    say(format!("UID {}", rustix::process::getuid().as_raw()));
    let attempts: u32 = attempts.parse().map_err(ctx("attempts"))?;
    let mut outcomes = Vec::new();
    for _ in 0..attempts {
        let outcome = match Node::connect(socket, "foreigner").await {
            Ok(node) => {
                exchange(&node, "hello from another uid").await?;
                say("EXCHANGED");
                "ok".to_owned()
            }
            Err(ConnectError::Io(e) | ConnectError::Unreachable { source: e, .. }) => {
                format!("io {:?} {e}", e.kind())
            }
            Err(ConnectError::Refused { message }) => format!("refused {message}"),
            Err(e) => format!("other {e:?}"),
        };
        if !outcomes.contains(&outcome) {
            say(format!("CONNECT {outcome}"));
            outcomes.push(outcome);
        }
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => say("RAW ok"),
        Err(e) => say(format!("RAW {:?}", e.kind())),
    }
    cmds.done("").await
}

/// Run as another uid: tries to reach process `pid`'s descriptor `fd` (a block) through
/// `/proc`, and its memory; reports `PROC <what> ok|<kind>` for each.
async fn foreign_proc(pid: &str, fd: &str, cmds: Commands) -> Result<(), String> {
    let tries: [(&str, std::io::Result<()>); 5] = [
        (
            "list-fds",
            std::fs::read_dir(format!("/proc/{pid}/fd")).map(drop),
        ),
        (
            "readlink-fd",
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(drop),
        ),
        (
            "open-fd",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{pid}/fd/{fd}"))
                .map(drop),
        ),
        (
            "read-maps",
            std::fs::read_to_string(format!("/proc/{pid}/maps")).map(drop),
        ),
        (
            "open-mem",
            std::fs::File::open(format!("/proc/{pid}/mem")).map(drop),
        ),
    ];
    for (what, result) in tries {
        match result {
            Ok(()) => say(format!("PROC {what} ok")),
            Err(e) => say(format!("PROC {what} {:?}", e.kind())),
        }
    }
    cmds.done("").await
}

/// Run as another uid: an engine on `socket` that lets uid 0 and its own uid in (the
/// impostor of `squat::a_node_refuses_an_engine_of_another_uid`). Says `LISTENING`, serves
/// until stdin closes.
async fn foreign_engine(socket: &str, cmds: Commands) -> Result<(), String> {
    let me = rustix::process::getuid().as_raw();
    let engine = Engine::builder()
        .socket(socket)
        .block(support::small_block())
        .policy(Policy::AllowUids(vec![0, me]))
        .spawn()
        .map_err(ctx("spawn the engine"))?;
    say("LISTENING");
    cmds.done("").await?;
    engine.shutdown().await;
    Ok(())
}
