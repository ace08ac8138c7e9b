//! Block group descriptors: 32-byte (`struct ext2_group_desc`) and 64-bit
//! (`struct ext4_group_desc`, `s_desc_size` ≥ 64) layouts.
//!
//! Layout: Linux `Documentation/filesystems/ext4/group_descr.rst`, e2fsprogs
//! `lib/ext2fs/ext2_fs.h`. The `_hi` halves exist only with the `64bit`
//! feature and a descriptor of at least 64 bytes; otherwise they read as 0.

use crate::bytes::{le16, le32};
use crate::checksum::{crc16, crc32c};

/// `bg_flags`: inode table and bitmap not initialised.
pub const BG_INODE_UNINIT: u16 = 0x0001;
/// `bg_flags`: block bitmap not initialised.
pub const BG_BLOCK_UNINIT: u16 = 0x0002;
/// `bg_flags`: inode table zeroed.
pub const BG_INODE_ZEROED: u16 = 0x0004;

/// Size of the classic descriptor (and of every descriptor without `64bit`).
pub const DESC_SIZE_32: usize = 32;
/// Size of the ext4 descriptor with all `_hi` fields.
pub const DESC_SIZE_64: usize = 64;
/// Offset of `bg_checksum`, excluded from the CRC16 and zeroed for CRC32C.
pub const CHECKSUM_OFFSET: usize = 0x1E;

/// One block group descriptor, fields as stored.
///
/// Names are the kernel's without `bg_`; comments give the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupDesc {
    /// 0x00 `bg_block_bitmap_lo`.
    pub block_bitmap_lo: u32,
    /// 0x04 `bg_inode_bitmap_lo`.
    pub inode_bitmap_lo: u32,
    /// 0x08 `bg_inode_table_lo`.
    pub inode_table_lo: u32,
    /// 0x0C `bg_free_blocks_count_lo` (clusters with bigalloc).
    pub free_blocks_count_lo: u16,
    /// 0x0E `bg_free_inodes_count_lo`.
    pub free_inodes_count_lo: u16,
    /// 0x10 `bg_used_dirs_count_lo`.
    pub used_dirs_count_lo: u16,
    /// 0x12 `bg_flags` (`BG_*`).
    pub flags: u16,
    /// 0x14 `bg_exclude_bitmap_lo` (snapshots).
    pub exclude_bitmap_lo: u32,
    /// 0x18 `bg_block_bitmap_csum_lo`.
    pub block_bitmap_csum_lo: u16,
    /// 0x1A `bg_inode_bitmap_csum_lo`.
    pub inode_bitmap_csum_lo: u16,
    /// 0x1C `bg_itable_unused_lo`.
    pub itable_unused_lo: u16,
    /// 0x1E `bg_checksum`: crc16 (gdt_csum) or low half of crc32c.
    pub checksum: u16,
    /// 0x20 `bg_block_bitmap_hi`.
    pub block_bitmap_hi: u32,
    /// 0x24 `bg_inode_bitmap_hi`.
    pub inode_bitmap_hi: u32,
    /// 0x28 `bg_inode_table_hi`.
    pub inode_table_hi: u32,
    /// 0x2C `bg_free_blocks_count_hi`.
    pub free_blocks_count_hi: u16,
    /// 0x2E `bg_free_inodes_count_hi`.
    pub free_inodes_count_hi: u16,
    /// 0x30 `bg_used_dirs_count_hi`.
    pub used_dirs_count_hi: u16,
    /// 0x32 `bg_itable_unused_hi`.
    pub itable_unused_hi: u16,
    /// 0x34 `bg_exclude_bitmap_hi`.
    pub exclude_bitmap_hi: u32,
    /// 0x38 `bg_block_bitmap_csum_hi`.
    pub block_bitmap_csum_hi: u16,
    /// 0x3A `bg_inode_bitmap_csum_hi`.
    pub inode_bitmap_csum_hi: u16,
    /// 0x3C `bg_reserved`.
    pub reserved: u32,
    /// Whether the `_hi` fields were present (64bit and ≥ 64 bytes).
    pub wide: bool,
}

impl GroupDesc {
    /// Decodes a descriptor from its bytes; `wide` says whether the `_hi`
    /// fields count (the `64bit` feature). Short input reads as zeros.
    pub fn parse(b: &[u8], wide: bool) -> GroupDesc {
        let wide = wide && b.len() >= DESC_SIZE_64;
        let hi32 = |off| if wide { le32(b, off) } else { 0 };
        let hi16 = |off| if wide { le16(b, off) } else { 0 };
        GroupDesc {
            block_bitmap_lo: le32(b, 0x00),
            inode_bitmap_lo: le32(b, 0x04),
            inode_table_lo: le32(b, 0x08),
            free_blocks_count_lo: le16(b, 0x0C),
            free_inodes_count_lo: le16(b, 0x0E),
            used_dirs_count_lo: le16(b, 0x10),
            flags: le16(b, 0x12),
            exclude_bitmap_lo: le32(b, 0x14),
            block_bitmap_csum_lo: le16(b, 0x18),
            inode_bitmap_csum_lo: le16(b, 0x1A),
            itable_unused_lo: le16(b, 0x1C),
            checksum: le16(b, CHECKSUM_OFFSET),
            block_bitmap_hi: hi32(0x20),
            inode_bitmap_hi: hi32(0x24),
            inode_table_hi: hi32(0x28),
            free_blocks_count_hi: hi16(0x2C),
            free_inodes_count_hi: hi16(0x2E),
            used_dirs_count_hi: hi16(0x30),
            itable_unused_hi: hi16(0x32),
            exclude_bitmap_hi: hi32(0x34),
            block_bitmap_csum_hi: hi16(0x38),
            inode_bitmap_csum_hi: hi16(0x3A),
            reserved: hi32(0x3C),
            wide,
        }
    }

    /// Block number of the block bitmap.
    pub fn block_bitmap(&self) -> u64 {
        u64::from(self.block_bitmap_lo) | (u64::from(self.block_bitmap_hi) << 32)
    }
    /// Block number of the inode bitmap.
    pub fn inode_bitmap(&self) -> u64 {
        u64::from(self.inode_bitmap_lo) | (u64::from(self.inode_bitmap_hi) << 32)
    }
    /// First block of the inode table.
    pub fn inode_table(&self) -> u64 {
        u64::from(self.inode_table_lo) | (u64::from(self.inode_table_hi) << 32)
    }
    /// Snapshot exclude bitmap block.
    pub fn exclude_bitmap(&self) -> u64 {
        u64::from(self.exclude_bitmap_lo) | (u64::from(self.exclude_bitmap_hi) << 32)
    }
    /// Free blocks (clusters with bigalloc).
    pub fn free_blocks_count(&self) -> u32 {
        u32::from(self.free_blocks_count_lo) | (u32::from(self.free_blocks_count_hi) << 16)
    }
    /// Free inodes.
    pub fn free_inodes_count(&self) -> u32 {
        u32::from(self.free_inodes_count_lo) | (u32::from(self.free_inodes_count_hi) << 16)
    }
    /// Directories.
    pub fn used_dirs_count(&self) -> u32 {
        u32::from(self.used_dirs_count_lo) | (u32::from(self.used_dirs_count_hi) << 16)
    }
    /// Never-used inodes at the end of the table (`bg_itable_unused`).
    pub fn itable_unused(&self) -> u32 {
        u32::from(self.itable_unused_lo) | (u32::from(self.itable_unused_hi) << 16)
    }
    /// Stored block bitmap checksum (low 16 bits only for 32-byte descriptors).
    pub fn block_bitmap_csum(&self) -> u32 {
        u32::from(self.block_bitmap_csum_lo) | (u32::from(self.block_bitmap_csum_hi) << 16)
    }
    /// Stored inode bitmap checksum (low 16 bits only for 32-byte descriptors).
    pub fn inode_bitmap_csum(&self) -> u32 {
        u32::from(self.inode_bitmap_csum_lo) | (u32::from(self.inode_bitmap_csum_hi) << 16)
    }
    /// Whether a `BG_*` flag is set.
    pub fn has_flag(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    /// The flags as `dumpe2fs` names them, in its order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.has_flag(BG_INODE_UNINIT) {
            v.push("INODE_UNINIT");
        }
        if self.has_flag(BG_BLOCK_UNINIT) {
            v.push("BLOCK_UNINIT");
        }
        if self.has_flag(BG_INODE_ZEROED) {
            v.push("ITABLE_ZEROED");
        }
        v
    }
}

/// The checksum a descriptor should carry (`ext2fs_group_desc_csum`).
///
/// With `metadata_csum`: low 16 bits of crc32c(seed, group_le32 ‖ desc with
/// `bg_checksum` zeroed). With `gdt_csum`: crc16(~0, uuid ‖ group_le32 ‖
/// desc without `bg_checksum`). `raw` is the descriptor's `desc_size` bytes.
pub fn desc_checksum(
    raw: &[u8],
    group: u32,
    metadata_csum: bool,
    csum_seed: u32,
    uuid: &[u8; 16],
) -> u16 {
    let gle = group.to_le_bytes();
    let head = raw.get(..CHECKSUM_OFFSET).unwrap_or(raw);
    let tail = raw.get(CHECKSUM_OFFSET + 2..).unwrap_or(&[]);
    if metadata_csum {
        let c = crc32c(csum_seed, &gle);
        let c = crc32c(c, head);
        let c = crc32c(c, &[0, 0]);
        let c = crc32c(c, tail);
        (c & 0xFFFF) as u16
    } else {
        let c = crc16(!0, uuid);
        let c = crc16(c, &gle);
        let c = crc16(c, head);
        crc16(c, tail)
    }
}

/// The checksum a bitmap should carry: crc32c(seed, bitmap bytes), cut to
/// 16 bits when the descriptor has no `_hi` half (`ext2fs_*_bitmap_csum_verify`).
pub fn bitmap_checksum(bitmap: &[u8], csum_seed: u32, wide: bool) -> u32 {
    let c = crc32c(csum_seed, bitmap);
    if wide {
        c
    } else {
        c & 0xFFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_descriptor_ignores_hi_fields() {
        let mut b = [0u8; 64];
        b[0x20] = 1;
        b[0] = 5;
        assert_eq!(GroupDesc::parse(&b, false).block_bitmap(), 5);
        assert_eq!(GroupDesc::parse(&b, true).block_bitmap(), (1 << 32) | 5);
        assert_eq!(GroupDesc::parse(&b[..32], true).block_bitmap(), 5);
    }

    #[test]
    fn checksum_ignores_stored_checksum() {
        let mut b = [7u8; 64];
        let a = desc_checksum(&b, 3, true, 0x1234, &[1; 16]);
        b[CHECKSUM_OFFSET] = 0;
        assert_eq!(a, desc_checksum(&b, 3, true, 0x1234, &[1; 16]));
        let a = desc_checksum(&b, 3, false, 0, &[1; 16]);
        b[CHECKSUM_OFFSET + 1] = 9;
        assert_eq!(a, desc_checksum(&b, 3, false, 0, &[1; 16]));
    }
}
