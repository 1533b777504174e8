//! A real containerd (Debian's 1.6) with its own root, state and socket under a temp dir;
//! killed and its mounts unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{run, wait_for, Daemon};

pub struct Containerd {
    child: Daemon,
    pub dir: PathBuf,
    pub sock: PathBuf,
}

impl Containerd {
    /// Starts containerd with everything under `dir` and waits for its socket.
    pub async fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
                dir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let child = Daemon::spawn_logged("containerd", cmd, &dir.join("log"));
        let c = Containerd {
            child,
            dir: dir.to_path_buf(),
            sock: sock.clone(),
        };
        wait_for("containerd socket", Duration::from_secs(30), || {
            let s = sock.clone();
            async move { s.exists().then_some(()) }
        })
        .await;
        c
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.sock);
        cmd
    }

    /// `ctr images pull --hosts-dir CERTS REF` (blocking; run it off the async threads).
    pub fn pull(&self, certs: &Path, reference: &str) -> String {
        run(self
            .ctr()
            .args(["images", "pull", "--hosts-dir"])
            .arg(certs)
            .arg(reference))
    }

    /// Mounts the unpacked image at a fresh dir, reads `files`, unmounts; returns contents.
    pub fn read_files(&self, reference: &str, files: &[&str]) -> Vec<Vec<u8>> {
        let target = self.dir.join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        run(self.ctr().args(["images", "mount", reference]).arg(&target));
        let out = files
            .iter()
            .map(|f| std::fs::read(target.join(f)).unwrap_or_default())
            .collect();
        let _ = self.ctr().args(["images", "unmount"]).arg(&target).status();
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.child.kill();
        // Unmount anything left under the dir (snapshots, image mounts), deepest first.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep ' {0}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .status();
    }
}
