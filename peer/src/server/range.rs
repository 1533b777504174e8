//! `Range: bytes=…` parsing (RFC 9110), single ranges only: that is all peers and registry
//! clients send, and multipart answers would only add attack surface.

use std::ops::Range;

/// Longest Range header considered; anything longer is garbage.
const MAX_LEN: usize = 128;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Not a byte range we understand: answer 400.
    Malformed(String),
    /// Well-formed but starts past the end: answer 416.
    Unsatisfiable,
}

/// Resolves a Range header against a blob of `length` bytes into a half-open byte range.
pub fn parse_range(header: &str, length: u64) -> Result<Range<u64>, RangeError> {
    let bad = |why: &str| RangeError::Malformed(why.to_owned());
    if header.len() > MAX_LEN {
        return Err(bad("Range header too long"));
    }
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| bad("Range must start with bytes="))?;
    if spec.contains(',') {
        return Err(bad("multiple ranges are not supported"));
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| bad("Range must be bytes=START-END"))?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| bad("Range bounds must be decimal numbers"))
    };
    if a.trim().is_empty() {
        // Suffix: the last N bytes.
        let n = num(b)?;
        if n == 0 {
            return Err(RangeError::Unsatisfiable);
        }
        return Ok(length.saturating_sub(n)..length);
    }
    let start = num(a)?;
    let end = if b.trim().is_empty() {
        length
    } else {
        let last = num(b)?;
        if last < start {
            return Err(bad("Range end is before its start"));
        }
        last.saturating_add(1).min(length)
    };
    if start >= length {
        return Err(RangeError::Unsatisfiable);
    }
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(0..100));
        assert_eq!(parse_range("bytes=95-1000", 100), Ok(95..100));
    }

    #[test]
    fn rejects_bad() {
        assert_eq!(
            parse_range("bytes=100-", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(parse_range("bytes=-0", 100), Err(RangeError::Unsatisfiable));
        for bad in [
            "",
            "bytes=abc",
            "bytes=5-1",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=1-2-3",
            "bytes=99999999999999999999999-",
        ] {
            assert!(
                matches!(parse_range(bad, 100), Err(RangeError::Malformed(_))),
                "{bad}"
            );
        }
        let long = format!("bytes=0-{}", "9".repeat(100_000));
        assert!(matches!(
            parse_range(&long, 100),
            Err(RangeError::Malformed(_))
        ));
    }
}
