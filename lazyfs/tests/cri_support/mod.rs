//! A CRI test kit: pods started the way kubelet starts them, through containerd's CRI gRPC
//! API, from images in a real registry reached through a real `shoal-peer`.
//!
//! - [`image`]: busybox images built with `umoci` from Debian's static `/bin/busybox`
//!   (applet symlinks, an entrypoint, optional extra and random files), pushed with `skopeo`;
//! - [`containerd`]: Debian's containerd 1.6 with everything under a temp dir (CRI plugin,
//!   runc, the peer as the only registry mirror, optionally `shoal-lazyfs snapshotter` as a
//!   proxy snapshotter); killed, its containers deleted and its mounts detached on drop;
//! - [`config`]: its configuration as text (shared with `shoal-bench lazy-pod`);
//! - [`snapshotter`]: `shoal-lazyfs snapshotter` as a process;
//! - [`client`]: a blocking CRI client (every call bounded by a timeout, errors returned);
//! - [`mounts`]: `/proc/self/mountinfo`: mounts under a dir, fs types, overlay lowerdirs;
//! - [`env`]: all of it wired together for one test;
//! - [`flow`]: the steps tests share (run, exec, remove, check all gone, convert, metrics).
//!
//! Needs root, `/dev/fuse` and the Debian packages containerd, runc, umoci, skopeo,
//! docker-registry and busybox-static; [`can_run_cri`] says why not otherwise.
#![allow(dead_code)]

pub mod client;
pub mod config;
pub mod containerd;
pub mod env;
pub mod flow;
pub mod image;
pub mod mounts;
pub mod snapshotter;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{have, is_root};

/// Whether the CRI tests can run here; prints the reason when not.
pub fn can_run_cri() -> bool {
    if !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: needs root and /dev/fuse");
        return false;
    }
    for tool in [
        "containerd",
        "runc",
        "umoci",
        "skopeo",
        "docker-registry",
        "mount",
        "umount",
    ] {
        if !have(tool) {
            eprintln!("SKIP: {tool} is not installed");
            return false;
        }
    }
    if !Path::new(image::BUSYBOX).exists() {
        eprintln!(
            "SKIP: {} is missing (Debian package busybox-static)",
            image::BUSYBOX
        );
        return false;
    }
    true
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {lines} lines) ---\n{}",
        path.display(),
        all[from..].join("\n")
    )
}

/// Runs `cmd` to completion within `limit`; panics naming `what` with its output when it
/// fails or takes longer (then it is killed).
pub fn run_cmd(mut cmd: Command, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawning {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid (not yet reaped: its waiter is blocked).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("{what}: {cmd:?} did not finish within {limit:?}");
        }
    };
    assert!(
        out.status.success(),
        "{what}: {cmd:?} -> {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command with the test runner's Shoal and proxy settings removed from its environment.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    shoal_testkit::hermetic_env(&mut cmd);
    cmd
}
