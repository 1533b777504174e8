//! Overload (issue 21): many containerd-style clients ask one peer for one cold blob at the
//! same moment, each on its own connection. The peer should fetch the blob from the registry
//! once, ask the registry's permission (a blob `HEAD`) at most once per credential, queue
//! rather than refuse the clients it cannot serve at once, hand every one of them the verified
//! blob, and stay within a bounded resident memory. The registry is real (`docker-registry`)
//! behind an HTTP-aware proxy that logs every request it forwards.
//!
//! [`overload_open`] builds the open-registry world (every client anonymous: one credential);
//! a caller with another world (e.g. a token registry) calls [`measure`] directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_common::Digest;

use crate::origin::Push;
use crate::shoal::{Peer, PeerOpts};
use crate::{default_bin_dir, open_files_limit, peak_rss, raise_open_files, random_blob};
use crate::{HttpLog, Registry, RegistryAuth};

/// How long one client may take for the whole blob.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Clone, Debug)]
pub struct OverloadOpts {
    pub bin_dir: PathBuf,
    pub clients: usize,
    pub blob_len: usize,
    /// Seed of the blob's bytes.
    pub seed: u64,
}

impl Default for OverloadOpts {
    /// The CI test's: 1,000 clients, an 8 MiB blob.
    fn default() -> Self {
        OverloadOpts {
            bin_dir: default_bin_dir(),
            clients: 1000,
            blob_len: 8 << 20,
            seed: 2100,
        }
    }
}

/// What the storm got and what it cost upstream and in the peer.
#[derive(Clone, Debug)]
pub struct OverloadOutcome {
    pub clients: usize,
    pub credentials: usize,
    pub blob_len: u64,
    /// Clients that got the whole blob, byte for byte.
    pub verified: usize,
    /// One line per failed client.
    pub failures: Vec<String>,
    /// From releasing the clients until the last one ended.
    pub took: Duration,
    /// Blob `HEAD`s the registry saw.
    pub heads: usize,
    /// Blob `GET`s the registry saw, and the body bytes they carried.
    pub blob_gets: usize,
    pub get_bytes: u64,
    /// The peer's `VmHWM` before and after the storm.
    pub rss_before: u64,
    pub peak_rss: u64,
    /// The peer's open-files limit.
    pub open_files_limit: u64,
    /// `shoal_peer_downloads_total{result="ok"}` afterwards.
    pub downloads_ok: f64,
}

impl OverloadOutcome {
    /// Upstream blob bytes ÷ the blob's length (1.0: exactly one download).
    pub fn downloads_upstream(&self) -> f64 {
        self.get_bytes as f64 / self.blob_len as f64
    }

    /// Blob `HEAD`s upstream per credential the clients held.
    pub fn heads_per_credential(&self) -> f64 {
        self.heads as f64 / self.credentials.max(1) as f64
    }
}

/// Sockets a storm of `clients` opens: a client and a server end per client, plus the
/// proxies'.
pub fn files_needed(clients: usize) -> u64 {
    2 * clients as u64 + 512
}

/// Raises this process's open-files limit for a storm of `clients` (its children, the peer
/// among them, inherit it); panics when the hard limit is too low.
pub fn raise_limit(clients: usize) {
    let needed = files_needed(clients);
    let now = raise_open_files(needed);
    if now < needed {
        panic!("this storm needs {needed} open files; the hard limit allows {now}");
    }
}

/// The open world: a registry without auth behind an [`HttpLog`], one blob, a fresh peer, and
/// the storm of anonymous clients.
pub async fn overload_open(opts: &OverloadOpts) -> OverloadOutcome {
    raise_limit(opts.clients);
    let registry = Registry::start(RegistryAuth::Open);
    let log = HttpLog::start(&registry.addr);
    let host = log.addr.clone();
    let blob = random_blob(opts.seed, opts.blob_len);
    registry.push("overload/open", &blob).await;
    let peer = Peer::start(
        "peer",
        PeerOpts::embedded()
            .bin_dir(&opts.bin_dir)
            .arg("--insecure-registry")
            .arg(&host),
    )
    .await;
    measure(
        &peer,
        &log,
        &host,
        "overload/open",
        blob,
        &[None],
        opts.clients,
    )
    .await
}

/// Runs the storm of `clients` against `peer` for `blob` of `repo` at registry `host` (behind
/// `log`), client `i` with `auths[i % auths.len()]`, and collects what it cost.
pub async fn measure(
    peer: &Peer,
    log: &HttpLog,
    host: &str,
    repo: &str,
    blob: Vec<u8>,
    auths: &[Option<String>],
    clients: usize,
) -> OverloadOutcome {
    let digest = Digest::of(&blob);
    let blob_len = blob.len() as u64;
    let pid = peer.pid().expect("peer pid");
    let limit = open_files_limit(pid).expect("peer's open-files limit");
    let rss_before = peak_rss(pid).expect("peer VmHWM");
    let url = format!("{}/v2/{repo}/blobs/{digest}?ns={host}", peer.mirror_url());
    let storm = storm(&url, auths, clients, Arc::new(blob)).await;
    let rss = peak_rss(pid).expect("peer VmHWM");

    let digest_s = digest.to_string();
    let exchanges: Vec<_> = log
        .exchanges()
        .into_iter()
        .filter(|x| x.blob() == Some(digest_s.as_str()))
        .collect();
    let heads = exchanges.iter().filter(|x| x.method == "HEAD").count();
    let gets: Vec<_> = exchanges.iter().filter(|x| x.is_blob_get()).collect();
    let get_bytes: u64 = gets.iter().map(|x| x.body_bytes).sum();
    let outcome = OverloadOutcome {
        clients,
        credentials: auths.len(),
        blob_len,
        verified: storm.verified,
        failures: storm.failures,
        took: storm.took,
        heads,
        blob_gets: gets.len(),
        get_bytes,
        rss_before,
        peak_rss: rss,
        open_files_limit: limit,
        downloads_ok: peer
            .metric("shoal_peer_downloads_total", &[("result", "ok")])
            .await,
    };
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "overload: {clients} clients, {} credential(s), {:.1} MiB blob: {} verified in \
         {:.1?}; upstream: {heads} blob HEAD(s), {} blob GET(s) carrying {get_bytes} bytes \
         ({:.3} x the blob); peer peak RSS {:.1} MiB (before the storm {:.1} MiB); peer \
         open-files limit {limit}",
        outcome.credentials,
        mib(blob_len),
        outcome.verified,
        outcome.took,
        outcome.blob_gets,
        outcome.downloads_upstream(),
        mib(rss),
        mib(rss_before),
    );
    outcome
}

/// What a storm of clients got.
struct Storm {
    verified: usize,
    failures: Vec<String>,
    took: Duration,
}

/// `clients` clients, all released at once, client `i` with `auths[i % auths.len()]`; each
/// compares the body with `blob` as it streams in (nothing is kept): the same bytes, so the
/// same sha256, at a fraction of the cost of hashing 1,000 bodies in an unoptimised test.
async fn storm(url: &str, auths: &[Option<String>], clients: usize, blob: Arc<Vec<u8>>) -> Storm {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(CLIENT_TIMEOUT)
        .build()
        .expect("reqwest client");
    let gate = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (client, gate, url, blob) =
            (client.clone(), gate.clone(), url.to_owned(), blob.clone());
        let auth = auths[i % auths.len()].clone();
        set.spawn(async move {
            gate.wait().await;
            let mut req = client.get(&url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let mut resp = req.send().await.map_err(|e| format!("client {i}: {e}"))?;
            let status = resp.status().as_u16();
            if status != 200 {
                let body = resp.text().await.unwrap_or_default();
                return Err(format!("client {i}: HTTP {status}: {body}"));
            }
            let mut len = 0usize;
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("client {i}: {e}"))? {
                let end = len + chunk.len();
                if blob.get(len..end) != Some(&chunk[..]) {
                    return Err(format!(
                        "client {i}: bytes {len}..{end} differ from the blob"
                    ));
                }
                len = end;
            }
            if len != blob.len() {
                return Err(format!("client {i}: {len} of {} bytes", blob.len()));
            }
            Ok(())
        });
    }
    gate.wait().await;
    let started = Instant::now();
    let mut verified = 0;
    let mut failures = vec![];
    while let Some(joined) = set.join_next().await {
        match joined.expect("client task") {
            Ok(()) => verified += 1,
            Err(e) => failures.push(e),
        }
    }
    Storm {
        verified,
        failures,
        took: started.elapsed(),
    }
}
