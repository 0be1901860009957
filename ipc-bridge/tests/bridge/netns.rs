//! The two hosts in two network namespaces joined by a veth pair: host A in this test's
//! namespace, host B in a child process inside a new one. Needs root (`ip netns add`);
//! otherwise the test prints a `SKIP` line saying why and checks nothing else.

use std::process::Stdio;

use ipc_bridge::{Bridge, BridgeConfig};
use testkit::child::{CHILD_ENV, CHILD_TEST, MARK};
use testkit::setup::{TestDir, engine, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceExt;

use crate::support::{free_port, zenoh_listen_on};
use crate::{GetQuote, Quote};

/// A network namespace with one end of a veth pair; the other end stays in this namespace.
/// Deleting the namespace (on drop) deletes both ends.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates the namespace and the veth pair: `here_addr` on this side, `there_addr` in
    /// the namespace, one /24.
    fn create(tag: u32, here_addr: &str, there_addr: &str) -> Result<Self, String> {
        let name = format!("shmlink-b{tag}");
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        let (here, there) = (format!("shA{tag}"), format!("shB{tag}"));
        ip(&["link", "add", &here, "type", "veth", "peer", "name", &there])?;
        ip(&["link", "set", &there, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{here_addr}/24"), "dev", &here])?;
        ip(&["link", "set", &here, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{there_addr}/24"), "dev", &there])?;
        inside(&["link", "set", &there, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_two_network_namespaces_joined_by_a_veth_pair() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP netns: not root, cannot create network namespaces");
        return;
    }
    let tag = std::process::id() % 100_000;
    let subnet = 1 + tag % 250;
    let (here_addr, there_addr) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
    let netns = match Netns::create(tag, &here_addr, &there_addr) {
        Ok(netns) => netns,
        Err(e) => {
            println!("SKIP netns: cannot set up two namespaces and a veth pair: {e}");
            return;
        }
    };
    let dir = TestDir::new("bridge-netns-a");
    let engine_a = engine(&dir);
    let port = free_port();
    let ns = format!("netns{tag}");
    let bridge_a = Bridge::start(
        dir.socket(),
        BridgeConfig::new(zenoh_listen_on(&here_addr, port))
            .namespace(&ns)
            .import_service("quotes"),
    )
    .await
    .expect("bridge A");

    // Host B: this binary's child entry, run inside the namespace.
    let exe = std::env::current_exe().expect("current_exe");
    let spec = format!("host-b|{here_addr}|{port}|{ns}|netns");
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(&exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn host B in the namespace");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    within("host B ready", async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(at) = line.find(MARK) {
                let said = &line[at + MARK.len()..];
                assert!(!said.starts_with("FAIL"), "host B: {said}");
                if said.starts_with("OK") {
                    return;
                }
            }
        }
        panic!("host B ended before it was ready");
    })
    .await;

    let mut imported = bridge_a.watch_import("quotes").unwrap();
    within("A serves the import", imported.wait_for(|s| s.served >= 1))
        .await
        .unwrap();
    let web = shmlink::Node::connect(dir.socket(), "web").await.unwrap();
    let client = web.client::<GetQuote, Quote>("quotes").await.unwrap();
    for n in 0..100u64 {
        let quote = within(
            "call",
            client.clone().oneshot(GetQuote {
                sku: format!("ns-{n}"),
                n,
            }),
        )
        .await
        .expect("a call crosses the veth pair");
        assert_eq!(quote.cents, n * 3 + 1);
    }
    drop(child.stdin.take());
    let status = within("host B exits", child.wait()).await.unwrap();
    assert!(status.success(), "host B: {status}");
    bridge_a.shutdown().await;
    engine_a.shutdown().await;
    drop(netns);
}
