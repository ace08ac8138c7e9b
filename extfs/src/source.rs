//! Block sources: a raw file or block device, or a QCOW2 image, behind one
//! small trait. The kind is detected from content ([`open_path`]), never
//! from the file name.

use crate::fs::Error;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Random-access bytes of a filesystem (the guest view for QCOW2 images).
///
/// Readers issue large positioned reads (a whole inode table chunk, a bitmap
/// run) instead of one call per block.
pub trait Source: Send + Sync {
    /// Fills all of `buf` from byte `offset` of the filesystem; past the end is
    /// `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Size of the filesystem's device in bytes.
    fn size(&self) -> u64;
}

/// The QCOW2 magic, `QFI\xfb`, at byte 0 of every QCOW2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// A raw image file or block device read with positioned reads (`pread`), so
/// one source can serve concurrent readers without a shared file offset.
#[derive(Debug)]
pub struct RawSource {
    file: File,
    size: u64,
}

impl RawSource {
    /// Wraps an open file or block device. The size comes from seeking to
    /// the end, which (unlike metadata) also works for block devices.
    pub fn new(mut file: File) -> io::Result<RawSource> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(RawSource { file, size })
    }
}

impl Source for RawSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end ({} bytes)",
                    buf.len(),
                    self.size
                ),
            ));
        }
        self.file.read_exact_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// A filesystem held in memory (tests, small fuzz inputs).
#[derive(Debug, Clone)]
pub struct MemSource(pub Vec<u8>);

impl Source for MemSource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok();
        let slice = start
            .and_then(|s| s.checked_add(buf.len()).map(|e| (s, e)))
            .and_then(|(s, e)| self.0.get(s..e));
        match slice {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the in-memory image",
            )),
        }
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Whether these first bytes of a file are a QCOW2 header.
pub fn is_qcow2(head: &[u8]) -> bool {
    head.starts_with(&QCOW2_MAGIC)
}

/// Opens a block device, raw image or QCOW2 image, telling them apart by
/// content: the QCOW2 magic at byte 0 means QCOW2, anything else is read
/// raw (the ext superblock is checked when the filesystem is opened).
pub fn open_path(path: &Path) -> Result<Arc<dyn Source>, Error> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let mut head = [0u8; 4];
    let n = read_prefix(&file, &mut head).map_err(open_err)?;
    if is_qcow2(&head[..n]) {
        return open_qcow2(file, path);
    }
    Ok(Arc::new(RawSource::new(file).map_err(open_err)?))
}

/// Reads up to `buf.len()` bytes from the start of `file` (short files give
/// fewer).
fn read_prefix(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn open_qcow2(file: File, path: &Path) -> Result<Arc<dyn Source>, Error> {
    let img = qcow2::Image::open(file).map_err(|e| {
        Error::Image(format!(
            "{} is a QCOW2 image that cannot be read: {e}",
            path.display()
        ))
    })?;
    Ok(Arc::new(Qcow2Source { img }))
}

/// The guest view of a QCOW2 image, read through the `qcow2` crate (never
/// expanded to raw).
pub struct Qcow2Source {
    img: qcow2::Image<File>,
}

impl Qcow2Source {
    /// Opens a QCOW2 image from its file.
    pub fn new(file: File) -> Result<Qcow2Source, qcow2::Error> {
        Ok(Qcow2Source {
            img: qcow2::Image::open(file)?,
        })
    }
}

impl Source for Qcow2Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.img.virtual_size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the image ({} bytes)",
                    buf.len(),
                    self.img.virtual_size()
                ),
            ));
        }
        self.img
            .read_at(buf, offset)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
    fn size(&self) -> u64 {
        self.img.virtual_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_source_refuses_reads_past_the_end() {
        let dir = std::env::temp_dir().join(format!("extfs-src-{}", std::process::id()));
        std::fs::write(&dir, [1u8, 2, 3, 4]).unwrap();
        let src = open_path(&dir).unwrap();
        assert_eq!(src.size(), 4);
        let mut b = [0u8; 2];
        src.read_exact_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        let e = src.read_exact_at(&mut b, 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(src.read_exact_at(&mut b, u64::MAX).is_err());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn mem_source_bounds() {
        let m = MemSource(vec![0; 8]);
        let mut b = [0u8; 4];
        assert!(m.read_exact_at(&mut b, 4).is_ok());
        assert!(m.read_exact_at(&mut b, 5).is_err());
        assert!(m.read_exact_at(&mut b, u64::MAX - 1).is_err());
    }
}
