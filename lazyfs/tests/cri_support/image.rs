//! Busybox images built without a daemon: `umoci init/new/unpack`, Debian's static
//! `/bin/busybox` with a symlink per applet, extra files, `umoci repack` (one layer for the
//! base, one more for random files if any), `umoci config` for the entrypoint; pushed to a
//! registry with `skopeo copy`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::run_cmd;
use crate::common::prng_bytes;

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

const TOOL_LIMIT: Duration = Duration::from_secs(300);

/// What goes into a busybox image.
#[derive(Clone, Debug, Default)]
pub struct BusyboxImage {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// (path in the rootfs, contents), in the base layer, mode 0644.
    pub files: Vec<(String, Vec<u8>)>,
    /// (path in the rootfs, size): incompressible pseudo-random files in a second layer.
    pub random: Vec<(String, usize)>,
}

impl BusyboxImage {
    pub fn new(entrypoint: &[&str]) -> BusyboxImage {
        BusyboxImage {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// An image whose entrypoint runs `script` with `/bin/sh -c`.
    pub fn shell(script: &str) -> BusyboxImage {
        Self::new(&["/bin/sh", "-c", script])
    }

    pub fn cmd(mut self, cmd: &[&str]) -> BusyboxImage {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> BusyboxImage {
        self.files.push((path.to_string(), contents.into()));
        self
    }

    /// `count` random files of `size` bytes each, `DIR/blob-N`.
    pub fn random_files(mut self, dir: &str, count: usize, size: usize) -> BusyboxImage {
        for i in 0..count {
            self.random.push((format!("{dir}/blob-{i}"), size));
        }
        self
    }

    /// The contents of the `n`th random file (in the order added) and its path.
    pub fn random_file(&self, n: usize) -> (String, Vec<u8>) {
        let (path, size) = &self.random[n];
        (path.clone(), random_contents(n, *size))
    }

    pub fn random_bytes(&self) -> u64 {
        self.random.iter().map(|(_, n)| *n as u64).sum()
    }

    /// Builds the image as the OCI layout `work/NAME-oci`, tag `t`.
    pub fn build(&self, work: &Path, name: &str) -> OciImage {
        let layout = work.join(format!("{name}-oci"));
        let bundle = work.join(format!("{name}-bundle"));
        let img = OciImage {
            layout,
            tag: "t".into(),
        };
        let spec = img.umoci_spec();
        umoci(&["init", "--layout", path_str(&img.layout)], "umoci init");
        umoci(&["new", "--image", &spec], "umoci new");
        umoci(
            &["unpack", "--image", &spec, path_str(&bundle)],
            "umoci unpack",
        );
        let rootfs = bundle.join("rootfs");
        populate_busybox(&rootfs);
        for (path, contents) in &self.files {
            let p = rootfs.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, contents).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        umoci(
            &["repack", "--image", &spec, path_str(&bundle)],
            "umoci repack (base)",
        );
        if !self.random.is_empty() {
            for (i, (path, size)) in self.random.iter().enumerate() {
                let p = rootfs.join(path.trim_start_matches('/'));
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, random_contents(i, *size)).unwrap();
            }
            umoci(
                &["repack", "--image", &spec, path_str(&bundle)],
                "umoci repack (random files)",
            );
        }
        let mut args = vec![
            "config".to_string(),
            "--image".into(),
            spec.clone(),
            "--config.env".into(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ];
        for e in &self.entrypoint {
            args.extend(["--config.entrypoint".into(), e.clone()]);
        }
        for c in &self.cmd {
            args.extend(["--config.cmd".into(), c.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        umoci(&args, "umoci config");
        let _ = fs::remove_dir_all(&bundle);
        img
    }
}

/// An image in an OCI layout directory.
#[derive(Clone, Debug)]
pub struct OciImage {
    pub layout: PathBuf,
    pub tag: String,
}

impl OciImage {
    fn umoci_spec(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    /// `oci:DIR:TAG`, as skopeo and `shoal-lazyfs convert` name it.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// `skopeo copy` to `dest` (`HOST:PORT/REPO:TAG`, plain http).
    pub fn push(&self, dest: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"])
            .arg(self.oci_ref())
            .arg(format!("docker://{dest}"));
        run_cmd(cmd, TOOL_LIMIT, &format!("skopeo copy to {dest}"));
    }
}

/// The pseudo-random contents of the `n`th random file of an image built by this process.
fn random_contents(n: usize, size: usize) -> Vec<u8> {
    let seed = 0x5eed_0000 + n as u64 + u64::from(std::process::id()) * 7919;
    prng_bytes(seed, size, false)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn umoci(args: &[&str], what: &str) {
    let mut cmd = Command::new("umoci");
    cmd.args(args);
    run_cmd(cmd, TOOL_LIMIT, what);
}

/// `/bin/busybox`, a symlink per applet (`busybox --list-full`), the usual directories and
/// a root user.
fn populate_busybox(rootfs: &Path) {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev", "var",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy /bin/busybox");
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = Command::new(BUSYBOX);
    cmd.arg("--list-full");
    let out = run_cmd(cmd, Duration::from_secs(30), "busybox --list-full");
    let list = String::from_utf8(out.stdout).unwrap();
    let mut n = 0;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = rootfs.join(applet);
        if applet == "bin/busybox" || link.symlink_metadata().is_ok() {
            continue;
        }
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink("/bin/busybox", &link).unwrap();
        n += 1;
    }
    assert!(n > 100, "busybox --list-full listed only {n} applets");
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}
