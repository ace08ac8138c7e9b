//! Typed errors: each says what is wrong and where (a file or guest offset).

use std::io;

/// Everything that can go wrong while reading, writing or checking an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage failed (not the image's fault).
    #[error("I/O error while {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The first bytes are not the QCOW2 magic `QFI\xfb`.
    #[error("not a QCOW2 image: no \"QFI\\xfb\" magic at offset 0")]
    NotQcow2,
    /// A QCOW version other than 2 or 3.
    #[error("unsupported QCOW2 version {0} at offset 4 (only versions 2 and 3 exist)")]
    UnsupportedVersion(u32),
    /// A feature this reader deliberately refuses (encryption, backing file,
    /// external data file, unknown incompatible feature bits).
    #[error("unsupported QCOW2 feature: {0}")]
    Unsupported(String),
    /// A structure that is malformed (out of range, misaligned, overlapping,
    /// undecodable).
    #[error("corrupt QCOW2 image at file offset {offset:#x}: {what}")]
    Corrupt {
        /// File offset of the faulty field or structure.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The file ends before a structure the header points to.
    #[error("truncated QCOW2 image: {what} at file offset {offset:#x} ends past the end of the file ({file_size} bytes)")]
    Truncated {
        /// What was expected there.
        what: String,
        /// Where it starts.
        offset: u64,
        /// The file's size.
        file_size: u64,
    },
    /// A guest read outside the virtual disk.
    #[error("read of {len} bytes at guest offset {offset:#x} goes past the virtual size ({virtual_size} bytes)")]
    OutOfRange {
        /// Guest offset of the request.
        offset: u64,
        /// Its length.
        len: u64,
        /// The image's virtual size.
        virtual_size: u64,
    },
    /// The caller asked for something impossible (writer misuse, bad options).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt {
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
