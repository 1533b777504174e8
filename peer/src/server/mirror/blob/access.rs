//! The access check: a blob is served only after the upstream registry confirms, with the
//! client's credentials (else the node's), that it may be read: a `HEAD` of the blob, whose
//! positive answers are remembered briefly per credential, repository and blob. Fails
//! closed: an unreachable registry means no answer, so no blob.
//!
//! Clients asking together with the same credentials share one `HEAD` ([`HeadFlights`]), and
//! a remembered answer spares the next ones theirs: a thousand clients of one cold blob cost
//! the registry one `HEAD` per credential, not a thousand.

use axum::http::{header, HeaderValue, Method};
use shoal_common::Digest;

use super::super::{upstream_failed, upstream_refused, MirrorError, MirrorState};
use crate::access::{AccessCache, Allowed};
use crate::singleflight::SingleFlight;

/// What a successful blob `HEAD` told: the blob's length and the `Authorization` that worked.
#[derive(Clone, Debug)]
pub struct HeadAnswer {
    pub length: Option<u64>,
    pub auth: Option<HeaderValue>,
}

/// Blob `HEAD`s in progress, keyed like the access cache (credential, host, repository, blob).
pub type HeadFlights = SingleFlight<Digest, Result<HeadAnswer, MirrorError>>;

pub(super) fn blob_url(st: &MirrorState, host: &str, name: &str, digest: &Digest) -> String {
    format!("{}/v2/{name}/blobs/{digest}", st.upstream.base_url(host))
}

fn access_key(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<&HeaderValue>,
) -> Digest {
    AccessCache::key(&st.upstream.identity(host, auth), host, name, digest)
}

/// A fresh positive answer for this client's credentials, if one is remembered.
pub(super) fn remembered(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<&HeaderValue>,
) -> Option<Allowed> {
    let cache = st.upstream.access()?;
    cache.allowed(&access_key(st, host, name, digest, auth))
}

/// `HEAD` of the blob upstream with the client's (else the node's) credentials: the access
/// check, the blob's length and the token for the download. Concurrent requests with the same
/// credentials share one; a positive answer is remembered.
pub(super) async fn head_upstream(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
) -> Result<HeadAnswer, MirrorError> {
    let key = access_key(st, host, name, digest, auth.as_ref());
    st.heads
        .run(key, || ask_upstream(st, host, name, digest, auth, key))
        .await
}

async fn ask_upstream(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
    key: Digest,
) -> Result<HeadAnswer, MirrorError> {
    st.metrics
        .upstream_requests
        .with_label_values(&["blob"])
        .inc();
    let answer = st
        .upstream
        .send(
            Method::HEAD,
            host,
            name,
            &blob_url(st, host, name, digest),
            reqwest::header::HeaderMap::new(),
            auth,
        )
        .await
        .map_err(|e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN"))?;
    let resp = &answer.response;
    if !resp.status().is_success() {
        return Err(upstream_refused(st, resp, "BLOB_UNKNOWN", "blob"));
    }
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(cache) = st.upstream.access() {
        cache.remember(key, Allowed { length });
    }
    Ok(HeadAnswer {
        length,
        auth: answer.auth,
    })
}

/// Before a cached blob is served: may this client read it upstream? Fails closed (an
/// unreachable registry means no answer, so no blob).
pub(super) async fn check_access(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
) -> Result<(), MirrorError> {
    if st.upstream.access().is_none() {
        return Ok(());
    }
    let count = |result: &str| {
        st.metrics
            .blob_access_checks
            .with_label_values(&[result])
            .inc()
    };
    if remembered(st, host, name, digest, auth.as_ref()).is_some() {
        count("cache_hit");
        return Ok(());
    }
    match head_upstream(st, host, name, digest, auth).await {
        Ok(_) => {
            count("allowed");
            Ok(())
        }
        Err(e) => {
            let denied = matches!(e.status.as_u16(), 401 | 403 | 404);
            count(if denied { "denied" } else { "failed" });
            tracing::info!(
                repo = name,
                %digest,
                status = e.status.as_u16(),
                "cached blob not served: upstream did not confirm the client may read it"
            );
            Err(e)
        }
    }
}
