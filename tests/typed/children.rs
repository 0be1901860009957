//! The roles a child process plays. Each connects to the parent's engine, serves its names,
//! prints `ready`, follows commands on stdin and returns when stdin closes. A failure prints
//! on stderr and exits with status 2 (the parent sees it at once: the child's sessions end).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shmlink::{Bincode, Message, Node, ServeConfig, Session, SessionError};
use tokio::sync::watch;

use crate::messages::*;
use testkit::{ChildSpec, Commands, say};

/// Runs the child described by `spec` (its role; the socket, then the role's arguments).
pub(crate) fn run(spec: ChildSpec) {
    let role = spec.role;
    let mut args = spec.args.into_iter();
    let socket = args.next().expect("socket");
    let args: Vec<String> = args.collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("child runtime");
    runtime.block_on(async move {
        let node = Node::connect(&socket, &format!("child-{role}"))
            .await
            .unwrap_or_else(|e| fatal(format!("connect: {e}")));
        let commands = Commands::new();
        match role.as_str() {
            "echo" => echo(node, commands).await,
            "ops" => ops(node, commands, &args).await,
            "schemas" => schemas(node, commands).await,
            "wire" => wire(node, commands).await,
            "half" => half(node, commands).await,
            "caller" => caller(node, commands).await,
            other => fatal(format!("unknown role {other:?}")),
        }
    });
    FINISHED.store(true, std::sync::atomic::Ordering::Release);
    // Nothing may wait on the blocking stdin reader.
    runtime.shutdown_background();
}

/// A client of "ops" whose only call hangs in the handler; it prints `called` once the
/// call is sent and then waits, to be SIGKILLed by the parent.
async fn caller(node: Node, commands: Commands) {
    use tower::ServiceExt;
    let client = must("client", node.client::<Op, OpReply>("ops").await);
    let call = tokio::spawn(client.oneshot(Op::Hang { id: 1 }));
    say("called");
    until_eof(commands).await;
    call.abort();
}

/// Set once the role returned: what tasks see after it is teardown, not a failure (the
/// runtime shuts down in the background, and the node's driver going first disconnects
/// sessions whose tasks a worker may still poll).
static FINISHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports a failure and exits non-zero (unless the role already finished: then the thread
/// parks until the process ends).
fn fatal(message: impl std::fmt::Display) -> ! {
    if FINISHED.load(std::sync::atomic::Ordering::Acquire) {
        loop {
            std::thread::park();
        }
    }
    eprintln!("child failure: {message}");
    std::process::exit(2);
}

async fn until_eof(mut commands: Commands) {
    if let Some(command) = commands.recv().await {
        fatal(format!("unexpected command {command:?}"));
    }
}

/// Echoes every message of `session` back; if `expected` is given, checks each message
/// against it first (`expected(&m)` builds the value the parent sent).
async fn echo_session<T>(mut session: Session<T>, expected: Option<fn(&T) -> T>)
where
    T: Message + PartialEq + Debug,
{
    let mut n = 0u64;
    while let Some(item) = session.next().await {
        let value = item.unwrap_or_else(|e| fatal(format!("message {n}: {e}")));
        if let Some(expected) = expected
            && value != expected(&value)
        {
            fatal(format!(
                "message {n} differs from the sample the parent built"
            ));
        }
        session
            .send(value)
            .await
            .unwrap_or_else(|e| fatal(format!("echo {n}: {e}")));
        n += 1;
    }
    session
        .close()
        .await
        .unwrap_or_else(|e| fatal(format!("close: {e}")));
}

/// Accepts sessions of `listener` forever, each echoed by its own task.
fn echo_all<T>(mut listener: shmlink::Listener<T>, expected: Option<fn(&T) -> T>)
where
    T: Message + PartialEq + Debug,
{
    tokio::spawn(async move {
        while let Some(session) = listener.accept().await {
            tokio::spawn(echo_session(session, expected));
        }
    });
}

fn must<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| fatal(format!("{what}: {e}")))
}

// ===== echo: typed streams =====

async fn echo(node: Node, commands: Commands) {
    let records = must("listen records", node.listen::<Record>("records").await);
    let generic = must(
        "listen tagged",
        node.listen::<Tagged<Shape>>("tagged").await,
    );
    echo_all(records, Some(|r: &Record| record(r.seq)));
    echo_all(generic, Some(|t: &Tagged<Shape>| tagged(t.seq)));
    say("ready");
    until_eof(commands).await;
}

// ===== ops: a tower service with every behaviour =====

#[derive(Clone)]
struct OpsState {
    /// Handlers that entered, by kind ("hang" or a gate number).
    entered: Arc<Mutex<HashMap<String, u64>>>,
    /// Per gate: (running now, most at once).
    active: Arc<Mutex<HashMap<u32, (u64, u64)>>>,
    gates: watch::Receiver<HashSet<u32>>,
    flaky: Arc<Mutex<HashMap<u64, u32>>>,
}

impl OpsState {
    /// Counts a handler in and tells the parent: `entered {key} {n}` (in order, under the lock).
    fn enter(&self, key: &str) {
        let mut entered = self.entered.lock().unwrap();
        let n = entered.entry(key.to_owned()).or_default();
        *n += 1;
        say(format!("entered {key} {n}"));
    }
}

async fn handle(state: OpsState, op: Op) -> Result<OpReply, String> {
    match op {
        Op::Echo { id, text } => {
            // Finish in a different order than received.
            for _ in 0..id % 7 {
                tokio::task::yield_now().await;
            }
            Ok(echoed(id, &text))
        }
        Op::Fail { id, reason } => Err(format!("op {id} refused: {reason}")),
        Op::Panic { id, reason } => panic!("op {id} panicked: {reason}"),
        Op::Hang { .. } => {
            state.enter("hang");
            futures::future::pending::<()>().await;
            unreachable!("pending never completes")
        }
        Op::Gate { id, gate } => {
            {
                let mut active = state.active.lock().unwrap();
                let (now, max) = active.entry(gate).or_default();
                *now += 1;
                *max = (*max).max(*now);
            }
            state.enter(&gate.to_string());
            let mut gates = state.gates.clone();
            gates
                .wait_for(|open| open.contains(&gate))
                .await
                .unwrap_or_else(|_| fatal("gate sender gone"));
            state.active.lock().unwrap().entry(gate).or_default().0 -= 1;
            Ok(OpReply::Value(id * 7))
        }
        Op::Flaky { key, failures } => {
            let attempt = {
                let mut flaky = state.flaky.lock().unwrap();
                let n = flaky.entry(key).or_default();
                *n += 1;
                *n
            };
            if attempt <= failures {
                Err(format!("flaky {key}: attempt {attempt} failed"))
            } else {
                Ok(OpReply::Attempts(attempt))
            }
        }
        Op::Grow { id, len } => Ok(OpReply::Echoed {
            id,
            // Zeroed, so a reply too large to send costs no memory (the kernel maps zeroed
            // allocations lazily, and measuring it reads none of it).
            reversed: String::from_utf8(vec![0; len as usize]).expect("NUL is UTF-8"),
            sum: len,
        }),
        Op::MaxActive { gate } => Ok(OpReply::Value(
            state
                .active
                .lock()
                .unwrap()
                .get(&gate)
                .map_or(0, |(_, max)| *max),
        )),
    }
}

/// Serves "ops" with `args[0]` requests at once. Commands: `release G` opens gate G for
/// good; `shutdown` starts a graceful `Server::shutdown` and prints `stopped` when it returns.
async fn ops(node: Node, mut commands: Commands, args: &[String]) {
    let concurrency: usize = args.first().map_or(64, |a| a.parse().expect("concurrency"));
    // The panics are the test's: keep stderr readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info
            .payload_as_str()
            .is_some_and(|p| p.contains(" panicked: "))
        {
            default_hook(info);
        }
    }));
    let (open_gates, gates) = watch::channel(HashSet::new());
    let state = OpsState {
        entered: Arc::default(),
        active: Arc::default(),
        gates,
        flaky: Arc::default(),
    };
    let service = tower::service_fn(move |op: Op| handle(state.clone(), op));
    let server = node
        .serve_with::<Op, OpReply, _, Bincode>(
            "ops",
            service,
            ServeConfig::default().concurrency(concurrency),
        )
        .await;
    let mut server = Some(must("serve ops", server));
    say("ready");
    while let Some(command) = commands.recv().await {
        if let Some(gate) = command.strip_prefix("release ") {
            let gate: u32 = gate.parse().expect("gate number");
            open_gates.send_modify(|open| {
                open.insert(gate);
            });
        } else if command == "shutdown" {
            let server = server.take().unwrap_or_else(|| fatal("shutdown twice"));
            tokio::spawn(async move {
                server.shutdown().await;
                say("stopped");
            });
        } else {
            fatal(format!("unknown command {command:?}"));
        }
    }
}

// ===== schemas: names served with known types =====

async fn schemas(node: Node, commands: Commands) {
    let service = tower::service_fn(|a: SchemaAlpha| async move {
        Ok::<_, String>(SchemaBeta {
            doubled: u64::from(a.x) * 2,
        })
    });
    let _server = must(
        "serve ab",
        node.serve::<SchemaAlpha, SchemaBeta, _>("ab", service)
            .await,
    );
    echo_all(
        must("listen typed", node.listen::<StreamA>("typed").await),
        None,
    );
    let mut raw = must("listen raw", node.listen::<Bytes>("raw").await);
    tokio::spawn(async move {
        while let Some(mut session) = raw.accept().await {
            tokio::spawn(async move {
                while let Some(Ok(bytes)) = session.next().await {
                    session
                        .send(bytes)
                        .await
                        .unwrap_or_else(|e| fatal(format!("raw echo: {e}")));
                }
            });
        }
    });
    echo_all(
        must(
            "listen generic",
            node.listen::<Tagged<Shape>>("generic").await,
        ),
        None,
    );
    say("ready");
    until_eof(commands).await;
}

// ===== wire: messages that do not decode =====

async fn wire(node: Node, commands: Commands) {
    // Sends the `Wire` samples to whoever opens "wire" (as `Strict`), then half-closes.
    let mut wire = must("listen wire", node.listen::<Wire>("wire").await);
    tokio::spawn(async move {
        while let Some(mut session) = wire.accept().await {
            tokio::spawn(async move {
                for message in wire_messages() {
                    must("send wire", session.send(message).await);
                }
                must("close wire", session.close().await);
                while session.next().await.is_some() {}
            });
        }
    });
    // Receives `Wire` messages as `Strict`: echoes what decodes, reports what does not.
    let mut strict = must("listen strict", node.listen::<Strict>("strict").await);
    tokio::spawn(async move {
        while let Some(mut session) = strict.accept().await {
            tokio::spawn(async move {
                while let Some(item) = session.next().await {
                    let answer = match item {
                        Ok(message) => message,
                        Err(SessionError::Codec(e)) => Strict {
                            id: DECODE_ERROR_ID,
                            text: e.to_string(),
                            flag: false,
                        },
                        Err(other) => fatal(format!("strict: {other}")),
                    };
                    must("answer strict", session.send(answer).await);
                }
                must("close strict", session.close().await);
            });
        }
    });
    // Request decode errors: requests arrive as `Strict`.
    let echo_strict = tower::service_fn(|s: Strict| async move { Ok::<_, String>(s) });
    let _strict_rpc = must(
        "serve strict-rpc",
        node.serve::<Strict, Strict, _>("strict-rpc", echo_strict)
            .await,
    );
    // Reply decode errors: a `Wire` reply with flag 0 carries text that is not UTF-8.
    let wire_answer = tower::service_fn(|w: Wire| async move {
        Ok::<_, String>(if w.flag == 0 {
            Wire {
                id: w.id,
                text: vec![0xff, 0xfe, 0xfd],
                flag: 0,
            }
        } else {
            w
        })
    });
    let _wire_rpc = must(
        "serve wire-rpc",
        node.serve::<Wire, Wire, _>("wire-rpc", wire_answer).await,
    );
    say("ready");
    until_eof(commands).await;
}

// ===== half: a request/response peer that half-closes without answering =====

async fn half(node: Node, commands: Commands) {
    let mut listener = must("listen half", node.listen::<RawEnvelope>("half").await);
    say("ready");
    let mut session = listener
        .accept()
        .await
        .unwrap_or_else(|| fatal("no session"));
    let request = session
        .next()
        .await
        .unwrap_or_else(|| fatal("no request"))
        .unwrap_or_else(|e| fatal(format!("request: {e}")));
    say(format!("request {}", request.id()));
    // No reply: only the sending direction ends; the session stays open.
    must("half-close", session.close().await);
    say("half-closed");
    until_eof(commands).await;
    drop(session);
}
