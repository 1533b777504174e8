//! The origin: Debian's `docker-registry` serving random blobs, either inside the cluster's
//! origin namespace (one blob) or on loopback at a free port (many blobs, the memory bench).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use shoal_common::{Digest, Sha256Hasher};

use crate::internal;
use crate::netns::Namespace;
use crate::processes::{self, Daemon, Daemons};

pub const PORT: u16 = 5000;
pub const REPO: &str = "bench/blob";

/// Writes `size` random bytes to `path` and returns their digest.
pub fn generate_blob(path: &Path, size: u64) -> Result<Digest> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = rand::rng();
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(hasher.finish())
}

/// `size` random bytes (in memory, a fresh seed each time) and their digest.
pub fn random_blob(size: usize) -> (Vec<u8>, Digest) {
    let bytes = shoal_testkit::random_blob(rand::random(), size);
    let digest = Digest::of(&bytes);
    (bytes, digest)
}

/// The blob's URL as peers and the baseline see it.
pub fn blob_url(ip: Ipv4Addr, digest: &Digest) -> String {
    blob_url_at(&format!("{ip}:{PORT}"), digest)
}

/// The blob's URL on the registry at `host_port`.
pub fn blob_url_at(host_port: &str, digest: &Digest) -> String {
    format!("http://{host_port}/v2/{REPO}/blobs/{digest}")
}

fn config(storage: &Path, listen: &str) -> String {
    use shoal_testkit::registry::{config_yaml, RegistryAuth};
    config_yaml(storage, listen, &RegistryAuth::Open, storage)
}

/// Writes the registry's storage directory and configuration under `work`; returns the
/// configuration file.
pub(crate) fn prepare(work: &Path, listen: &str) -> Result<std::path::PathBuf> {
    let storage = work.join("registry");
    std::fs::create_dir_all(&storage)?;
    let config_path = work.join("registry.yml");
    std::fs::write(&config_path, config(&storage, listen))?;
    Ok(config_path)
}

/// Starts the registry on `127.0.0.1:port` in this namespace and waits until it answers.
/// Returns its base URL.
pub async fn start_local(
    work: &Path,
    logs: &Path,
    port: u16,
    daemons: &mut Daemons,
) -> Result<String> {
    let registry = processes::require_program("docker-registry", "docker-registry")?;
    let addr = format!("127.0.0.1:{port}");
    let config_path = prepare(work, &addr)?;
    let mut cmd = std::process::Command::new(&registry);
    cmd.arg("serve").arg(&config_path);
    daemons.push(Daemon::spawn(
        "docker-registry",
        cmd,
        &logs.join("registry.log"),
    )?);
    let base = format!("http://{addr}");
    let client = internal::client()?;
    let probe_url = format!("{base}/v2/");
    processes::wait_until("docker-registry", Duration::from_secs(30), daemons, || {
        let req = client
            .get(&probe_url)
            .timeout(Duration::from_secs(2))
            .send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;
    Ok(base)
}

/// Generates `count` random blobs of `size` bytes and pushes them to the registry at `base`
/// (a few at a time: generation runs on blocking threads while other pushes are in flight).
/// Returns their digests in order.
pub async fn push_random_blobs(base: &str, count: u32, size: u64) -> Result<Vec<Digest>> {
    use futures::StreamExt;
    const IN_FLIGHT: usize = 4;
    let size = usize::try_from(size).context("blob size does not fit in memory")?;
    let client = internal::client()?;
    let pushes = (0..count).map(|_| {
        let client = client.clone();
        async move {
            let (bytes, digest) = tokio::task::spawn_blocking(move || random_blob(size))
                .await
                .context("generating a blob")?;
            internal::push_bytes(&client, base, REPO, bytes, &digest).await?;
            Ok::<_, anyhow::Error>(digest)
        }
    });
    futures::stream::iter(pushes)
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Starts the registry in `ns`, waits until it answers, and pushes `blob` over the
/// namespace's loopback (so the push never shows in the link's counters).
pub async fn start_with_blob(
    ns: &Namespace,
    work: &Path,
    logs: &Path,
    blob: &Path,
    digest: &Digest,
    daemons: &mut Daemons,
) -> Result<()> {
    let registry = processes::require_program("docker-registry", "docker-registry")?;
    let config_path = prepare(work, &format!("0.0.0.0:{PORT}"))?;
    let mut cmd = ns.command(&registry);
    cmd.arg("serve").arg(&config_path);
    daemons.push(Daemon::spawn(
        "docker-registry",
        cmd,
        &logs.join("registry.log"),
    )?);
    let local = format!("http://127.0.0.1:{PORT}");
    let probe_url = format!("{local}/v2/");
    processes::wait_until("docker-registry", Duration::from_secs(30), daemons, || {
        internal::http_ok_in(ns, &probe_url)
    })
    .await?;
    let out = ns
        .tokio_command(processes::self_exe()?)
        .args(["internal", "push", "--registry", &local, "--repo", REPO])
        .arg("--file")
        .arg(blob)
        .arg("--digest")
        .arg(digest.to_string())
        .output()
        .await
        .context("running the push helper")?;
    if !out.status.success() {
        bail!(
            "pushing the blob failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_random_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let d = generate_blob(&p, (3 << 20) + 5).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), (3 << 20) + 5);
        assert_eq!(Digest::of(&bytes), d);
        assert_ne!(
            generate_blob(&p, 1024).unwrap(),
            generate_blob(&p, 1024).unwrap()
        );
    }

    #[test]
    fn urls_and_config() {
        let d = Digest::of(b"x");
        assert_eq!(
            blob_url(Ipv4Addr::new(10, 77, 0, 1), &d),
            format!("http://10.77.0.1:5000/v2/bench/blob/blobs/{d}")
        );
        assert_eq!(
            blob_url_at("127.0.0.1:4000", &d),
            format!("http://127.0.0.1:4000/v2/bench/blob/blobs/{d}")
        );
        let c = config(Path::new("/s"), "127.0.0.1:4000");
        assert!(c.contains("rootdirectory: /s\n"), "{c}");
        assert!(c.contains("addr: 127.0.0.1:4000\n"), "{c}");
        let (bytes, digest) = random_blob(1000);
        assert_eq!(bytes.len(), 1000);
        assert_eq!(Digest::of(&bytes), digest);
    }
}
