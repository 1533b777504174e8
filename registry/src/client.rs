//! Sending one request to a registry: the credentials it goes with, the bearer-token dance
//! when the registry challenges, the token cache, and the retry policy around every HTTP
//! exchange (the request itself and the token request).
//!
//! A request starts with a cached token for (host, repository, credentials) if there is
//! one, else with the credentials themselves. On a `401` with a bearer challenge, a token is
//! fetched (anonymously, or exchanging Basic credentials) and the request is sent once more:
//! that also renews a token that expired. A refused bearer token of the caller's own is the
//! answer, not something to work around.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use shoal_common::registry::{self as protocol, Challenge};

use crate::error::{retryable_status, Error, Result};
use crate::retry::{retry_after, RetryPolicy};

/// Largest token response accepted.
const MAX_TOKEN_BODY: usize = 64 << 10;
/// How much of an error body is kept for the message.
const MAX_ERROR_BODY: usize = 4 << 10;

/// What a request authenticates with; decides what is sent first and whether tokens got
/// with it are shared with later requests.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Nothing is sent and no challenge is answered: a peer's mirror authenticates upstream
    /// by itself, and its `401` is for the caller to see.
    None,
    /// Nothing is sent first; a bearer challenge is answered anonymously. Tokens are cached.
    Anonymous,
    /// Our own credentials (a `Basic …` or `Bearer …` value): sent first; Basic ones are
    /// exchanged for a token when challenged. Tokens are cached.
    Own(HeaderValue),
    /// Someone else's `Authorization`, forwarded (the mirror's client): used the same way,
    /// but a token got with it is never cached, so never shared.
    Forwarded(HeaderValue),
}

impl Auth {
    /// Our own Basic credentials, e.g. from [`protocol::credentials_from_env`].
    pub fn basic(user: &str, password: &str) -> Result<Self> {
        sensitive(&protocol::basic(user, password), "credentials").map(Auth::Own)
    }

    fn initial(&self) -> Option<&HeaderValue> {
        match self {
            Auth::None | Auth::Anonymous => None,
            Auth::Own(h) | Auth::Forwarded(h) => Some(h),
        }
    }

    /// Token cache key part; `None` for credentials whose tokens are not shared.
    fn cache_identity(&self) -> Option<Vec<u8>> {
        match self {
            Auth::Anonymous => Some(Vec::new()),
            Auth::Own(h) => Some(h.as_bytes().to_vec()),
            Auth::None | Auth::Forwarded(_) => None,
        }
    }
}

/// A request body that can be sent again (on a retry or after a token renewal).
#[derive(Clone, Debug, Default)]
pub enum Payload {
    #[default]
    Empty,
    Bytes(Bytes),
    /// `size` bytes read from `path`, streamed.
    File {
        path: PathBuf,
        size: u64,
    },
}

/// One request: what to send, and for which registry host and repository (the token
/// cache's key; tokens are scoped to a repository).
pub struct Request<'a> {
    pub method: Method,
    pub url: &'a str,
    pub headers: HeaderMap,
    pub body: Payload,
    pub host: &'a str,
    pub repo: &'a str,
    pub auth: &'a Auth,
}

impl<'a> Request<'a> {
    /// A body-less request with no extra headers.
    pub fn new(method: Method, url: &'a str, host: &'a str, repo: &'a str, auth: &'a Auth) -> Self {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: Payload::Empty,
            host,
            repo,
            auth,
        }
    }
}

/// The final response (any status) and the `Authorization` that got it, to reuse for a
/// follow-up request (the blob download after the access check).
pub struct AuthorizedResponse {
    pub response: Response,
    pub auth: Option<HeaderValue>,
}

/// How the HTTP client is built.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response (`None`: no limit).
    pub read_timeout: Option<Duration>,
    /// Longest a whole exchange may take (`None`: no limit).
    pub timeout: Option<Duration>,
    pub user_agent: String,
    /// Ignore `HTTP(S)_PROXY`: for a peer on the same node.
    pub no_proxy: bool,
    /// Registry hosts reached over plain http.
    pub insecure: Vec<String>,
    pub retry: RetryPolicy,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Some(Duration::from_secs(60)),
            timeout: None,
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")).to_owned(),
            no_proxy: false,
            insecure: Vec::new(),
            retry: RetryPolicy::default(),
        }
    }
}

type TokenKey = (String, String, Vec<u8>);

/// The registry client: one per process part (the mirror, a conversion, a mount), shared by
/// reference; it holds the connection pool and the token cache.
pub struct Client {
    http: reqwest::Client,
    insecure: Vec<String>,
    retry: RetryPolicy,
    tokens: Mutex<HashMap<TokenKey, (HeaderValue, Instant)>>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Self> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .user_agent(opts.user_agent);
        if let Some(t) = opts.read_timeout {
            b = b.read_timeout(t);
        }
        if let Some(t) = opts.timeout {
            b = b.timeout(t);
        }
        if opts.no_proxy {
            b = b.no_proxy();
        }
        Ok(Client {
            http: b.build().map_err(Error::Build)?,
            insecure: opts.insecure,
            retry: opts.retry,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// `https://API_HOST` (or `http://` for an insecure registry) of registry `host`.
    pub fn base_url(&self, host: &str) -> String {
        protocol::base_url(host, &self.insecure)
    }

    /// The `Authorization` a request for `repo` of `host` would start with (a cached token,
    /// else the credentials), without asking anything.
    pub fn auth_for(&self, host: &str, repo: &str, auth: &Auth) -> Option<HeaderValue> {
        self.cached_token(host, repo, auth)
            .or_else(|| auth.initial().cloned())
    }

    /// Sends `req`, retrying per the policy and answering one bearer challenge. Any status
    /// comes back as an [`AuthorizedResponse`]; only a request that got no answer at all is an error.
    pub async fn send(&self, req: &Request<'_>) -> Result<AuthorizedResponse> {
        let initial = req.auth.initial();
        let auth = self
            .cached_token(req.host, req.repo, req.auth)
            .or_else(|| initial.cloned());
        let response = self.retrying(req, auth.as_ref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED || matches!(req.auth, Auth::None) {
            return Ok(AuthorizedResponse { response, auth });
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(protocol::parse_challenge);
        let Some(Challenge::Bearer(challenge)) = challenge else {
            return Ok(AuthorizedResponse { response, auth });
        };
        // Our own bearer token was refused: that is the answer.
        let basic = initial.filter(|a| a.to_str().is_ok_and(protocol::is_basic));
        if initial.is_some() && basic.is_none() {
            return Ok(AuthorizedResponse { response, auth });
        }
        let (token, ttl) = self.fetch_token(&challenge, basic).await?;
        if let Some(id) = req.auth.cache_identity() {
            let key = (req.host.to_owned(), req.repo.to_owned(), id);
            self.tokens
                .lock()
                .insert(key, (token.clone(), Instant::now() + ttl));
        }
        let response = self.retrying(req, Some(&token)).await?;
        Ok(AuthorizedResponse {
            response,
            auth: Some(token),
        })
    }

    /// Drops the cached token for (`host`, `repo`, `auth`) if it is `refused`: the registry
    /// turned it down before the time it was said to last (a clock ahead of ours, a revoked
    /// token), so the next request asks for a new one.
    pub fn forget_token(&self, host: &str, repo: &str, auth: &Auth, refused: &HeaderValue) {
        let Some(id) = auth.cache_identity() else {
            return;
        };
        let key = (host.to_owned(), repo.to_owned(), id);
        let mut tokens = self.tokens.lock();
        if tokens.get(&key).is_some_and(|(t, _)| t == refused) {
            tokens.remove(&key);
        }
    }

    fn cached_token(&self, host: &str, repo: &str, auth: &Auth) -> Option<HeaderValue> {
        let key = (host.to_owned(), repo.to_owned(), auth.cache_identity()?);
        let mut tokens = self.tokens.lock();
        match tokens.get(&key) {
            Some((t, expires)) if *expires > Instant::now() => Some(t.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// One exchange, asked again while the policy allows on retryable statuses and errors.
    async fn retrying(&self, req: &Request<'_>, auth: Option<&HeaderValue>) -> Result<Response> {
        self.retry
            .run(
                || self.once(req, auth),
                |outcome| match outcome {
                    Ok(r) if retryable_status(r.status().as_u16()) => {
                        tracing::debug!(url = req.url, status = %r.status(), "registry busy");
                        Some(retry_after(r.headers()))
                    }
                    Err(e) if e.retryable() => {
                        tracing::debug!(url = req.url, error = %e, "registry unreachable");
                        Some(None)
                    }
                    _ => None,
                },
            )
            .await
    }

    async fn once(&self, req: &Request<'_>, auth: Option<&HeaderValue>) -> Result<Response> {
        let mut r = self
            .http
            .request(req.method.clone(), req.url)
            .headers(req.headers.clone());
        if let Some(a) = auth {
            r = r.header(AUTHORIZATION, a.clone());
        }
        r = match &req.body {
            Payload::Empty => r,
            Payload::Bytes(b) => r.body(b.clone()),
            Payload::File { path, size } => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Error::Invalid {
                        url: req.url.to_owned(),
                        message: format!("opening {}: {e}", path.display()),
                    })?;
                r.header(CONTENT_LENGTH, *size)
                    .body(reqwest::Body::wrap_stream(
                        tokio_util::io::ReaderStream::new(file),
                    ))
            }
        };
        r.send().await.map_err(|source| Error::Transport {
            url: req.url.to_owned(),
            source,
        })
    }

    /// A token for `challenge`, with `basic` credentials if any; and how long to use it.
    async fn fetch_token(
        &self,
        challenge: &protocol::BearerChallenge,
        basic: Option<&HeaderValue>,
    ) -> Result<(HeaderValue, Duration)> {
        let realm = &challenge.realm;
        let fail = |message: String, status: Option<u16>| Error::Token {
            realm: realm.clone(),
            message,
            status,
        };
        let mut url =
            url::Url::parse(realm).map_err(|e| fail(format!("bad token realm: {e}"), None))?;
        if !challenge.query().is_empty() {
            url.query_pairs_mut().extend_pairs(challenge.query());
        }
        let auth = basic.map_or(Auth::Anonymous, |b| Auth::Forwarded(b.clone()));
        let req = Request::new(Method::GET, url.as_str(), "", "", &auth);
        let resp = self
            .retrying(&req, basic)
            .await
            .map_err(|e| fail(e.to_string(), None))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(format!("answered {status}"), Some(status.as_u16())));
        }
        let body = read_limited(resp, MAX_TOKEN_BODY, realm).await?;
        let token = protocol::parse_token(&body).map_err(|e| fail(e.to_string(), None))?;
        let value = sensitive(&format!("Bearer {}", token.token), realm)?;
        Ok((value, token.ttl))
    }
}

/// A header value marked sensitive (never printed by the HTTP stack).
fn sensitive(value: &str, what: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| Error::Invalid {
        url: what.to_owned(),
        message: "credentials or token are not a valid header value".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Reads a response body, failing when it is longer than `limit`.
pub async fn read_limited(mut resp: Response, limit: usize, url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|source| Error::Transport {
        url: url.to_owned(),
        source,
    })? {
        if out.len() + c.len() > limit {
            return Err(Error::Invalid {
                url: url.to_owned(),
                message: format!("body longer than {limit} bytes"),
            });
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// `resp` if it succeeded, else a [`Error::Status`] with the start of its body.
pub async fn check(mut resp: Response, url: &str) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    Err(Error::Status {
        url: url.to_owned(),
        status,
        message: String::from_utf8_lossy(&body).trim().to_owned(),
    })
}
