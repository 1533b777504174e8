//! The origin of the end-to-end tests and of `shoal-bench faults`: Debian's `docker-registry` (from the test kit) behind
//! a [`CountingProxy`] that counts the registry's egress, and pushing blobs to it.

use shoal_common::Digest;

use crate::{http, CountingProxy, Registry, RegistryAuth};

/// Pushing blobs to a [`Registry`] the way a client would (monolithic upload).
#[allow(async_fn_in_trait)] // test support: never used across threads by name
pub trait Push {
    /// Uploads `data` as a blob of `repo` and returns its digest.
    async fn push(&self, repo: &str, data: &[u8]) -> Digest;

    /// Like [`Push::push`], for a registry that may want credentials: with
    /// `Some(authorization)` every request carries it (`Basic …` for htpasswd, `Bearer …` with a
    /// push token for token auth).
    async fn push_with_auth(&self, repo: &str, data: &[u8], authorization: Option<&str>) -> Digest;
}

impl Push for Registry {
    async fn push(&self, repo: &str, data: &[u8]) -> Digest {
        self.push_with_auth(repo, data, None).await
    }

    async fn push_with_auth(&self, repo: &str, data: &[u8], authorization: Option<&str>) -> Digest {
        let digest = Digest::of(data);
        let client = http();
        let with_auth = |req: reqwest::RequestBuilder| match authorization {
            Some(a) => req.header("authorization", a),
            None => req,
        };
        let base = self.url();
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
}

/// A registry with a counting proxy in front: peers are given proxy URLs, blobs are pushed
/// straight to the registry (not counted).
pub struct Origin {
    pub registry: Registry,
    pub proxy: CountingProxy,
}

impl Origin {
    pub async fn start() -> Origin {
        Self::with_registry(Registry::start(RegistryAuth::Open)).await
    }

    /// `registry` behind a counting proxy.
    pub async fn with_registry(registry: Registry) -> Origin {
        let proxy = CountingProxy::start(&registry.addr);
        Origin { registry, proxy }
    }

    /// An htpasswd-protected registry (Basic auth) behind the counting proxy.
    pub async fn start_htpasswd(user: &str, password: &str) -> Origin {
        Self::with_registry(Registry::start(RegistryAuth::htpasswd(user, password))).await
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

    /// Bytes the registry sent through the proxy so far.
    pub fn egress(&self) -> u64 {
        self.proxy.bytes()
    }
}
