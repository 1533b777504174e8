//! Task identity. A task is one blob. When its content digest is known, the digest *is* the id,
//! so the same layer pulled through different registries or mirrors is shared. Otherwise the
//! id is derived from the normalised URL, so trivially different spellings of one URL agree.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::digest::Digest;
use crate::error::{clip, ParseError};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskId {
    /// Identified by the blob's own sha256: the whole blob is verified against it at the end.
    Content(Digest),
    /// Identified by the sha256 of the normalised URL: pieces are still verified one by one.
    Url(Digest),
}

impl TaskId {
    /// The id for a download: its digest when given, else derived from the URL.
    pub fn for_download(url: &Url, digest: Option<Digest>) -> Self {
        match digest {
            Some(d) => TaskId::Content(d),
            None => TaskId::Url(Digest::of(normalize_url(url).as_bytes())),
        }
    }

    /// The digest the whole blob must have, if the id promises one.
    pub fn content_digest(&self) -> Option<Digest> {
        match self {
            TaskId::Content(d) => Some(*d),
            TaskId::Url(_) => None,
        }
    }

    /// A name safe for file systems and URL paths (`sha256-<hex>` / `url-<hex>`).
    pub fn file_name(&self) -> String {
        match self {
            TaskId::Content(d) => format!("sha256-{}", d.hex()),
            TaskId::Url(d) => format!("url-{}", d.hex()),
        }
    }

    /// Inverse of [`TaskId::file_name`].
    pub fn from_file_name(name: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::TaskId {
            input: clip(name),
            reason,
        };
        if let Some(hex) = name.strip_prefix("sha256-") {
            Digest::from_hex(hex)
                .map(TaskId::Content)
                .map_err(|_| err("bad hex"))
        } else if let Some(hex) = name.strip_prefix("url-") {
            Digest::from_hex(hex)
                .map(TaskId::Url)
                .map_err(|_| err("bad hex"))
        } else {
            Err(err("expected sha256-<hex> or url-<hex>"))
        }
    }
}

/// Canonical form of a download URL: scheme and host lower-cased, default port dropped (both done
/// by `url`), fragment removed, query parameters sorted.
pub fn normalize_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    let mut pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        pairs.sort();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Parse a URL a peer may download from: absolute http(s) only.
pub fn parse_download_url(input: &str) -> Result<Url, ParseError> {
    let url = Url::parse(input).map_err(|e| ParseError::Url {
        input: clip(input),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ParseError::Url {
            input: clip(input),
            reason: "only http:// and https:// URLs with a host are supported".into(),
        });
    }
    Ok(url)
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskId::Content(d) => write!(f, "{d}"),
            TaskId::Url(d) => write!(f, "url:{}", d.hex()),
        }
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for TaskId {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, ParseError> {
        if let Some(hex) = input.strip_prefix("url:") {
            return Digest::from_hex(hex)
                .map(TaskId::Url)
                .map_err(|_| ParseError::TaskId {
                    input: clip(input),
                    reason: "expected url:<64 lowercase hex>",
                });
        }
        input
            .parse::<Digest>()
            .map(TaskId::Content)
            .map_err(|_| ParseError::TaskId {
                input: clip(input),
                reason: "expected sha256:<64 lowercase hex> or url:<64 lowercase hex>",
            })
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_ids_ignore_spelling() {
        let a = parse_download_url("HTTP://Example.COM:80/a/b?y=2&x=1#frag").unwrap();
        let b = parse_download_url("http://example.com/a/b?x=1&y=2").unwrap();
        assert_eq!(
            TaskId::for_download(&a, None),
            TaskId::for_download(&b, None)
        );
        let c = parse_download_url("http://example.com/a/c").unwrap();
        assert_ne!(
            TaskId::for_download(&a, None),
            TaskId::for_download(&c, None)
        );
    }

    #[test]
    fn roundtrips() {
        let url = parse_download_url("https://r.example/v2/x/blobs/y").unwrap();
        for id in [
            TaskId::for_download(&url, None),
            TaskId::Content(Digest::of(b"x")),
        ] {
            assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
            assert_eq!(TaskId::from_file_name(&id.file_name()).unwrap(), id);
        }
    }

    #[test]
    fn rejects_bad_ids_and_urls() {
        for bad in [
            "",
            "url:",
            "url:xyz",
            "md5:abc",
            "../etc/passwd",
            "sha256-abc",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?}");
        }
        for bad in ["..", "sha256-", "url-zz", "other"] {
            assert!(TaskId::from_file_name(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "ftp://x/y",
            "file:///etc/passwd",
            "not a url",
            "http://",
        ] {
            assert!(parse_download_url(bad).is_err(), "{bad:?}");
        }
    }
}
