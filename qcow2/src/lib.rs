//! QCOW2 images: reading the guest view, writing images in a streaming way,
//! converting to raw and checking the structure.
//!
//! Images arrive from strangers, so every header field and table entry is
//! checked before it is used to index, allocate or seek: a malformed image
//! gives a typed [`Error`] saying what is wrong and at which offset.

/// Storage the image bytes come from (a file, or anything with positioned reads).
pub mod storage;

pub mod check;
mod compress;
pub mod convert;
mod error;
pub mod header;
mod image;
pub mod writer;

pub use check::{check, CheckReport};
pub use error::{Error, Result};
pub use header::{is_qcow2, CompressionType, Header};
pub use image::{Backing, Extent, ExtentKind, HostExtent, Image};
pub use storage::ReadAt;
pub use writer::{Compression, Progress, WriteAt, Writer, WriterOptions};

/// Entry point shared by the fuzz target and the regression tests: feeds
/// arbitrary bytes through every reader path. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing;
