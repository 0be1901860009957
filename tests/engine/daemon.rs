//! `shmlinkd`'s command line (issue 9, item 7): `--help` and `--version` print on stdout and
//! exit 0; a bad flag prints the usage on stderr and exits 2. Runs the built binary.

use std::process::{Command, Output};

fn shmlinkd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmlinkd"))
        .args(args)
        // A daemon that wrongly started would wait for a signal: give it nowhere to listen.
        .env(
            "SHMLINK_SOCKET",
            "/nonexistent-shmlink-test/a/b/engine.sock",
        )
        .output()
        .expect("run shmlinkd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn help_prints_on_stdout_and_exits_0() {
    for flag in ["--help", "-h"] {
        let out = shmlinkd(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("shmlinkd: "), "{flag}: {stdout}");
        for option in [
            "--socket",
            "--tx-arena",
            "--rx-arena",
            "--min-block",
            "--ring",
            "--credits",
            "--allow-uid",
            "--spin-us",
            "--log",
            "--help",
            "--version",
            "SHMLINK_SOCKET",
        ] {
            assert!(
                stdout.contains(option),
                "{flag}: help lacks {option}: {stdout}"
            );
        }
        assert_eq!(text(&out.stderr), "", "{flag}: nothing on stderr");
    }
    // Help wins wherever it stands, even after other flags.
    let out = shmlinkd(&["--credits", "8", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("Usage: shmlinkd"));
}

#[test]
fn version_prints_on_stdout_and_exits_0() {
    for flag in ["--version", "-V"] {
        let out = shmlinkd(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert_eq!(
            text(&out.stdout),
            format!("shmlinkd {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(text(&out.stderr), "");
    }
}

#[test]
fn a_bad_flag_prints_the_usage_on_stderr_and_exits_2() {
    let out = shmlinkd(&["--no-such-flag", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown flag --no-such-flag"), "{stderr}");
    assert!(stderr.contains("usage: shmlinkd"), "{stderr}");
    let out = shmlinkd(&["--socket"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("--socket needs a value"));
}
