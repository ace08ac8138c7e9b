//! ext2/ext3/ext4 on-disk metadata, read tolerantly.
//!
//! Customers send images because something is broken, so every structure is
//! bounds-checked and a bad one becomes a [`Finding`], not a failure of the
//! whole analysis. Only an unusable superblock (with no usable backup) is fatal.
//!
//! Bytes come from a [`Source`]: a raw file or block device, or a QCOW2 image
//! read through the `qcow2` crate (detected from content, never from the name).

/// The read-only analyses: superblock summary, group stats, findings.
pub mod analysis;
/// Which blocks of a filesystem are metadata (what an export includes).
pub mod blockmap;
/// Little-endian field reads that never panic on short input.
mod bytes;
/// CRC32C and CRC16 as ext2/3/4 computes them.
pub mod checksum;
/// Directory entries: linear blocks, htree (dx) nodes, inline directories.
pub mod dir;
/// Walking the metadata in disk order for an export, scrambled or not.
pub mod export;
/// Extent trees (headers, index and leaf entries, tails).
pub mod extent;
/// Findings: problems the analyses report, each with a stable code.
pub mod finding;
/// An opened filesystem: superblock, descriptors and block reads.
pub mod fs;
/// Block group descriptors (32- and 64-bit).
pub mod group;
/// Directory-index name hashes (legacy, half_md4, tea; signed and unsigned).
pub mod hash;
/// Inodes: the on-disk inode, block maps and inline data.
pub mod inode;
/// The jbd2 journal superblock.
pub mod journal;
/// Replacing private content while keeping the filesystem consistent.
pub mod scramble;
/// Block sources: raw files, devices and QCOW2 images behind one trait.
pub mod source;
/// The ext2/3/4 superblock.
pub mod superblock;
/// Extended attributes: in-inode and block xattrs, EA inodes.
pub mod xattr;

/// Entry point shared by the fuzz target and the regression tests: feeds
/// arbitrary bytes through every reader path. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing;

pub use finding::{Finding, Severity};
pub use fs::{Error, Filesystem};
pub use source::Source;
