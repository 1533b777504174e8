//! The body's primitives: LEB128 varints, zigzag for signed values, length-prefixed bytes,
//! and a reader whose every read is bounds-checked against the body.

use shoal_common::Digest;

use crate::error::{Error, Result};

pub(super) fn put(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

pub(super) fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    put(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn truncated(&self, at: &str) -> Error {
        Error::index(at, format!("truncated at body byte {}", self.pos))
    }

    pub(super) fn byte(&mut self, at: &str) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated(at))?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn var(&mut self, at: &str) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(at)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Error::index(at, "varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::index(at, "varint longer than 10 bytes"))
    }

    pub(super) fn u32(&mut self, at: &str) -> Result<u32> {
        let v = self.var(at)?;
        u32::try_from(v).map_err(|_| Error::index(at, format!("value {v} exceeds 32 bits")))
    }

    /// A count of items that each take at least `min_item` bytes: bounded by what is left,
    /// so a forged count cannot make us allocate.
    pub(super) fn count(&mut self, at: &str, min_item: usize) -> Result<usize> {
        let n = self.var(at)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(Error::index(
                at,
                format!("count {n} exceeds the remaining {left} bytes"),
            ));
        }
        Ok(n as usize)
    }

    pub(super) fn bytes(&mut self, at: &str, max: usize) -> Result<&'a [u8]> {
        let n = self.var(at)?;
        if n > max as u64 {
            return Err(Error::index(
                at,
                format!("string of {n} bytes exceeds {max}"),
            ));
        }
        let end = self.pos + n as usize;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated(at))?;
        self.pos = end;
        Ok(s)
    }

    pub(super) fn digest(&mut self, at: &str) -> Result<Digest> {
        let s = self
            .buf
            .get(self.pos..self.pos + 32)
            .ok_or_else(|| self.truncated(at))?;
        let mut d = [0u8; 32];
        d.copy_from_slice(s);
        self.pos += 32;
        Ok(Digest::from_bytes(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn varints_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put(&mut b, v);
            let mut r = Reader { buf: &b, pos: 0 };
            assert_eq!(r.var("t").unwrap(), v);
            assert_eq!(r.pos, b.len());
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut r = Reader {
            buf: &[0xff; 11],
            pos: 0,
        };
        assert!(r.var("t").is_err());
    }
}
