//! The distribution API's operations on one repository: manifests and blobs (whole or a
//! byte range) for pulling, and the blob check, monolithic upload and manifest `PUT` for
//! pushing. The same operations read through a peer's mirror (`MIRROR/v2/REPO/…?ns=HOST`),
//! which speaks the protocol and authenticates upstream itself.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
};
use reqwest::{Method, Response, StatusCode};
use shoal_common::Digest;

use crate::client::{check, Auth, Client, Payload, Request};
use crate::error::{Error, Result};

/// One repository of one registry, or of a registry seen through a peer's mirror.
pub struct Repository {
    client: Arc<Client>,
    /// `https://HOST`, or the mirror's base URL.
    base: String,
    /// The registry host as written (token cache key, `?ns=`).
    host: String,
    repo: String,
    auth: Auth,
    /// `ns=HOST` query when `base` is a mirror.
    ns: Option<String>,
}

impl Repository {
    /// `repo` of registry `host`, reached directly.
    pub fn new(client: Arc<Client>, host: &str, repo: &str, auth: Auth) -> Self {
        Repository {
            base: client.base_url(host),
            client,
            host: host.to_owned(),
            repo: repo.to_owned(),
            auth,
            ns: None,
        }
    }

    /// `repo` of registry `host` through the mirror at `mirror` (a peer's base URL).
    pub fn through_mirror(client: Arc<Client>, mirror: &str, host: &str, repo: &str) -> Self {
        let ns = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", host)
            .finish();
        Repository {
            client,
            base: mirror.trim_end_matches('/').to_owned(),
            host: host.to_owned(),
            repo: repo.to_owned(),
            auth: Auth::None,
            ns: Some(ns),
        }
    }

    /// `BASE/v2/REPO/` (where the operations' URLs start), for messages.
    pub fn describe(&self) -> String {
        format!("{}/v2/{}/", self.base, self.repo)
    }

    /// `BASE/v2/REPO/TAIL`, with `?ns=` for a mirror.
    pub fn url(&self, tail: &str) -> String {
        match &self.ns {
            Some(ns) => format!("{}/v2/{}/{tail}?{ns}", self.base, self.repo),
            None => format!("{}/v2/{}/{tail}", self.base, self.repo),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Payload,
    ) -> Result<Response> {
        let req = Request {
            method,
            url,
            headers,
            body,
            host: &self.host,
            repo: &self.repo,
            auth: &self.auth,
        };
        Ok(self.client.send(&req).await?.response)
    }

    /// `GET` of a manifest by tag or digest, accepting `accept`; a success or an error.
    pub async fn manifest(&self, reference: &str, accept: &str) -> Result<Response> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, header(accept, &url)?);
        let resp = self.send(Method::GET, &url, h, Payload::Empty).await?;
        check(resp, &url).await
    }

    /// `GET` of a whole blob, its body still to read.
    pub async fn blob(&self, digest: &Digest) -> Result<Response> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .send(Method::GET, &url, HeaderMap::new(), Payload::Empty)
            .await?;
        check(resp, &url).await
    }

    /// Exactly `len` bytes at `offset` of blob `digest`; a shorter answer is an error
    /// ([`Error::Short`], retryable).
    pub async fn blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        let bytes = self.blob_range_upto(digest, offset, len).await?;
        if (bytes.len() as u64) < len {
            return Err(Error::Short {
                url: self.url(&format!("blobs/{digest}")),
                got: bytes.len() as u64,
                want: len,
            });
        }
        Ok(bytes)
    }

    /// At most `len` bytes at `offset` of blob `digest`: fewer when the blob ends first. A
    /// server that ignores the range (allowed by HTTP) is read up to the range and cut.
    pub async fn blob_range_upto(&self, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let url = self.url(&format!("blobs/{digest}"));
        let mut h = HeaderMap::new();
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        h.insert(RANGE, header(&range, &url)?);
        let mut resp = self.send(Method::GET, &url, h, Payload::Empty).await?;
        let mut skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::OK => offset,
            _ => {
                return Err(check(resp, &url).await.err().unwrap_or(Error::Invalid {
                    url,
                    message: "unexpected success status for a range".into(),
                }))
            }
        };
        let want = usize::try_from(len).map_err(|_| Error::Invalid {
            url: url.clone(),
            message: format!("range of {len} bytes does not fit in memory"),
        })?;
        let mut out = BytesMut::with_capacity(want.min(64 << 20));
        while out.len() < want {
            let chunk = resp.chunk().await.map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
            let Some(mut c) = chunk else { break };
            if skip > 0 {
                let n = (c.len() as u64).min(skip);
                skip -= n;
                c = c.slice(n as usize..);
            }
            let take = c.len().min(want - out.len());
            out.extend_from_slice(&c[..take]);
        }
        Ok(out.freeze())
    }

    /// Whether the repository has blob `digest` (`HEAD`).
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .send(Method::HEAD, &url, HeaderMap::new(), Payload::Empty)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check(resp, &url).await.map(|_| false),
        }
    }

    /// Uploads the `size` bytes at `path` as blob `digest` (monolithic: `POST` to start,
    /// one `PUT` with the content).
    pub async fn upload_blob(&self, digest: &Digest, size: u64, path: &Path) -> Result<()> {
        let url = self.url("blobs/uploads/");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self.send(Method::POST, &url, h, Payload::Empty).await?;
        let resp = check(resp, &url).await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Invalid {
                url: url.clone(),
                message: "upload started without a Location".into(),
            })?;
        let location = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let body = Payload::File {
            path: path.to_owned(),
            size,
        };
        let resp = self.send(Method::PUT, &put_url, h, body).await?;
        check(resp, &put_url).await.map(|_| ())
    }

    /// `PUT` of a manifest under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        let url = self.url(&format!("manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, header(media_type, &url)?);
        let resp = self
            .send(Method::PUT, &url, h, Payload::Bytes(bytes))
            .await?;
        check(resp, &url).await.map(|_| ())
    }
}

fn header(value: &str, url: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| Error::Invalid {
        url: url.to_owned(),
        message: format!("{value:?} is not a valid header value"),
    })
}
