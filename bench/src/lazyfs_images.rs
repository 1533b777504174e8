//! The images `shoal-bench lazyfs` compares, built from one tree: a regular OCI image
//! (umoci, pushed with skopeo), its lazyfs conversion, and a squashfs image for squashfuse.
//! Plus the check that every tool they need is installed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lazyfs_env::{cmd, dir_bytes, largest_blob, nsenter, run_ok};
use crate::lazyfs_report::Build;
use crate::processes;

/// File name of the squashfs image in the work directory.
pub(crate) const SQFS: &str = "tree.sqfs";

/// `shoal-lazyfs convert dir:DIR LOCAL/NAME:t [--prefetch-list FILE]`, run in the origin
/// namespace so the push goes over its loopback (the shaped link stays idle); returns how
/// long it took.
pub(crate) async fn convert_dir(
    origin_ns: &str,
    lazyfs_bin: &Path,
    dir: &Path,
    local: &str,
    name: &str,
    prefetch_list: Option<&Path>,
) -> Result<Duration> {
    let mut c = nsenter(origin_ns, lazyfs_bin);
    c.arg("convert")
        .arg(format!("dir:{}", dir.display()))
        .arg(format!("{local}/{name}:t"))
        .args(["--insecure-registry", local]);
    if let Some(list) = prefetch_list {
        c.arg("--prefetch-list").arg(list);
    }
    let t = Instant::now();
    run_ok(&mut c).await?;
    Ok(t.elapsed())
}

/// Fails early, naming the Debian package, when a tool the benchmark runs is missing.
pub(crate) fn preflight() -> Result<()> {
    processes::require_root()?;
    for (prog, pkg) in [
        ("docker-registry", "docker-registry"),
        ("umoci", "umoci"),
        ("skopeo", "skopeo"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("mksquashfs", "squashfs-tools"),
        ("squashfuse", "squashfuse"),
        ("fusermount3", "fuse3"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
        ("tc", "iproute2"),
    ] {
        processes::require_program(prog, pkg)?;
    }
    Ok(())
}

/// The regular image (umoci, pushed with skopeo), the lazyfs images (the many-file one
/// only when `many_src` is given) and the squashfs image, all from the same tree.
pub(crate) async fn build_images(
    work: &Path,
    src: &Path,
    many_src: Option<&Path>,
    origin_ns: &str,
    lazyfs_bin: &Path,
    local: &str,
) -> Result<Build> {
    eprintln!("building the regular OCI image (umoci) and pushing it");
    let oci = work.join("oci");
    let bundle = work.join("bundle");
    let img = format!("{}:t", oci.display());
    let t = Instant::now();
    run_ok(cmd("umoci", &["init", "--layout"]).arg(&oci)).await?;
    run_ok(cmd("umoci", &["new", "--image"]).arg(&img)).await?;
    run_ok(
        cmd("umoci", &["unpack", "--rootless", "--image"])
            .arg(&img)
            .arg(&bundle),
    )
    .await?;
    run_ok(
        cmd("cp", &["-a"])
            .arg(format!("{}/.", src.display()))
            .arg(bundle.join("rootfs")),
    )
    .await?;
    run_ok(cmd("umoci", &["repack", "--image"]).arg(&img).arg(&bundle)).await?;
    std::fs::remove_dir_all(&bundle)?;
    run_ok(
        nsenter(origin_ns, "skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:t", oci.display()))
            .arg(format!("docker://{local}/full:t")),
    )
    .await?;
    let oci_build = t.elapsed();
    let gzip_layer_bytes = largest_blob(&oci.join("blobs/sha256"))?;
    std::fs::remove_dir_all(&oci)?;

    eprintln!("converting the tree to lazyfs");
    let convert_time = convert_dir(origin_ns, lazyfs_bin, src, local, "lazy", None).await?;
    if let Some(many_src) = many_src {
        convert_dir(origin_ns, lazyfs_bin, many_src, local, "many", None).await?;
    }
    let registry_bytes = dir_bytes(&work.join("registry"))?;

    eprintln!("building the squashfs image (zstd)");
    let mut c = cmd("mksquashfs", &[]);
    c.arg(src).arg(work.join(SQFS));
    c.args(["-comp", "zstd", "-noappend", "-quiet", "-no-progress"]);
    run_ok(&mut c).await?;
    Ok(Build {
        oci_build,
        gzip_layer_bytes,
        convert_time,
        registry_bytes,
    })
}
