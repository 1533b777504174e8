//! lazyfs: converts images into a seekable, deduplicated format and mounts them lazily.
//! (The format and mount land with their own issues.)
