//! Byte encoding of the index blob (see `FORMAT.md`): a fixed header, then one zstd frame
//! holding a body of LEB128 varints and length-prefixed byte strings.
//!
//! The decoder treats its input as hostile. Every count is bounded by the bytes left, every
//! reference is checked against the table it points into, and the tree rules (parents
//! before children, sorted unique names, no `/`, NUL, `.` or `..`) are enforced, so that
//! code walking a decoded [`Index`](crate::Index) needs no further checks and cannot loop.
//!
//! - `encode`: an index → bytes, deterministically.
//! - `decode`: bytes → a validated index.
//! - `names`: the name and chunk-parameter rules both sides enforce.
//! - `varint`: the body's primitives (LEB128, zigzag, a bounds-checked reader).

mod decode;
mod encode;
mod names;
mod varint;

pub use decode::{decode, decode_body};
pub use encode::encode;
pub use names::{validate_name, validate_params};

pub const MAGIC: &[u8; 8] = b"SHOALIDX";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 56;
/// Decompressed body limit: far above a million-file image, far below an allocation bomb.
pub const MAX_BODY: u64 = 1 << 30;
pub const MAX_NAME: usize = 255;
pub const MAX_TARGET: usize = 4095;
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65536;
/// fastcdc's own upper bound for a maximum chunk size.
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;

/// Header flag: inodes carry an mtime.
const FLAG_MTIME: u64 = 1;
