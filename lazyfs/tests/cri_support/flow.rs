//! The steps the CRI tests share: run a container to its exit or keep one idle, exec in it,
//! remove containers, pods and images and check everything is gone, convert an image to its
//! lazy form, read a manifest from the registry, parse the snapshotter's metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;

use super::client::{Cri, Sandbox};
use super::env::CriEnv;
use super::mounts::{self, describe};
use super::run_cmd;
use super::snapshotter::{snapshotter_available, snapshotter_bin};

/// A short-lived container runs to its exit within this.
pub const RUN_LIMIT: Duration = Duration::from_secs(180);
/// Containerd's GC and the snapshotter's cleanup finish within this after RemoveImage.
pub const GC_LIMIT: Duration = Duration::from_secs(120);
/// An ExecSync command (a read through a lazy mount included) finishes within this.
pub const EXEC_LIMIT: Duration = Duration::from_secs(120);

/// Something unique to this run, so an output cannot come from an earlier one.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// Whether the shoal snapshotter tests can run (the kit's checks; a `shoal-lazyfs` without
/// the `snapshotter` subcommand is a failure, not a skip).
pub fn needs_snapshotter() -> bool {
    if !super::can_run_cri() {
        return false;
    }
    assert!(
        snapshotter_available(),
        "{} has no `snapshotter` subcommand",
        snapshotter_bin().display()
    );
    true
}

/// `shoal-lazyfs convert` of `REGISTRY/src` to `REGISTRY/dest` (straight to the registry,
/// not counted by the proxy).
pub fn convert(env: &CriEnv, src: &str, dest: &str) {
    let reg = env.registry.addr.clone();
    let mut convert = Command::new(snapshotter_bin());
    convert
        .args(["convert", "-q", "--insecure-registry", &reg])
        .arg(format!("{reg}/{src}"))
        .arg(format!("{reg}/{dest}"));
    run_cmd(convert, Duration::from_secs(600), "shoal-lazyfs convert");
}

/// CreateContainer + StartContainer, then waits for the exit; (id, exit code).
pub fn run_to_exit(
    env: &CriEnv,
    pod: &Sandbox,
    image: &str,
    name: &str,
    command: Option<&[&str]>,
) -> (String, i32) {
    let cri: &Cri = &env.cri;
    let id = env.ok(
        cri.create_container(pod, image, name, &format!("{name}.log"), command, None),
        &format!("CreateContainer {name}"),
    );
    env.ok(cri.start_container(&id), &format!("StartContainer {name}"));
    let exit = env.ok(
        cri.wait_exited(&id, RUN_LIMIT),
        &format!("waiting for {name}"),
    );
    (id, exit)
}

/// A container `name` of `image` running `sleep 3600`, once it runs and its root is
/// mounted.
pub fn start_idle(env: &CriEnv, pod: &Sandbox, image: &str, name: &str) -> String {
    let cri = &env.cri;
    let id = env.ok(
        cri.create_container(
            pod,
            image,
            name,
            &format!("{name}.log"),
            Some(&["/bin/sleep", "3600"]),
            None,
        ),
        &format!("CreateContainer {name}"),
    );
    env.ok(cri.start_container(&id), &format!("StartContainer {name}"));
    let rootfs = env.containerd.container_rootfs(&id);
    env.wait_for(
        &format!("the container {name} running with its root mounted"),
        RUN_LIMIT,
        || {
            let st = cri.container_status(&id).ok()?;
            (st.state == ContainerState::ContainerRunning as i32
                && mounts::mount_at(&rootfs).is_some())
            .then_some(())
        },
        || format!("{:?}", cri.container_status(&id)),
    );
    id
}

/// ExecSync `cmd` in container `id`; its stdout, after checking it exited with 0.
pub fn exec_ok(env: &CriEnv, id: &str, cmd: &[&str]) -> String {
    let (code, out, err) = env.ok(env.cri.exec_sync(id, cmd, EXEC_LIMIT), "ExecSync");
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    env.check(code == 0, || {
        format!("ExecSync {cmd:?} in {id} exited with {code}\nstdout: {out}\nstderr: {err}")
    });
    out
}

/// StopContainer + RemoveContainer; its root is unmounted afterwards.
pub fn remove_container(env: &CriEnv, id: &str) {
    env.ok(env.cri.stop_container(id, Duration::ZERO), "StopContainer");
    env.ok(env.cri.remove_container(id), "RemoveContainer");
    let rootfs = env.containerd.container_rootfs(id);
    env.check(mounts::mount_at(&rootfs).is_none(), || {
        format!(
            "{} is still mounted after RemoveContainer",
            rootfs.display()
        )
    });
}

pub fn remove_pod(env: &CriEnv, pod: &Sandbox) {
    env.ok(env.cri.stop_pod_sandbox(&pod.id), "StopPodSandbox");
    env.ok(env.cri.remove_pod_sandbox(&pod.id), "RemovePodSandbox");
    let left = env.ok(env.cri.list_pod_sandboxes(), "ListPodSandbox");
    env.check(left.is_empty(), || format!("sandboxes left: {left:?}"));
}

/// With every container, sandbox and image removed, containerd's GC removes every snapshot:
/// none in containerd's metadata, no mount (FUSE or other) under the snapshotter's root
/// and, for the shoal snapshotter, no snapshot directory and no chunk cache.
pub fn assert_all_gone(env: &CriEnv) {
    let root = env.snapshotter_root();
    let state = || {
        let keys = env.containerd.snapshot_keys();
        let ms = mounts::mounts_under(&root);
        let (dirs, pids) = env
            .snapshotter
            .as_ref()
            .map(|s| {
                let mut d = s.snapshot_dirs();
                d.extend(s.cache_dirs().into_iter().map(|c| format!("cache {c}")));
                (d, s.mount_pids())
            })
            .unwrap_or_default();
        (keys, ms, dirs, pids)
    };
    env.wait_for(
        "every snapshot removed after RemoveImage",
        GC_LIMIT,
        || {
            let (keys, ms, dirs, pids) = state();
            (keys.is_empty() && ms.is_empty() && dirs.is_empty() && pids.is_empty())
                .then_some(())
        },
        || {
            let (keys, ms, dirs, pids) = state();
            format!(
                "snapshots in containerd: {keys:?}\nmounts under {}:\n{}\nsnapshot and cache dirs: {dirs:?}\nmount processes: {}",
                root.display(),
                describe(&ms),
                describe_pids(&pids)
            )
        },
    );
    let names = env.containerd.image_names();
    env.check(names.is_empty(), || format!("images left: {names:?}"));
    let fuse = mounts::fuse_mounts_under(&env.dir());
    env.check(fuse.is_empty(), || {
        format!("FUSE mounts left:\n{}", describe(&fuse))
    });
}

/// Each pid with its command line and state, for messages.
pub fn describe_pids(pids: &[i32]) -> String {
    pids.iter()
        .map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
                .unwrap_or_default();
            format!("{p} [{state}] {cmd}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until the proxy has carried nothing for a second.
pub fn settle(env: &CriEnv) {
    let (mut last, mut since) = (env.proxy.bytes(), Instant::now());
    env.wait_for(
        "the registry falling silent",
        Duration::from_secs(120),
        || {
            let now = env.proxy.bytes();
            if now != last {
                (last, since) = (now, Instant::now());
            }
            (since.elapsed() >= Duration::from_secs(1)).then_some(())
        },
        || format!("{} B so far", env.proxy.bytes()),
    );
}

/// The image manifest of `repo:tag`, asked of the registry directly; for an index, the
/// manifest for linux/amd64 (or its first).
pub fn manifest(registry: &str, repo: &str, tag: &str) -> serde_json::Value {
    manifest_and_digest(registry, repo, tag).0
}

/// [`manifest`] and its digest (`sha256:…`, the one CRI's manifest-digest label carries).
pub fn manifest_and_digest(registry: &str, repo: &str, tag: &str) -> (serde_json::Value, String) {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let get = |reference: &str| -> (serde_json::Value, String) {
        let url = format!("http://{registry}/v2/{repo}/manifests/{reference}");
        let r = client
            .get(&url)
            .header(
                "Accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.docker.distribution.manifest.list.v2+json",
            )
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        let bytes = r.bytes().unwrap();
        let digest = format!("sha256:{}", shoal_common::Digest::of(&bytes).hex());
        (serde_json::from_slice(&bytes).unwrap(), digest)
    };
    let (m, digest) = get(tag);
    if let Some(list) = m["manifests"].as_array() {
        let pick = list
            .iter()
            .find(|d| d["platform"]["os"] == "linux" && d["platform"]["architecture"] == "amd64")
            .or(list.first())
            .expect("an index with manifests");
        return get(pick["digest"].as_str().unwrap());
    }
    (m, digest)
}

/// The bytes of every blob (config and layers) of a manifest.
pub fn blob_bytes(m: &serde_json::Value) -> u64 {
    let size = |d: &serde_json::Value| d["size"].as_u64().unwrap_or(0);
    size(&m["config"])
        + m["layers"]
            .as_array()
            .map(|ls| ls.iter().map(size).sum::<u64>())
            .unwrap_or(0)
}

/// The layers of a lazy image's manifest with the role the converter gave them (`index`,
/// `data`), as (role, digest).
pub fn lazy_layers(m: &serde_json::Value) -> Vec<(String, String)> {
    m["layers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| {
                    let role =
                        l["annotations"]["containerd.io/snapshot/shoal.lazyfs.role"].as_str()?;
                    Some((role.to_string(), l["digest"].as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}
