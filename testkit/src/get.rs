//! Running `shoal-peer get` as a child process, always within a time limit: the client of
//! the end-to-end tests and of `shoal-bench faults`.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use shoal_common::Digest;

use crate::shoal::Peer;
use crate::{hermetic_env, workspace_bin};

/// The longest a `shoal-peer get` may run before it is killed and the caller panics.
const GET_TIMEOUT: Duration = Duration::from_secs(300);

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

/// The `BIN get URL -o OUT [--digest D] --peer MIRROR` command, killed if dropped.
pub fn get_command(
    bin: &Path,
    mirror_url: &str,
    url: &str,
    digest: Option<&str>,
    out: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
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
    let (bin, mirror, url, digest, out) = (
        peer.bin.clone(),
        peer.mirror_url(),
        url.to_string(),
        digest.map(|d| d.to_string()),
        out.to_path_buf(),
    );
    tokio::spawn(async move { get_with(&bin, &mirror, &url, digest.as_deref(), &out).await })
}

/// Runs `shoal-peer get` through `peer` (at most 5 minutes), with `peer`'s binary.
pub async fn get(peer: &Peer, url: &str, digest: Option<&Digest>, out: &Path) -> GetOutput {
    let digest = digest.map(|d| d.to_string());
    get_with(&peer.bin, &peer.mirror_url(), url, digest.as_deref(), out).await
}

/// Runs the workspace's `shoal-peer get` with a raw digest string and peer URL (at most 5
/// minutes).
pub async fn get_raw(mirror_url: &str, url: &str, digest: Option<&str>, out: &Path) -> GetOutput {
    get_with(&workspace_bin("shoal-peer"), mirror_url, url, digest, out).await
}

/// Runs `BIN get` with a raw digest string and peer URL (at most 5 minutes).
pub async fn get_with(
    bin: &Path,
    mirror_url: &str,
    url: &str,
    digest: Option<&str>,
    out: &Path,
) -> GetOutput {
    let child = get_command(bin, mirror_url, url, digest, out)
        .spawn()
        .expect("spawn shoal-peer get");
    let output = tokio::time::timeout(GET_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shoal-peer get {url} did not finish within 5 minutes"))
        .expect("wait for shoal-peer get");
    GetOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
