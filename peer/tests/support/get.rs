//! Running `shoal-peer get` as a child process.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use shoal_common::Digest;

use super::{hermetic_env, peer_bin, Peer};

// ---------------------------------------------------------------------------------------------
// `shoal-peer get`

#[derive(Debug)]
pub struct GetOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl GetOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command's output unless it succeeded.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what}: shoal-peer get failed with {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Panics unless it failed with a message on stderr.
    pub fn assert_failure(&self, what: &str) {
        assert!(
            !self.success(),
            "{what}: shoal-peer get succeeded but should have failed\nstderr:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "{what}: shoal-peer get failed without a message on stderr"
        );
    }
}

/// The `shoal-peer get URL -o OUT [--digest D] --peer MIRROR` command, killed if dropped.
pub fn get_command(
    mirror_url: &str,
    url: &str,
    digest: Option<&str>,
    out: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(peer_bin());
    cmd.arg("get").arg(url).arg("-o").arg(out);
    if let Some(d) = digest {
        cmd.arg("--digest").arg(d);
    }
    cmd.arg("--peer").arg(mirror_url);
    hermetic_env(cmd.as_std_mut());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `shoal-peer get` through `peer` in the background (its output is drained while it
/// runs, so several can run at once). The process is killed if the task is dropped.
pub fn spawn_get(
    peer: &Peer,
    url: &str,
    digest: Option<&Digest>,
    out: &Path,
) -> tokio::task::JoinHandle<GetOutput> {
    let (mirror, url, digest, out) = (
        peer.mirror_url(),
        url.to_string(),
        digest.map(|d| d.to_string()),
        out.to_path_buf(),
    );
    tokio::spawn(async move { get_raw(&mirror, &url, digest.as_deref(), &out).await })
}

/// Runs `shoal-peer get` through `peer` (at most 5 minutes).
pub async fn get(peer: &Peer, url: &str, digest: Option<&Digest>, out: &Path) -> GetOutput {
    let digest = digest.map(|d| d.to_string());
    get_raw(&peer.mirror_url(), url, digest.as_deref(), out).await
}

/// Runs `shoal-peer get` with a raw digest string and peer URL (at most 5 minutes).
pub async fn get_raw(mirror_url: &str, url: &str, digest: Option<&str>, out: &Path) -> GetOutput {
    let child = get_command(mirror_url, url, digest, out)
        .spawn()
        .expect("spawn shoal-peer get");
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shoal-peer get {url} did not finish within 5 minutes"))
        .expect("wait for shoal-peer get");
    GetOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
