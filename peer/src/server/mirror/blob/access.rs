//! The access check: a blob is served only after the upstream registry confirms, with the
//! client's credentials (else the node's), that it may be read: a `HEAD` of the blob, whose
//! positive answers are remembered briefly per credential, repository and blob. Fails
//! closed: an unreachable registry means no answer, so no blob.

use axum::http::{HeaderValue, Method};
use shoal_common::Digest;

use super::super::{upstream_failed, upstream_refused, MirrorError, MirrorState};
use crate::access::AccessCache;
use crate::upstream::AuthorizedResponse;

pub(super) fn blob_url(st: &MirrorState, host: &str, name: &str, digest: &Digest) -> String {
    format!("{}/v2/{name}/blobs/{digest}", st.upstream.base_url(host))
}

/// `HEAD` of the blob upstream with the client's (else the node's) credentials: the access
/// check, the blob's length and the token for the download. Remembers a positive answer.
pub(super) async fn head_upstream(
    st: &MirrorState,
    host: &str,
    name: &str,
    digest: &Digest,
    auth: Option<HeaderValue>,
) -> Result<AuthorizedResponse, MirrorError> {
    st.metrics
        .upstream_requests
        .with_label_values(&["blob"])
        .inc();
    let key = st.upstream.access().map(|_| {
        AccessCache::key(
            &st.upstream.identity(host, auth.as_ref()),
            host,
            name,
            digest,
        )
    });
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
    if !answer.response.status().is_success() {
        return Err(upstream_refused(
            st,
            &answer.response,
            "BLOB_UNKNOWN",
            "blob",
        ));
    }
    if let (Some(cache), Some(key)) = (st.upstream.access(), key) {
        cache.remember(key);
    }
    Ok(answer)
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
    let Some(cache) = st.upstream.access() else {
        return Ok(());
    };
    let count = |result: &str| {
        st.metrics
            .blob_access_checks
            .with_label_values(&[result])
            .inc()
    };
    let key = AccessCache::key(
        &st.upstream.identity(host, auth.as_ref()),
        host,
        name,
        digest,
    );
    if cache.allowed(&key) {
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
