//! Runs arbitrary bytes through open, map, read, convert and check.

use crate::{convert, Image, ReadAt};
use std::io;

/// An in-memory image.
struct Mem<'a>(&'a [u8]);

impl ReadAt for Mem<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.0.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// A sink that counts instead of storing (virtual sizes may be huge).
struct Count(u64);

impl io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Exercises every reader path on `data`; returns whether it opened.
pub fn exercise(data: &[u8]) -> bool {
    let _ = crate::check(Mem(data));
    let Ok(img) = Image::open(Mem(data)) else {
        return false;
    };
    let size = img.virtual_size();
    // Bound the work on huge virtual disks: look at the start and the end.
    let window = size.min(2 << 20);
    if let Ok(map) = img.map(0, window) {
        let mut buf = vec![0u8; 64 << 10];
        for e in map.iter().take(64) {
            let n = e.len.min(buf.len() as u64) as usize;
            let _ = img.read_at(&mut buf[..n], e.offset);
        }
    }
    let _ = img.map(size - window, window);
    let n = window.min(1 << 16);
    let mut tail = vec![0u8; n as usize];
    let _ = img.read_at(&mut tail, size - n);
    if size <= 2 << 20 {
        let _ = convert::to_raw_stream(&img, Count(0));
    }
    true
}
