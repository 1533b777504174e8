//! The upstream registry side of the mirror, over the one registry client
//! (`shoal-registry`): which credentials a request goes with (the client's own
//! `Authorization`, else the node's configured credentials for that registry, else none),
//! and the blob access check's memory. Bearer challenges, the token cache (tokens got with a
//! client's credentials are never shared) and retries are the client's.
//!
//! The mirror sends its requests through [`Upstream::send`] and passes the registry's
//! statuses and headers on to containerd as they came.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use shoal_common::Digest;
use shoal_registry::{Auth, Client, ClientOptions, Payload, Request};

use crate::access::AccessCache;
use crate::config::PeerConfig;
use crate::credentials::Credential;
use crate::error::{Error, Result};
use crate::source::OriginAuth;

pub use shoal_common::registry::valid_host;
pub use shoal_registry::AuthorizedResponse;

pub struct Upstream {
    client: Client,
    credentials: HashMap<String, Credential>,
    /// The blob access check's memory; `None` when `verify_blob_access` is off.
    access: Option<AccessCache>,
}

impl Upstream {
    /// No credentials, the access check on (60 s); see [`Upstream::from_config`].
    pub fn new(insecure: Vec<String>, connect_timeout: Duration) -> Result<Self> {
        let client = Client::new(ClientOptions {
            connect_timeout,
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("shoal-peer/", env!("CARGO_PKG_VERSION")).to_owned(),
            insecure,
            ..Default::default()
        })
        .map_err(|e| Error::runtime("upstream http client", e))?;
        Ok(Upstream {
            client,
            credentials: HashMap::new(),
            access: Some(AccessCache::new(Duration::from_secs(60))),
        })
    }

    /// The mirror's upstream side as configured: plain-http hosts, the node's credentials per
    /// registry, and the blob access check.
    pub fn from_config(config: &PeerConfig) -> Result<Self> {
        let mut insecure = config.insecure_registries.clone();
        let mut credentials = HashMap::new();
        for (host, settings) in &config.registries {
            if settings.insecure && !insecure.contains(host) {
                insecure.push(host.clone());
            }
            if let Some(c) = settings.credential()? {
                credentials.insert(host.clone(), c);
            }
        }
        let mut up = Upstream::new(insecure, config.connect_timeout)?;
        up.credentials = credentials;
        up.access = config
            .verify_blob_access
            .then(|| AccessCache::new(config.blob_access_ttl));
        Ok(up)
    }

    /// The blob access check's memory, when the check is on.
    pub fn access(&self) -> Option<&AccessCache> {
        self.access.as_ref()
    }

    /// What identifies the credentials a request for `host` goes with (for the access cache
    /// key, hashed there): the client's header, else the node's, else anonymous.
    pub fn identity(&self, host: &str, client_auth: Option<&HeaderValue>) -> Vec<u8> {
        let (tag, value): (&[u8], &[u8]) = match client_auth {
            Some(a) => (b"client:", a.as_bytes()),
            None => match self.credentials.get(host) {
                Some(c) => (b"node:", c.header().as_bytes()),
                None => (b"anonymous", b""),
            },
        };
        [tag, value].concat()
    }

    pub fn base_url(&self, host: &str) -> String {
        self.client.base_url(host)
    }

    /// Sends `method url` with `headers`; with `client_auth` that header is used as is,
    /// otherwise the node's credentials for `host` or none, or a cached token for
    /// (host, repo); a bearer challenge is answered through the token endpoint.
    pub async fn send(
        &self,
        method: Method,
        host: &str,
        repo: &str,
        url: &str,
        headers: HeaderMap,
        client_auth: Option<HeaderValue>,
    ) -> Result<AuthorizedResponse> {
        let auth = self.auth(host, client_auth);
        let req = Request {
            method,
            url,
            headers,
            body: Payload::Empty,
            host,
            repo,
            auth: &auth,
        };
        self.client.send(&req).await.map_err(origin(url))
    }

    /// The `Authorization` the next request for `repo` would start with (the client's own,
    /// a cached token, or the node's credentials), without asking anything: for a download
    /// that joins a blob already checked upstream.
    pub fn auth_for(
        &self,
        host: &str,
        repo: &str,
        client_auth: Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        self.client
            .auth_for(host, repo, &self.auth(host, client_auth))
    }

    /// The client's header (its tokens stay its own), else the node's credentials, else none.
    fn auth(&self, host: &str, client_auth: Option<HeaderValue>) -> Auth {
        match client_auth {
            Some(a) => Auth::Forwarded(a),
            None => match self.credentials.get(host) {
                Some(c) => Auth::Own(c.header().clone()),
                None => Auth::Anonymous,
            },
        }
    }
}

/// Renews a blob download's `Authorization` the way the mirror's own requests get theirs:
/// a `HEAD` of the blob with the same credentials (a refused cached token forgotten first),
/// answering the registry's challenge. A client's own bearer token cannot be renewed (the
/// registry's refusal is its answer); the node's own credentials (configured, else
/// anonymous) are tried next, and the download's other requesters' after that
/// ([`crate::source::AuthPool`]), so the refusal fails no one's download. That client's next
/// request is refused with the registry's challenge by its own access check.
pub struct BlobAuth {
    upstream: Arc<Upstream>,
    host: String,
    repo: String,
    url: String,
    client_auth: Option<HeaderValue>,
}

impl BlobAuth {
    pub fn new(
        upstream: Arc<Upstream>,
        host: &str,
        repo: &str,
        url: &str,
        client_auth: Option<HeaderValue>,
    ) -> Self {
        BlobAuth {
            upstream,
            host: host.to_owned(),
            repo: repo.to_owned(),
            url: url.to_owned(),
            client_auth,
        }
    }

    /// The client's credentials renewed, else the node's own.
    async fn renew_any(&self, refused: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let Some(value) = self.head(self.client_auth.clone(), refused).await {
            return Some(value);
        }
        match self.client_auth {
            // These were the node's own already.
            None => None,
            Some(_) => {
                tracing::debug!(url = %self.url, "client credentials refused: trying the node's own");
                self.head(None, refused).await
            }
        }
    }

    async fn head(
        &self,
        client_auth: Option<HeaderValue>,
        refused: Option<&HeaderValue>,
    ) -> Option<HeaderValue> {
        let up = &self.upstream;
        if let Some(refused) = refused {
            let auth = up.auth(&self.host, client_auth.clone());
            up.client
                .forget_token(&self.host, &self.repo, &auth, refused);
        }
        let answer = up
            .send(
                Method::HEAD,
                &self.host,
                &self.repo,
                &self.url,
                HeaderMap::new(),
                client_auth,
            )
            .await
            .map_err(|e| tracing::debug!(url = %self.url, error = %e, "renewing blob credentials"))
            .ok()?;
        if !answer.response.status().is_success() {
            return None;
        }
        // The same value again (the node's own bearer token) would only be refused again.
        answer.auth.filter(|a| Some(a) != refused)
    }
}

// The credentials themselves never reach a log.
impl std::fmt::Debug for BlobAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobAuth")
            .field("url", &self.url)
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

impl OriginAuth for BlobAuth {
    fn renew<'a>(&'a self, refused: Option<&'a HeaderValue>) -> BoxFuture<'a, Option<HeaderValue>> {
        Box::pin(self.renew_any(refused))
    }

    fn identity(&self) -> Option<Digest> {
        let id = self
            .upstream
            .identity(&self.host, self.client_auth.as_ref());
        Some(AccessCache::key(
            &id,
            &self.host,
            &self.repo,
            &Digest::of(self.url.as_bytes()),
        ))
    }
}

/// Reads a response body, failing when it is longer than `limit`.
pub async fn read_limited(resp: reqwest::Response, limit: usize, url: &str) -> Result<Vec<u8>> {
    shoal_registry::read_limited(resp, limit, url)
        .await
        .map_err(origin(url))
}

/// The peer's error for a failed upstream request (its status, when the registry answered,
/// decides whether the mirror retries and what containerd is told).
fn origin(url: &str) -> impl Fn(shoal_registry::Error) -> Error + '_ {
    move |e| Error::Origin {
        url: url.to_owned(),
        message: e.to_string(),
        status: e.status(),
        retry_after: None,
    }
}
