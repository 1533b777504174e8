//! Parsing the image references the CLI accepts: `HOST/REPO:TAG` (or `@sha256:…`; parsed
//! by `shoal_common::registry`, shared with the other registry clients), `oci:DIR[:TAG]` and
//! `dir:PATH`.

use std::path::PathBuf;

use shoal_common::registry::Reference;
use shoal_common::ParseError;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Registry {
        /// As written (`docker.io`, `127.0.0.1:5000`); used for `?ns=` and insecure checks.
        host: String,
        repo: String,
        /// Tag or `sha256:` digest.
        reference: String,
    },
    OciDir {
        dir: PathBuf,
        tag: Option<String>,
    },
    Dir(PathBuf),
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Reference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = input.strip_prefix("dir:") {
            if path.is_empty() {
                return Err(bad("empty path"));
            }
            return Ok(ImageRef::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            // The tag follows the last ':' unless that ':' is part of the path.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad("empty directory"));
            }
            if tag.as_deref() == Some("") {
                return Err(bad("empty tag"));
            }
            return Ok(ImageRef::OciDir {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        let r = Reference::parse(input).map_err(|e| match e {
            ParseError::Reference { reason, .. } => bad(reason),
            other => bad(&other.to_string()),
        })?;
        Ok(ImageRef::Registry {
            host: r.host,
            repo: r.repo,
            reference: r.reference,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Registry {
                host,
                repo,
                reference,
            } if reference.starts_with("sha256:") => {
                write!(f, "{host}/{repo}@{reference}")
            }
            ImageRef::Registry {
                host,
                repo,
                reference,
            } => write!(f, "{host}/{repo}:{reference}"),
            ImageRef::OciDir { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageRef::OciDir { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(host: &str, repo: &str, reference: &str) -> ImageRef {
        ImageRef::Registry {
            host: host.into(),
            repo: repo.into(),
            reference: reference.into(),
        }
    }

    #[test]
    fn parses() {
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/a/b:t").unwrap(),
            reg("127.0.0.1:5000", "a/b", "t")
        );
        assert_eq!(
            ImageRef::parse("localhost/x").unwrap(),
            reg("localhost", "x", "latest")
        );
        assert_eq!(
            ImageRef::parse("debian:12").unwrap(),
            reg("docker.io", "library/debian", "12")
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            ImageRef::parse(&format!("r.io/x@{d}")).unwrap(),
            reg("r.io", "x", d)
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/l:v1").unwrap(),
            ImageRef::OciDir {
                dir: "/tmp/l".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/l").unwrap(),
            ImageRef::OciDir {
                dir: "/tmp/l".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("dir:/x").unwrap(),
            ImageRef::Dir("/x".into())
        );
        for bad in ["dir:", "oci:", "oci:/x:", "r.io/UPPER:t", "r.io/:t"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
