//! ext2/ext3/ext4 on-disk metadata, read tolerantly.
//!
//! Customers send images because something is broken, so every structure is
//! bounds-checked and a bad one becomes a [`Finding`], not a failure of the
//! whole analysis. Only an unusable superblock (with no usable backup) is fatal.
//!
//! Bytes come from a [`Source`]: a raw file or block device, or a QCOW2 image
//! read through the `qcow2` crate (detected from content, never from the name).

/// Findings: problems the analyses report, each with a stable code.
pub mod finding;
/// Block sources: raw files, devices and QCOW2 images behind one trait.
pub mod source;

pub use finding::{Finding, Severity};
pub use source::Source;
