//! Errors raised when untrusted text (requests, configs, files) does not parse.

/// Something from outside did not have the expected shape; the message names what and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid digest {input:?}: {reason}")]
    Digest { input: String, reason: &'static str },
    #[error("invalid task id {input:?}: {reason}")]
    TaskId { input: String, reason: &'static str },
    #[error("invalid url {input:?}: {reason}")]
    Url { input: String, reason: String },
    #[error("invalid size {input:?}: {reason}")]
    Size { input: String, reason: String },
    #[error("invalid piece layout: {0}")]
    Layout(String),
    #[error("invalid image reference {input:?}: {reason}")]
    Reference { input: String, reason: &'static str },
    #[error("invalid registry token response: {reason}")]
    Token { reason: String },
}

/// Keep untrusted input short in error messages: a 1 MB header must not become a 1 MB log line.
pub(crate) fn clip(input: &str) -> String {
    const MAX: usize = 100;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}
