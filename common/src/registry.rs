//! The OCI distribution protocol's pure parts, shared by every client of a registry (the
//! peer's mirror, the lazyfs converter and mount): image references, which URL a registry
//! host is reached at, `WWW-Authenticate` challenges, token responses and Basic credentials.
//!
//! No HTTP here on purpose: `common` must not pull a client or a server into every crate. The
//! one client that speaks the protocol is the `shoal-registry` crate, built on these.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{clip, ParseError};

/// Docker Hub's API host: `docker.io` is only the name images are written with.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Variables holding the Basic credentials a command-line client (the lazyfs converter and
/// mount) sends to a registry: the user's, for private images and pushes.
pub const USERNAME_ENV: &str = "SHOAL_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "SHOAL_REGISTRY_PASSWORD";

/// Tokens without `expires_in` live this long (the distribution spec's default).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);

/// The host a registry's API answers at: Docker Hub's names map to its API host.
pub fn api_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" => DOCKER_HUB_API,
        h => h,
    }
}

/// Whether `host` is reached over plain http: listed in `insecure` as written or as its API
/// host (configs name either).
pub fn is_insecure(host: &str, insecure: &[String]) -> bool {
    insecure.iter().any(|h| h == host || h == api_host(host))
}

/// `https://API_HOST`, or `http://` for a registry listed in `insecure`.
pub fn base_url(host: &str, insecure: &[String]) -> String {
    let scheme = if is_insecure(host, insecure) {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{}", api_host(host))
}

/// A host as given in `?ns=` or a config: `host` or `host:port` (IPv6 in brackets), nothing
/// that could change the URL's path or authority.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// An image in a registry: `HOST/REPO:TAG` or `HOST/REPO@sha256:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// As written (`docker.io`, `127.0.0.1:5000`): the name `?ns=` and insecure lists use.
    pub host: String,
    pub repo: String,
    /// Tag or digest.
    pub reference: String,
}

impl Reference {
    /// Parses what `docker pull` accepts: an optional `docker://`, a host only when the first
    /// component looks like one (a `.`, a `:` or `localhost`; else Docker Hub), `library/`
    /// for Docker Hub's official images, and `latest` when no tag is given.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let bad = |reason: &'static str| ParseError::Reference {
            input: clip(input),
            reason,
        };
        let rest = input.strip_prefix("docker://").unwrap_or(input);
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p),
            _ => ("docker.io", rest),
        };
        let (repo, reference) = match path.split_once('@') {
            Some((r, d)) => (r, d),
            None => match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t),
                _ => (path, "latest"),
            },
        };
        let repo = if host == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        let valid_repo = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid_repo {
            return Err(bad(
                "repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if reference.is_empty() || reference.contains('/') {
            return Err(bad("invalid tag or digest"));
        }
        if !valid_host(host) {
            return Err(bad("invalid registry host"));
        }
        Ok(Reference {
            host: host.to_owned(),
            repo,
            reference: reference.to_owned(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(f, "{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

/// What a `WWW-Authenticate` header asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from the realm and send it as `Bearer`.
    Bearer(BearerChallenge),
    /// Send Basic credentials.
    Basic,
    /// A scheme we do not speak, or a malformed header.
    Unsupported,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// The token request's query: `service` and `scope` when the challenge named them.
    pub fn query(&self) -> Vec<(&'static str, &str)> {
        let mut q = Vec::new();
        if let Some(s) = &self.service {
            q.push(("service", s.as_str()));
        }
        if let Some(s) = &self.scope {
            q.push(("scope", s.as_str()));
        }
        q
    }
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. A bearer challenge
/// without a realm, or with an unterminated quote, cannot be answered: `Unsupported`.
pub fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Challenge::Basic;
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Challenge::Unsupported;
    }
    let Some(params) = parse_params(params) else {
        return Challenge::Unsupported;
    };
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    for (k, v) in params {
        match k.as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            "scope" => scope = Some(v),
            _ => {}
        }
    }
    match realm {
        Some(realm) => Challenge::Bearer(BearerChallenge {
            realm,
            service,
            scope,
        }),
        None => Challenge::Unsupported,
    }
}

/// `key="value",key2=value2` (keys lowercased); `None` on an unterminated quote.
fn parse_params(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if s.is_empty() {
            return Some(out);
        }
        let (k, after) = s.split_once('=')?;
        let (v, tail) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        out.push((k.trim().to_ascii_lowercase(), v.to_owned()));
        s = tail;
    }
}

/// A token endpoint's answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    /// How long to use it: a little under `expires_in` so it is not sent as it expires.
    pub ttl: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Parses a token endpoint's JSON: `token`, or OAuth's `access_token`, and `expires_in`.
pub fn parse_token(body: &[u8]) -> Result<Token, ParseError> {
    #[derive(Deserialize)]
    struct Body {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let bad = |reason: String| ParseError::Token { reason };
    let parsed: Body =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a token response: {e}")))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("token response has no token".into()))?;
    let ttl = parsed
        .expires_in
        .map(|s| Duration::from_secs(s.saturating_sub(5).max(1)))
        .unwrap_or(DEFAULT_TOKEN_TTL);
    Ok(Token { token, ttl })
}

/// The `Authorization` value for Basic credentials (RFC 7617: base64 of `user:password`).
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Whether an `Authorization` value carries Basic credentials (which a token endpoint can
/// exchange for a token; a bearer token cannot be).
pub fn is_basic(authorization: &str) -> bool {
    authorization.len() > 6 && authorization.as_bytes()[..6].eq_ignore_ascii_case(b"basic ")
}

/// Basic credentials from `SHOAL_REGISTRY_USERNAME`/`SHOAL_REGISTRY_PASSWORD`, when both set.
pub fn credentials_from_env() -> Option<(String, String)> {
    match (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV)) {
        (Ok(u), Ok(p)) => Some((u, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hosts() {
        let insecure = vec!["127.0.0.1:5000".to_owned()];
        for hub in ["docker.io", "index.docker.io"] {
            assert_eq!(base_url(hub, &insecure), "https://registry-1.docker.io");
        }
        assert_eq!(
            base_url("127.0.0.1:5000", &insecure),
            "http://127.0.0.1:5000"
        );
        assert_eq!(base_url("ghcr.io", &insecure), "https://ghcr.io");
        let hub = vec!["registry-1.docker.io".to_owned()];
        assert_eq!(base_url("docker.io", &hub), "http://registry-1.docker.io");
        assert!(valid_host("127.0.0.1:5000"));
        assert!(valid_host("[::1]:5000"));
        assert!(!valid_host("a/b"));
        assert!(!valid_host("a@b"));
        assert!(!valid_host(""));
    }

    fn reference(host: &str, repo: &str, reference: &str) -> Reference {
        Reference {
            host: host.into(),
            repo: repo.into(),
            reference: reference.into(),
        }
    }

    #[test]
    fn parses_references() {
        let ok = |s: &str| Reference::parse(s).unwrap();
        assert_eq!(
            ok("127.0.0.1:5000/a/b:t"),
            reference("127.0.0.1:5000", "a/b", "t")
        );
        assert_eq!(ok("localhost/x"), reference("localhost", "x", "latest"));
        assert_eq!(
            ok("debian:12"),
            reference("docker.io", "library/debian", "12")
        );
        assert_eq!(ok("docker://r.io/a/b"), reference("r.io", "a/b", "latest"));
        assert_eq!(ok("user/app"), reference("docker.io", "user/app", "latest"));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let by_digest = ok(&format!("r.io/x@{d}"));
        assert_eq!(by_digest, reference("r.io", "x", d));
        assert_eq!(by_digest.to_string(), format!("r.io/x@{d}"));
        assert_eq!(ok("r.io/x:1").to_string(), "r.io/x:1");
        for bad in ["r.io/UPPER:t", "r.io/:t", "r.io/a//b", "r.io/a@", "r.io/a:"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        let Challenge::Bearer(b) = c else {
            panic!("{c:?}")
        };
        assert_eq!(b.realm, "https://auth.docker.io/token");
        assert_eq!(b.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(
            b.scope.as_deref(),
            Some("repository:library/alpine:pull,push")
        );
        assert_eq!(
            b.query(),
            vec![
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull,push")
            ]
        );
        let unquoted = parse_challenge("bearer realm=https://a/t,service=s");
        assert!(
            matches!(&unquoted, Challenge::Bearer(b) if b.realm == "https://a/t" && b.service.as_deref() == Some("s")),
            "{unquoted:?}"
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), Challenge::Basic);
        for bad in [
            "Bearer service=x",
            "Bearer realm=\"unterminated",
            "",
            "Digest realm=x",
        ] {
            assert_eq!(parse_challenge(bad), Challenge::Unsupported, "{bad}");
        }
    }

    #[test]
    fn parses_tokens() {
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(t.token, "abc");
        assert_eq!(t.ttl, Duration::from_secs(295));
        let t = parse_token(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!(t.token, "xyz");
        assert_eq!(t.ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(
            parse_token(br#"{"token":"a","expires_in":2}"#).unwrap().ttl,
            Duration::from_secs(1)
        );
        assert!(!format!("{t:?}").contains("xyz"));
        for bad in [&b"{}"[..], b"not json", br#"{"token":""}"#] {
            assert!(parse_token(bad).is_err());
        }
    }

    #[test]
    fn encodes_basic() {
        assert_eq!(basic("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(basic("a", "b"), "Basic YTpi");
        assert_eq!(basic("u", "hunter2"), "Basic dTpodW50ZXIy");
        assert!(is_basic("Basic YTpi"));
        assert!(is_basic("basic YTpi"));
        assert!(!is_basic("Bearer x"));
        assert!(!is_basic("Basic "));
    }
}
