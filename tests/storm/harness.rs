//! Running a test body alone in a fresh copy of this binary, like `support::isolate`, but
//! forwarding the copy's report lines (those starting with [`REPORT`]) to the caller's output,
//! so the seed and the numbers of a passing run are visible too.

use std::process::Stdio;

use crate::support::{CHILD_ENV, ISOLATED_ENV};

/// Prefix of the lines an isolated body prints for the caller.
pub(crate) const REPORT: &str = "storm-report: ";

/// Prints a report line (forwarded by [`isolate`]).
pub(crate) fn report(line: impl std::fmt::Display) {
    println!("{REPORT}{line}");
}

/// True in the copy that runs test `name`'s body; in the caller, runs that copy, forwards its
/// report lines, checks that it passed and returns false.
pub(crate) fn isolate(name: &str) -> bool {
    if std::env::var(ISOLATED_ENV).as_deref() == Ok(name) {
        return true;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ISOLATED_ENV, name)
        .env_remove(CHILD_ENV)
        .stdin(Stdio::null())
        .output()
        .expect("run isolated test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines() {
        if let Some(at) = line.find(REPORT) {
            println!("{}", &line[at + REPORT.len()..]);
        }
    }
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "isolated run of {name} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    false
}
