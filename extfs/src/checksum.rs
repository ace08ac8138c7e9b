//! The two checksum functions ext2/3/4 uses.
//!
//! ext4's `metadata_csum` uses CRC32C (Castagnoli) *without* the usual pre-
//! and post-inversion, chained from a seed (kernel `ext4_chksum`, e2fsprogs
//! `ext2fs_crc32c_le`). The older `gdt_csum` (`uninit_bg`) feature uses
//! CRC16 (poly 0x8005, reflected) chained from `!0`.

/// CRC32C continued from `seed`, with no inversion at either end.
///
/// `crc32c_append` inverts before and after; inverting around it cancels
/// both, giving the raw register update ext4 uses.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16_TABLE: [u16; 256] = crc16_table();

/// CRC16 (reflected 0x8005) continued from `seed`, as `ext2fs_crc16`.
pub fn crc16(seed: u16, data: &[u8]) -> u16 {
    data.iter().fold(seed, |crc, &b| {
        (crc >> 8) ^ CRC16_TABLE[((crc ^ b as u16) & 0xff) as usize]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_standard_check_value_when_inverted() {
        // The standard CRC-32C check value of "123456789" is 0xE3069283,
        // defined with inversion at both ends.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc32c_chains() {
        let whole = crc32c(0x1234_5678, b"hello world");
        let parts = crc32c(crc32c(0x1234_5678, b"hello "), b"world");
        assert_eq!(whole, parts);
    }

    #[test]
    fn crc16_matches_modbus_check_value() {
        // CRC-16/MODBUS is this polynomial from 0xFFFF with no final xor.
        assert_eq!(crc16(0xFFFF, b"123456789"), 0x4B37);
    }
}
