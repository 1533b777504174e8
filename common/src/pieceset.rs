//! A set of piece indices of one task, e.g. what a peer holds.
//!
//! On the wire it is `{"len": N, "bits": "<hex of little-endian bit bytes>"}`: a 1 M-piece task
//! costs 256 KiB of hex rather than megabytes of JSON numbers.

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::piece::MAX_PIECES;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct PieceSet(FixedBitSet);

impl PieceSet {
    pub fn new(len: u32) -> Self {
        PieceSet(FixedBitSet::with_capacity(len as usize))
    }

    pub fn full(len: u32) -> Self {
        let mut s = Self::new(len);
        s.0.insert_range(..);
        s
    }

    pub fn len(&self) -> u32 {
        self.0.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a piece; indices past the end are ignored (callers validate against the layout).
    pub fn insert(&mut self, index: u32) {
        if (index as usize) < self.0.len() {
            self.0.insert(index as usize);
        }
    }

    pub fn remove(&mut self, index: u32) {
        if (index as usize) < self.0.len() {
            self.0.set(index as usize, false);
        }
    }

    pub fn contains(&self, index: u32) -> bool {
        self.0.contains(index as usize)
    }

    pub fn count(&self) -> u32 {
        self.0.count_ones(..) as u32
    }

    pub fn is_complete(&self) -> bool {
        self.count() == self.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.ones().map(|i| i as u32)
    }

    /// Indices not in the set.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.zeroes().map(|i| i as u32)
    }

    fn to_hex(&self) -> String {
        let mut bytes = vec![0u8; self.0.len().div_ceil(8)];
        for i in self.0.ones() {
            bytes[i / 8] |= 1 << (i % 8);
        }
        hex::encode(bytes)
    }

    fn from_hex(len: u32, bits: &str) -> Result<Self, String> {
        if u64::from(len) > MAX_PIECES {
            return Err(format!("piece set of {len} pieces is too large"));
        }
        let bytes = hex::decode(bits).map_err(|e| format!("piece set bits: {e}"))?;
        if bytes.len() != (len as usize).div_ceil(8) {
            return Err(format!(
                "piece set of {len} pieces needs {} bytes, got {}",
                (len as usize).div_ceil(8),
                bytes.len()
            ));
        }
        let mut set = Self::new(len);
        for (i, byte) in bytes.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let idx = i * 8 + bit;
                    if idx >= len as usize {
                        return Err("piece set has bits set past its length".into());
                    }
                    set.0.insert(idx);
                }
            }
        }
        Ok(set)
    }
}

impl std::fmt::Debug for PieceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PieceSet({}/{})", self.count(), self.len())
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    len: u32,
    bits: String,
}

impl Serialize for PieceSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            len: self.len(),
            bits: self.to_hex(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for PieceSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        PieceSet::from_hex(w.len, &w.bits).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_roundtrip() {
        let mut s = PieceSet::new(13);
        s.insert(0);
        s.insert(12);
        s.insert(99);
        let json = serde_json::to_string(&s).unwrap();
        let back: PieceSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.iter().collect::<Vec<_>>(), vec![0, 12]);
        assert_eq!(back.missing().count(), 11);
        assert!(PieceSet::full(5).is_complete());
    }

    #[test]
    fn rejects_bad_wire() {
        for bad in [
            r#"{"len":13,"bits":"zz"}"#,
            r#"{"len":13,"bits":"01"}"#,
            r#"{"len":4,"bits":"f0"}"#,
            r#"{"len":4294967295,"bits":""}"#,
        ] {
            assert!(serde_json::from_str::<PieceSet>(bad).is_err(), "{bad}");
        }
    }
}
