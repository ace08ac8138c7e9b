//! QCOW2 images: reading the guest view, writing images in a streaming way,
//! converting to raw and checking the structure.
//!
//! Images arrive from strangers, so every header field and table entry is
//! checked before it is used to index, allocate or seek.

/// Storage the image bytes come from (a file, or anything with positioned reads).
pub mod storage;

pub use storage::ReadAt;
