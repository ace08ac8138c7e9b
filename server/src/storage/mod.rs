//! Where image bytes live. [`ImageStore`] is the seam for issue 8's object
//! storage; [`LocalStore`] keeps them in the data directory:
//!
//! - `uploads/<id>.part`: a sparse file of the declared size, written with
//!   positioned writes and `fdatasync` before a chunk is acknowledged;
//! - `images/<id>.qcow2`: the verified image, renamed into place atomically.
//!
//! Paths are only ever built from server-generated ids (checked again here),
//! never from anything a client sent.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Positioned reads of a stored image, for the QCOW2 reader.
pub type ImageReader = Arc<dyn qcow2::ReadAt>;

/// Size of the reads when hashing or copying a whole file: large reads keep
/// the syscall count low; two buffers alternate between reader and hasher.
pub const STREAM_BUF: usize = 8 << 20;

/// Storage of uploads in progress and of complete images. Calls block: run
/// them on a blocking thread.
pub trait ImageStore: Send + Sync + 'static {
    /// Prepares an upload of `size` bytes.
    fn create_upload(&self, id: &str, size: u64) -> io::Result<()>;
    /// Writes a chunk; when this returns, the bytes survive a crash.
    fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads back part of an upload (to compare overlapping re-sends).
    fn read_upload(&self, id: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Size and SHA-256 of the whole upload, streamed.
    fn hash_upload(&self, id: &str) -> io::Result<(u64, [u8; 32])>;
    /// Makes a verified upload the stored image, atomically; idempotent.
    fn finalize(&self, id: &str) -> io::Result<()>;
    /// Drops an unfinished upload and its space.
    fn delete_upload(&self, id: &str) -> io::Result<()>;
    /// Opens a complete image for positioned reads.
    fn open_image(&self, id: &str) -> io::Result<ImageReader>;
    /// Removes a complete image.
    fn delete_image(&self, id: &str) -> io::Result<()>;
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

/// Images under a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    uploads: PathBuf,
    images: PathBuf,
}

impl LocalStore {
    /// Uses (creating) `uploads/` and `images/` under `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let uploads = root.join("uploads");
        let images = root.join("images");
        std::fs::create_dir_all(&uploads)?;
        std::fs::create_dir_all(&images)?;
        Ok(LocalStore { uploads, images })
    }

    fn part_path(&self, id: &str) -> io::Result<PathBuf> {
        check_id(id)?;
        Ok(self.uploads.join(format!("{id}.part")))
    }

    fn image_path(&self, id: &str) -> io::Result<PathBuf> {
        check_id(id)?;
        Ok(self.images.join(format!("{id}.qcow2")))
    }

    /// The upload's bytes: the part file, or, after a crash between the
    /// rename and the database update, the already renamed image.
    fn upload_file(&self, id: &str, write: bool) -> io::Result<File> {
        let part = self.part_path(id)?;
        match OpenOptions::new().read(true).write(write).open(&part) {
            // Never write into a finalized image.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !write => {
                File::open(self.image_path(id)?)
            }
            other => other,
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 of a whole file with large reads; a reader thread fills one
/// buffer while this thread hashes the other.
pub fn hash_file(file: &File) -> io::Result<(u64, [u8; 32])> {
    let size = file.metadata()?.len();
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(1);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = file.try_clone()?;
    let handle = std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut spare = vec![vec![0u8; STREAM_BUF], vec![0u8; STREAM_BUF]];
        while pos < size {
            let mut buf = match spare.pop() {
                Some(b) => b,
                None => match back_rx.recv() {
                    Ok(b) => b,
                    Err(_) => return,
                },
            };
            let n = (size - pos).min(STREAM_BUF as u64) as usize;
            buf.resize(n, 0);
            let r = reader.read_exact_at(&mut buf, pos).map(|_| buf);
            let failed = r.is_err();
            if tx.send(r).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while total < size {
        let buf = rx
            .recv()
            .map_err(|_| io::Error::other("hash reader thread stopped"))??;
        hasher.update(&buf);
        total += buf.len() as u64;
        let _ = back_tx.send(buf);
    }
    drop(back_tx);
    let _ = handle.join();
    Ok((total, hasher.finalize().into()))
}

impl ImageStore for LocalStore {
    fn create_upload(&self, id: &str, size: u64) -> io::Result<()> {
        let path = self.part_path(id)?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Sparse: space is used only as chunks arrive.
        f.set_len(size)?;
        f.sync_all()?;
        sync_dir(&self.uploads)
    }

    fn write_chunk(&self, id: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self.upload_file(id, true)?;
        f.write_all_at(data, offset)?;
        // fdatasync also flushes the block allocation needed to read the
        // data back, so the chunk survives a crash once this returns.
        f.sync_data()
    }

    fn read_upload(&self, id: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.upload_file(id, false)?.read_exact_at(buf, offset)
    }

    fn hash_upload(&self, id: &str) -> io::Result<(u64, [u8; 32])> {
        hash_file(&self.upload_file(id, false)?)
    }

    fn finalize(&self, id: &str) -> io::Result<()> {
        let part = self.part_path(id)?;
        let image = self.image_path(id)?;
        match File::open(&part) {
            Ok(f) => f.sync_all()?,
            // Already renamed by an earlier attempt that crashed before the
            // database update.
            Err(e) if e.kind() == io::ErrorKind::NotFound && image.exists() => return Ok(()),
            Err(e) => return Err(e),
        }
        std::fs::rename(&part, &image)?;
        sync_dir(&self.images)?;
        sync_dir(&self.uploads)
    }

    fn delete_upload(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.part_path(id)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn open_image(&self, id: &str) -> io::Result<ImageReader> {
        Ok(Arc::new(File::open(self.image_path(id)?)?))
    }

    fn delete_image(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_file(self.image_path(id)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
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

    #[test]
    fn chunks_then_finalize() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let id = "00112233445566778899aabbccddeeff";
        s.create_upload(id, 10).unwrap();
        s.write_chunk(id, 5, b"world").unwrap();
        s.write_chunk(id, 0, b"hello").unwrap();
        let (n, h) = s.hash_upload(id).unwrap();
        assert_eq!(n, 10);
        assert_eq!(h, <[u8; 32]>::from(Sha256::digest(b"helloworld")));
        s.finalize(id).unwrap();
        s.finalize(id).unwrap();
        let r = s.open_image(id).unwrap();
        let mut buf = [0u8; 10];
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"helloworld");
        assert!(s.write_chunk("../x", 0, b"").is_err());
    }
}
