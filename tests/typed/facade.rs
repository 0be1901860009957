//! The facade as a user sees it: everything through `use shmlink::*`, and nothing in it that
//! shadows a name of the language (issue 11, item 5).
//!
//! `shmlink` used to re-export the whole core crate as `shmlink::core`, so after a glob import
//! `core::mem::size_of` named `ipc_core::mem`, which does not exist, and the module failed to
//! compile. This module is the compile-time half of the test; the types named below
//! (`ResponseFuture`, `MessageType`, `BlockError`, `BlockConfig`) are the ones that appear in
//! public signatures, so a user can name them without reaching for `ipc-core` or `ipc-tokio`.

use serde::{Deserialize, Serialize};
use shmlink::*;
use tower::{Service, ServiceExt};

use crate::harness::{TestDir, block, within};

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Ping(u64);

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Pong(u64);

/// `core::` after the glob import is the language's `core`, and the facade's named types are
/// enough to spawn an engine, serve, call and hold the call's future by its type.
#[tokio::test]
async fn a_glob_import_of_the_facade_keeps_core_and_names_every_public_type() {
    // The language's core library, not a re-exported crate.
    assert_eq!(core::mem::size_of::<u64>(), 8);

    // The payload type of a typed session, as the schema check names it.
    let ty: MessageType = <Ping as Payload<Bincode>>::message_type();
    assert_eq!(ty.fingerprint, <Ping as Message>::FINGERPRINT);
    assert!(ty.name.starts_with("Ping/"), "{}", ty.name);

    // A block configuration that cannot be laid out is a `BlockError` inside `SpawnError`.
    let dir = TestDir::new("facade-glob");
    let bad = BlockConfig {
        tx_arena: 3 << 20, // not a power of two
        ..block()
    };
    match Engine::builder().socket(dir.socket()).block(bad).spawn() {
        Err(SpawnError::Config(e)) => {
            let e: BlockError = e;
            assert!(!e.to_string().is_empty());
        }
        Err(e) => panic!("expected SpawnError::Config, got {e}"),
        Ok(_) => panic!("an arena of 3 MiB was accepted"),
    }

    let engine = Engine::builder()
        .socket(dir.socket())
        .block(block())
        .spawn()
        .expect("spawn engine");
    let server_node = within("connect", Node::connect(dir.socket(), "facade-server"))
        .await
        .expect("connect");
    let handler =
        tower::service_fn(|Ping(n): Ping| async move { Ok::<_, std::io::Error>(Pong(n + 1)) });
    let server: Server = within("serve", server_node.serve("facade", handler))
        .await
        .expect("serve");
    let client_node = within("connect", Node::connect(dir.socket(), "facade-client"))
        .await
        .expect("connect");
    let mut client: Client<Ping, Pong> = within("client", client_node.client("facade"))
        .await
        .expect("client");
    within("ready", client.ready()).await.expect("ready");
    let future: ResponseFuture<Pong> = client.call(Ping(41));
    let reply: Result<Pong, CallError> = within("call", future).await;
    assert_eq!(reply, Ok(Pong(42)));

    drop(client);
    within("server shutdown", server.shutdown()).await;
    within("engine shutdown", engine.shutdown()).await;
}
