//! Issue 18's acceptance tests: pods start from lazy images through containerd's CRI API,
//! exactly as kubelet drives it (PullImage, RunPodSandbox, CreateContainer, StartContainer,
//! ContainerStatus, Stop/Remove, RemoveImage), with `shoal-lazyfs snapshotter` as
//! containerd's remote snapshotter (`[proxy_plugins.shoal]`).
//!
//! Real processes (root, `/dev/fuse`, Debian's containerd 1.6, runc, umoci, skopeo,
//! docker-registry and busybox-static required; skipped otherwise): a registry behind a
//! byte-counting proxy, a `shoal-peer` as containerd's only mirror, the snapshotter,
//! containerd; see `cri_support`.
//!
//! - `normal_image_runs_through_cri_overlayfs`: the kit itself, with containerd's overlayfs
//!   snapshotter: a plain busybox image runs, its log is what it printed, exit codes are
//!   reported, a missing image fails to pull, and nothing stays mounted afterwards;
//! - `normal_image_runs_through_cri`: the same through the shoal snapshotter (a plain image,
//!   and the sandbox image, go through it too);
//! - `lazy_image_runs_through_cri`: a converted lazyfs image of busybox plus 64 MiB of random
//!   files the entrypoint never reads runs; its container's root overlay has a FUSE lower
//!   under the snapshotter's root; the registry sent under 10 % of the image's blob bytes;
//!   the snapshotter's `/metrics` counted a `prepare` answered `exists` for every lazy layer
//!   and shows the image's mount (labelled `image="HOST/REPO@sha256:…"`) served reads;
//!   after removal and containerd's GC no FUSE mount, mount process and snapshot is left.
//!
//! Faults (snapshotter and mount restarts, broken images) are in `cri_faults.rs`.

mod common;
mod cri_support;
mod mount_support;

use std::time::Instant;

use cri_support::can_run_cri;
use cri_support::client::log_text;
use cri_support::env::{CriEnv, SnapshotterKind};
use cri_support::flow::{
    assert_all_gone, blob_bytes, convert, lazy_layers, manifest_and_digest, needs_snapshotter,
    nonce, remove_container, remove_pod, run_to_exit, settle, start_idle,
};
use cri_support::image::BusyboxImage;
use cri_support::mounts::{self, describe};
use shoal_testkit::{parse_metrics, sum_of};

const MIB: usize = 1 << 20;

#[test]
fn normal_image_runs_through_cri_overlayfs() {
    if !can_run_cri() {
        return;
    }
    normal_image(SnapshotterKind::Overlayfs);
}

#[test]
fn normal_image_runs_through_cri() {
    if !needs_snapshotter() {
        return;
    }
    normal_image(SnapshotterKind::Shoal);
}

fn normal_image(kind: SnapshotterKind) {
    let t0 = Instant::now();
    let env = CriEnv::start(kind);
    let cri = &env.cri;
    let version = env.ok(cri.version(), "Version");
    // No CNI config: the runtime is ready, the network is not (host-network pods need none).
    let conditions = env.ok(cri.conditions(), "Status");
    env.check(conditions.get("RuntimeReady").is_some_and(|c| c.0), || {
        format!("runtime conditions: {conditions:?}")
    });
    let line = format!("hello from a normal image {}", nonce());
    let image = BusyboxImage::shell(&format!("echo '{line}'; cat /etc/shoal-normal"))
        .file("etc/shoal-normal", format!("{line} (file)\n"));
    let (_oci, image_ref) = env.build_and_push(&image, "shoal-test/normal:1");
    let setup = t0.elapsed();

    // A tag the registry does not have fails to pull (through the peer; the fallback
    // server is a closed port).
    let missing = env.image_ref("shoal-test/normal:missing");
    let err = cri.pull_image(&missing);
    env.check(err.is_err(), || format!("pulling {missing} succeeded"));

    let t = Instant::now();
    let image_id = env.ok(cri.pull_image(&image_ref), "PullImage");
    let pull = t.elapsed();
    env.check(image_id.starts_with("sha256:"), || {
        format!("PullImage gave {image_id:?}")
    });
    let status_id = env.ok(cri.image_id(&image_ref), "ImageStatus");
    env.check(status_id.as_deref() == Some(image_id.as_str()), || {
        format!("ImageStatus {status_id:?} != PullImage {image_id}")
    });

    let pod = env.ok(
        cri.run_pod_sandbox("normal", &env.dir().join("pods/normal")),
        "RunPodSandbox",
    );
    let t = Instant::now();
    let (main, exit) = run_to_exit(&env, &pod, &image_ref, "main", None);
    let run = t.elapsed();
    env.check(exit == 0, || format!("the entrypoint exited with {exit}"));
    let log = env.ok(log_text(&pod.log_dir.join("main.log")), "container log");
    env.check(log == format!("{line}\n{line} (file)\n"), || {
        format!("log of the entrypoint: {log:?}")
    });

    // Exit codes are the process's, and command/args override the image's.
    let (failing, exit) = run_to_exit(
        &env,
        &pod,
        &image_ref,
        "failing",
        Some(&["/bin/sh", "-c", "echo \"$0 $1\" >&2; exit 7", "a", "b"]),
    );
    env.check(exit == 7, || format!("`exit 7` exited with {exit}"));
    let log = env.ok(log_text(&pod.log_dir.join("failing.log")), "log");
    env.check(log == "a b\n", || format!("log of the override: {log:?}"));

    // A running container's root is an overlay whose lowers are the snapshotter's.
    let idle = start_idle(&env, &pod, &image_ref, "idle");
    let rootfs = env.containerd.container_rootfs(&idle);
    let lowers = mounts::overlay_lowers(&rootfs);
    let root = env.snapshotter_root();
    env.check(
        lowers.as_ref().is_some_and(|l| {
            !l.is_empty()
                && l.iter().all(|(p, m)| {
                    p.starts_with(&root) && m.as_ref().is_some_and(|m| !m.is_fuse())
                })
        }),
        || {
            format!(
                "the root of a plain image's container should be an overlay of lowers under {}: {lowers:?}\n{}",
                root.display(),
                describe(&mounts::all_mounts())
            )
        },
    );

    for id in [&main, &failing, &idle] {
        remove_container(&env, id);
    }
    remove_pod(&env, &pod);
    env.ok(cri.remove_image(&image_ref), "RemoveImage");
    let gone = env.ok(cri.image_id(&image_ref), "ImageStatus");
    env.check(gone.is_none(), || format!("image still there: {gone:?}"));
    env.ok(
        cri.remove_image(&env.sandbox_image),
        "RemoveImage (sandbox)",
    );
    assert_all_gone(&env);
    eprintln!("{kind:?}: runtime conditions {conditions:?}");
    eprintln!(
        "{kind:?} ({version}): setup {setup:.1?}, pull {pull:.1?}, run to exit {run:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[test]
fn lazy_image_runs_through_cri() {
    if !needs_snapshotter() {
        return;
    }
    let t0 = Instant::now();
    let env = CriEnv::start(SnapshotterKind::Shoal);
    let cri = &env.cri;
    let motd = format!("motd of a lazy image {}\n", nonce());
    let image = BusyboxImage::shell("echo shoal-lazy-ok; cat /etc/motd-shoal")
        .file("etc/motd-shoal", motd.clone())
        .random_files("opt/bulk", 4, 16 * MIB);
    let random = image.random_bytes();
    env.build_and_push(&image, "shoal-test/src:1");
    convert(&env, "shoal-test/src:1", "shoal-test/lazy:1");
    let image_ref = env.image_ref("shoal-test/lazy:1");
    let (lazy_manifest, manifest_digest) =
        manifest_and_digest(&env.registry.addr, "shoal-test/lazy", "1");
    let blob_bytes = blob_bytes(&lazy_manifest);
    assert!(
        blob_bytes >= random,
        "the lazy image's blobs ({blob_bytes} B) are smaller than its random files ({random} B)"
    );
    let lazy_layer_count = lazy_layers(&lazy_manifest).len();
    assert!(
        lazy_layer_count >= 2,
        "the converted image has {lazy_layer_count} layers marked for the snapshotter: {lazy_manifest}"
    );
    let setup = t0.elapsed();

    // The sandbox (and its image) first: the proxy then counts the lazy image alone.
    let pod = env.ok(
        cri.run_pod_sandbox("lazy", &env.dir().join("pods/lazy")),
        "RunPodSandbox",
    );
    settle(&env);
    let before = env.proxy.bytes();
    let t = Instant::now();
    env.ok(cri.pull_image(&image_ref), "PullImage (lazy)");
    let pull = t.elapsed();
    let t = Instant::now();
    let (main, exit) = run_to_exit(&env, &pod, &image_ref, "main", None);
    let run = t.elapsed();
    env.check(exit == 0, || format!("the entrypoint exited with {exit}"));
    let log = env.ok(log_text(&pod.log_dir.join("main.log")), "container log");
    env.check(log == format!("shoal-lazy-ok\n{motd}"), || {
        format!("log of the entrypoint: {log:?}")
    });

    // While a container of the image runs, its root overlay has a FUSE lower under the
    // snapshotter's root.
    let idle = start_idle(&env, &pod, &image_ref, "idle");
    let rootfs = env.containerd.container_rootfs(&idle);
    let root = env.snapshotter_root();
    let lowers = mounts::overlay_lowers(&rootfs);
    env.check(
        lowers.as_ref().is_some_and(|l| {
            l.iter().any(|(p, m)| {
                p.starts_with(&root)
                    && m.as_ref()
                        .is_some_and(|m| m.is_fuse() && m.mount_point.starts_with(&root))
            })
        }),
        || {
            format!(
                "no FUSE lower under {} in the container's root overlay: {lowers:?}\n{}",
                root.display(),
                describe(&mounts::mounts_under(&env.dir()))
            )
        },
    );
    settle(&env);
    let sent = env.proxy.bytes() - before;
    eprintln!(
        "lazy image: {blob_bytes} B of blobs ({random} B random); the registry sent {sent} B ({:.2} %) for pull + run",
        sent as f64 * 100.0 / blob_bytes as f64
    );
    env.check(sent * 10 < blob_bytes, || {
        format!("the registry sent {sent} B for an image of {blob_bytes} B: layers were downloaded")
    });

    // The snapshotter's /metrics: every lazy layer was answered "exists" (nothing
    // unpacked), and the image's mount, labelled with the image, served the reads.
    let text = env.snapshotter.as_ref().unwrap().scrape();
    let samples = parse_metrics(&text);
    let exists = sum_of(
        &samples,
        "shoal_snapshotter_operations_total",
        &[("op", "prepare"), ("result", "exists")],
    );
    env.check(exists >= lazy_layer_count as f64, || {
        format!(
            "prepare → exists counted {exists} times for {lazy_layer_count} lazy layers:\n{text}"
        )
    });
    let image_label = format!("{}/shoal-test/lazy@{manifest_digest}", env.host);
    let read = sum_of(
        &samples,
        "shoal_lazyfs_read_bytes_total",
        &[("image", &image_label)],
    );
    env.check(read > 0.0, || {
        format!("shoal_lazyfs_read_bytes_total{{image=\"{image_label}\"}} is {read} after the container ran:\n{text}")
    });
    eprintln!("lazy image: prepare → exists {exists} ({lazy_layer_count} lazy layers), {read} B read through the mount");
    // One lazy image on the node: one mount, however many containers and layers.
    let mounts = sum_of(&samples, "shoal_snapshotter_lazy_mounts", &[]);
    env.check(mounts == 1.0, || {
        format!("shoal_snapshotter_lazy_mounts is {mounts} with one lazy image:\n{text}")
    });

    for id in [&main, &idle] {
        remove_container(&env, id);
    }
    remove_pod(&env, &pod);
    env.ok(cri.remove_image(&image_ref), "RemoveImage");
    env.ok(
        cri.remove_image(&env.sandbox_image),
        "RemoveImage (sandbox)",
    );
    assert_all_gone(&env);
    let text = env.snapshotter.as_ref().unwrap().scrape();
    let mounts = sum_of(&parse_metrics(&text), "shoal_snapshotter_lazy_mounts", &[]);
    env.check(mounts == 0.0, || {
        format!("shoal_snapshotter_lazy_mounts is {mounts} after the image was removed:\n{text}")
    });
    eprintln!(
        "lazy: setup {setup:.1?}, pull {pull:.1?}, run to exit {run:.1?}, total {:.1?}",
        t0.elapsed()
    );
}
