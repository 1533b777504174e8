//! Per-registry settings of the mirror (`[registries."HOST"]` in the peer config): the node's
//! own credentials for that registry (basic or a bearer token) and plain http.
//!
//! Secrets never reach logs or `check-config` output: [`Secret`] prints as `<redacted>` both
//! in `Debug` and when serialized, and the headers built from them are marked sensitive.

use std::fmt;
use std::path::PathBuf;

use reqwest::header::HeaderValue;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A password or token: read from the config, never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `[registries."HOST"]`: how the mirror reaches one upstream registry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Basic credentials (with `password`): sent to the registry, or to its token endpoint
    /// when it asks for a bearer token.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A bearer token sent as is (instead of username/password).
    pub token: Option<Secret>,
    /// Read the password from this file instead (e.g. a mounted Kubernetes Secret; one
    /// trailing newline is ignored). Read at start-up and by `check-config`.
    pub password_file: Option<PathBuf>,
    /// Read the token from this file instead.
    pub token_file: Option<PathBuf>,
    /// Reach this registry over plain http (same as listing it in `insecure_registries`).
    pub insecure: bool,
}

/// What the node sends upstream for a registry when the client sent no `Authorization`.
#[derive(Clone)]
pub enum Credential {
    Basic(HeaderValue),
    Bearer(HeaderValue),
}

impl Credential {
    pub fn header(&self) -> &HeaderValue {
        match self {
            Credential::Basic(h) | Credential::Bearer(h) => h,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic(_) => f.write_str("Basic(<redacted>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl RegistrySettings {
    /// Checks the settings of registry `host` (reading secret files); the message names the
    /// host and file, never a secret.
    pub fn validate(&self, host: &str) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("registries.\"{host}\": {m}")));
        if !crate::upstream::valid_host(host) {
            return bad("the key must be a registry host or host:port");
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad("set password or password_file, not both");
        }
        if self.token.is_some() && self.token_file.is_some() {
            return bad("set token or token_file, not both");
        }
        let password = self.password.is_some() || self.password_file.is_some();
        let token = self.token.is_some() || self.token_file.is_some();
        match (&self.username, password, token) {
            (Some(_), true, true) => return bad("set either username/password or token, not both"),
            (Some(_), false, _) => return bad("username needs a password"),
            (None, true, _) => return bad("password needs a username"),
            _ => {}
        }
        if let Some(u) = &self.username {
            if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) {
                return bad("username must be non-empty, without ':' or control characters");
            }
        }
        self.credential()
            .map(|_| ())
            .map_err(|e| Error::Config(format!("registries.\"{host}\": {e}")))
    }

    /// The header to send, if any credentials are configured (reads secret files).
    pub fn credential(&self) -> Result<Option<Credential>> {
        let sensitive = |s: String| {
            HeaderValue::from_str(&s)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| Error::Config("credential is not a valid header value".into()))
        };
        let secret = |inline: &Option<Secret>, file: &Option<PathBuf>, what: &str| {
            let value = match (inline, file) {
                (Some(s), _) => Some(s.0.clone()),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        Error::Config(format!("{what}_file {}: {e}", path.display()))
                    })?;
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    Some(text.strip_suffix('\r').unwrap_or(text).to_owned())
                }
                (None, None) => None,
            };
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.chars().any(char::is_control))
            {
                return Err(Error::Config(format!(
                    "{what} must be non-empty, without control characters"
                )));
            }
            Ok(value)
        };
        let password = secret(&self.password, &self.password_file, "password")?;
        if let (Some(u), Some(p)) = (&self.username, password) {
            return Ok(Some(Credential::Basic(sensitive(
                shoal_common::registry::basic(u, &p),
            )?)));
        }
        match secret(&self.token, &self.token_file, "token")? {
            Some(t) => Ok(Some(Credential::Bearer(sensitive(format!("Bearer {t}"))?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = RegistrySettings {
            username: Some("u".into()),
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let toml = toml::to_string(&s).unwrap();
        assert!(!toml.contains("hunter2"), "{toml}");
        let c = s.credential().unwrap().unwrap();
        assert!(!format!("{c:?}").contains("dTpodW50ZXIy"));
        assert_eq!(c.header().to_str().unwrap(), "Basic dTpodW50ZXIy");
        assert!(c.header().is_sensitive());
    }

    #[test]
    fn validation() {
        let ok = RegistrySettings {
            token: Some(Secret::new("t")),
            ..Default::default()
        };
        ok.validate("ghcr.io").unwrap();
        assert!(ok.validate("a/b").is_err());
        let no_pass = RegistrySettings {
            username: Some("u".into()),
            ..Default::default()
        };
        let e = no_pass.validate("r.io").unwrap_err().to_string();
        assert!(e.contains("r.io") && e.contains("password"), "{e}");
        let bad_token = RegistrySettings {
            token: Some(Secret::new("a\nb")),
            ..Default::default()
        };
        let e = bad_token.validate("r.io").unwrap_err().to_string();
        assert!(!e.contains("a\nb"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let from_file = RegistrySettings {
            username: Some("u".into()),
            password_file: Some(file.clone()),
            ..Default::default()
        };
        from_file.validate("r.io").unwrap();
        let c = from_file.credential().unwrap().unwrap();
        assert_eq!(
            c.header().to_str().unwrap(),
            shoal_common::registry::basic("u", "from-file")
        );
        let missing = RegistrySettings {
            token_file: Some(dir.path().join("absent")),
            ..Default::default()
        };
        let e = missing.validate("r.io").unwrap_err().to_string();
        assert!(e.contains("token_file") && e.contains("absent"), "{e}");
        let both = RegistrySettings {
            token: Some(Secret::new("t")),
            token_file: Some(file),
            ..Default::default()
        };
        assert!(both.validate("r.io").is_err());
    }
}
