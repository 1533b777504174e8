//! The exit codes every Shoal binary uses, so that scripts and supervisors can tell "fix the
//! config" from "try again later" without reading the message.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure (anything not below) |
//! | 2 | usage: unknown flag, bad flag value (clap's own code) |
//! | 3 | `shoal-lazyfs check` found problems in an image |
//! | 75 | temporary failure (network, registry, peer): retrying may succeed (`EX_TEMPFAIL`) |
//! | 78 | configuration error: the file, environment or flags do not load or validate (`EX_CONFIG`) |
//!
//! 78 rather than 64 (`EX_USAGE`) because clap already reports bad command lines with 2; 78
//! is the sysexits code for "the configuration is wrong", which is what the binaries mean.

use std::error::Error as StdError;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Problems = 3,
    TempFail = 75,
    Config = 78,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit for an error: the first cause in its chain (outermost first) that `classify`
    /// recognizes, else this crate's own errors, else [`Exit::Failure`].
    pub fn for_error(
        err: &(dyn StdError + 'static),
        classify: impl Fn(&(dyn StdError + 'static)) -> Option<Exit>,
    ) -> Exit {
        let mut cause = Some(err);
        while let Some(e) = cause {
            if let Some(exit) = classify(e) {
                return exit;
            }
            if let Some(own) = e.downcast_ref::<crate::Error>() {
                if own.is_retryable() {
                    return Exit::TempFail;
                }
                if own.is_config() {
                    return Exit::Config;
                }
            }
            cause = e.source();
        }
        Exit::Failure
    }

    /// [`Exit::for_error`] for a binary whose library error `E` knows whether it is worth
    /// retrying: such a cause exits [`Exit::TempFail`].
    pub fn for_error_retrying<E: StdError + 'static>(
        err: &(dyn StdError + 'static),
        retryable: fn(&E) -> bool,
    ) -> Exit {
        Exit::for_error(err, |cause| {
            cause
                .downcast_ref::<E>()
                .filter(|e| retryable(e))
                .map(|_| Exit::TempFail)
        })
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn codes_match_the_table() {
        let codes: Vec<u8> = [
            Exit::Ok,
            Exit::Failure,
            Exit::Usage,
            Exit::Problems,
            Exit::TempFail,
            Exit::Config,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 75, 78]);
    }

    #[test]
    fn the_chain_is_searched_outermost_first() {
        let err = Outer(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        let timed_out = |e: &(dyn StdError + 'static)| {
            e.downcast_ref::<std::io::Error>()
                .filter(|io| io.kind() == std::io::ErrorKind::TimedOut)
                .map(|_| Exit::TempFail)
        };
        assert_eq!(Exit::for_error(&err, timed_out), Exit::TempFail);
        assert_eq!(Exit::for_error(&err, |_| None), Exit::Failure);
        let outer_first = |e: &(dyn StdError + 'static)| e.is::<Outer>().then_some(Exit::Usage);
        assert_eq!(Exit::for_error(&err, outer_first), Exit::Usage);
        let config = crate::Error::Flags("x".into());
        assert_eq!(Exit::for_error(&config, |_| None), Exit::Config);
        let invalid = crate::Error::invalid("cache_size too small");
        assert_eq!(Exit::for_error(&invalid, |_| None), Exit::Config);
        let retry = |e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut;
        assert_eq!(Exit::for_error_retrying(&err, retry), Exit::TempFail);
        let other = Outer(std::io::Error::other("no"));
        assert_eq!(Exit::for_error_retrying(&other, retry), Exit::Failure);
    }
}
