//! The images of `shoal-bench lazy-pod` (see `lazy_pod`), built once per set of parameters
//! and kept in a cache directory, because generating, gzipping and converting a GiB takes
//! minutes that the runs themselves do not need:
//! - `full`: busybox (Debian's static `/bin/busybox` with a symlink per applet) plus
//!   `/startup.sh` and `/startup.list` in one layer, and SIZE of pseudo-random (so
//!   incompressible) files under `/data/dNNN/` in a second; built with umoci, pushed with
//!   skopeo. Its entrypoint reads every file of the list (every Nth data file) and prints
//!   how many bytes it read, so the harness can tell a complete read from a short one.
//! - `lazy`: `shoal-lazyfs convert` of `full`, registry to registry;
//! - `pause`: busybox whose entrypoint sleeps, the pods' sandbox image.
//!
//! Everything is pushed over the origin namespace's loopback, never the shaped link. The
//! registry's storage directory is the cache; a `done` file marks a complete build, so an
//! interrupted one is rebuilt from scratch.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::lazyfs_env::{cmd, nsenter, run_ok};

/// Repositories in the origin's registry (tag `t`).
pub(crate) const FULL_REPO: &str = "shoal-bench/full";
pub(crate) const LAZY_REPO: &str = "shoal-bench/lazy";
pub(crate) const PAUSE_REPO: &str = "shoal-bench/pause";

/// Debian's busybox-static.
const BUSYBOX: &str = "/bin/busybox";
/// Data files per directory ("many directories": a tree walk, not one flat dir).
const FILES_PER_DIR: u64 = 100;
/// Bumped when what is built changes, so an old cache is not reused.
const FORMAT: u32 = 1;

/// The entrypoint: `pipefail` makes a failed `cat` (an EIO from a lazy read) fail the
/// container instead of printing a short count.
const STARTUP_SH: &str = "set -e -o pipefail\n\
                          n=$(xargs cat < /startup.list | wc -c)\n\
                          echo \"shoal-startup-bytes $n\"\n";

/// What the images are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageParams {
    pub(crate) size_mib: u64,
    pub(crate) file_kib: u64,
    /// The startup set: every `every`-th data file, starting with the first.
    pub(crate) every: u64,
    /// Convert with the startup list as `--prefetch-list` (its files first in the blob).
    pub(crate) startup_first: bool,
}

impl ImageParams {
    pub(crate) fn files(&self) -> u64 {
        (self.size_mib << 10) / self.file_kib
    }

    pub(crate) fn file_bytes(&self) -> u64 {
        self.file_kib << 10
    }

    fn path(&self, i: u64) -> String {
        format!("data/d{:03}/f{i:05}", i / FILES_PER_DIR)
    }

    fn startup_paths(&self) -> Vec<String> {
        (0..self.files())
            .step_by(self.every as usize)
            .map(|i| self.path(i))
            .collect()
    }

    /// The cache directory's name under the work directory.
    fn key(&self) -> String {
        format!(
            "lazy-pod-images-v{FORMAT}-{}m-{}k-e{}{}",
            self.size_mib,
            self.file_kib,
            self.every,
            if self.startup_first { "-first" } else { "" }
        )
    }
}

/// What was built, kept beside the cache as `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageMeta {
    pub(crate) params: ImageParams,
    pub(crate) files: u64,
    pub(crate) data_bytes: u64,
    pub(crate) set_files: u64,
    /// What the entrypoint reads (and must report).
    pub(crate) set_bytes: u64,
    /// Config + layers as stored in the registry.
    pub(crate) full_blob_bytes: u64,
    pub(crate) lazy_blob_bytes: u64,
    pub(crate) build_s: f64,
    pub(crate) convert_s: f64,
}

/// The cache directory for `params` under `work`; holds `registry/` (the registry's storage).
pub(crate) fn cache_dir(work: &Path, params: &ImageParams) -> PathBuf {
    work.join(params.key())
}

/// The metadata of a complete earlier build in `cache`, if there is one.
pub(crate) fn cached(cache: &Path) -> Option<ImageMeta> {
    if !cache.join("done").is_file() {
        return None;
    }
    let bytes = std::fs::read(cache.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes an incomplete build's leftovers so the registry starts on empty storage.
pub(crate) fn clear_incomplete(cache: &Path) -> Result<()> {
    if cache.exists() && cached(cache).is_none() {
        std::fs::remove_dir_all(cache)
            .with_context(|| format!("removing the incomplete build {}", cache.display()))?;
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))
}

/// Builds the three images and pushes them to the registry listening on the origin
/// namespace's `127.0.0.1:port`; writes `meta.json` and `done` into `cache`.
pub(crate) async fn build(
    cache: &Path,
    params: ImageParams,
    origin_ns: &str,
    port: u16,
    lazyfs_bin: &Path,
    note: impl Fn(String),
) -> Result<ImageMeta> {
    let local = format!("127.0.0.1:{port}");
    let scratch = cache.join("build");
    std::fs::create_dir_all(&scratch)?;
    let started = Instant::now();

    note("building the sandbox image".into());
    let pause = scratch.join("pause");
    busybox_image(&pause, |_| Ok(())).await?;
    set_entrypoint(&pause, &["/bin/sleep", "86400"]).await?;
    push(origin_ns, &pause, &format!("{local}/{PAUSE_REPO}:t")).await?;

    note(format!(
        "building the full image: {} files of {} KiB, startup set every {}th",
        params.files(),
        params.file_kib,
        params.every
    ));
    let full = scratch.join("full");
    let list: String = params
        .startup_paths()
        .iter()
        .map(|p| format!("/{p}\n"))
        .collect();
    busybox_image(&full, |rootfs| {
        write_file(&rootfs.join("startup.sh"), STARTUP_SH.as_bytes())?;
        write_file(&rootfs.join("startup.list"), list.as_bytes())
    })
    .await?;
    let rootfs = full.join("bundle/rootfs");
    let gen = tokio::task::spawn_blocking(move || random_files(&rootfs, params));
    gen.await.context("generating the data files")??;
    umoci_repack(&full).await?;
    set_entrypoint(&full, &["/bin/sh", "/startup.sh"]).await?;
    std::fs::remove_dir_all(full.join("bundle"))?;
    push(origin_ns, &full, &format!("{local}/{FULL_REPO}:t")).await?;
    let build_s = started.elapsed().as_secs_f64();

    note("converting it (shoal-lazyfs convert, registry to registry)".into());
    let prefetch = cache.join("startup-relative.txt");
    let relative: String = params
        .startup_paths()
        .iter()
        .map(|p| format!("{p}\n"))
        .collect();
    std::fs::write(&prefetch, relative)?;
    let t = Instant::now();
    let mut c = nsenter(origin_ns, lazyfs_bin);
    c.args(["convert", "-q", "--insecure-registry", &local])
        .arg(format!("{local}/{FULL_REPO}:t"))
        .arg(format!("{local}/{LAZY_REPO}:t"));
    if params.startup_first {
        c.arg("--prefetch-list").arg(&prefetch);
    }
    run_ok(&mut c).await?;
    let convert_s = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&scratch)?;

    let set_files = params.startup_paths().len() as u64;
    let meta = ImageMeta {
        params,
        files: params.files(),
        data_bytes: params.files() * params.file_bytes(),
        set_files,
        set_bytes: set_files * params.file_bytes(),
        full_blob_bytes: image_bytes(origin_ns, &format!("{local}/{FULL_REPO}:t")).await?,
        lazy_blob_bytes: image_bytes(origin_ns, &format!("{local}/{LAZY_REPO}:t")).await?,
        build_s,
        convert_s,
    };
    std::fs::write(cache.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    std::fs::write(cache.join("done"), b"")?;
    Ok(meta)
}

/// `umoci init/new/unpack` into `dir/layout` and `dir/bundle`, busybox and `extra` in the
/// rootfs, and a first `repack`. The bundle stays for more files.
async fn busybox_image(dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let spec = format!("{}:t", layout.display());
    run_ok(cmd("umoci", &["init", "--layout"]).arg(&layout)).await?;
    run_ok(&mut cmd("umoci", &["new", "--image", &spec])).await?;
    run_ok(cmd("umoci", &["unpack", "--image", &spec]).arg(&bundle)).await?;
    let rootfs = bundle.join("rootfs");
    populate_busybox(&rootfs)?;
    extra(&rootfs)?;
    umoci_repack(dir).await
}

/// Adds a layer with whatever changed in `dir/bundle/rootfs`.
async fn umoci_repack(dir: &Path) -> Result<()> {
    let spec = format!("{}:t", dir.join("layout").display());
    run_ok(cmd("umoci", &["repack", "--image", &spec]).arg(dir.join("bundle"))).await
}

/// Sets the entrypoint and PATH. After the last repack: a repack starts from the manifest
/// the bundle was unpacked from, so it would drop an earlier `umoci config`.
async fn set_entrypoint(dir: &Path, entrypoint: &[&str]) -> Result<()> {
    let spec = format!("{}:t", dir.join("layout").display());
    let mut c = cmd("umoci", &["config", "--image", &spec]);
    c.args(["--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    for e in entrypoint {
        c.args(["--config.entrypoint", e]);
    }
    run_ok(&mut c).await
}

/// `skopeo copy` of `dir/layout` to `dest` (`HOST:PORT/REPO:TAG`) from the origin namespace.
async fn push(origin_ns: &str, dir: &Path, dest: &str) -> Result<()> {
    let mut c = nsenter(origin_ns, "skopeo");
    c.args(["copy", "-q", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", dir.join("layout").display()))
        .arg(format!("docker://{dest}"));
    run_ok(&mut c).await
}

/// Config + layer bytes of `reference` as the registry stores them (`skopeo inspect --raw`;
/// an index counts its first manifest).
async fn image_bytes(origin_ns: &str, reference: &str) -> Result<u64> {
    let raw = |r: String| async move {
        let out = tokio::process::Command::from({
            let mut c = nsenter(origin_ns, "skopeo");
            c.args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{r}"));
            c
        })
        .output()
        .await
        .context("running skopeo inspect")?;
        if !out.status.success() {
            bail!(
                "skopeo inspect {r}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .with_context(|| format!("the manifest of {r}"))
    };
    let mut m = raw(reference.to_owned()).await?;
    if let Some(first) = m["manifests"].as_array().and_then(|l| l.first()) {
        let digest = first["digest"]
            .as_str()
            .context("an index entry without digest")?;
        let repo = reference
            .rsplit_once(':')
            .map_or(reference, |(repo, _tag)| repo);
        m = raw(format!("{repo}@{digest}")).await?;
    }
    let size = |d: &serde_json::Value| d["size"].as_u64().unwrap_or(0);
    let layers: u64 = m["layers"]
        .as_array()
        .map_or(0, |l| l.iter().map(size).sum());
    Ok(size(&m["config"]) + layers)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The data files, random bytes (a fresh stream per build: nothing compares them, and the
/// image is cached rather than rebuilt).
fn random_files(rootfs: &Path, params: ImageParams) -> Result<()> {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; params.file_bytes() as usize];
    for i in 0..params.files() {
        let path = rootfs.join(params.path(i));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        rng.fill_bytes(&mut buf);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&buf)?;
    }
    Ok(())
}

/// `/bin/busybox`, a symlink per applet (`busybox --list-full`), the usual directories and
/// a root user, as in the CRI test kit's images.
fn populate_busybox(rootfs: &Path) -> Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let bb = rootfs.join("bin/busybox");
    std::fs::copy(BUSYBOX, &bb).with_context(|| {
        format!("copying {BUSYBOX} (install the Debian package busybox-static)")
    })?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))?;
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    let list = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = rootfs.join(applet);
        if applet == "bin/busybox" || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        symlink("/bin/busybox", &link)?;
        n += 1;
    }
    if n < 100 {
        bail!("busybox --list-full listed only {n} applets");
    }
    write_file(
        &rootfs.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    write_file(&rootfs.join("etc/group"), b"root:x:0:\nnogroup:x:65534:\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_set_is_every_nth_file() {
        let p = ImageParams {
            size_mib: 32,
            file_kib: 64,
            every: 20,
            startup_first: false,
        };
        assert_eq!(p.files(), 512);
        let set = p.startup_paths();
        assert_eq!(set.len(), 26);
        assert_eq!(set[0], "data/d000/f00000");
        assert_eq!(set[5], "data/d001/f00100");
        assert_eq!(p.key(), "lazy-pod-images-v1-32m-64k-e20");
    }
}
