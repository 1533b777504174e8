//! Rules shared by the encoder's callers (the layer reader, the builder) and the decoder.

use super::MAX_NAME;
use crate::index::ChunkParams;

/// Names that could escape or confuse a path walk are never valid.
pub fn validate_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("name contains /");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    if name.len() > MAX_NAME {
        return Err("name longer than 255 bytes");
    }
    Ok(())
}

pub fn validate_params(p: &ChunkParams) -> std::result::Result<(), String> {
    use fastcdc::v2020::{
        AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
    };
    if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&p.min)
        || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&p.avg)
        || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&p.max)
        || p.min > p.avg
        || p.avg > p.max
    {
        return Err(format!(
            "chunk sizes min {} avg {} max {} must satisfy {MINIMUM_MIN}..={MINIMUM_MAX}, {AVERAGE_MIN}..={AVERAGE_MAX}, {MAXIMUM_MIN}..={MAXIMUM_MAX} and min <= avg <= max",
            p.min, p.avg, p.max
        ));
    }
    if !(-7..=22).contains(&p.level) {
        return Err(format!("compression level {} outside -7..=22", p.level));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(validate_name(bad).is_err());
        }
        assert!(validate_name(&[b'x'; 256]).is_err());
        assert!(validate_name("ünï".as_bytes()).is_ok());
        assert!(validate_name(b"...").is_ok());
    }
}
