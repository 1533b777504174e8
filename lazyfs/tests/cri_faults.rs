//! Issue 18's acceptance tests for faults around `shoal-lazyfs snapshotter`, driven through
//! containerd's CRI API with the kit in `cri_support` (root, `/dev/fuse`, containerd 1.6,
//! runc, umoci, skopeo, docker-registry and busybox-static required; skipped otherwise):
//!
//! - `snapshotter_restart_keeps_lazy_containers_working`: the snapshotter is SIGKILLed while
//!   a container of a lazy image runs; its mount process lives on, so the container still
//!   reads files it never read before (chunks fetched through the surviving mount, also
//!   while no snapshotter runs); restarted on the same root, the snapshotter finds the mount
//!   (no second FUSE mount, same process), a second container of the image runs, the mount's
//!   metrics are still served, and removal cleans everything up;
//! - `killed_mount_is_remounted_on_restart`: the image's mount process is SIGKILLed (the
//!   running container is lost, not checked); a snapshotter restart mounts the image again,
//!   and new containers of it run and read correctly;
//! - `broken_lazy_images_fail_cleanly`: a lazy image whose index blob is corrupt, one whose
//!   index blob is missing, and one whose registry goes down right before the mount fetches
//!   the index: each pull fails with an error naming the lazy mount and the cause, leaves no
//!   mount, mount process, snapshot directory or chunk cache behind, and a container of a
//!   normal image started before keeps running.

mod common;
mod cri_support;
mod mount_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cri_support::client::log_text;
use cri_support::env::{CriEnv, SnapshotterKind};
use cri_support::flow::{
    assert_all_gone, convert, exec_ok, lazy_layers, manifest, manifest_and_digest,
    needs_snapshotter, nonce, remove_container, remove_pod, run_to_exit, settle, start_idle,
};
use cri_support::image::BusyboxImage;
use cri_support::mounts::{self, describe};
use cri_support::snapshotter::SnapshotterOptions;
use k8s_cri::v1::ContainerState;
use shoal_testkit::{parse_metrics, sum_of};

const MIB: usize = 1 << 20;
/// containerd reconnects to a restarted snapshotter within this.
const RECONNECT_LIMIT: Duration = Duration::from_secs(120);
/// A killed process is gone within this.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// A lazy image of busybox plus `files` random files of `size` bytes (`/opt/bulk/blob-N`),
/// printing `shoal-fault-ok` and its motd: (image as built, reference, expected log).
fn lazy_image(
    env: &CriEnv,
    name: &str,
    files: usize,
    size: usize,
) -> (BusyboxImage, String, String) {
    let motd = format!("motd of {name} {}\n", nonce());
    let image = BusyboxImage::shell("echo shoal-fault-ok; cat /etc/motd-shoal")
        .file("etc/motd-shoal", motd.clone())
        .random_files("opt/bulk", files, size);
    let src = format!("shoal-test/{name}-src:1");
    let dest = format!("shoal-test/{name}:1");
    env.build_and_push(&image, &src);
    convert(env, &src, &dest);
    (
        image,
        env.image_ref(&dest),
        format!("shoal-fault-ok\n{motd}"),
    )
}

/// The FUSE mount point serving the lower layer of container `id`'s root overlay.
fn fuse_lower(env: &CriEnv, id: &str) -> PathBuf {
    let rootfs = env.containerd.container_rootfs(id);
    let root = env.snapshotter_root();
    let lowers = mounts::overlay_lowers(&rootfs);
    let fuse = lowers.as_ref().and_then(|l| {
        l.iter().find_map(|(_, m)| {
            m.as_ref()
                .filter(|m| m.is_fuse() && m.mount_point.starts_with(&root))
                .map(|m| m.mount_point.clone())
        })
    });
    match fuse {
        Some(f) => f,
        None => panic!(
            "no FUSE lower under {} in the root overlay of {id}: {lowers:?}\n{}\n{}",
            root.display(),
            describe(&mounts::mounts_under(&env.dir())),
            env.diag()
        ),
    }
}

/// `sha256sum` of random file `n` inside container `id` is that of its contents.
fn check_read(env: &CriEnv, id: &str, image: &BusyboxImage, n: usize) {
    let (path, contents) = image.random_file(n);
    let path = format!("/{}", path.trim_start_matches('/'));
    let out = exec_ok(env, id, &["sha256sum", &path]);
    let want = shoal_common::Digest::of(&contents).hex();
    env.check(out.split_whitespace().next() == Some(want.as_str()), || {
        format!("sha256sum {path} in {id} gave {out:?}, expected {want}")
    });
}

/// The entry names of a directory, or the first error (opening or listing it).
fn list_dir(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state says it has exited.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Waits until containerd reaches the (restarted) snapshotter again.
fn wait_reconnected(env: &CriEnv) {
    env.wait_for(
        "containerd reaching the restarted snapshotter",
        RECONNECT_LIMIT,
        || env.containerd.snapshotter_reachable().ok(),
        || format!("{:?}", env.containerd.snapshotter_reachable()),
    );
}

/// The FUSE mounts under the snapshotter's root.
fn fuse_mounts(env: &CriEnv) -> Vec<mounts::MountInfo> {
    mounts::fuse_mounts_under(&env.snapshotter_root())
}

/// The sum of `name` over the samples labelled with `image` in the snapshotter's metrics,
/// and how many such samples there are.
fn image_metric(env: &CriEnv, name: &str, image: &str) -> (f64, usize) {
    let samples = parse_metrics(&env.snapshotter.as_ref().unwrap().scrape());
    let n = samples
        .iter()
        .filter(|s| s.name == name && s.label("image") == Some(image))
        .count();
    (sum_of(&samples, name, &[("image", image)]), n)
}

#[test]
fn snapshotter_restart_keeps_lazy_containers_working() {
    if !needs_snapshotter() {
        return;
    }
    let t0 = Instant::now();
    let mut env = CriEnv::start(SnapshotterKind::Shoal);
    let size = 4 * MIB;
    let (image, image_ref, want_log) = lazy_image(&env, "restart", 4, size);
    let (m, digest) = manifest_and_digest(&env.registry.addr, "shoal-test/restart", "1");
    let image_label = format!("{}/shoal-test/restart@{digest}", env.host);
    let lazy_count = lazy_layers(&m).len();
    let setup = t0.elapsed();

    let pod = env.ok(
        env.cri
            .run_pod_sandbox("restart", &env.dir().join("pods/restart")),
        "RunPodSandbox",
    );
    env.ok(env.cri.pull_image(&image_ref), "PullImage (lazy)");
    let reader = start_idle(&env, &pod, &image_ref, "reader");
    let fuse = fuse_lower(&env, &reader);
    let pid = env.snapshotter.as_ref().unwrap().mount_pid_of(&fuse);
    let Some(pid) = pid else {
        panic!(
            "no mount process serving {} found\n{}",
            fuse.display(),
            env.diag()
        )
    };
    check_read(&env, &reader, &image, 0);

    // A crash of the snapshotter: its mount process is in a session of its own and serves
    // on, also reads of files nobody read before, with no snapshotter running.
    env.snapshotter.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(500));
    env.check(pid_alive(pid), || {
        format!("the mount process {pid} died with the snapshotter")
    });
    check_read(&env, &reader, &image, 1);

    let t = Instant::now();
    env.snapshotter.as_mut().unwrap().restart();
    wait_reconnected(&env);
    let restart = t.elapsed();
    let log = env.snapshotter.as_ref().unwrap().log_since_restart();
    env.check(log.contains("lazy mount still served"), || {
        "the restarted snapshotter did not report finding the lazy mount still served".into()
    });
    // The same mount, served by the same process: nothing was mounted again.
    let fuses = fuse_mounts(&env);
    env.check(fuses.len() == 1 && fuses[0].mount_point == fuse, || {
        format!(
            "after the restart, FUSE mounts under the root should be {} alone:\n{}",
            fuse.display(),
            describe(&fuses)
        )
    });
    let now = env.snapshotter.as_ref().unwrap().mount_pids();
    env.check(now == vec![pid], || {
        format!("mount processes after the restart: {now:?}, before: [{pid}]")
    });

    // The running container reads a file never read before: a chunk fetch through the
    // surviving mount, whose metrics the restarted snapshotter still serves.
    let (fetched_before, n) = image_metric(&env, "shoal_lazyfs_fetch_bytes_total", &image_label);
    env.check(n > 0, || {
        format!(
            "the restarted snapshotter serves no shoal_lazyfs_fetch_bytes_total for {image_label}"
        )
    });
    let (read_before, _) = image_metric(&env, "shoal_lazyfs_read_bytes_total", &image_label);
    check_read(&env, &reader, &image, 2);
    let (fetched, _) = image_metric(&env, "shoal_lazyfs_fetch_bytes_total", &image_label);
    let (read, _) = image_metric(&env, "shoal_lazyfs_read_bytes_total", &image_label);
    env.check(read - read_before >= size as f64, || {
        format!("reading a {size} B file moved shoal_lazyfs_read_bytes_total from {read_before} to {read}")
    });
    env.check(fetched - fetched_before >= (size / 2) as f64, || {
        format!(
            "reading a {size} B file never read before fetched {} B (shoal_lazyfs_fetch_bytes_total {fetched_before} → {fetched})",
            fetched - fetched_before
        )
    });

    eprintln!(
        "restart: after the restart, reading {size} B never read before fetched {} B through the surviving mount",
        fetched - fetched_before
    );

    // The snapshotter's metadata still knows the lazy snapshots: a second container of the
    // image starts on them, with no new mount.
    let samples = parse_metrics(&env.snapshotter.as_ref().unwrap().scrape());
    let lazy_held = sum_of(&samples, "shoal_snapshotter_snapshots", &[("kind", "lazy")]);
    env.check(lazy_held >= lazy_count as f64, || {
        format!("the restarted snapshotter holds {lazy_held} lazy snapshots, the image has {lazy_count} lazy layers")
    });
    let (second, exit) = run_to_exit(&env, &pod, &image_ref, "second", None);
    env.check(exit == 0, || {
        format!("the second container exited with {exit}")
    });
    let out = env.ok(log_text(&pod.log_dir.join("second.log")), "container log");
    env.check(out == want_log, || {
        format!("log of the second container: {out:?}, expected {want_log:?}")
    });
    let fuses = fuse_mounts(&env);
    env.check(fuses.len() == 1, || {
        format!(
            "a second container mounted the image again:\n{}",
            describe(&fuses)
        )
    });
    check_read(&env, &reader, &image, 3);

    for id in [&reader, &second] {
        remove_container(&env, id);
    }
    remove_pod(&env, &pod);
    env.ok(env.cri.remove_image(&image_ref), "RemoveImage");
    env.ok(
        env.cri.remove_image(&env.sandbox_image),
        "RemoveImage (sandbox)",
    );
    assert_all_gone(&env);
    eprintln!(
        "restart: setup {setup:.1?}, snapshotter restart until containerd reached it {restart:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[test]
fn killed_mount_is_remounted_on_restart() {
    if !needs_snapshotter() {
        return;
    }
    let t0 = Instant::now();
    let mut env = CriEnv::start(SnapshotterKind::Shoal);
    let (image, image_ref, want_log) = lazy_image(&env, "remount", 2, MIB);
    let pod = env.ok(
        env.cri
            .run_pod_sandbox("remount", &env.dir().join("pods/remount")),
        "RunPodSandbox",
    );
    env.ok(env.cri.pull_image(&image_ref), "PullImage (lazy)");
    let lost = start_idle(&env, &pod, &image_ref, "lost");
    let fuse = fuse_lower(&env, &lost);
    let Some(pid) = env.snapshotter.as_ref().unwrap().mount_pid_of(&fuse) else {
        panic!(
            "no mount process serving {} found\n{}",
            fuse.display(),
            env.diag()
        )
    };

    // SAFETY: kill(2) on the mount process serving a mountpoint under this test's root.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    env.wait_for(
        "the killed mount process gone",
        EXIT_LIMIT,
        || (!pid_alive(pid)).then_some(()),
        || {
            format!(
                "/proc/{pid}/stat: {:?}",
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
            )
        },
    );
    // The mount is still in the table but dead (ENOTCONN): the restart has to notice.
    env.check(mounts::mount_at(&fuse).is_some(), || {
        format!(
            "{} vanished from the mount table with its process",
            fuse.display()
        )
    });
    // (A stat may still succeed from the kernel's attribute cache; listing asks the
    // process.)
    let dead = list_dir(&fuse);
    env.check(dead.is_err(), || {
        format!(
            "{} still answers after its process was killed: {dead:?}",
            fuse.display()
        )
    });

    // A graceful restart this time (SIGTERM).
    let t = Instant::now();
    {
        let s = env.snapshotter.as_mut().unwrap();
        s.stop();
        s.restart();
    }
    wait_reconnected(&env);
    let restart = t.elapsed();
    let log = env.snapshotter.as_ref().unwrap().log_since_restart();
    env.check(log.contains("lazy mount restored"), || {
        "the restarted snapshotter did not report restoring the lazy mount".into()
    });
    let fuses = fuse_mounts(&env);
    env.check(fuses.len() == 1 && fuses[0].mount_point == fuse, || {
        format!(
            "after the restart, FUSE mounts under the root should be {} alone:\n{}",
            fuse.display(),
            describe(&fuses)
        )
    });
    let new_pid = env.snapshotter.as_ref().unwrap().mount_pid_of(&fuse);
    env.check(new_pid.is_some_and(|p| p != pid && pid_alive(p)), || {
        format!(
            "mount process of {} after the restart: {new_pid:?} (killed: {pid})",
            fuse.display()
        )
    });
    let alive = list_dir(&fuse);
    env.check(alive.as_ref().is_ok_and(|n| n.len() > 2), || {
        format!(
            "the remounted {} does not answer: {alive:?}",
            fuse.display()
        )
    });

    // New containers of the image work.
    let (fresh, exit) = run_to_exit(&env, &pod, &image_ref, "fresh", None);
    env.check(exit == 0, || format!("a new container exited with {exit}"));
    let out = env.ok(log_text(&pod.log_dir.join("fresh.log")), "container log");
    env.check(out == want_log, || {
        format!("log of the new container: {out:?}, expected {want_log:?}")
    });
    let reader = start_idle(&env, &pod, &image_ref, "reader");
    check_read(&env, &reader, &image, 1);

    for id in [&lost, &fresh, &reader] {
        remove_container(&env, id);
    }
    remove_pod(&env, &pod);
    env.ok(env.cri.remove_image(&image_ref), "RemoveImage");
    env.ok(
        env.cri.remove_image(&env.sandbox_image),
        "RemoveImage (sandbox)",
    );
    assert_all_gone(&env);
    eprintln!(
        "remount: restart until containerd reached it {restart:.1?}, total {:.1?}",
        t0.elapsed()
    );
}

#[derive(Clone, Copy, Debug)]
enum Broken {
    /// The index blob overwritten with garbage of the same size.
    CorruptIndex,
    /// The index blob's data file deleted from the registry's storage.
    MissingIndex,
    /// The registry goes down when the index blob is asked for (after containerd has the
    /// manifest and config).
    RegistryDown,
}

#[test]
fn broken_lazy_images_fail_cleanly() {
    if !needs_snapshotter() {
        return;
    }
    let t0 = Instant::now();
    let mount_timeout = Duration::from_secs(30);
    let env = CriEnv::start_with(
        SnapshotterKind::Shoal,
        &SnapshotterOptions {
            mount_timeout: Some(mount_timeout),
        },
    );
    let (_, normal_ref) = env.build_and_push(
        &BusyboxImage::new(&["/bin/sleep", "3600"]),
        "shoal-test/normal:1",
    );
    let cases = [
        Broken::CorruptIndex,
        Broken::MissingIndex,
        Broken::RegistryDown,
    ];
    let mut images = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        // A name with no word of any cause in it: the error's cause must come from the error.
        let name = format!("bad-{i}");
        let (_, image_ref, _) = lazy_image(&env, &name, 1, 64 * 1024);
        let m = manifest(&env.registry.addr, &format!("shoal-test/{name}"), "1");
        let index = lazy_layers(&m)
            .into_iter()
            .find(|(role, _)| role == "index")
            .map(|(_, d)| d);
        let Some(index) = index else {
            panic!("the converted {name} has no index layer: {m}")
        };
        images.push((case, name, image_ref, index));
    }
    let digests: std::collections::BTreeSet<&str> =
        images.iter().map(|(_, _, _, d)| d.as_str()).collect();
    assert_eq!(
        digests.len(),
        images.len(),
        "the broken images must not share an index blob"
    );

    // A container of a normal image runs throughout.
    let pod = env.ok(
        env.cri
            .run_pod_sandbox("broken", &env.dir().join("pods/broken")),
        "RunPodSandbox",
    );
    env.ok(env.cri.pull_image(&normal_ref), "PullImage (normal)");
    let bystander = start_idle(&env, &pod, &normal_ref, "bystander");
    settle(&env);

    let root = env.snapshotter_root();
    let mut report = Vec::new();
    for (case, name, image_ref, index) in &images {
        let hex = index.trim_start_matches("sha256:");
        let blob = env.registry.blob_path(hex);
        match case {
            Broken::CorruptIndex => {
                let len = std::fs::metadata(&blob)
                    .unwrap_or_else(|e| panic!("{}: {e}", blob.display()))
                    .len() as usize;
                std::fs::write(&blob, common::prng_bytes(0xbad, len, false)).unwrap();
            }
            Broken::MissingIndex => {
                std::fs::remove_file(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
            }
            Broken::RegistryDown => env.proxy.arm_gate(hex),
        }
        let t = Instant::now();
        // kubelet pulls, then creates the container: the failure must surface in one.
        let err = match env.cri.pull_image(image_ref) {
            Err(e) => format!("{e:#}"),
            Ok(id) => match env.cri.create_container(
                &pod,
                image_ref,
                name,
                &format!("{name}.log"),
                None,
                None,
            ) {
                Err(e) => format!("{e:#}"),
                Ok(c) => panic!(
                    "{case:?}: PullImage gave {id} and CreateContainer {c}\n{}",
                    env.diag()
                ),
            },
        };
        let took = t.elapsed();
        eprintln!("{case:?}: failed after {took:.1?}: {err}");
        report.push(format!("{case:?} {took:.1?}"));
        if let Broken::RegistryDown = case {
            env.check(env.proxy.is_down(), || {
                "the registry never went down: nobody asked for the index blob".into()
            });
        }
        // The error says what failed (the image's lazy mount) and why.
        let lower = err.to_lowercase();
        env.check(
            lower.contains("lazy mount of") && err.contains(&format!("shoal-test/{name}")),
            || {
                format!(
                    "{case:?}: the error does not name the lazy mount of shoal-test/{name}: {err}"
                )
            },
        );
        // …and names the index blob and what went wrong with it. A corrupt blob shows as a
        // body cut short: the peer checks the digest as it streams and aborts on a mismatch.
        env.check(err.contains(index.as_str()), || {
            format!("{case:?}: the error does not name the index blob {index}: {err}")
        });
        let cause_words: &[&str] = match case {
            Broken::CorruptIndex => &["digest", "corrupt", "checksum", "verif", "body error"],
            Broken::MissingIndex => &["404", "blob_unknown", "not found"],
            Broken::RegistryDown => &[
                "connect",
                "refused",
                "unreachable",
                "reset",
                "closed",
                "502",
                "503",
                "504",
            ],
        };
        env.check(cause_words.iter().any(|w| lower.contains(w)), || {
            format!("{case:?}: the error names no cause (one of {cause_words:?}): {err}")
        });
        env.check(took < mount_timeout + Duration::from_secs(120), || {
            format!("{case:?}: the failure took {took:?}")
        });

        // Nothing is left behind: no mount, no mount process, no lazy snapshot directory,
        // no chunk cache.
        let sn = env.snapshotter.as_ref().unwrap();
        let left = mounts::mounts_under(&root);
        env.check(left.is_empty(), || {
            format!(
                "{case:?}: mounts left under {}:\n{}",
                root.display(),
                describe(&left)
            )
        });
        let pids = sn.mount_pids();
        env.check(pids.is_empty(), || {
            format!("{case:?}: mount processes left: {pids:?}")
        });
        let lazy_dirs: Vec<String> = sn
            .snapshot_dirs()
            .into_iter()
            .filter(|d| root.join("snapshots").join(d).join("mount.log").exists())
            .collect();
        env.check(lazy_dirs.is_empty(), || {
            format!("{case:?}: lazy snapshot directories left: {lazy_dirs:?}")
        });
        let caches = sn.cache_dirs();
        env.check(caches.is_empty(), || {
            format!("{case:?}: chunk caches left: {caches:?}")
        });

        // The bystander is unaffected.
        let st = env.ok(env.cri.container_status(&bystander), "ContainerStatus");
        env.check(st.state == ContainerState::ContainerRunning as i32, || {
            format!("{case:?}: the normal container is no longer running: {st:?}")
        });
        let out = exec_ok(&env, &bystander, &["echo", "ok"]);
        env.check(out == "ok\n", || format!("{case:?}: echo ok gave {out:?}"));
    }
    let samples = parse_metrics(&env.snapshotter.as_ref().unwrap().scrape());
    let failures = sum_of(&samples, "shoal_snapshotter_mount_failures_total", &[]);
    env.check(failures >= cases.len() as f64, || {
        format!(
            "shoal_snapshotter_mount_failures_total is {failures} after {} failed mounts",
            cases.len()
        )
    });

    remove_container(&env, &bystander);
    remove_pod(&env, &pod);
    for r in [&normal_ref, &env.sandbox_image] {
        env.ok(env.cri.remove_image(r), "RemoveImage");
    }
    for (_, _, image_ref, _) in &images {
        // A failed pull leaves no image (then nothing to remove); removing must not fail.
        if env.ok(env.cri.image_id(image_ref), "ImageStatus").is_some() {
            env.ok(env.cri.remove_image(image_ref), "RemoveImage (broken)");
        }
    }
    assert_all_gone(&env);
    eprintln!("broken: {}, total {:.1?}", report.join(", "), t0.elapsed());
}
