//! What the benchmarks' smoke tests share: the shoal-bench binary, prerequisites that fail
//! with what to do (CI has them all, so a silent skip would only hide breakage), running a
//! subcommand for its JSON report, and checks that nothing is left behind.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BENCH: &str = env!("CARGO_BIN_EXE_shoal-bench");

pub fn bin_dir() -> PathBuf {
    Path::new(BENCH)
        .parent()
        .expect("the bench binary has a directory")
        .to_owned()
}

/// Root, or fail saying why `what` needs it.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{what} needs root; CI runs as root");
}

pub fn require_binaries(names: &[&str]) {
    for name in names {
        let path = bin_dir().join(name);
        assert!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace --bins` before the tests",
            path.display()
        );
    }
}

/// Each (program, Debian package) must be on PATH.
pub fn require_programs(programs: &[(&str, &str)]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in programs {
        assert!(
            std::env::split_paths(&path).any(|d| d.join(program).is_file()),
            "`{program}` is not on PATH: install the Debian package {package} (.ci/run does)"
        );
    }
}

/// Runs `shoal-bench ARGS`, which must succeed; its stdout and the JSON report in it.
pub fn run(args: &[&str]) -> (String, Value) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BENCH)
        .args(args)
        .output()
        .expect("running shoal-bench");
    let stderr = String::from_utf8_lossy(&stderr);
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "shoal-bench {args:?} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Subcommands that print a table first put the JSON after it, on a line of its own.
    let json = if stdout.starts_with('{') {
        &stdout[..]
    } else {
        stdout.find("\n{").map_or(&stdout[..], |i| &stdout[i + 1..])
    };
    let report = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    (stdout, report)
}

/// The JSON report of `shoal-bench ARGS`.
pub fn run_json(args: &[&str]) -> Value {
    run(args).1
}

/// No mount is left under a work directory named `work_dir` (`shoal-bench-NAME`).
pub fn assert_no_mounts_left(work_dir: &str) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(!mounts.contains(work_dir), "leftover mounts:\n{mounts}");
}

/// The number at a dotted `path` of a report.
pub fn num(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}
