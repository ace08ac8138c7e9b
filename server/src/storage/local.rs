//! Images under a local directory:
//!
//! - `uploads/<id>.part`: a sparse file of the declared size, written with
//!   positioned writes and `fdatasync` before a chunk is acknowledged;
//! - `images/<id>.qcow2`: the verified image, renamed into place atomically.

use super::{check_id, Chunk, ImageReader, ImageStore, Sink, STREAM_BUF};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// SHA-256 of a whole file with large reads (see [`stream_file`]).
pub fn hash_file(file: &File) -> io::Result<(u64, [u8; 32])> {
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    stream_file(file, size, &mut |b: &[u8]| hasher.update(b))?;
    Ok((size, hasher.finalize().into()))
}

/// Passes bytes `[0, size)` of a file to `sink` in order with large reads;
/// a reader thread fills one buffer while this thread consumes the other.
pub fn stream_file(file: &File, size: u64, sink: Sink<'_>) -> io::Result<()> {
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
    let mut total = 0u64;
    let result = (|| {
        while total < size {
            let buf = rx
                .recv()
                .map_err(|_| io::Error::other("file reader thread stopped"))??;
            sink(&buf);
            total += buf.len() as u64;
            let _ = back_tx.send(buf);
        }
        Ok(())
    })();
    drop(back_tx);
    drop(rx);
    let _ = handle.join();
    result
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

    fn write_chunk(&self, id: &str, chunk: &Chunk, data: &[u8]) -> io::Result<()> {
        let f = self.upload_file(id, true)?;
        f.write_all_at(data, chunk.offset)?;
        // fdatasync also flushes the block allocation needed to read the
        // data back, so the chunk survives a crash once this returns.
        f.sync_data()
    }

    fn read_chunk(&self, id: &str, _chunk: &Chunk, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // One file holds every chunk: overlaps were checked equal.
        self.upload_file(id, false)?.read_exact_at(buf, offset)
    }

    fn assemble(&self, id: &str, _chunks: &[Chunk], size: u64, sink: Sink<'_>) -> io::Result<()> {
        // The part file already is the image; it only has to be read.
        let f = self.upload_file(id, false)?;
        let held = f.metadata()?.len();
        if held != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upload {id} holds {held} bytes, expected {size}"),
            ));
        }
        stream_file(&f, size, sink)
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

    fn discard_assembly(&self, _id: &str) -> io::Result<()> {
        Ok(())
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

    fn backend(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_then_finalize() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let id = "00112233445566778899aabbccddeeff";
        s.create_upload(id, 10).unwrap();
        let c = |offset, length| Chunk {
            offset,
            length,
            sha256: String::new(),
        };
        s.write_chunk(id, &c(5, 5), b"world").unwrap();
        s.write_chunk(id, &c(0, 5), b"hello").unwrap();
        let mut held = [0u8; 3];
        s.read_chunk(id, &c(5, 5), 6, &mut held).unwrap();
        assert_eq!(&held, b"orl");
        let mut h = Sha256::new();
        s.assemble(id, &[c(0, 5), c(5, 5)], 10, &mut |b: &[u8]| h.update(b))
            .unwrap();
        assert_eq!(
            <[u8; 32]>::from(h.finalize()),
            <[u8; 32]>::from(Sha256::digest(b"helloworld"))
        );
        assert!(s.assemble(id, &[], 11, &mut |_: &[u8]| {}).is_err());
        s.finalize(id).unwrap();
        s.finalize(id).unwrap();
        let r = s.open_image(id).unwrap();
        let mut buf = [0u8; 10];
        r.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"helloworld");
        assert!(s.write_chunk("../x", &c(0, 0), b"").is_err());
    }
}
