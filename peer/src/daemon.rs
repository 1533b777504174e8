//! `shoal-peer run`: wires storage, supernode client, engine and servers together, keeps the
//! peer announced, and shuts everything down in order.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use shoal_common::api::{Heartbeat, PeerAnnounce};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::config::{parse_advertise, PeerConfig};
use crate::engine::{Engine, EngineShared, MemoryBudget, Reporter};
use crate::error::{Error, Result};
use crate::metrics::PeerMetrics;
use crate::ratelimit::RateLimit;
use crate::server::{self, health, local, mirror, p2p};
use crate::source::{HttpFetcher, Liveness};
use crate::storage::{Storage, StorageMetrics};
use crate::supernode_client::SupernodeClient;

/// The daemon's listeners, bound before anything else so port conflicts fail fast (and tests
/// can bind port 0 and read the ports back).
pub struct Listeners {
    pub mirror: TcpListener,
    pub p2p: TcpListener,
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &PeerConfig) -> Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::runtime(format!("cannot listen on {addr} ({what})"), e))
        };
        Ok(Listeners {
            mirror: bind(config.mirror_listen, "mirror_listen").await?,
            p2p: bind(config.p2p_listen, "p2p_listen").await?,
            metrics: bind(config.metrics_listen, "metrics_listen").await?,
        })
    }
}

/// The peer's components wired together but not yet serving: `run` serves these routers on
/// its listeners; tests drive them in process (`tower::ServiceExt::oneshot`).
pub struct Peer {
    /// Registry mirror and local download API (`--mirror-listen`).
    pub local: axum::Router,
    /// Piece server for other peers (`--p2p-listen`).
    pub p2p: axum::Router,
    /// `/metrics`, `/healthz`, `/readyz` (`--metrics-listen`).
    pub health: axum::Router,
    client: Arc<SupernodeClient>,
    engine: Engine,
    metrics: PeerMetrics,
    readiness: Arc<health::Readiness>,
}

impl Peer {
    /// Opens the cache and wires storage, supernode client (starting an embedded supernode
    /// when none is configured), engine and routers. `p2p_addr` is where the piece server
    /// will listen (the advertised address derives from it). Background tasks go on
    /// `tracker` and stop with `cancel`.
    pub async fn build(
        config: &PeerConfig,
        p2p_addr: SocketAddr,
        cancel: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Peer> {
        config.validate()?;
        let registry = Registry::new();
        let metrics =
            PeerMetrics::new(&registry).map_err(|e| Error::runtime("metrics registration", e))?;
        let supernodes = supernodes(config, &registry, cancel, tracker).await?;
        let storage = Arc::new(Storage::open(
            &config.data_dir,
            config.cache_size.0,
            StorageMetrics {
                used_bytes: metrics.cache_bytes.clone(),
                evictions: metrics.cache_evictions.clone(),
            },
        )?);
        metrics.cache_quota_bytes.set(config.cache_size.0 as i64);

        let advertise = advertise_addr(config, &supernodes[0], p2p_addr).await?;
        let peer_id = peer_id(config)?;
        tracing::info!(%peer_id, %advertise, "peer identity");
        let client = Arc::new(SupernodeClient::new(
            supernodes,
            PeerAnnounce {
                peer_id,
                addr: advertise,
                upload_capacity: config.upload_rate.0,
                labels: config.labels.clone(),
                // Never 0 (which means "not sent"): the supernode tells a restart by it.
                instance: rand::random::<u64>().max(1),
            },
        ));
        let download_limit = Arc::new(RateLimit::new(config.download_rate));
        let http = HttpFetcher::new(
            config.connect_timeout,
            config.piece_timeout,
            download_limit.clone(),
        );
        // Parents get their own pool: a shorter connect timeout, and stall detection.
        let parent_http = HttpFetcher::new(
            config.parent_connect_timeout,
            config.piece_timeout,
            download_limit,
        )
        .with_liveness(Liveness {
            stall: config.parent_stall_timeout,
            min_rate: config.parent_min_rate.0,
        })
        .with_header(shoal_common::PEER_ID_HEADER, client.peer_id());
        let reporter = Reporter::spawn(client.clone(), metrics.clone(), tracker, cancel.clone());
        let send_memory = MemoryBudget::new(config.send_memory.0);
        let engine = Engine::new(EngineShared {
            storage: storage.clone(),
            client: client.clone(),
            http,
            parent_http,
            metrics: metrics.clone(),
            reporter: reporter.clone(),
            concurrent_pieces: config.concurrent_pieces,
            piece_memory: MemoryBudget::new(config.piece_memory.0),
            send_memory: send_memory.clone(),
            piece_size: config.piece_size.0,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });

        let readiness = health::Readiness::new(metrics.supernode_reachable.clone());
        let p2p = p2p::router(p2p::P2pState {
            storage,
            metrics: metrics.clone(),
            upload_limit: Arc::new(RateLimit::new(config.upload_rate)),
            reporter: reporter.clone(),
            send_memory,
        });
        let local = local::router(local::LocalState {
            engine: engine.clone(),
            metrics: metrics.clone(),
        })
        .merge(mirror::router(mirror::MirrorState {
            engine: engine.clone(),
            metrics: metrics.clone(),
            upstream: Arc::new(crate::upstream::Upstream::from_config(config)?),
            default_upstream: config.default_upstream.clone(),
            media_types: Default::default(),
            heads: Default::default(),
        }));
        // Storage is open and the routers are wired: the mirror can serve once its listener
        // is (`run` binds every listener before building the peer).
        readiness.set_mirror_ready();
        let health = health::router(health::HealthState {
            registry,
            readiness: readiness.clone(),
        });
        Ok(Peer {
            local,
            p2p,
            health,
            client,
            engine,
            metrics,
            readiness,
        })
    }

    /// Keeps the peer announced to its supernodes and its memory trimmed until `cancel`.
    pub fn spawn_upkeep(&self, cancel: &CancellationToken, tracker: &TaskTracker) {
        tracker.spawn(crate::trim::trim_when_idle(
            self.metrics.clone(),
            cancel.clone(),
        ));
        tracker.spawn(keep_announced(
            self.client.clone(),
            self.engine.clone(),
            self.metrics.clone(),
            self.readiness.clone(),
            cancel.clone(),
        ));
    }
}

/// The supernodes to use: the configured ones, or an embedded one on a loopback port.
async fn supernodes(
    config: &PeerConfig,
    registry: &Registry,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<Url>> {
    if !config.supernodes.is_empty() {
        return Ok(config.supernodes.clone());
    }
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Error::runtime("embedded supernode", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::runtime("embedded supernode", e))?;
    let sn = shoal_supernode::Supernode::new(config.embedded_supernode.clone(), registry)
        .map_err(|e| Error::runtime("embedded supernode", e))?;
    let c = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = sn.serve(listener, c).await {
            tracing::error!(error = %e, "embedded supernode stopped");
        }
    });
    tracing::info!(%addr, "running an embedded supernode (single-node mode)");
    Ok(vec![Url::parse(&format!("http://{addr}")).map_err(
        |e| Error::runtime("embedded supernode url", e),
    )?])
}

/// Runs the peer until `cancel` fires.
pub async fn run(
    config: PeerConfig,
    listeners: Listeners,
    cancel: CancellationToken,
) -> Result<()> {
    let tracker = TaskTracker::new();
    let p2p_addr = listeners
        .p2p
        .local_addr()
        .map_err(|e| Error::runtime("p2p listener", e))?;
    let peer = Peer::build(&config, p2p_addr, &cancel, &tracker).await?;
    match server::raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open files allowed"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    let servers = [
        ("p2p", listeners.p2p, peer.p2p.clone()),
        ("local", listeners.mirror, peer.local.clone()),
        ("metrics", listeners.metrics, peer.health.clone()),
    ];
    for (name, listener, router) in servers {
        let c = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = server::serve(name, listener, router, c).await {
                tracing::error!(server = name, error = %e, "server failed");
            }
        });
    }
    peer.spawn_upkeep(&cancel, &tracker);

    cancel.cancelled().await;
    tracing::info!("shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), peer.client.leave()).await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 10s");
    }
    Ok(())
}

/// Announces (retrying until it works), re-registers the cache, then heartbeats; announces
/// again whenever a supernode has forgotten this peer.
async fn keep_announced(
    client: Arc<SupernodeClient>,
    engine: Engine,
    metrics: PeerMetrics,
    readiness: Arc<health::Readiness>,
    cancel: CancellationToken,
) {
    let mut interval = Duration::from_secs(3);
    let mut announced = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        if !announced {
            match client.announce().await {
                Ok(reply) => {
                    interval =
                        Duration::from_millis(reply.heartbeat_interval_ms.clamp(200, 60_000));
                    engine.announce_cache().await;
                    announced = true;
                    backoff = Duration::from_millis(200);
                    readiness.set_supernode_reachable(true);
                    tracing::info!("announced to the supernode");
                }
                Err(e) => {
                    metrics.supernode_errors.inc();
                    readiness.set_supernode_reachable(false);
                    tracing::warn!(error = %e, "announce failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
        let hb = Heartbeat {
            active_uploads: metrics.uploads_active.get().max(0) as u32,
            upload_rate: 0,
        };
        match client.heartbeat(&hb).await {
            Ok(()) => readiness.set_supernode_reachable(true),
            Err(Error::Supernode {
                unknown_peer: true, ..
            }) => {
                tracing::info!("a supernode forgot this peer; announcing again");
                announced = false;
            }
            Err(e) => {
                metrics.supernode_errors.inc();
                readiness.set_supernode_reachable(false);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// The address other peers use to reach our piece server.
async fn advertise_addr(
    config: &PeerConfig,
    supernode: &Url,
    p2p: SocketAddr,
) -> Result<SocketAddr> {
    if let Some(a) = &config.advertise_addr {
        return parse_advertise(a, p2p.port());
    }
    if !p2p.ip().is_unspecified() {
        return Ok(p2p);
    }
    // The local address of the route to the supernode (a UDP "connect" sends nothing).
    let host = supernode.host_str().unwrap_or("127.0.0.1");
    let port = supernode.port_or_known_default().unwrap_or(8002);
    let target = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut a| a.next());
    let ip = match target {
        Some(t) => {
            let bind: IpAddr = if t.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            };
            let sock = std::net::UdpSocket::bind((bind, 0))
                .and_then(|s| s.connect(t).map(|_| s))
                .and_then(|s| s.local_addr());
            sock.map(|a| a.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]))
        }
        None => IpAddr::from([127, 0, 0, 1]),
    };
    Ok(SocketAddr::new(ip, p2p.port()))
}

/// The configured id, or one generated once and kept in the data dir so restarts keep it.
fn peer_id(config: &PeerConfig) -> Result<String> {
    if let Some(id) = &config.peer_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("peer-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if shoal_common::api::validate_peer_id(&id).is_ok() {
            return Ok(id);
        }
    }
    let host = hostname();
    let id = format!("{host}-{:08x}", rand::random::<u32>());
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    crate::storage::write_atomic(&path, id.as_bytes())?;
    Ok(id)
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(100)
        .collect();
    if clean.is_empty() {
        "peer".into()
    } else {
        clean
    }
}
