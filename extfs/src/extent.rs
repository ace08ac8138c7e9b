//! Extent trees: the 12-byte header, index and leaf entries, and the tail
//! checksum of extent blocks (kernel `ext4_extents.h`).
//!
//! Every node (the 60-byte `i_block` root or a whole block) is
//! `ext4_extent_header` followed by `eh_entries` 12-byte entries:
//!
//! | off | header         | index (depth > 0) | leaf (depth 0)  |
//! |-----|----------------|-------------------|-----------------|
//! | 0   | eh_magic u16   | ei_block u32      | ee_block u32    |
//! | 2   | eh_entries u16 |                   |                 |
//! | 4   | eh_max u16     | ei_leaf_lo u32    | ee_len u16      |
//! | 6   | eh_depth u16   |                   | ee_start_hi u16 |
//! | 8   | eh_generation  | ei_leaf_hi u16    | ee_start_lo u32 |
//!
//! A block node ends with `ext4_extent_tail { et_checksum u32 }` right after
//! `eh_max` entries.

use crate::bytes::{le16, le32};
use crate::checksum::crc32c;

/// `eh_magic`.
pub const EXTENT_MAGIC: u16 = 0xF30A;
/// Size of the header and of each entry.
pub const ENTRY_SIZE: usize = 12;
/// Deepest tree the kernel builds (`EXT4_MAX_EXTENT_DEPTH`).
pub const MAX_DEPTH: u16 = 5;
/// `ee_len` above this marks an unwritten (preallocated) extent.
pub const INIT_MAX_LEN: u16 = 32768;

/// The header of an extent node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Valid entries that follow.
    pub entries: u16,
    /// Capacity of the node.
    pub max: u16,
    /// 0 for leaves.
    pub depth: u16,
    /// Unused by Linux.
    pub generation: u32,
}

/// An index entry: points to the node covering logical blocks from `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    /// First logical block covered.
    pub block: u32,
    /// Physical block of the child node.
    pub leaf: u64,
}

/// A leaf entry: `len` logical blocks from `block` live at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub block: u32,
    /// Number of blocks (unwritten flag removed).
    pub len: u16,
    /// First physical block.
    pub start: u64,
    /// Preallocated, reads as zeros.
    pub uninit: bool,
}

/// Why a node cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    /// Shorter than a header.
    Short,
    /// `eh_magic` is not 0xF30A.
    BadMagic(u16),
    /// `eh_entries > eh_max` or `eh_max` does not fit the node.
    BadCount {
        /// eh_entries
        entries: u16,
        /// eh_max
        max: u16,
    },
    /// `eh_depth` beyond [`MAX_DEPTH`].
    BadDepth(u16),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Short => write!(f, "extent node too short"),
            NodeError::BadMagic(m) => write!(f, "bad extent magic {m:#06x}"),
            NodeError::BadCount { entries, max } => {
                write!(f, "extent node has {entries} entries but room for {max}")
            }
            NodeError::BadDepth(d) => write!(f, "extent depth {d} is too deep"),
        }
    }
}

/// Decodes and checks the header of a node held in `node` (60 bytes for the
/// inode root, a block otherwise).
pub fn parse_header(node: &[u8]) -> Result<Header, NodeError> {
    if node.len() < ENTRY_SIZE {
        return Err(NodeError::Short);
    }
    let magic = le16(node, 0);
    if magic != EXTENT_MAGIC {
        return Err(NodeError::BadMagic(magic));
    }
    let h = Header {
        entries: le16(node, 2),
        max: le16(node, 4),
        depth: le16(node, 6),
        generation: le32(node, 8),
    };
    let room = (node.len() / ENTRY_SIZE).saturating_sub(1);
    if h.entries > h.max || h.max as usize > room {
        return Err(NodeError::BadCount {
            entries: h.entries,
            max: h.max,
        });
    }
    if h.depth > MAX_DEPTH {
        return Err(NodeError::BadDepth(h.depth));
    }
    Ok(h)
}

/// The index entries of an interior node (header already checked).
pub fn indexes(node: &[u8], h: &Header) -> Vec<Index> {
    (0..h.entries as usize)
        .map(|i| {
            let o = ENTRY_SIZE * (i + 1);
            Index {
                block: le32(node, o),
                leaf: le32(node, o + 4) as u64 | (le16(node, o + 8) as u64) << 32,
            }
        })
        .collect()
}

/// The extents of a leaf node (header already checked).
pub fn extents(node: &[u8], h: &Header) -> Vec<Extent> {
    (0..h.entries as usize)
        .map(|i| {
            let o = ENTRY_SIZE * (i + 1);
            let raw_len = le16(node, o + 4);
            let (len, uninit) = if raw_len > INIT_MAX_LEN {
                (raw_len - INIT_MAX_LEN, true)
            } else {
                (raw_len, false)
            };
            Extent {
                block: le32(node, o),
                len,
                start: le32(node, o + 8) as u64 | (le16(node, o + 6) as u64) << 32,
                uninit,
            }
        })
        .collect()
}

/// Offset of `et_checksum` in a block node with capacity `max`.
pub fn tail_offset(max: u16) -> usize {
    ENTRY_SIZE * (max as usize + 1)
}

/// The checksum an extent block should carry: crc32c from the inode's seed
/// (see [`crate::inode::inode_csum_seed`]) over the block up to the tail.
pub fn block_csum(inode_seed: u32, block: &[u8], max: u16) -> Option<u32> {
    let off = tail_offset(max);
    block.get(..off).map(|b| crc32c(inode_seed, b))
}

/// `(stored, computed)` checksums of an extent block, when the tail fits.
pub fn verify_block(inode_seed: u32, block: &[u8]) -> Option<(u32, u32)> {
    let h = parse_header(block).ok()?;
    let off = tail_offset(h.max);
    if off + 4 > block.len() {
        return None;
    }
    Some((le32(block, off), block_csum(inode_seed, block, h.max)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leaf_root() {
        let mut n = [0u8; 60];
        n[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
        n[2..4].copy_from_slice(&1u16.to_le_bytes());
        n[4..6].copy_from_slice(&4u16.to_le_bytes());
        n[12..16].copy_from_slice(&7u32.to_le_bytes());
        n[16..18].copy_from_slice(&(INIT_MAX_LEN + 3).to_le_bytes());
        n[18..20].copy_from_slice(&1u16.to_le_bytes());
        n[20..24].copy_from_slice(&100u32.to_le_bytes());
        let h = parse_header(&n).unwrap();
        assert_eq!(h.depth, 0);
        let e = extents(&n, &h);
        assert_eq!(
            e,
            vec![Extent {
                block: 7,
                len: 3,
                start: (1 << 32) | 100,
                uninit: true
            }]
        );
    }

    #[test]
    fn rejects_overfull_root() {
        let mut n = [0u8; 60];
        n[0..2].copy_from_slice(&EXTENT_MAGIC.to_le_bytes());
        n[2..4].copy_from_slice(&5u16.to_le_bytes());
        n[4..6].copy_from_slice(&5u16.to_le_bytes());
        assert!(matches!(parse_header(&n), Err(NodeError::BadCount { .. })));
        assert!(matches!(
            parse_header(&[0u8; 60]),
            Err(NodeError::BadMagic(0))
        ));
    }
}
