//! Ranged blob requests through a mirror (`Range: bytes=…`), as lazy readers send them, and
//! the checks on their answers.

use super::http;

/// What a client got for one ranged request.
#[derive(Debug)]
pub struct Ranged {
    pub status: u16,
    pub content_range: Option<String>,
    pub content_length: Option<u64>,
    pub challenge: Option<String>,
    /// The body, or the error that cut it.
    pub body: Result<Vec<u8>, String>,
}

/// `GET url` with `Range: range` (raw bytes, so invalid header values can be sent too) and an
/// optional `Authorization`.
pub async fn fetch_range_bytes(url: &str, auth: Option<&str>, range: &[u8]) -> Ranged {
    let mut req = http().get(url).header(
        "range",
        reqwest::header::HeaderValue::from_bytes(range).expect("a header value"),
    );
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} (Range {}): {e}", String::from_utf8_lossy(range)));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = resp.status().as_u16();
    let content_range = header("content-range");
    let challenge = header("www-authenticate");
    let content_length = header("content-length").and_then(|v| v.parse().ok());
    let body = resp
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| format!("{e:?}"));
    Ranged {
        status,
        content_range,
        content_length,
        challenge,
        body,
    }
}

/// `GET url` with `Range: range` and an optional `Authorization`.
pub async fn fetch_range(url: &str, auth: Option<&str>, range: &str) -> Ranged {
    fetch_range_bytes(url, auth, range.as_bytes()).await
}

/// The largest error body a refusal may have: an OCI error is a few hundred bytes.
const MAX_ERROR_BODY: usize = 4096;

impl Ranged {
    fn body_len(&self) -> usize {
        self.body.as_ref().map(Vec::len).unwrap_or(0)
    }

    /// Panics unless this is a `206` carrying exactly `blob[start..=last]`, with
    /// `Content-Range: bytes START-LAST/LEN` and a matching `Content-Length`.
    pub fn assert_range(&self, blob: &[u8], start: u64, last: u64, what: &str) {
        let len = blob.len() as u64;
        let body = match &self.body {
            Ok(b) => b,
            Err(e) => panic!(
                "{what}: status {} but the body was cut after an error: {e}",
                self.status
            ),
        };
        assert_eq!(
            self.status,
            206,
            "{what}: expected 206 for bytes {start}-{last} of {len}, got {} with {} body bytes \
             (Content-Range {:?}); body starts {:?}",
            self.status,
            body.len(),
            self.content_range,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        let want = format!("bytes {start}-{last}/{len}");
        assert_eq!(
            self.content_range.as_deref(),
            Some(want.as_str()),
            "{what}: wrong Content-Range"
        );
        let expected = &blob[start as usize..=last as usize];
        assert_eq!(
            body.len(),
            expected.len(),
            "{what}: {} body bytes for bytes {start}-{last} ({} expected)",
            body.len(),
            expected.len()
        );
        if let Some(cl) = self.content_length {
            assert_eq!(
                cl,
                expected.len() as u64,
                "{what}: Content-Length {cl} for {} bytes",
                expected.len()
            );
        }
        if body[..] != expected[..] {
            let first = body.iter().zip(expected).position(|(a, b)| a != b).unwrap();
            let wrong = body.iter().zip(expected).filter(|(a, b)| a != b).count();
            panic!(
                "{what}: WRONG BYTES for bytes {start}-{last}: {wrong} of {} bytes differ, the \
                 first at blob offset {}",
                body.len(),
                start + first as u64
            );
        }
    }

    /// Panics unless this is an OCI error (`{"errors":[{"code","message"}]}`, at most 4 KiB)
    /// with a status in `statuses` and, if given, the `code`. Returns the message.
    pub fn assert_oci_error(&self, statuses: &[u16], code: Option<&str>, what: &str) -> String {
        let body = match &self.body {
            Ok(b) => b,
            Err(e) => panic!("{what}: status {} and the body was cut: {e}", self.status),
        };
        assert!(
            statuses.contains(&self.status),
            "{what}: expected one of {statuses:?}, got {} with {} body bytes (Content-Range \
             {:?}); body starts {:?}",
            self.status,
            body.len(),
            self.content_range,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        assert!(
            body.len() <= MAX_ERROR_BODY,
            "{what}: a {}-byte body with status {}: blob bytes?",
            body.len(),
            self.status
        );
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "{what}: status {} but the body is not an OCI error ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(body)
            )
        });
        let got = json["errors"][0]["code"].as_str().unwrap_or_default();
        let message = json["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(code) = code {
            assert_eq!(
                got, code,
                "{what}: OCI code (status {}): {json}",
                self.status
            );
        } else {
            assert!(!got.is_empty(), "{what}: OCI error without a code: {json}");
        }
        assert!(
            !message.is_empty(),
            "{what}: OCI error without a message: {json}"
        );
        message
    }

    /// Panics unless this is a 401 or 403 with an OCI `UNAUTHORIZED`/`DENIED` error and no
    /// blob bytes (at most a 4 KiB JSON body, no `Content-Range`).
    pub fn assert_refused(&self, what: &str) {
        assert!(
            self.status == 401 || self.status == 403,
            "LEAK? {what}: expected 401/403, got {} with {} body bytes (Content-Range {:?})",
            self.status,
            self.body_len(),
            self.content_range
        );
        assert!(
            self.content_range.is_none(),
            "{what}: a refusal with Content-Range {:?}",
            self.content_range
        );
        self.assert_oci_error(&[401, 403], None, what);
        let body = self.body.as_ref().unwrap();
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        let code = json["errors"][0]["code"].as_str().unwrap_or_default();
        assert!(
            code == "UNAUTHORIZED" || code == "DENIED",
            "{what}: OCI code {code} with status {}",
            self.status
        );
    }
}
