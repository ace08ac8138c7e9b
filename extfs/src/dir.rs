//! Directories: linear blocks of `ext2_dir_entry_2`, the checksum tail,
//! htree (dx) root and interior nodes, and inline directories.
//!
//! Entry (`ext2_dir_entry_2`): `inode u32 @0`, `rec_len u16 @4`,
//! `name_len u8 @6`, `file_type u8 @7` (without the filetype feature
//! `name_len` is a u16 at 6), name from 8.
//!
//! Checksum tail (`ext2_dir_entry_tail`, last 12 bytes of a leaf block):
//! `det_reserved_zero1 u32 = 0 @0`, `det_rec_len u16 = 12 @4`,
//! `det_reserved_zero2 u8 = 0 @6`, `det_reserved_ft u8 = 0xDE @7`,
//! `det_checksum u32 @8`.
//!
//! dx root (block 0): "." (12 bytes) and ".." entries, then
//! `dx_root_info` at 24 (`reserved_zero u32`, `hash_version u8 @28`,
//! `info_length u8 @29`, `indirect_levels u8 @30`, `unused_flags u8 @31`),
//! then `dx_countlimit` (`limit u16`, `count u16`) sharing its 8 bytes with
//! entry 0's block, then `dx_entry { hash u32, block u32 }`. A dx node is a
//! fake empty entry (8 bytes) followed by the count/limit. With
//! metadata_csum, `dx_tail { dt_reserved u32, dt_checksum u32 }` follows
//! `limit` entries.

use crate::bytes::{le16, le32};
use crate::checksum::crc32c;
use crate::inode::{self, BlockRead, Inode, MapEvent, WalkOptions};
use serde::Serialize;

/// `det_reserved_ft` of the checksum tail.
pub const TAIL_FT: u8 = 0xDE;
/// Size of the checksum tail entry.
pub const TAIL_SIZE: usize = 12;
/// Bound on directory blocks read for one directory (a 4 GiB directory).
pub const MAX_DIR_BLOCKS: u64 = 1 << 20;

/// One directory entry as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirEntry {
    /// Inode the entry names (0 = unused slot).
    pub inode: u32,
    /// `file_type` (0 without the filetype feature): 1 reg, 2 dir, 3 chr,
    /// 4 blk, 5 fifo, 6 sock, 7 symlink.
    pub file_type: u8,
    /// Name bytes as stored (not necessarily UTF-8).
    pub name: Vec<u8>,
    /// Byte offset of the entry inside its block.
    pub offset: u32,
    /// Decoded rec_len.
    pub rec_len: u32,
}

/// Decodes `rec_len` (large-block encoding for 64 KiB blocks).
pub fn rec_len(raw: u16, block_size: usize) -> usize {
    if block_size < 65536 {
        raw as usize
    } else if raw == 65535 || raw == 0 {
        block_size
    } else {
        (raw as usize & 65532) | ((raw as usize & 3) << 16)
    }
}

/// Whether a leaf block ends with a checksum tail entry.
pub fn has_tail(block: &[u8]) -> bool {
    let n = block.len();
    n >= TAIL_SIZE && {
        let t = &block[n - TAIL_SIZE..];
        le32(t, 0) == 0 && le16(t, 4) == TAIL_SIZE as u16 && t[6] == 0 && t[7] == TAIL_FT
    }
}

/// `(stored, computed)` leaf checksum: crc32c from the inode seed over the
/// block up to the tail.
pub fn leaf_csum(inode_seed: u32, block: &[u8]) -> Option<(u32, u32)> {
    if !has_tail(block) {
        return None;
    }
    let n = block.len() - TAIL_SIZE;
    Some((le32(block, n + 8), crc32c(inode_seed, &block[..n])))
}

/// Stores the leaf checksum into the tail (for the scrambler).
pub fn set_leaf_csum(inode_seed: u32, block: &mut [u8]) {
    if let Some((_, c)) = leaf_csum(inode_seed, block) {
        let n = block.len();
        block[n - 4..].copy_from_slice(&c.to_le_bytes());
    }
}

/// Problems met while parsing a leaf block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProblem {
    /// Byte offset inside the block.
    pub offset: usize,
    /// For people.
    pub message: String,
}

/// The live entries of a linear directory block (or of an inline area:
/// `data` of any length). `filetype`: the superblock's filetype feature.
/// Stops at the first bad `rec_len` and reports it.
pub fn parse_entries(
    data: &[u8],
    block_size: usize,
    filetype: bool,
) -> (Vec<DirEntry>, Option<LeafProblem>) {
    let mut out = Vec::new();
    let mut off = 0usize;
    let end = if has_tail(data) && data.len() == block_size {
        data.len() - TAIL_SIZE
    } else {
        data.len()
    };
    while off + 8 <= end {
        let ino = le32(data, off);
        let rl = rec_len(le16(data, off + 4), block_size);
        let (name_len, ft) = if filetype {
            (data[off + 6] as usize, data[off + 7])
        } else {
            (le16(data, off + 6) as usize, 0)
        };
        if rl < 8 || rl % 4 != 0 || off + rl > end {
            return (
                out,
                Some(LeafProblem {
                    offset: off,
                    message: format!("bad rec_len {rl} at offset {off}"),
                }),
            );
        }
        if name_len + 8 > rl {
            return (
                out,
                Some(LeafProblem {
                    offset: off,
                    message: format!("name_len {name_len} exceeds rec_len {rl} at offset {off}"),
                }),
            );
        }
        if ino != 0 {
            out.push(DirEntry {
                inode: ino,
                file_type: ft,
                name: data[off + 8..off + 8 + name_len].to_vec(),
                offset: off as u32,
                rec_len: rl as u32,
            });
        }
        off += rl;
    }
    (out, None)
}

/// The dx root info of block 0 of an indexed directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DxRoot {
    /// Hash algorithm (0 legacy, 1 half_md4, 2 tea; +3 unsigned variants).
    pub hash_version: u8,
    /// `info_length` (8).
    pub info_length: u8,
    /// Levels of interior nodes below the root (0..=2, 3 with largedir).
    pub indirect_levels: u8,
}

/// A count/limit header and its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DxNode {
    /// Byte offset of `dx_countlimit` in the block.
    pub count_offset: usize,
    /// `limit`.
    pub limit: u16,
    /// `count`.
    pub count: u16,
    /// `(hash, block)`; entry 0's hash is implicitly 0.
    pub entries: Vec<(u32, u32)>,
}

/// Parses the dx root of block 0.
pub fn parse_dx_root(block: &[u8]) -> Option<(DxRoot, DxNode)> {
    let info_len = *block.get(29)? as usize;
    let root = DxRoot {
        hash_version: *block.get(28)?,
        info_length: info_len as u8,
        indirect_levels: *block.get(30)?,
    };
    let node = parse_countlimit(block, 24 + info_len)?;
    Some((root, node))
}

/// Parses a dx interior node block.
pub fn parse_dx_node(block: &[u8]) -> Option<DxNode> {
    parse_countlimit(block, 8)
}

fn parse_countlimit(block: &[u8], off: usize) -> Option<DxNode> {
    let limit = le16(block, off);
    let count = le16(block, off + 2);
    if off + 8 > block.len() || count > limit || off + limit as usize * 8 > block.len() {
        return None;
    }
    let entries = (0..count as usize)
        .map(|i| {
            let o = off + i * 8;
            let hash = if i == 0 { 0 } else { le32(block, o) };
            (hash, le32(block, o + 4))
        })
        .collect();
    Some(DxNode {
        count_offset: off,
        limit,
        count,
        entries,
    })
}

/// `(stored, computed)` checksum of a dx root or node (metadata_csum):
/// crc32c from the inode seed over the block up to the last used entry,
/// then over the `dx_tail` with its checksum zeroed.
pub fn dx_csum(inode_seed: u32, block: &[u8], node: &DxNode) -> Option<(u32, u32)> {
    let used = node.count_offset + node.count as usize * 8;
    let tail = node.count_offset + node.limit as usize * 8;
    if tail + 8 > block.len() {
        return None;
    }
    let mut c = crc32c(inode_seed, &block[..used]);
    c = crc32c(c, &block[tail..tail + 4]);
    c = crc32c(c, &[0u8; 4]);
    Some((le32(block, tail + 4), c))
}

/// Stores the dx checksum (for the scrambler).
pub fn set_dx_csum(inode_seed: u32, block: &mut [u8], node: &DxNode) {
    if let Some((_, c)) = dx_csum(inode_seed, block, node) {
        let tail = node.count_offset + node.limit as usize * 8;
        block[tail + 4..tail + 8].copy_from_slice(&c.to_le_bytes());
    }
}

/// The role of each block of a directory and, for leaves of an htree, the
/// hash range `[lo, hi]` it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DirBlockRole {
    /// A leaf of entries; `hash_range` when the directory is indexed.
    Leaf {
        /// Inclusive hash range from the index, if indexed.
        hash_range: Option<(u32, u32)>,
    },
    /// The dx root (logical block 0 of an indexed directory).
    DxRoot,
    /// An interior dx node.
    DxNode,
}

/// Roles of an indexed directory's blocks, by logical block, from its dx
/// root and nodes read through `read_logical`. Logical blocks not reached
/// from the index are leaves with no range. Bounded: each logical block is
/// visited at most once.
pub fn dx_roles(
    root_block: &[u8],
    read_logical: &mut dyn FnMut(u32) -> Option<Vec<u8>>,
) -> Vec<(u32, DirBlockRole)> {
    let mut out = vec![(0u32, DirBlockRole::DxRoot)];
    let Some((root, node)) = parse_dx_root(root_block) else {
        return out;
    };
    let mut seen = std::collections::HashSet::from([0u32]);
    // (node, level remaining above leaves, range)
    let mut stack = vec![(node, root.indirect_levels.min(3), (0u32, u32::MAX))];
    while let Some((n, levels, (lo, hi))) = stack.pop() {
        let count = n.entries.len();
        for (i, &(hash, blk)) in n.entries.iter().enumerate() {
            let start = if i == 0 { lo } else { hash & !1 };
            let end = if i + 1 < count {
                (n.entries[i + 1].0 & !1).saturating_sub(1)
            } else {
                hi
            };
            if !seen.insert(blk) {
                continue;
            }
            if levels == 0 {
                out.push((
                    blk,
                    DirBlockRole::Leaf {
                        hash_range: Some((start, end.max(start))),
                    },
                ));
            } else {
                out.push((blk, DirBlockRole::DxNode));
                if let Some(b) = read_logical(blk) {
                    if let Some(child) = parse_dx_node(&b) {
                        stack.push((child, levels - 1, (start, end.max(start))));
                    }
                }
            }
        }
    }
    out.sort_by_key(|(b, _)| *b);
    out
}

/// Entries of an inline directory: `i_block` holds the parent inode (4
/// bytes) then entries; the `system.data` xattr value continues them.
pub fn inline_entries(i_block: &[u8], extra: &[u8], filetype: bool) -> Vec<DirEntry> {
    let mut out = vec![
        DirEntry {
            inode: 0,
            file_type: 2,
            name: b".".to_vec(),
            offset: 0,
            rec_len: 0,
        },
        DirEntry {
            inode: le32(i_block, 0),
            file_type: 2,
            name: b"..".to_vec(),
            offset: 0,
            rec_len: 4,
        },
    ];
    let body = i_block.get(4..).unwrap_or(&[]);
    out.extend(parse_entries(body, body.len().max(1024), filetype).0);
    if !extra.is_empty() {
        out.extend(parse_entries(extra, extra.len().max(1024), filetype).0);
    }
    out
}

/// Reads all the entries of directory `ino` in block order (inline
/// directories included). dx nodes are skipped; bad blocks end their block's
/// listing, not the directory's.
pub fn read_dir_blocks(
    r: &dyn BlockRead,
    dir: &Inode,
    filetype: bool,
    inline_extra: &[u8],
) -> Vec<DirEntry> {
    if dir.has_inline_data() {
        let mut v = inline_entries(&dir.i_block, inline_extra, filetype);
        if let Some(e) = v.first_mut() {
            e.inode = dir.ino;
        }
        return v;
    }
    let bs = r.block_size();
    let mut runs = Vec::new();
    inode::walk_blocks(
        r,
        dir,
        WalkOptions {
            data: true,
            max_nodes: None,
        },
        &mut |e| {
            if let MapEvent::Data {
                logical,
                physical,
                len,
                uninit: false,
            } = e
            {
                runs.push((logical, physical, len));
            }
        },
    );
    let mut out = Vec::new();
    let mut buf = vec![0u8; bs];
    let mut budget = MAX_DIR_BLOCKS;
    let indexed = dir.flags & inode::flags::INDEX != 0;
    for (logical, physical, len) in runs {
        for k in 0..len {
            if budget == 0 {
                return out;
            }
            budget -= 1;
            if r.read_block_into(physical + k, &mut buf).is_err() {
                continue;
            }
            // dx nodes look like one empty entry spanning the block.
            if indexed && logical + k > 0 && le32(&buf, 0) == 0 && rec_len(le16(&buf, 4), bs) == bs
            {
                continue;
            }
            let (mut ents, _) = parse_entries(&buf, bs, filetype);
            out.append(&mut ents);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_block_with_tail() {
        let mut b = vec![0u8; 1024];
        b[0..4].copy_from_slice(&2u32.to_le_bytes());
        b[4..6].copy_from_slice(&12u16.to_le_bytes());
        b[6] = 1;
        b[7] = 2;
        b[8] = b'.';
        b[12..16].copy_from_slice(&11u32.to_le_bytes());
        b[16..18].copy_from_slice(&(1024u16 - 12 - 12).to_le_bytes());
        b[18] = 3;
        b[19] = 1;
        b[20..23].copy_from_slice(b"abc");
        b[1012 + 4..1012 + 6].copy_from_slice(&12u16.to_le_bytes());
        b[1012 + 7] = TAIL_FT;
        set_leaf_csum(7, &mut b);
        let (s, c) = leaf_csum(7, &b).unwrap();
        assert_eq!(s, c);
        let (e, p) = parse_entries(&b, 1024, true);
        assert!(p.is_none());
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, b"abc");
    }

    #[test]
    fn bad_rec_len_stops() {
        let b = vec![0u8; 1024];
        let (e, p) = parse_entries(&b, 1024, true);
        assert!(e.is_empty());
        assert!(p.is_some());
    }
}

/// The entries of directory `ino` (inode, type, name bytes) in on-disk
/// order, for the server's browser. Damaged blocks end their own listing
/// only.
pub fn read_dir(fs: &crate::fs::Filesystem, ino: u32) -> Result<Vec<DirEntry>, crate::fs::Error> {
    let inode = fs.inode(ino)?;
    if !inode.is_dir() {
        return Err(crate::fs::Error::Read {
            what: format!("directory {ino}"),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("inode {ino} is not a directory"),
            ),
        });
    }
    let filetype = fs.has_incompat(crate::superblock::incompat::FILETYPE);
    let extra = if inode.has_inline_data() {
        crate::xattr::inline_data_value(&inode.raw, inode.extra_isize)
    } else {
        Vec::new()
    };
    Ok(read_dir_blocks(fs, &inode, filetype, &extra))
}
