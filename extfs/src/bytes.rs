//! Little-endian field reads for tolerant parsers.
//!
//! Every on-disk structure is read from bytes that may be short or hostile:
//! a field that lies (partly) outside the buffer reads as 0, which the
//! callers' own checks then judge, instead of panicking.

/// The `u16` at `off`, or 0 when it is not wholly inside `b`.
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

/// The `u32` at `off`, or 0 when it is not wholly inside `b`.
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// The `u64` at `off` (two halves; each reads as 0 when outside `b`).
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from(le32(b, off)) | (u64::from(le32(b, off.saturating_add(4))) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_zero_outside() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(le32(&b, 4), 0x0807_0605);
        assert_eq!(le64(&b, 0), 0x0807_0605_0403_0201);
        assert_eq!(le16(&b, 7), 0);
        assert_eq!(le32(&b, usize::MAX), 0);
        assert_eq!(le64(&b, usize::MAX - 1), 0);
    }
}
