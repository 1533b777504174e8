//! The mount's chunk fetcher against a scripted HTTP blob server (no FUSE needed):
//! single flight under concurrency, timeouts, verification, fallback between sources, and
//! the disk cache across fetcher instances.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::*;
use shoal_common::Digest;
use shoal_lazyfs::index::FileChunk;
use shoal_lazyfs::mount::cache::{ChunkCache, DiskCache};
use shoal_lazyfs::mount::fetch::{FetchOptions, Fetcher};
use shoal_lazyfs::mount::metrics::Metrics;
use shoal_lazyfs::mount::source::HttpSource;
use shoal_lazyfs::store::open_source;
use shoal_lazyfs::{ImageRef, Index, LazyImage, RegistryOptions};
use shoal_testkit::metric_sum;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Slow,
    Hang,
    Corrupt,
}

struct Server {
    blobs: HashMap<String, Vec<u8>>,
    mode: Mutex<Mode>,
    requests: AtomicU64,
    /// Body bytes sent.
    sent: AtomicU64,
}

async fn blob(
    State(s): State<Arc<Server>>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *s.mode.lock().unwrap();
    match mode {
        Mode::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
        Mode::Slow => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    let digest = rest.rsplit('/').next().unwrap_or("");
    let Some(data) = s.blobs.get(digest) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    let Some((a, b)) = range else {
        return data.clone().into_response();
    };
    let mut part = data[a..=b.min(data.len() - 1)].to_vec();
    s.sent.fetch_add(part.len() as u64, Ordering::SeqCst);
    if mode == Mode::Corrupt {
        for x in part.iter_mut().step_by(97) {
            *x ^= 0xff;
        }
    }
    (StatusCode::PARTIAL_CONTENT, part).into_response()
}

struct Env {
    _tmp: tempfile::TempDir,
    index: Arc<Index>,
    server: Arc<Server>,
    addr: String,
    rt: tokio::runtime::Runtime,
}

/// A lazyfs image of a few files (one large, multi-chunk) served by a scripted server.
fn env() -> Env {
    env_with(|src| {
        std::fs::write(src.join("big"), prng_bytes(1, 3_000_000, false)).unwrap();
        std::fs::write(src.join("small"), prng_bytes(2, 10_000, true)).unwrap();
    })
}

/// Like [`env`], over the tree `fill` writes.
fn env_with(fill: impl FnOnce(&std::path::Path)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    fill(&src);
    let oci = tmp.path().join("oci");
    run_ok(&[
        "convert",
        "-q",
        &format!("dir:{}", src.display()),
        &format!("oci:{}:t", oci.display()),
    ]);
    let source = open_source(
        &ImageRef::parse(&format!("oci:{}:t", oci.display())).unwrap(),
        &RegistryOptions::default(),
    )
    .unwrap();
    let index = LazyImage::open(source.as_ref()).unwrap().index.unwrap();
    let mut blobs = HashMap::new();
    for b in &index.blobs {
        let data = std::fs::read(oci.join("blobs/sha256").join(b.digest.hex())).unwrap();
        blobs.insert(b.digest.to_string(), data);
    }
    let server = Arc::new(Server {
        blobs,
        mode: Mutex::new(Mode::Normal),
        requests: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route("/v2/{*rest}", axum::routing::get(blob))
        .with_state(server.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    Env {
        _tmp: tmp,
        index: Arc::new(index),
        server,
        addr,
        rt,
    }
}

impl Env {
    fn fetcher(
        &self,
        sources: Vec<HttpSource>,
        disk: Option<DiskCache>,
    ) -> (Arc<Fetcher>, prometheus::Registry) {
        self.fetcher_with_memory(64 << 20, sources, disk)
    }

    fn fetcher_with_memory(
        &self,
        memory: u64,
        sources: Vec<HttpSource>,
        disk: Option<DiskCache>,
    ) -> (Arc<Fetcher>, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        let cache = Arc::new(ChunkCache::new(memory, disk, metrics.clone()));
        let f = Fetcher::new(
            self.index.clone(),
            sources,
            FetchOptions {
                retries: 1,
                max_run: 4 << 20,
                blob_readahead: 1 << 20,
            },
            cache,
            metrics,
        );
        (Arc::new(f), registry)
    }

    fn source(&self, timeout: Duration) -> HttpSource {
        HttpSource::registry(&self.addr, "r/img", true, timeout).unwrap()
    }

    fn chunks(&self, path: &str) -> Vec<FileChunk> {
        let e = self.index.resolve(path.as_bytes()).unwrap();
        self.index.file_chunks(self.index.entries[e as usize].inode)
    }

    fn set_mode(&self, m: Mode) {
        *self.server.mode.lock().unwrap() = m;
    }
}

fn joined(parts: &[Arc<Vec<u8>>]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

#[test]
fn concurrent_reads_of_the_same_chunks_fetch_once() {
    let env = env();
    env.set_mode(Mode::Slow);
    let (fetcher, registry) = env.fetcher(vec![env.source(Duration::from_secs(10))], None);
    let chunks = env.chunks("big");
    assert!(chunks.len() > 3, "want a multi-chunk file");
    let runs = env.index.blob_runs(&chunks, 4 << 20).len() as u64;
    let want = prng_bytes(1, 3_000_000, false);
    let results = env.rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (f, c) = (fetcher.clone(), chunks.clone());
                tokio::spawn(async move { f.get(&c).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for r in results {
        assert_eq!(joined(&r.unwrap()), want);
    }
    assert_eq!(env.server.requests.load(Ordering::SeqCst), runs);
    // Everything is cached now.
    env.rt.block_on(fetcher.get(&chunks)).unwrap();
    assert_eq!(env.server.requests.load(Ordering::SeqCst), runs);
    let text = shoal_lazyfs::mount::metrics::render(&registry);
    assert!(metric_sum(&text, "shoal_lazyfs_cache_hits_total{tier=\"memory\"}") > 0.0);
}

#[test]
fn a_hanging_source_times_out_with_bounded_retries() {
    let env = env();
    env.set_mode(Mode::Hang);
    let (fetcher, registry) = env.fetcher(vec![env.source(Duration::from_millis(400))], None);
    let started = Instant::now();
    let err = env
        .rt
        .block_on(fetcher.get(&env.chunks("small")))
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert_eq!(
        env.server.requests.load(Ordering::SeqCst),
        2,
        "one try plus one retry"
    );
    let text = shoal_lazyfs::mount::metrics::render(&registry);
    assert_eq!(
        metric_sum(
            &text,
            "shoal_lazyfs_fetch_errors_total{reason=\"timeout\",source=\"registry\"}"
        ),
        2.0
    );
}

#[test]
fn corrupt_bytes_are_never_returned_or_cached() {
    let env = env();
    env.set_mode(Mode::Corrupt);
    let (fetcher, registry) = env.fetcher(vec![env.source(Duration::from_secs(5))], None);
    let chunks = env.chunks("small");
    let err = env.rt.block_on(fetcher.get(&chunks)).unwrap_err();
    assert!(matches!(*err, shoal_lazyfs::Error::Chunk { .. }), "{err}");
    let text = shoal_lazyfs::mount::metrics::render(&registry);
    assert!(metric_sum(&text, "shoal_lazyfs_fetch_errors_total{reason=\"verify\"") > 0.0);
    // Once the source heals, the right bytes come back (nothing bad was cached).
    env.set_mode(Mode::Normal);
    let got = env.rt.block_on(fetcher.get(&chunks)).unwrap();
    assert_eq!(joined(&got), prng_bytes(2, 10_000, true));
}

#[test]
fn a_dead_peer_falls_back_to_the_registry_and_the_disk_cache_survives() {
    let env = env();
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let peer = HttpSource::peer(&dead, &env.addr, "r/img", Duration::from_secs(2)).unwrap();
    let disk = DiskCache::open(cache_dir.path(), 64 << 20).unwrap();
    let (fetcher, registry) =
        env.fetcher(vec![peer, env.source(Duration::from_secs(5))], Some(disk));
    let chunks = env.chunks("big");
    let got = env.rt.block_on(fetcher.get(&chunks)).unwrap();
    assert_eq!(joined(&got), prng_bytes(1, 3_000_000, false));
    let text = shoal_lazyfs::mount::metrics::render(&registry);
    assert!(metric_sum(&text, "shoal_lazyfs_fetch_bytes_total{source=\"registry\"}") > 0.0);
    assert!(
        metric_sum(
            &text,
            "shoal_lazyfs_fetch_errors_total{reason=\"connect\",source=\"peer\"}"
        ) > 0.0
    );
    // Disk writes happen in the background: wait for them.
    let want: u64 = chunks
        .iter()
        .map(|c| u64::from(env.index.chunks[c.chunk as usize].raw_len))
        .sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    while DiskCache::open(cache_dir.path(), 64 << 20).unwrap().bytes() < want {
        assert!(Instant::now() < deadline, "disk cache not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(fetcher);

    // A new fetcher whose only source is dead reads everything from the disk cache.
    let dead_src = HttpSource::peer(&dead, &env.addr, "r/img", Duration::from_secs(2)).unwrap();
    let disk = DiskCache::open(cache_dir.path(), 64 << 20).unwrap();
    let (fetcher, _) = env.fetcher(vec![dead_src], Some(disk));
    let got = env.rt.block_on(fetcher.get(&chunks)).unwrap();
    assert_eq!(joined(&got), prng_bytes(1, 3_000_000, false));
    assert_eq!(
        Digest::of(&joined(&got)),
        Digest::of(&prng_bytes(1, 3_000_000, false))
    );
}

#[test]
fn readahead_chunks_ride_along_in_the_same_request() {
    let env = env();
    let (fetcher, _) = env.fetcher(vec![env.source(Duration::from_secs(10))], None);
    let chunks = env.chunks("big");
    let runs = env.index.blob_runs(&chunks, 4 << 20).len() as u64;
    let first = env
        .rt
        .block_on(fetcher.get_ahead(&chunks[..1], &chunks[1..]))
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(env.server.requests.load(Ordering::SeqCst), runs);
    let all = env.rt.block_on(fetcher.get(&chunks)).unwrap();
    assert_eq!(joined(&all), prng_bytes(1, 3_000_000, false));
    assert_eq!(
        env.server.requests.load(Ordering::SeqCst),
        runs,
        "no second request"
    );
}

const FILES: u64 = 200;

fn small_files_env() -> Env {
    env_with(|src| {
        for i in 0..FILES {
            std::fs::write(src.join(format!("f{i:03}")), prng_bytes(i, 8_000, false)).unwrap();
        }
    })
}

/// Reads every file of [`small_files_env`] in name (= blob) order, checking the bytes.
fn walk_in_order(env: &Env, fetcher: &Arc<Fetcher>) {
    for i in 0..FILES {
        let got = env
            .rt
            .block_on(fetcher.get(&env.chunks(&format!("f{i:03}"))))
            .unwrap();
        assert_eq!(joined(&got), prng_bytes(i, 8_000, false), "f{i:03}");
    }
}

#[test]
fn a_cold_walk_over_small_files_ramps_up_blob_readahead() {
    let env = small_files_env();
    let (fetcher, _) = env.fetcher(vec![env.source(Duration::from_secs(10))], None);
    // A lone read fetches its own chunk only.
    let one = env.rt.block_on(fetcher.get(&env.chunks("f100"))).unwrap();
    assert_eq!(joined(&one), prng_bytes(100, 8_000, false));
    assert_eq!(env.server.requests.load(Ordering::SeqCst), 1);
    // A walk in name (= blob) order: windows double up to 1 MiB (≈ 130 files).
    walk_in_order(&env, &fetcher);
    let walk = env.server.requests.load(Ordering::SeqCst) - 1;
    assert!(
        walk <= 12,
        "{walk} range requests for a walk over {FILES} files"
    );
}

#[test]
fn a_cold_walk_through_a_tiny_memory_cache_fetches_each_chunk_once() {
    let env = small_files_env();
    let cache_dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::open(cache_dir.path(), 64 << 20).unwrap();
    // Room for about two chunks: readahead chunks are pushed out of memory (or never
    // admitted) before they are read, and must come from the disk cache, not the network.
    let (fetcher, _) = env.fetcher_with_memory(
        20_000,
        vec![env.source(Duration::from_secs(10))],
        Some(disk),
    );
    walk_in_order(&env, &fetcher);
    let blob: u64 = env
        .index
        .chunks
        .iter()
        .map(|c| u64::from(c.stored_len))
        .sum();
    assert_eq!(
        env.server.sent.load(Ordering::SeqCst),
        blob,
        "every chunk once"
    );
}
