//! Debian's containerd 1.6 with its root, state, sockets, runc state, CNI dirs and registry
//! hosts config under one temp dir, its CRI plugin configured for host-network pods:
//!
//! - `sandbox_image`: a local busybox image (from the test registry, through the peer, the
//!   same snapshotter path as every other image);
//! - `restrict_oom_score_adj = true` (this machine refuses a negative `oom_score_adj`; runc
//!   then fails with only "can't get final child's PID from pipe: EOF");
//! - `containerd.disable_snapshot_annotations = false` (remote snapshotters get the layer
//!   labels; it belongs in the `.containerd` table: at the CRI level it is silently ignored);
//! - the CRI snapshotter: `overlayfs`, or `shoal` as `[proxy_plugins.shoal]`;
//! - runc (`io.containerd.runc.v2`) with its state under the temp dir;
//! - `registry.config_path`: one `hosts.toml` making the peer the only mirror for the
//!   registry host (its `server` is a closed port: a pull that bypassed the peer fails);
//! - empty CNI dirs (host-network pods need no CNI; the plugin only logs that none exists);
//! - its own streaming server port (the default 10010 would clash between tests).
//!
//! Dropping it deletes leftover containers with runc, kills their shims and containerd, and
//! detaches every mount under the temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_testkit::Daemon;

pub use super::config::ContainerdOptions;
use super::config::{config_toml, hosts_toml};
use super::{clean_command, mounts, run_cmd, tail};
use crate::mount_support::free_port;

/// The CRI plugin's containerd namespace.
pub const K8S_NS: &str = "k8s.io";

pub struct Containerd {
    child: Daemon,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub opts: ContainerdOptions,
    runc_root: PathBuf,
}

impl Containerd {
    /// Writes the config, starts containerd (log: `dir/containerd.log`) and waits for its
    /// socket. CRI may answer a moment later: connect with [`super::client::Cri::connect`].
    pub fn start(dir: &Path, opts: ContainerdOptions) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let d = |p: &str| dir.join(p);
        let (sock, log, config, runc_root) = (
            d("containerd.sock"),
            d("containerd.log"),
            d("containerd.toml"),
            d("runc"),
        );
        let certs = d("certs.d");
        for p in [&certs, &d("cni/bin"), &d("cni/conf"), &runc_root] {
            fs::create_dir_all(p).unwrap();
        }
        let host_dir = certs.join(&opts.registry_host);
        fs::create_dir_all(&host_dir).unwrap();
        fs::write(
            host_dir.join("hosts.toml"),
            hosts_toml(&format!("http://127.0.0.1:{}", free_port()), &opts.mirror),
        )
        .unwrap();
        let text = config_toml(dir, &sock, &certs, &runc_root, free_port(), &opts);
        fs::write(&config, text).unwrap();
        let mut cmd = clean_command("containerd");
        cmd.arg("--config").arg(&config);
        let child = Daemon::spawn_logged("containerd", cmd, &log);
        let mut c = Containerd {
            child,
            dir: dir.to_path_buf(),
            sock,
            log,
            config,
            opts,
            runc_root,
        };
        let sock = c.sock.clone();
        c.child
            .wait_until("its socket", Duration::from_secs(60), || sock.exists());
        c
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Whether containerd is still running.
    pub fn alive(&mut self) -> bool {
        self.child.is_running()
    }

    /// Where the runc shim mounts a container's root filesystem.
    pub fn container_rootfs(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(K8S_NS)
            .join(id)
            .join("rootfs")
    }

    /// The built-in overlayfs snapshotter's directory.
    pub fn overlayfs_root(&self) -> PathBuf {
        self.dir.join("root/io.containerd.snapshotter.v1.overlayfs")
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", K8S_NS]);
        cmd
    }

    /// The snapshot keys containerd's metadata holds for the CRI snapshotter
    /// (`ctr snapshots ls`).
    pub fn snapshot_keys(&self) -> Vec<String> {
        let mut cmd = self.ctr();
        cmd.args(["snapshots", "--snapshotter", &self.opts.snapshotter, "ls"]);
        let out = run_cmd(cmd, Duration::from_secs(60), "ctr snapshots ls");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// `ctr snapshots ls` through containerd's proxy to the snapshotter: Ok once containerd
    /// reaches it (after a snapshotter restart), with the output or error otherwise.
    pub fn snapshotter_reachable(&self) -> Result<(), String> {
        let mut cmd = self.ctr();
        cmd.args(["snapshots", "--snapshotter", &self.opts.snapshotter, "ls"])
            .stdin(Stdio::null());
        match cmd.output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "ctr snapshots ls: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("ctr snapshots ls: {e}")),
        }
    }

    /// The image names containerd's metadata holds in the CRI namespace (`ctr images ls -q`).
    pub fn image_names(&self) -> Vec<String> {
        let mut cmd = self.ctr();
        cmd.args(["images", "ls", "-q"]);
        let out = run_cmd(cmd, Duration::from_secs(60), "ctr images ls");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Deletes containers left in runc's state (kill + delete), then kills their shims.
    fn kill_containers(&self) {
        let root = self.runc_root.join(K8S_NS);
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .stderr(Stdio::null())
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for pid in shim_pids(&self.sock) {
            // SAFETY: kill(2) on a shim this containerd started (its -address is our socket).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Dropping `child` afterwards prints containerd's log tail if the test panicked.
        self.kill_containers();
        self.child.kill();
        mounts::detach_all_under(&self.dir);
    }
}

/// Shims started for the containerd listening on `sock`.
fn shim_pids(sock: &Path) -> Vec<i32> {
    let want = sock.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.contains("containerd-shim"))
            && args.windows(2).any(|w| w[0] == "-address" && w[1] == want)
        {
            pids.push(pid);
        }
    }
    pids
}
