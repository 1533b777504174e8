//! A bearer-token issuer for Debian's `docker-registry` with `auth: token`: RS256 JWTs signed
//! with `openssl`, carrying the signing certificate (`x5c`) that the registry trusts. One user
//! (Basic credentials at the token endpoint) gets every action asked for; anonymous clients get
//! `pull` on `public/*` only; other credentials get 401.
//!
//! Tokens last `expires_in` (300 s, or what [`TokenIssuer::start_expiring`] is given) at the
//! registry too: `docker-registry` accepts a token up to [`REGISTRY_LEEWAY`] past its `exp`,
//! so `exp` is set that much earlier.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tempfile::TempDir;

use super::{base64, basic_auth, http, run, Registry, RegistryAuth};

/// The `service` the registry and the issuer agree on.
pub const TOKEN_SERVICE: &str = "shoal-registry";
/// The `iss` of the issued tokens.
pub const TOKEN_ISSUER: &str = "shoal-test-issuer";
/// How long past `exp` `docker-registry` (distribution 2.8) still accepts a token: its
/// allowance for clock skew.
pub const REGISTRY_LEEWAY: u64 = 60;

#[derive(Clone)]
struct IssuerState {
    key: PathBuf,
    /// Standard base64 of the certificate (DER), for the `x5c` header.
    cert_b64: String,
    /// `Basic …` of the user who gets everything.
    user_auth: String,
    user: String,
    tokens: Arc<AtomicU64>,
    /// Seconds a token lasts (told to clients, and enforced by the registry).
    expires_in: u64,
}

/// The token endpoint (`GET /token?service=…&scope=repository:NAME:ACTIONS`), on loopback.
pub struct TokenIssuer {
    pub port: u16,
    /// The PEM certificate the registry must trust (`rootcertbundle`).
    pub cert: PathBuf,
    tokens: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl TokenIssuer {
    /// An issuer giving `user`/`password` every action, anonymous clients `pull` on `public/*`.
    pub async fn start(user: &str, password: &str) -> TokenIssuer {
        Self::start_expiring(user, password, Duration::from_secs(300)).await
    }

    /// Like [`TokenIssuer::start`], with tokens that last `expires_in` (whole seconds).
    pub async fn start_expiring(user: &str, password: &str, expires_in: Duration) -> TokenIssuer {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={TOKEN_ISSUER}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509")
            .stdout;
        let tokens = Arc::new(AtomicU64::new(0));
        let state = IssuerState {
            key,
            cert_b64: base64(&der),
            user_auth: basic_auth(user, password),
            user: user.to_owned(),
            tokens: tokens.clone(),
            expires_in: expires_in.as_secs(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token issuer");
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().route("/token", get(issue)).with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenIssuer {
            port,
            cert,
            tokens,
            server,
            _dir: dir,
        }
    }

    /// The `realm` of the registry's challenge.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }

    /// A real `docker-registry` trusting this issuer.
    pub async fn registry(&self) -> Registry {
        Registry::start(RegistryAuth::Token {
            realm: self.realm(),
            service: TOKEN_SERVICE.into(),
            issuer: TOKEN_ISSUER.into(),
            cert: self.cert.clone(),
        })
    }

    /// `Bearer …` for `actions` (e.g. `pull,push`) on `repo`, asked with `authorization`.
    pub async fn bearer(&self, repo: &str, actions: &str, authorization: Option<&str>) -> String {
        let mut req = http().get(format!(
            "{}?service={TOKEN_SERVICE}&scope=repository:{repo}:{actions}",
            self.realm()
        ));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("token request");
        assert_eq!(resp.status().as_u16(), 200, "token request: {resp:?}");
        let t: serde_json::Value = resp.json().await.expect("token JSON");
        format!("Bearer {}", t["token"].as_str().expect("token field"))
    }
}

/// A peer config (`DIR/node.toml`) giving the node `user`'s credentials for registry `host`
/// (plain http).
pub fn credentials_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.\"{host}\"]\nusername = \"{user}\"\npassword = \"{password}\"\n\
             insecure = true\n"
        ),
    )
    .expect("write node config");
    config
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Base64, URL-safe without padding (JWT parts).
fn b64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn sign_rs256(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    out.stdout
}

async fn issue(
    State(iss): State<IssuerState>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let user = auth == Some(iss.user_auth.as_str());
    if auth.is_some() && !user {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut access = vec![];
    for (k, v) in &q {
        if k != "scope" {
            continue;
        }
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() != 3 || parts[0] != "repository" {
            continue;
        }
        let actions: Vec<&str> = parts[2]
            .split(',')
            .filter(|a| user || (*a == "pull" && parts[1].starts_with("public/")))
            .collect();
        access.push(serde_json::json!({
            "type": "repository", "name": parts[1], "actions": actions
        }));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let n = iss.tokens.fetch_add(1, Ordering::SeqCst);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [iss.cert_b64]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": if user { iss.user.as_str() } else { "" },
        "aud": TOKEN_SERVICE, "exp": (now + iss.expires_in).saturating_sub(REGISTRY_LEEWAY),
        "nbf": now - 10, "iat": now,
        "jti": format!("t{n}"), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = iss.key.clone();
    let input = signing_input.clone();
    let sig = tokio::task::spawn_blocking(move || sign_rs256(&key, input.as_bytes()))
        .await
        .unwrap();
    let jwt = format!("{signing_input}.{}", b64url(&sig));
    axum::Json(serde_json::json!({"token": jwt, "expires_in": iss.expires_in})).into_response()
}
