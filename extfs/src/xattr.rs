//! Extended attributes: in-inode (after `i_extra_isize`) and block xattrs,
//! entry and block hashes, the block checksum, and EA inodes.
//!
//! In-inode area: at `128 + i_extra_isize`, `h_magic u32 = 0xEA020000`, then
//! entries; value offsets count from the first entry.
//!
//! Block (`ext2_ext_attr_header`, 32 bytes): `h_magic u32 @0`,
//! `h_refcount u32 @4`, `h_blocks u32 @8`, `h_hash u32 @12`,
//! `h_checksum u32 @16`, reserved to 32; entries from 32; value offsets
//! count from the block start.
//!
//! Entry (`ext2_ext_attr_entry`): `e_name_len u8 @0`, `e_name_index u8 @1`,
//! `e_value_offs u16 @2`, `e_value_inum u32 @4` (EA inode holding the
//! value), `e_value_size u32 @8`, `e_hash u32 @12`, name from 16, padded to
//! 4 bytes. A zero u32 ends the list.

use crate::bytes::{le16, le32};
use crate::checksum::crc32c;
use serde::Serialize;

/// `h_magic` of both areas.
pub const MAGIC: u32 = 0xEA02_0000;
/// Size of the block header.
pub const BLOCK_HEADER: usize = 32;
/// Size of an entry before its name.
pub const ENTRY_HEADER: usize = 16;

/// One attribute entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Byte offset of the entry in its area (block or in-inode area after
    /// the magic).
    pub offset: usize,
    /// Namespace index (1 user, 2 posix acl access, 4 trusted, 6 security,
    /// 7 system, ...).
    pub name_index: u8,
    /// Name without the namespace prefix.
    pub name: Vec<u8>,
    /// `e_value_offs`.
    pub value_offs: u16,
    /// `e_value_inum`: the EA inode holding the value, or 0.
    pub value_inum: u32,
    /// `e_value_size`.
    pub value_size: u32,
    /// `e_hash`.
    pub hash: u32,
}

impl Entry {
    /// The value bytes inside `area` (None when stored in an EA inode or
    /// out of bounds). `base` is where value offsets count from.
    pub fn value<'a>(&self, area: &'a [u8], base: usize) -> Option<&'a [u8]> {
        if self.value_inum != 0 {
            return None;
        }
        let s = base + self.value_offs as usize;
        area.get(s..s + self.value_size as usize)
    }
}

/// Reads the entries starting at `first` in `area`; stops at the
/// terminator or the first entry that does not fit.
pub fn parse_entries(area: &[u8], first: usize) -> (Vec<Entry>, Option<String>) {
    let mut out = Vec::new();
    let mut off = first;
    loop {
        if off + 4 > area.len() {
            return (
                out,
                Some(format!("xattr entries run past the end at {off}")),
            );
        }
        if le32(area, off) == 0 {
            return (out, None);
        }
        let name_len = area[off] as usize;
        if off + ENTRY_HEADER + name_len > area.len() {
            return (out, Some(format!("xattr entry at {off} does not fit")));
        }
        out.push(Entry {
            offset: off,
            name_index: area[off + 1],
            name: area[off + ENTRY_HEADER..off + ENTRY_HEADER + name_len].to_vec(),
            value_offs: le16(area, off + 2),
            value_inum: le32(area, off + 4),
            value_size: le32(area, off + 8),
            hash: le32(area, off + 12),
        });
        off += (ENTRY_HEADER + name_len + 3) & !3;
    }
}

/// The in-inode attribute area of a raw inode record, if it has the magic.
/// Returns the area after the magic (value offsets count from its start).
pub fn inode_area(raw: &[u8], extra_isize: u16) -> Option<&[u8]> {
    let start = 128 + extra_isize as usize;
    if raw.len() < start + 4 || le32(raw, start) != MAGIC {
        return None;
    }
    raw.get(start + 4..)
}

/// Entries of the in-inode area.
pub fn inode_entries(raw: &[u8], extra_isize: u16) -> Vec<Entry> {
    inode_area(raw, extra_isize)
        .map(|a| parse_entries(a, 0).0)
        .unwrap_or_default()
}

/// A parsed xattr block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockHeader {
    /// `h_magic`.
    pub magic: u32,
    /// `h_refcount`.
    pub refcount: u32,
    /// `h_blocks` (1).
    pub blocks: u32,
    /// `h_hash`.
    pub hash: u32,
    /// `h_checksum`.
    pub checksum: u32,
}

/// Decodes an xattr block header.
pub fn block_header(block: &[u8]) -> BlockHeader {
    BlockHeader {
        magic: le32(block, 0),
        refcount: le32(block, 4),
        blocks: le32(block, 8),
        hash: le32(block, 12),
        checksum: le32(block, 16),
    }
}

/// `(stored, computed)` block checksum: crc32c from the fs seed over the
/// little-endian 64-bit block number, then the block with `h_checksum`
/// zeroed.
pub fn block_csum(fs_seed: u32, blocknr: u64, block: &[u8]) -> Option<(u32, u32)> {
    if block.len() < BLOCK_HEADER {
        return None;
    }
    let mut c = crc32c(fs_seed, &blocknr.to_le_bytes());
    c = crc32c(c, &block[..16]);
    c = crc32c(c, &[0u8; 4]);
    c = crc32c(c, &block[20..]);
    Some((le32(block, 16), c))
}

/// Stores the block checksum (for the scrambler).
pub fn set_block_csum(fs_seed: u32, blocknr: u64, block: &mut [u8]) {
    if let Some((_, c)) = block_csum(fs_seed, blocknr, block) {
        block[16..20].copy_from_slice(&c.to_le_bytes());
    }
}

const NAME_HASH_SHIFT: u32 = 5;
const VALUE_HASH_SHIFT: u32 = 16;
const BLOCK_HASH_SHIFT: u32 = 16;

/// The entry hash e2fsprogs and the kernel store in `e_hash`: name bytes
/// (as unsigned chars; `signed_chars` for the old signed variant), then the
/// value as little-endian u32 words (padded with zeros), or the EA inode's
/// hash for values held in an EA inode.
pub fn entry_hash(
    name: &[u8],
    value: Option<&[u8]>,
    ea_inode_hash: Option<u32>,
    signed_chars: bool,
) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        let v = if signed_chars {
            c as i8 as i32 as u32
        } else {
            c as u32
        };
        h = (h << NAME_HASH_SHIFT) ^ (h >> (32 - NAME_HASH_SHIFT)) ^ v;
    }
    if let Some(eh) = ea_inode_hash {
        h = (h << VALUE_HASH_SHIFT) ^ (h >> (32 - VALUE_HASH_SHIFT)) ^ eh;
    } else if let Some(v) = value {
        for chunk in v.chunks(4) {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h << VALUE_HASH_SHIFT) ^ (h >> (32 - VALUE_HASH_SHIFT)) ^ u32::from_le_bytes(w);
        }
    }
    h
}

/// The block hash (`h_hash`) from the entry hashes; 0 if any entry hash is 0.
pub fn block_hash(entries: &[Entry]) -> u32 {
    let mut h: u32 = 0;
    for e in entries {
        if e.hash == 0 {
            return 0;
        }
        h = (h << BLOCK_HASH_SHIFT) ^ (h >> (32 - BLOCK_HASH_SHIFT)) ^ e.hash;
    }
    h
}

/// The `system.data` value of an inline-data inode (the part of the file or
/// directory beyond the 60 bytes of `i_block`).
pub fn inline_data_value(raw: &[u8], extra_isize: u16) -> Vec<u8> {
    let Some(area) = inode_area(raw, extra_isize) else {
        return Vec::new();
    };
    let (ents, _) = parse_entries(area, 0);
    ents.iter()
        .find(|e| e.name_index == 7 && e.name == b"data")
        .and_then(|e| e.value(area, 0))
        .map(|v| v.to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_name_only() {
        // h = ((0<<5)^'a') = 97, then (97<<5)^(97>>27)^'b' = 3104^98
        assert_eq!(entry_hash(b"ab", None, None, false), (97u32 << 5) ^ 98);
    }

    #[test]
    fn parses_terminated_list() {
        let mut a = vec![0u8; 64];
        a[0] = 3;
        a[1] = 1;
        a[2..4].copy_from_slice(&40u16.to_le_bytes());
        a[8..12].copy_from_slice(&2u32.to_le_bytes());
        a[16..19].copy_from_slice(b"foo");
        a[40..42].copy_from_slice(b"hi");
        let (e, p) = parse_entries(&a, 0);
        assert!(p.is_none());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].value(&a, 0), Some(&b"hi"[..]));
    }
}
