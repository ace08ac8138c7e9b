//! Keeping checksums exactly as valid — or as invalid — as they were.
//!
//! ext4's CRC32C has no final inversion, so over a fixed-length region it is
//! linear: `crc(s, a) ^ crc(s, b) == crc(0, a ^ b)`. XORing the stored value
//! with the CRC of the change makes a valid checksum valid for the new bytes
//! and leaves a wrong one wrong by exactly the same error, without knowing
//! the seed, inode number or generation: e2fsck sees no checksum problem
//! added and none hidden.

use crate::checksum::crc32c;

/// The CRC32C of `old ^ new` from a zero register: XOR it into a stored
/// checksum covering the region whose bytes changed from `old` to `new`.
pub(crate) fn crc_delta(old: &[u8], new: &[u8]) -> u32 {
    let mut crc = 0u32;
    let mut buf = [0u8; 256];
    for (o, n) in old.chunks(256).zip(new.chunks(256)) {
        let x = &mut buf[..o.len().min(n.len())];
        for ((d, a), b) in x.iter_mut().zip(o).zip(n) {
            *d = a ^ b;
        }
        crc = crc32c(crc, x);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_moves_a_valid_checksum_to_the_new_bytes() {
        let seed = 0xdead_beef;
        let old = b"some directory block bytes, name=MKRsecret....".to_vec();
        let mut new = old.clone();
        new[30..39].copy_from_slice(b"q8v1mz0aa");
        let good = crc32c(seed, &old);
        assert_eq!(good ^ crc_delta(&old, &new), crc32c(seed, &new));
        let bad = good ^ 0x1234;
        assert_eq!((bad ^ crc_delta(&old, &new)) ^ crc32c(seed, &new), 0x1234);
    }
}
