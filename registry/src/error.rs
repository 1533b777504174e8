//! The client's one error type. Every variant names the URL it concerns; [`Error::retryable`]
//! is the retry policy's and the callers' shared notion of "asking again may help".

/// A request to a registry (or a peer's mirror speaking the same protocol) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached, or the connection broke or timed out. The HTTP
    /// client's error is kept: callers tell connect failures from timeouts by it.
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// The server answered with a status the operation cannot use.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        /// The start of the body (a registry's JSON error), for the operator.
        message: String,
    },

    /// A bearer challenge could not be answered: the token endpoint refused, failed or
    /// answered something that is not a token.
    #[error("token endpoint {realm}: {message}")]
    Token {
        realm: String,
        message: String,
        status: Option<u16>,
    },

    /// A body ended before the bytes asked for (a connection cut short, a mirror that gave
    /// up): asking again may get them.
    #[error("{url}: short body: {got} of {want} bytes")]
    Short { url: String, got: u64, want: u64 },

    /// The server answered something malformed (a body too long, an upload without a
    /// `Location`), or a request could not be formed from what we were given.
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },

    /// The HTTP client could not be built (TLS roots, options).
    #[error("building the registry client: {0}")]
    Build(#[source] reqwest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the same request may succeed later: connection trouble, timeouts, 408, 429
    /// and 5xx. Other 4xx are the server's final word.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Transport { source, .. } => transport_retryable(source),
            Error::Status { status, .. } => retryable_status(*status),
            Error::Token { status, .. } => status.is_none_or(retryable_status),
            Error::Short { .. } => true,
            Error::Invalid { .. } | Error::Build(_) => false,
        }
    }

    /// The HTTP status the server answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            Error::Token { status, .. } => *status,
            _ => None,
        }
    }
}

/// Statuses worth asking again for: the server is overloaded or failing, not refusing.
pub fn retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || status >= 500
}

/// Connection refused or reset, a timeout, a body cut short: the network, not the request.
pub(crate) fn transport_retryable(e: &reqwest::Error) -> bool {
    e.is_timeout() || e.is_connect() || e.is_request() || e.is_body()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let status = |s| Error::Status {
            url: "u".into(),
            status: s,
            message: String::new(),
        };
        for s in [408, 429, 500, 502, 503] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 416] {
            assert!(!status(s).retryable(), "{s}");
        }
        let token = |status| Error::Token {
            realm: "r".into(),
            message: String::new(),
            status,
        };
        assert!(token(None).retryable());
        assert!(token(Some(503)).retryable());
        assert!(!token(Some(401)).retryable());
        assert_eq!(status(404).status(), Some(404));
        let invalid = Error::Invalid {
            url: "u".into(),
            message: "m".into(),
        };
        assert!(!invalid.retryable());
    }
}
