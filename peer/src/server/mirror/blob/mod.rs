//! Blob requests of the mirror: `GET|HEAD /v2/<name>/blobs/<digest>` (with `Range`).
//!
//! A blob not complete in the cache is first asked upstream with a `HEAD` (with the client's
//! credentials, else the node's): that resolves the token, turns an unknown blob into a 404,
//! and is the access check; clients asking together with the same credentials share one, and
//! a remembered answer (with the length) spares the next ones theirs. A whole-blob request then downloads it through the P2P engine and
//! streams it while pieces arrive; a `Range` request joins the same task (the digest) but
//! fetches only the pieces under its range, first, from peers that hold them or the origin
//! (a sparse task: lazy mounts read this way). A cached blob, whole or in part, is served
//! only after the same check (unless `verify_blob_access` is off), its positive answers
//! remembered briefly per credential, repository and blob. A whole-blob response holds back
//! its last bytes until the blob is known to match the digest (the download's own check, or
//! a hash as it is sent when nothing checked the file) and is cut if it does not, so a client
//! never receives a complete-looking wrong body.
//!
//! The handler is decode ([`BlobRequest`]) → domain ([`open`]: which task file, after which
//! check) → encode ([`response`]); [`access`] is the upstream check, [`body`] the verified
//! stream.

mod access;
mod body;
mod response;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use shoal_common::{Digest, TaskId};

use super::{
    client_auth, parse_digest, split, upstream_failed, upstream_host, MirrorError, MirrorQuery,
    MirrorState,
};
use crate::engine::{byte_ready, DownloadRequest};
use crate::server::range::{parse_range, RangeError};
use crate::storage::TaskFile;
use crate::upstream::BlobAuth;
pub use access::HeadFlights;
use access::{blob_url, check_access, head_upstream, remembered};
use response::{bad_range, head_only, respond};

pub(super) async fn blob(
    st: &MirrorState,
    method: &Method,
    rest: &str,
    q: MirrorQuery,
    headers: &HeaderMap,
) -> Result<Response, MirrorError> {
    let req = BlobRequest::decode(st, rest, q, headers)?;
    match open(st, method, &req).await? {
        Opened::File(file) => respond(st, method, file, req.digest, req.range.as_deref()),
        Opened::Head { length } => Ok(head_only(&req.digest, length)),
    }
}

/// What a blob request asks for, checked before anything goes upstream.
struct BlobRequest<'a> {
    name: &'a str,
    digest: Digest,
    host: String,
    /// The client's `Authorization`, passed upstream.
    auth: Option<HeaderValue>,
    /// The `Range` header, syntax checked; its bounds once the length is known.
    range: Option<String>,
}

impl<'a> BlobRequest<'a> {
    fn decode(
        st: &MirrorState,
        rest: &'a str,
        q: MirrorQuery,
        headers: &HeaderMap,
    ) -> Result<Self, MirrorError> {
        let (name, reference) = split(rest, "/blobs/")?;
        let digest = parse_digest(reference)?;
        let host = upstream_host(st, q)?;
        let auth = client_auth(headers);
        let range = match headers.get(header::RANGE) {
            None => None,
            Some(v) => {
                let s = v.to_str().map_err(|_| bad_range("bad Range header"))?;
                if let Err(RangeError::Malformed(m)) = parse_range(s, u64::MAX) {
                    return Err(bad_range(m));
                }
                Some(s.to_owned())
            }
        };
        Ok(BlobRequest {
            name,
            digest,
            host,
            auth,
            range,
        })
    }
}

/// The outcome of [`open`].
enum Opened {
    /// The task file to answer from: complete, or with the pieces asked for on their way.
    File(Arc<TaskFile>),
    /// A whole-blob `HEAD` of a blob not cached: upstream's length is the whole answer.
    Head { length: Option<u64> },
}

/// The task file answering `req`, once the client may read the blob: a complete cached
/// blob; else a whole download, or for a `Range` a sparse one whose pieces under the range
/// are fetched first.
async fn open(
    st: &MirrorState,
    method: &Method,
    req: &BlobRequest<'_>,
) -> Result<Opened, MirrorError> {
    let (host, name, digest) = (req.host.as_str(), req.name, req.digest);
    let held = st.engine.storage().get(&TaskId::Content(digest));
    if let Some(file) = held.as_ref().filter(|f| f.is_complete()).cloned() {
        check_access(st, host, name, &digest, req.auth.clone()).await?;
        file.touch();
        return Ok(Opened::File(file));
    }
    // A range of a blob held in part (a lazy mount's next read): the remembered access
    // check, and the length the cache entry already has, spare a HEAD per read.
    let partial = held.filter(|_| req.range.is_some());
    let (length, upstream_auth) = match partial {
        Some(file) => {
            check_access(st, host, name, &digest, req.auth.clone()).await?;
            let length = file.layout().length;
            (
                Some(length),
                st.upstream.auth_for(host, name, req.auth.clone()),
            )
        }
        None => match remembered(st, host, name, &digest, req.auth.as_ref()) {
            // The same credentials were allowed a moment ago (a crowd of clients of one blob,
            // a download still starting): no second HEAD.
            Some(allowed) => (
                allowed.length,
                st.upstream.auth_for(host, name, req.auth.clone()),
            ),
            None => {
                let answer = head_upstream(st, host, name, &digest, req.auth.clone()).await?;
                (answer.length, answer.auth)
            }
        },
    };
    if method == Method::HEAD && req.range.is_none() {
        return Ok(Opened::Head { length });
    }
    let blob = blob_url(st, host, name, &digest);
    let url = url::Url::parse(&blob).map_err(|e| {
        MirrorError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!("bad upstream URL: {e}"),
        )
    })?;
    let mut hdrs = reqwest::header::HeaderMap::new();
    if let Some(a) = upstream_auth {
        hdrs.insert(reqwest::header::AUTHORIZATION, a);
    }
    let download = DownloadRequest {
        url,
        digest: Some(digest),
        headers: hdrs,
        auth: Some(Arc::new(BlobAuth::new(
            st.upstream.clone(),
            host,
            name,
            &blob,
            req.auth.clone(),
        ))),
        length,
        media_type: st.media_types.get(&digest),
    };
    let failed = |e| upstream_failed(st, "blob", e, "BLOB_UNKNOWN");
    let Some(range) = &req.range else {
        let file = st.engine.open(download).await.map_err(failed)?;
        return Ok(Opened::File(file));
    };
    let file = st.engine.open_sparse(&download).await.map_err(failed)?;
    if method == Method::GET {
        if let Ok(r) = parse_range(range, file.layout().length) {
            st.engine
                .want(&download, &file, r.clone())
                .await
                .map_err(failed)?;
            // The first bytes decide between a 206 and an error (an origin that refuses the
            // range, a blob shorter than the registry said): never a 206 cut short at once.
            byte_ready(&file, r.start).await.map_err(failed)?;
        }
    }
    Ok(Opened::File(file))
}
