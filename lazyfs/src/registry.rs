//! The converter's registry access: [`BlobSource`] and [`BlobSink`] over the one registry
//! client (`shoal-registry`), which answers `401` challenges (bearer token, or Basic with
//! `SHOAL_REGISTRY_USERNAME`/`SHOAL_REGISTRY_PASSWORD`) and retries a failing registry.
//! Pulls can go through the local Shoal peer (`GET PEER/v2/<repo>/...?ns=<host>`), falling
//! back to the registry when the peer is unreachable or fails.
//!
//! The traits are blocking (conversion is CPU work on plain threads) and the client is
//! async: a [`Registry`] owns a small runtime and waits for its futures from the caller's
//! thread, so it also works when called from inside another runtime.

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use shoal_common::registry::credentials_from_env;
use shoal_common::Digest;
use shoal_registry::{Auth, Client, ClientOptions, Repository, RetryPolicy};

use crate::error::{Error, Result};
use crate::media;
use crate::store::{BlobSink, BlobSource, RawManifest};

/// Largest manifest read.
const MAX_MANIFEST: usize = 16 << 20;
/// Body chunks buffered ahead of a blob reader.
const READ_AHEAD: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts (`HOST` or `HOST:PORT`) spoken to over plain http.
    pub insecure: Vec<String>,
    /// Base URL of the local peer's mirror endpoint, used for pulls.
    pub peer: Option<String>,
    /// With a peer: never fall back to the registry when the peer fails.
    pub no_fallback: bool,
}

pub struct Registry {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    direct: Arc<Repository>,
    mirror: Option<Arc<Repository>>,
    no_fallback: bool,
    host: String,
    repo: String,
    reference: String,
}

impl Registry {
    pub fn new(host: &str, repo: &str, reference: &str, opts: &RegistryOptions) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-registry")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the registry client's runtime", e))?;
        let client = |retry| {
            Client::new(ClientOptions {
                connect_timeout: Duration::from_secs(30),
                read_timeout: None,
                timeout: Some(Duration::from_secs(3600)),
                user_agent: concat!("shoal-lazyfs/", env!("CARGO_PKG_VERSION")).to_owned(),
                insecure: opts.insecure.clone(),
                retry,
                ..Default::default()
            })
            .map(Arc::new)
            .map_err(client_error)
        };
        let auth = match credentials_from_env() {
            Some((u, p)) => Auth::basic(&u, &p).map_err(client_error)?,
            None => Auth::Anonymous,
        };
        let direct = Repository::new(client(RetryPolicy::default())?, host, repo, auth);
        // With a fallback, the registry is the peer's retry.
        let mirror_retry = if opts.no_fallback {
            RetryPolicy::default()
        } else {
            RetryPolicy::none()
        };
        let mirror = match &opts.peer {
            Some(peer) => Some(Arc::new(Repository::through_mirror(
                client(mirror_retry)?,
                peer,
                host,
                repo,
            ))),
            None => None,
        };
        Ok(Registry {
            rt: Some(rt),
            direct: Arc::new(direct),
            mirror,
            no_fallback: opts.no_fallback,
            host: host.to_string(),
            repo: repo.to_string(),
            reference: reference.to_string(),
        })
    }

    /// Runs `fut` on the client's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Invalid("registry client used while dropping".into()))?;
        futures::executor::block_on(rt.spawn(fut))
            .map_err(|e| Error::Invalid(format!("registry request aborted: {e}")))?
    }

    /// `op` through the peer when configured; on transport failure or a 5xx, directly.
    fn pull<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Arc<Repository>) -> Fut + Send + 'static,
        Fut: Future<Output = shoal_registry::Result<T>> + Send,
    {
        let mirror = self.mirror.clone();
        let direct = self.direct.clone();
        let no_fallback = self.no_fallback;
        self.run(async move {
            if let Some(mirror) = mirror {
                match op(mirror).await {
                    Err(e) if !no_fallback && fall_back(&e) => {
                        tracing::warn!(error = %e, "peer failed; pulling from the registry")
                    }
                    r => return r.map_err(client_error),
                }
            }
            op(direct).await.map_err(client_error)
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a peer failure is the peer's (unreachable, failing) rather than the answer.
fn fall_back(e: &shoal_registry::Error) -> bool {
    match e {
        shoal_registry::Error::Transport { .. } => true,
        e => e.status().is_some_and(|s| s >= 500),
    }
}

/// The crate's error for a client error: transport and status errors keep their variants
/// (the mount's fetch metrics and retries tell them apart).
pub(crate) fn client_error(e: shoal_registry::Error) -> Error {
    match e {
        shoal_registry::Error::Transport { url, source } => Error::Http { url, source },
        shoal_registry::Error::Status {
            url,
            status,
            message,
        } => Error::Registry {
            url,
            status,
            message,
        },
        e => Error::Client(e),
    }
}

/// A blob body read on the runtime and handed over chunk by chunk.
struct BodyReader {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match futures::executor::block_on(self.chunks.recv()) {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

impl BlobSource for Registry {
    fn describe(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    fn reference(&self) -> Option<String> {
        Some(self.reference.clone())
    }

    fn manifest(&self, reference: Option<&str>) -> Result<RawManifest> {
        let reference = reference.unwrap_or(&self.reference).to_string();
        let tag = reference.clone();
        let (bytes, media_type) = self.pull(move |repo| {
            let tag = tag.clone();
            async move {
                let resp = repo.manifest(&tag, media::MANIFEST_ACCEPT).await?;
                let media_type = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
                let url = repo.url(&format!("manifests/{tag}"));
                let bytes = shoal_registry::read_limited(resp, MAX_MANIFEST, &url).await?;
                Ok((bytes, media_type))
            }
        })?;
        let digest = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != digest {
                return Err(Error::Blob {
                    digest: want,
                    reason: format!("manifest bytes hash to {digest}"),
                });
            }
        }
        Ok(RawManifest {
            bytes,
            media_type,
            digest,
        })
    }

    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let d = *digest;
        let mut resp = self.pull(move |repo| {
            let d = d;
            async move { repo.blob(&d).await }
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Invalid("registry client used while dropping".into()))?;
        rt.spawn(async move {
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => return,
                    Err(e) => Err(std::io::Error::other(e)),
                };
                // The body broke or the reader went away: stop either way.
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(BodyReader {
            chunks: rx,
            current: Bytes::new(),
        }))
    }

    fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>> {
        let d = *digest;
        let bytes = self.pull(move |repo| {
            let d = d;
            async move { repo.blob_range_upto(&d, offset, len).await }
        })?;
        Ok(bytes.to_vec())
    }
}

impl BlobSink for Registry {
    fn describe(&self) -> String {
        BlobSource::describe(self)
    }

    fn staging_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let repo = self.direct.clone();
        let d = *digest;
        self.run(async move { repo.has_blob(&d).await.map_err(client_error) })
    }

    fn put_blob(&self, digest: &Digest, size: u64, path: &Path) -> Result<()> {
        let repo = self.direct.clone();
        let (d, path) = (*digest, path.to_owned());
        self.run(async move {
            if repo.has_blob(&d).await.map_err(client_error)? {
                return Ok(());
            }
            repo.upload_blob(&d, size, &path)
                .await
                .map_err(client_error)
        })
    }

    fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let repo = self.direct.clone();
        let (reference, media_type) = (self.reference.clone(), media_type.to_owned());
        let body = Bytes::copy_from_slice(bytes);
        self.run(async move {
            repo.put_manifest(&reference, body, &media_type)
                .await
                .map_err(client_error)
        })?;
        Ok(Digest::of(bytes))
    }
}
