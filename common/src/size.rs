//! Byte sizes and rates as people write them in configs and flags.
//!
//! Sizes: `10GiB`, `512MB`, `1048576` (parsed by the `bytesize` crate).
//! Rates (per second): a size (`12MiB`), or bits with a `bit` suffix (`100Mbit`, `1Gbit`), or
//! `0` / `unlimited` for no limit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{clip, ParseError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, ParseError> {
        input
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| ParseError::Size {
                input: clip(input),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// Bytes per second; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteRate(pub u64);

impl ByteRate {
    pub fn is_unlimited(&self) -> bool {
        self.0 == 0
    }
}

impl FromStr for ByteRate {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, ParseError> {
        let s = input.trim();
        let s = s.strip_suffix("/s").unwrap_or(s);
        if s.eq_ignore_ascii_case("unlimited") || s == "0" {
            return Ok(ByteRate(0));
        }
        let lower = s.to_ascii_lowercase();
        for suffix in ["bit", "bps"] {
            if let Some(num) = lower.strip_suffix(suffix) {
                let (num, mult) = match num.trim().chars().last() {
                    Some('k') => (&num[..num.len() - 1], 1e3),
                    Some('m') => (&num[..num.len() - 1], 1e6),
                    Some('g') => (&num[..num.len() - 1], 1e9),
                    _ => (num, 1.0),
                };
                let value: f64 = num.trim().parse().map_err(|_| ParseError::Size {
                    input: clip(input),
                    reason: "expected a number before the bit-rate unit".into(),
                })?;
                if !value.is_finite() || value < 0.0 {
                    return Err(ParseError::Size {
                        input: clip(input),
                        reason: "rate must be a non-negative number".into(),
                    });
                }
                return Ok(ByteRate((value * mult / 8.0) as u64));
            }
        }
        s.parse::<ByteSize>().map(|b| ByteRate(b.0))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            f.write_str("unlimited")
        } else {
            write!(f, "{}/s", ByteSize(self.0))
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    N(u64),
                    S(String),
                }
                match Raw::deserialize(d)? {
                    Raw::N(n) => Ok(Self(n)),
                    Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
serde_via_str!(ByteSize);
serde_via_str!(ByteRate);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("10GiB".parse::<ByteSize>().unwrap().0, 10 << 30);
        assert_eq!("1048576".parse::<ByteSize>().unwrap().0, 1 << 20);
        assert!("ten gigs".parse::<ByteSize>().is_err());
        assert!("-5".parse::<ByteSize>().is_err());
    }

    #[test]
    fn rates() {
        assert_eq!("100Mbit".parse::<ByteRate>().unwrap().0, 12_500_000);
        assert_eq!("1Gbps".parse::<ByteRate>().unwrap().0, 125_000_000);
        assert_eq!("12MiB/s".parse::<ByteRate>().unwrap().0, 12 << 20);
        assert!("unlimited".parse::<ByteRate>().unwrap().is_unlimited());
        assert!("fastMbit".parse::<ByteRate>().is_err());
        assert!("-1Mbit".parse::<ByteRate>().is_err());
        assert!("NaNbit".parse::<ByteRate>().is_err());
    }

    #[test]
    fn serde_accepts_numbers_and_strings() {
        #[derive(Deserialize)]
        struct C {
            a: ByteSize,
            b: ByteSize,
        }
        let c: C = serde_json::from_str(r#"{"a": 5, "b": "1KiB"}"#).unwrap();
        assert_eq!((c.a.0, c.b.0), (5, 1024));
    }
}
