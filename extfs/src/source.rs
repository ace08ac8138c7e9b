use std::io;

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
