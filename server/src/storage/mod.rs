//! Where image bytes live, behind one trait, [`ImageStore`], with two
//! backends chosen by configuration (`storage = "local" | "s3"`):
//!
//! - [`LocalStore`]: the data directory (the default);
//! - [`S3Store`]: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW,
//!   Garage...), keeping no local state, so several server processes can
//!   share it (see `docs/storage.md`).
//!
//! An upload's chunks are named by what the database records of them
//! ([`Chunk`]: offset, length, SHA-256), so a store never has to guess which
//! bytes of a retried or overlapping chunk count: the database is the
//! authority on what was acknowledged. Completion streams the chunks in
//! order once ([`ImageStore::assemble`]), hashing them on the way while the
//! store writes the image; only a verified image is made visible
//! ([`ImageStore::finalize`]).
//!
//! Paths and keys are only ever built from server-generated ids (checked
//! again here), never from anything a client sent.

mod cache;
mod local;
mod s3;

pub use cache::BlockCache;
pub use local::{hash_file, LocalStore};
pub use s3::{S3Config, S3Store};

use std::io;
use std::sync::Arc;

/// Positioned reads of a stored image, for the QCOW2 reader.
pub type ImageReader = Arc<dyn qcow2::ReadAt>;

/// Size of the reads when hashing or copying a whole file: large reads keep
/// the syscall count low; two buffers alternate between reader and hasher.
pub const STREAM_BUF: usize = 8 << 20;

/// A received chunk as the database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of its bytes, 64 lowercase hex digits.
    pub sha256: String,
}

impl Chunk {
    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

impl From<&crate::db::ChunkRow> for Chunk {
    fn from(c: &crate::db::ChunkRow) -> Chunk {
        Chunk {
            offset: c.offset.max(0) as u64,
            length: c.length.max(0) as u64,
            sha256: c.sha256.clone(),
        }
    }
}

/// Receives the bytes of an upload in order while it is assembled.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// Storage of uploads in progress and of complete images. Calls block: run
/// them on a blocking thread (never on an async runtime's worker thread).
pub trait ImageStore: Send + Sync + 'static {
    /// Prepares an upload of `size` bytes (0: not known yet).
    fn create_upload(&self, id: &str, size: u64) -> io::Result<()>;
    /// Stores a chunk whose SHA-256 was checked; when this returns, the
    /// bytes survive a crash.
    fn write_chunk(&self, id: &str, chunk: &Chunk, data: &[u8]) -> io::Result<()>;
    /// Reads bytes `[offset, offset + buf.len())` of the upload as held by
    /// `chunk` (to compare an overlapping re-send with it).
    fn read_chunk(&self, id: &str, chunk: &Chunk, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Streams bytes `[0, size)` of an upload, in order, through `sink`,
    /// and writes them as the image to be finalized. `chunks` are the
    /// acknowledged chunks, covering `[0, size)` (overlaps hold equal
    /// bytes). Memory stays bounded whatever the size.
    fn assemble(&self, id: &str, chunks: &[Chunk], size: u64, sink: Sink<'_>) -> io::Result<()>;
    /// Makes the assembled, verified upload the stored image; idempotent.
    fn finalize(&self, id: &str) -> io::Result<()>;
    /// Drops what [`ImageStore::assemble`] wrote for an upload that failed
    /// verification (the upload itself stays).
    fn discard_assembly(&self, id: &str) -> io::Result<()>;
    /// Drops an upload's chunks: unfinished, or completed (once the
    /// database says so; stores that keep chunks apart free them then).
    fn delete_upload(&self, id: &str) -> io::Result<()>;
    /// Opens a complete image for positioned reads.
    fn open_image(&self, id: &str) -> io::Result<ImageReader>;
    /// Removes a complete image.
    fn delete_image(&self, id: &str) -> io::Result<()>;
    /// `local` or `s3`.
    fn backend(&self) -> &'static str;
    /// Appends the store's own Prometheus metrics.
    fn render_metrics(&self, _out: &mut String) {}
}

/// The object storage could not be reached or refused a request: a
/// temporary condition (answered 503, retried by jobs), carried inside an
/// [`io::Error`].
#[derive(Debug, thiserror::Error)]
#[error("object storage: {0}")]
pub struct Unavailable(pub String);

/// Whether an I/O error is [`Unavailable`].
pub fn is_unavailable(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Unavailable>())
}

/// Ids are 32 lowercase hex digits; anything else never reaches a path.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(id: &str) -> io::Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid image id",
        ))
    }
}

/// Chunk checksums become object names: 64 lowercase hex digits only.
fn upload_sha_ok(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pieces `(chunk, start, end)` that tile `[0, size)` in order, each read
/// from one chunk; the chunk reaching furthest is preferred, so overlaps
/// are read once. Fails when the chunks leave a gap.
pub fn tiling(chunks: &[Chunk], size: u64) -> io::Result<Vec<(&Chunk, u64, u64)>> {
    let mut sorted: Vec<&Chunk> = chunks.iter().filter(|c| c.length > 0).collect();
    sorted.sort_by_key(|c| c.offset);
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut i = 0;
    let mut best: Option<&Chunk> = None;
    while pos < size {
        while let Some(c) = sorted.get(i).filter(|c| c.offset <= pos) {
            if best.is_none_or(|b| c.end() > b.end()) {
                best = Some(c);
            }
            i += 1;
        }
        match best.filter(|b| b.end() > pos) {
            Some(b) => {
                let end = b.end().min(size);
                out.push((b, pos, end));
                pos = end;
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the upload's chunks leave bytes from {pos} missing"),
                ))
            }
        }
    }
    Ok(out)
}

/// Opens the configured store.
pub async fn open(
    backend: &crate::config::StorageConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn ImageStore>> {
    use anyhow::Context;
    match backend {
        crate::config::StorageConfig::Local => {
            let store = LocalStore::open(data_dir).with_context(|| {
                format!("cannot prepare image storage in {}", data_dir.display())
            })?;
            Ok(Arc::new(store))
        }
        crate::config::StorageConfig::S3(cfg) => Ok(Arc::new(S3Store::connect(cfg).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_escape() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "../etc/passwd",
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "a/b",
        ] {
            assert!(!valid_id(bad));
        }
    }

    fn c(offset: u64, length: u64) -> Chunk {
        Chunk {
            offset,
            length,
            sha256: String::new(),
        }
    }

    #[test]
    fn tilings_prefer_the_furthest_chunk_and_find_gaps() {
        let chunks = [c(0, 10), c(5, 20), c(10, 5), c(25, 5)];
        let t: Vec<(u64, u64, u64)> = tiling(&chunks, 30)
            .unwrap()
            .iter()
            .map(|(c, s, e)| (c.offset, *s, *e))
            .collect();
        assert_eq!(t, vec![(0, 0, 10), (5, 10, 25), (25, 25, 30)]);
        // Past the size is cut; a gap is an error.
        assert_eq!(tiling(&chunks, 12).unwrap().len(), 2);
        assert!(tiling(&[c(0, 10), c(11, 5)], 16).is_err());
        assert!(tiling(&[c(1, 10)], 11).is_err());
        assert!(tiling(&[], 0).unwrap().is_empty());
    }
}
