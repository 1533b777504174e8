//! Debian's `docker-registry` on loopback (open or htpasswd-protected) and a TCP proxy in
//! front of it that counts the registry's egress.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_common::Digest;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{free_port, http, status_of, Daemon, READY_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// Registry and counting proxy

/// Debian's `docker-registry` on a free port, storing in a temp dir.
pub struct Registry {
    pub port: u16,
    daemon: Daemon,
    _dir: TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        Self::start_with(None).await
    }

    /// A registry that wants Basic credentials (`htpasswd -Bbc`): `user` / `password`.
    pub async fn start_htpasswd(user: &str, password: &str) -> Registry {
        Self::start_with(Some((user, password))).await
    }

    /// A registry that wants bearer tokens from `realm` (docker-registry's `auth: token`),
    /// signed by the key of the certificate in `cert` (a PEM file).
    pub async fn start_token(realm: &str, service: &str, issuer: &str, cert: &Path) -> Registry {
        let auth = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    \
             rootcertbundle: {}\n",
            cert.display()
        );
        Self::start_with_auth(None, Some(auth)).await
    }

    async fn start_with(htpasswd: Option<(&str, &str)>) -> Registry {
        Self::start_with_auth(htpasswd, None).await
    }

    async fn start_with_auth(htpasswd: Option<(&str, &str)>, token: Option<String>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut auth = token.clone().unwrap_or_default();
        if let Some((user, password)) = htpasswd {
            let file = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .arg("-Bbc")
                .arg(&file)
                .args([user, password])
                .output()
                .expect("htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd: {out:?}");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: shoal-tests\n    path: {}\n",
                file.display()
            );
        }
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: shoal-e2e-tests\n{auth}",
                dir.path().join("root").display()
            ),
        )
        .unwrap();
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "/usr/bin/docker-registry is missing: apt-get install docker-registry (.ci/run does)"
        );
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        let mut daemon = Daemon::spawn("registry", cmd, dir.path());
        let url = format!("http://127.0.0.1:{port}/v2/");
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = if htpasswd.is_some() || token.is_some() {
            401
        } else {
            200
        };
        while status_of(&url).await != Some(ready) {
            daemon.assert_running();
            assert!(Instant::now() < deadline, "registry not ready on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Registry {
            port,
            daemon,
            _dir: dir,
        }
    }

    /// Uploads `data` as a blob of `repo` (monolithic push) and returns its digest.
    pub async fn push(&self, repo: &str, data: &[u8]) -> Digest {
        self.push_with_auth(repo, data, None).await
    }

    /// Like [`Registry::push`], for a registry that may want credentials: with
    /// `Some(authorization)` every request carries it (`Basic …` for htpasswd, `Bearer …` with a
    /// push token for token auth).
    pub async fn push_with_auth(
        &self,
        repo: &str,
        data: &[u8],
        authorization: Option<&str>,
    ) -> Digest {
        let digest = Digest::of(data);
        let client = http();
        let with_auth = |req: reqwest::RequestBuilder| match authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        };
        let base = format!("http://127.0.0.1:{}", self.port);
        let resp = with_auth(client.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("start upload");
        assert_eq!(resp.status().as_u16(), 202, "start upload: {resp:?}");
        let location = resp
            .headers()
            .get("location")
            .expect("upload Location")
            .to_str()
            .unwrap()
            .to_string();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = with_auth(client.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(resp.status().as_u16(), 201, "finish upload: {resp:?}");
        digest
    }

    pub fn stop(&mut self) {
        self.daemon.kill();
    }
}

/// A TCP proxy that counts the bytes flowing from its target to clients: the origin's egress.
pub struct CountingProxy {
    pub port: u16,
    egress: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(target_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let egress = Arc::new(AtomicU64::new(0));
        let counter = egress.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(pipe(client, target_port, counter.clone()));
            }
        });
        CountingProxy {
            port,
            egress,
            accept,
        }
    }

    /// Bytes sent by the target to clients so far.
    pub fn egress(&self) -> u64 {
        self.egress.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(client: TcpStream, target_port: u16, counter: Arc<AtomicU64>) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return; // dropping `client` closes it: the client sees the origin as down
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let to_upstream = async move {
        let _ = tokio::io::copy(&mut client_r, &mut up_w).await;
        let _ = up_w.shutdown().await;
    };
    let to_client = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = client_w.shutdown().await;
    };
    tokio::join!(to_upstream, to_client);
}

/// A registry with a counting proxy in front: peers are given proxy URLs, blobs are pushed
/// straight to the registry (not counted).
pub struct Origin {
    pub registry: Registry,
    pub proxy: CountingProxy,
}

impl Origin {
    pub async fn start() -> Origin {
        let registry = Registry::start().await;
        let proxy = CountingProxy::start(registry.port).await;
        Origin { registry, proxy }
    }

    /// `registry` behind a counting proxy.
    pub async fn with_registry(registry: Registry) -> Origin {
        let proxy = CountingProxy::start(registry.port).await;
        Origin { registry, proxy }
    }

    /// An htpasswd-protected registry (Basic auth) behind the counting proxy.
    pub async fn start_htpasswd(user: &str, password: &str) -> Origin {
        let registry = Registry::start_htpasswd(user, password).await;
        let proxy = CountingProxy::start(registry.port).await;
        Origin { registry, proxy }
    }

    /// `host:port` of the proxy, as clients name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }

    /// Pushes `data` to `repo` and returns (digest, blob URL through the proxy).
    pub async fn push(&self, repo: &str, data: &[u8]) -> (Digest, String) {
        let digest = self.registry.push(repo, data).await;
        (digest, self.blob_url(repo, &digest))
    }

    pub fn blob_url(&self, repo: &str, digest: &Digest) -> String {
        format!(
            "http://127.0.0.1:{}/v2/{repo}/blobs/{digest}",
            self.proxy.port
        )
    }

    pub fn egress(&self) -> u64 {
        self.proxy.egress()
    }
}
