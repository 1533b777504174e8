//! A small OCI distribution client: manifests and blobs (whole or by range) for pulling,
//! monolithic blob uploads and manifest PUTs for pushing. It answers `401` challenges
//! (bearer token, or basic with `SHOAL_REGISTRY_USERNAME`/`SHOAL_REGISTRY_PASSWORD`), and can
//! pull through the local Shoal peer (`GET PEER/v2/<repo>/...?ns=<host>`), falling back to
//! the registry when the peer is unreachable.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use shoal_common::Digest;

use crate::error::{Error, Result};
use crate::media;
use crate::store::{BlobSink, BlobSource, Fetched};

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
    client: Client,
    base: String,
    host: String,
    repo: String,
    reference: String,
    peer: Option<String>,
    no_fallback: bool,
    auth: Mutex<Option<String>>,
    creds: Option<(String, String)>,
}

impl Registry {
    pub fn new(host: &str, repo: &str, reference: &str, opts: &RegistryOptions) -> Result<Self> {
        let api_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let scheme = if opts.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(3600))
            .user_agent(concat!("shoal-lazyfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http {
                url: host.to_string(),
                source: e,
            })?;
        let creds = match (
            std::env::var("SHOAL_REGISTRY_USERNAME"),
            std::env::var("SHOAL_REGISTRY_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) => Some((u, p)),
            _ => None,
        };
        Ok(Registry {
            client,
            base: format!("{scheme}://{api_host}"),
            host: host.to_string(),
            repo: repo.to_string(),
            reference: reference.to_string(),
            peer: opts
                .peer
                .as_ref()
                .map(|p| p.trim_end_matches('/').to_string()),
            no_fallback: opts.no_fallback,
            auth: Mutex::new(None),
            creds,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{}", self.base, self.repo, tail)
    }

    /// Send a request built by `make`, answering one auth challenge if needed.
    fn send(&self, url: &str, make: &dyn Fn(&Client) -> RequestBuilder) -> Result<Response> {
        let http = |e| Error::Http {
            url: url.to_string(),
            source: e,
        };
        let auth = self.auth.lock().map(|a| a.clone()).unwrap_or_default();
        let mut req = make(&self.client);
        if let Some(a) = &auth {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req.send().map_err(http)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(new_auth) = self.answer(&challenge)? else {
            return Ok(resp);
        };
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(new_auth.clone());
        }
        make(&self.client)
            .header(AUTHORIZATION, new_auth)
            .send()
            .map_err(http)
    }

    /// Turn a `WWW-Authenticate` challenge into an Authorization header value.
    fn answer(&self, challenge: &str) -> Result<Option<String>> {
        let (realm, query) = match parse_challenge(challenge) {
            Challenge::Basic => return Ok(self.creds.as_ref().map(|(u, p)| basic(u, p))),
            Challenge::Unsupported => return Ok(None),
            Challenge::Bearer { realm, query } => (realm, query),
        };
        let mut req = self.client.get(&realm).query(&query);
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().map_err(|e| Error::Http {
            url: realm.clone(),
            source: e,
        })?;
        let resp = check(resp, &realm)?;
        let body: serde_json::Value = resp.json().map_err(|e| Error::Http {
            url: realm.clone(),
            source: e,
        })?;
        let token = token_of(&body).ok_or_else(|| Error::Registry {
            url: realm,
            status: 200,
            message: "token response without a token".into(),
        })?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// GET through the peer when configured; on transport failure or a 5xx, directly.
    fn pull(
        &self,
        tail: &str,
        headers: &[(reqwest::header::HeaderName, String)],
    ) -> Result<Response> {
        if let Some(peer) = &self.peer {
            let url = format!("{peer}/v2/{}/{tail}", self.repo);
            let mut req = self.client.get(&url).query(&[("ns", &self.host)]);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send() {
                Ok(resp) if !resp.status().is_server_error() || self.no_fallback => {
                    return check(resp, &url)
                }
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), "peer failed; pulling from the registry")
                }
                Err(e) if self.no_fallback => return Err(Error::Http { url, source: e }),
                Err(e) => tracing::warn!(error = %e, "peer unreachable; pulling from the registry"),
            }
        }
        let url = self.url(tail);
        let resp = self.send(&url, &|c| {
            let mut req = c.get(&url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req
        })?;
        check(resp, &url)
    }
}

fn check(resp: Response, url: &str) -> Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut message = String::new();
    let _ = resp.take(4096).read_to_string(&mut message);
    Err(Error::Registry {
        url: url.to_string(),
        status,
        message: message.trim().to_string(),
    })
}

pub(crate) fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {encoded}")
}

/// What a `WWW-Authenticate` challenge asks for.
pub(crate) enum Challenge {
    Basic,
    /// Fetch a token from `realm` with these query parameters (service, scope).
    Bearer {
        realm: String,
        query: Vec<(String, String)>,
    },
    Unsupported,
}

pub(crate) fn parse_challenge(challenge: &str) -> Challenge {
    let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Unsupported;
    }
    let mut realm = None;
    let mut query = Vec::new();
    for (k, v) in parse_params(params) {
        if k == "realm" {
            realm = Some(v);
        } else {
            query.push((k, v));
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer { realm, query },
        None => Challenge::Unsupported,
    }
}

/// The token of a token endpoint's JSON answer (`token`, or OAuth's `access_token`).
pub(crate) fn token_of(body: &serde_json::Value) -> Option<&str> {
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
}

/// `key="value",key2="value2"` from a challenge.
pub(crate) fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.to_string(), n),
                None => (after.to_string(), ""),
            }
        };
        out.push((k, v));
        rest = next.trim_start_matches(',').trim();
    }
    out
}

impl BlobSource for Registry {
    fn describe(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    fn reference(&self) -> Option<String> {
        Some(self.reference.clone())
    }

    fn manifest(&self, reference: Option<&str>) -> Result<Fetched> {
        let reference = reference.unwrap_or(&self.reference).to_string();
        let resp = self.pull(
            &format!("manifests/{reference}"),
            &[(ACCEPT, media::MANIFEST_ACCEPT.to_string())],
        )?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let mut bytes = Vec::new();
        resp.take(16 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading manifest", e))?;
        let digest = Digest::of(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            if want != digest {
                return Err(Error::Blob {
                    digest: want,
                    reason: format!("manifest bytes hash to {digest}"),
                });
            }
        }
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    fn blob(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(self.pull(&format!("blobs/{digest}"), &[])?))
    }

    fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let resp = self.pull(&format!("blobs/{digest}"), &[(RANGE, range)])?;
        let whole = resp.status() == StatusCode::OK;
        let mut r: Box<dyn Read> = Box::new(resp);
        if whole {
            // The server ignored the range: skip to it.
            std::io::copy(&mut r.by_ref().take(offset), &mut std::io::sink())
                .map_err(|e| Error::io("reading blob", e))?;
        }
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        r.take(len)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("reading blob {digest}"), e))?;
        Ok(out)
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
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send(&url, &|c| c.request(Method::HEAD, &url))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check(resp, &url).map(|_| false),
        }
    }

    fn put_blob(&self, digest: &Digest, size: u64, path: &Path) -> Result<()> {
        if self.has_blob(digest)? {
            return Ok(());
        }
        let url = self.url("blobs/uploads/");
        let resp = self.send(&url, &|c| {
            c.post(&url).header(reqwest::header::CONTENT_LENGTH, "0")
        })?;
        let resp = check(resp, &url)?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Registry {
                url: url.clone(),
                status: resp.status().as_u16(),
                message: "upload started without a Location".into(),
            })?
            .to_string();
        let location = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else {
            format!("{}{}", self.base, location)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let resp = self.send(&put_url, &|c| {
            let body = match std::fs::File::open(path) {
                Ok(f) => reqwest::blocking::Body::sized(f, size),
                Err(_) => reqwest::blocking::Body::from(Vec::new()),
            };
            c.put(&put_url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body)
        })?;
        check(resp, &put_url).map(|_| ())
    }

    fn put_manifest(&self, bytes: &[u8], media_type: &str) -> Result<Digest> {
        let url = self.url(&format!("manifests/{}", self.reference));
        let body = bytes.to_vec();
        let resp = self.send(&url, &|c| {
            c.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.clone())
        })?;
        check(resp, &url)?;
        Ok(Digest::of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let p = parse_params(
            r#"realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.io/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
    }

    #[test]
    fn basic_auth() {
        assert_eq!(basic("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(basic("a", "b"), "Basic YTpi");
    }
}
