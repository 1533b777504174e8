//! The upstream registry side of the mirror: mapping a registry host to its base URL, and
//! sending requests with the client's own `Authorization` header, else the node's configured
//! credentials for that registry, else anonymously; a bearer challenge is answered through
//! the token endpoint (with the Basic credentials, if any). Tokens got anonymously or with the
//! node's credentials are cached per host and repository until they expire; tokens got with a
//! client's credentials are not shared.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

use crate::access::AccessCache;
use crate::config::PeerConfig;
use crate::credentials::Credential;
use crate::error::{Error, Result};

/// Tokens without `expires_in` live this long (the distribution spec's default is 60 s).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Largest token response accepted.
const MAX_TOKEN_BODY: usize = 64 << 10;

/// Maps a registry host to its base URL: `https://HOST`, `http://HOST` when configured
/// insecure, `docker.io` → `registry-1.docker.io`.
pub fn base_url(host: &str, insecure: &[String]) -> String {
    let host = if host == "docker.io" || host == "index.docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    if insecure.iter().any(|h| h == host) {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    }
}

/// A host as given in `?ns=` or the config: `host` or `host:port`, nothing else.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Whose credentials a request goes with.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Client,
    Node,
    Anonymous,
}

type TokenKey = (String, String, Who);

pub struct Upstream {
    http: reqwest::Client,
    insecure: Vec<String>,
    credentials: HashMap<String, Credential>,
    tokens: Mutex<HashMap<TokenKey, (HeaderValue, Instant)>>,
    /// The blob access check's memory; `None` when `verify_blob_access` is off.
    access: Option<AccessCache>,
}

/// A response and the Authorization header that got it (to reuse for the blob download).
pub struct Answer {
    pub response: Response,
    pub auth: Option<HeaderValue>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Upstream {
    /// No credentials, the access check on (60 s); see [`Upstream::from_config`].
    pub fn new(insecure: Vec<String>, connect_timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Config(format!("upstream http client: {e}")))?;
        Ok(Upstream {
            http,
            insecure,
            credentials: HashMap::new(),
            tokens: Mutex::new(HashMap::new()),
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
        base_url(host, &self.insecure)
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
    ) -> Result<Answer> {
        let (who, initial) = self.who(host, client_auth);
        let key = (host.to_owned(), repo.to_owned(), who);
        let auth = self.cached_token(&key).or_else(|| initial.clone());
        let response = self
            .request(method.clone(), url, &headers, auth.as_ref())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(Answer { response, auth });
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer);
        let Some(challenge) = challenge else {
            return Ok(Answer { response, auth });
        };
        // A bearer token of the client's or the node's was refused: that is the answer.
        if initial.is_some() && !is_basic(initial.as_ref()) {
            return Ok(Answer { response, auth });
        }
        let (token, ttl) = self.fetch_token(&challenge, initial.as_ref()).await?;
        // A token got with a client's credentials is not shared.
        if who != Who::Client {
            self.tokens
                .lock()
                .insert(key, (token.clone(), Instant::now() + ttl));
        }
        let response = self.request(method, url, &headers, Some(&token)).await?;
        Ok(Answer {
            response,
            auth: Some(token),
        })
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
        let (who, initial) = self.who(host, client_auth);
        self.cached_token(&(host.to_owned(), repo.to_owned(), who))
            .or(initial)
    }

    fn who(&self, host: &str, client_auth: Option<HeaderValue>) -> (Who, Option<HeaderValue>) {
        match client_auth {
            Some(a) => (Who::Client, Some(a)),
            None => match self.credentials.get(host) {
                Some(c) => (Who::Node, Some(c.header().clone())),
                None => (Who::Anonymous, None),
            },
        }
    }

    /// A live token for `key`; a client's tokens are never cached.
    fn cached_token(&self, key: &(String, String, Who)) -> Option<HeaderValue> {
        if key.2 == Who::Client {
            return None;
        }
        let mut tokens = self.tokens.lock();
        match tokens.get(key) {
            Some((t, exp)) if *exp > Instant::now() => Some(t.clone()),
            Some(_) => {
                tokens.remove(key);
                None
            }
            None => None,
        }
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Response> {
        let mut req = self.http.request(method, url).headers(headers.clone());
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        req.send().await.map_err(|e| Error::Origin {
            url: url.to_owned(),
            message: e.to_string(),
            status: None,
        })
    }

    async fn fetch_token(
        &self,
        ch: &Challenge,
        client_auth: Option<&HeaderValue>,
    ) -> Result<(HeaderValue, Duration)> {
        let fail = |message: String, status: Option<u16>| Error::Origin {
            url: ch.realm.clone(),
            message,
            status,
        };
        let mut url =
            url::Url::parse(&ch.realm).map_err(|e| fail(format!("bad token realm: {e}"), None))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &ch.service {
                q.append_pair("service", s);
            }
            if let Some(s) = &ch.scope {
                q.append_pair("scope", s);
            }
        }
        // Client Basic credentials are exchanged for a token; anything else goes anonymous.
        let basic = client_auth.filter(|a| is_basic(Some(a)));
        let resp = self
            .request(Method::GET, url.as_str(), &HeaderMap::new(), basic)
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(
                format!("token endpoint answered {status}"),
                Some(status.as_u16()),
            ));
        }
        let body = read_limited(resp, MAX_TOKEN_BODY, &ch.realm).await?;
        let parsed: TokenBody = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("bad token response: {e}"), None))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| fail("token response has no token".into(), None))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| fail("token is not a valid header value".into(), None))?;
        value.set_sensitive(true);
        let ttl = parsed
            .expires_in
            .map(|s| Duration::from_secs(s.saturating_sub(5).max(1)))
            .unwrap_or(DEFAULT_TOKEN_TTL);
        Ok((value, ttl))
    }
}

fn is_basic(auth: Option<&HeaderValue>) -> bool {
    auth.and_then(|a| a.to_str().ok())
        .is_some_and(|s| s.len() > 6 && s[..6].eq_ignore_ascii_case("basic "))
}

/// Reads a response body, failing when it is longer than `limit`.
pub async fn read_limited(mut resp: Response, limit: usize, url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > limit {
                    return Err(Error::Origin {
                        url: url.to_owned(),
                        message: format!("body longer than {limit} bytes"),
                        status: None,
                    });
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(Error::Origin {
                    url: url.to_owned(),
                    message: format!("reading body: {e}"),
                    status: None,
                })
            }
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"`.
pub fn parse_bearer(header: &str) -> Option<Challenge> {
    let rest = header.trim();
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case("bearer ") {
        return None;
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut s = &rest[7..];
    loop {
        s = s.trim_start_matches([' ', ',']);
        if s.is_empty() {
            break;
        }
        let (k, after) = s.split_once('=')?;
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_owned());
        s = tail;
    }
    Some(Challenge {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hosts() {
        let insecure = vec!["127.0.0.1:5000".to_owned()];
        assert_eq!(
            base_url("docker.io", &insecure),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            base_url("127.0.0.1:5000", &insecure),
            "http://127.0.0.1:5000"
        );
        assert_eq!(base_url("ghcr.io", &insecure), "https://ghcr.io");
        assert!(valid_host("127.0.0.1:5000"));
        assert!(!valid_host("a/b"));
        assert!(!valid_host(""));
    }

    #[test]
    fn parses_challenges() {
        let c = parse_bearer(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/alpine:pull"));
        assert!(parse_bearer("Basic realm=x").is_none());
        assert!(parse_bearer("Bearer service=x").is_none());
        assert!(parse_bearer("Bearer realm=\"unterminated").is_none());
        assert!(parse_bearer("").is_none());
    }
}
