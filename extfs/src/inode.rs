//! Inodes: the on-disk `ext2_inode_large`, its checksum, and the walk from an
//! inode to its blocks (extent trees of any depth, ext2/3 indirect blocks).
//!
//! Layout (`struct ext2_inode_large`, little endian):
//!
//! | off | field | off | field |
//! |-----|-------|-----|-------|
//! | 0   | i_mode u16 | 100 | i_generation u32 |
//! | 2   | i_uid u16 | 104 | i_file_acl_lo u32 |
//! | 4   | i_size_lo u32 | 108 | i_size_high u32 |
//! | 8   | i_atime u32 | 112 | i_faddr (obsolete) |
//! | 12  | i_ctime u32 | 116 | l_i_blocks_high u16 |
//! | 16  | i_mtime u32 | 118 | l_i_file_acl_high u16 |
//! | 20  | i_dtime u32 | 120 | l_i_uid_high u16 |
//! | 24  | i_gid u16 | 122 | l_i_gid_high u16 |
//! | 26  | i_links_count u16 | 124 | l_i_checksum_lo u16 |
//! | 28  | i_blocks_lo u32 | 126 | l_i_reserved u16 |
//! | 32  | i_flags u32 | 128 | i_extra_isize u16 |
//! | 36  | l_i_version u32 | 130 | i_checksum_hi u16 |
//! | 40  | i_block[15] (60 bytes) | 132 | i_ctime_extra u32 |
//! |     |  | 136 | i_mtime_extra, 140 i_atime_extra |
//! |     |  | 144 | i_crtime, 148 i_crtime_extra |
//! |     |  | 152 | i_version_hi, 156 i_projid |

use crate::bytes::{le16, le32};
use crate::checksum::crc32c;
use crate::extent;
use std::collections::HashSet;
use std::io;

/// Root directory.
pub const ROOT_INO: u32 = 2;
/// Resize inode (reserved GDT blocks).
pub const RESIZE_INO: u32 = 7;
/// Default journal inode.
pub const JOURNAL_INO: u32 = 8;

/// `i_flags` bits the readers care about.
pub mod flags {
    /// Directory has an htree index.
    pub const INDEX: u32 = 0x1000;
    /// i_blocks counts filesystem blocks (huge_file).
    pub const HUGE_FILE: u32 = 0x40000;
    /// i_block holds an extent tree.
    pub const EXTENTS: u32 = 0x80000;
    /// Inode stores a large xattr value (it is an EA inode).
    pub const EA_INODE: u32 = 0x200000;
    /// Contents live in i_block and the `system.data` xattr.
    pub const INLINE_DATA: u32 = 0x1000_0000;
    /// Encrypted file or directory.
    pub const ENCRYPT: u32 = 0x800;
    /// Casefolded directory.
    pub const CASEFOLD: u32 = 0x4000_0000;
}

/// File type bits of `i_mode`.
pub mod mode {
    /// Type mask.
    pub const FMT: u16 = 0o170000;
    /// Regular file.
    pub const REG: u16 = 0o100000;
    /// Directory.
    pub const DIR: u16 = 0o040000;
    /// Symbolic link.
    pub const LNK: u16 = 0o120000;
    /// Character device.
    pub const CHR: u16 = 0o020000;
    /// Block device.
    pub const BLK: u16 = 0o060000;
    /// FIFO.
    pub const FIFO: u16 = 0o010000;
    /// Socket.
    pub const SOCK: u16 = 0o140000;
}

/// Bytes of the `i_block` area.
pub const I_BLOCK_LEN: usize = 60;
/// `EXT4_GOOD_OLD_INODE_SIZE`.
pub const GOOD_OLD_SIZE: usize = 128;

/// One decoded inode, with its raw bytes (the inode-size record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Inode {
    /// Inode number.
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u16,
    /// Owner (low and high halves joined).
    pub uid: u32,
    /// Group (low and high halves joined).
    pub gid: u32,
    /// Size in bytes (`i_size_lo | i_size_high << 32`).
    pub size: u64,
    /// Access time (seconds, low 32 bits).
    pub atime: u32,
    /// Change time.
    pub ctime: u32,
    /// Modification time.
    pub mtime: u32,
    /// Deletion time.
    pub dtime: u32,
    /// Hard links.
    pub links_count: u16,
    /// `i_blocks_lo | l_i_blocks_high << 32`, in 512-byte units unless
    /// [`flags::HUGE_FILE`].
    pub blocks: u64,
    /// `i_flags`.
    pub flags: u32,
    /// `l_i_version` (osd1).
    pub version: u32,
    /// `i_block`, 60 bytes: block pointers, extent root, inline data or a
    /// fast symlink target.
    #[serde(skip)]
    pub i_block: [u8; I_BLOCK_LEN],
    /// NFS generation (seeds the inode checksum).
    pub generation: u32,
    /// Extended attribute block (`i_file_acl_lo | high << 32`).
    pub file_acl: u64,
    /// `l_i_checksum_lo`.
    pub checksum_lo: u16,
    /// `i_extra_isize` (0 for 128-byte inodes).
    pub extra_isize: u16,
    /// `i_checksum_hi`, when the extra area holds it.
    pub checksum_hi: Option<u16>,
    /// Extra time bits (`*_extra`: epoch bits and nanoseconds), when present.
    pub ctime_extra: Option<u32>,
    /// See `ctime_extra`.
    pub mtime_extra: Option<u32>,
    /// See `ctime_extra`.
    pub atime_extra: Option<u32>,
    /// Creation time, when present.
    pub crtime: Option<u32>,
    /// See `ctime_extra`.
    pub crtime_extra: Option<u32>,
    /// High 32 bits of the version, when present.
    pub version_hi: Option<u32>,
    /// Project id, when present.
    pub projid: Option<u32>,
    /// The raw on-disk record.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

impl Inode {
    /// Decodes the on-disk record `raw` (the filesystem's inode size; shorter
    /// input reads as zeros). Never fails: checks are the caller's business.
    pub fn parse(ino: u32, raw: &[u8]) -> Inode {
        let extra_isize = if raw.len() > GOOD_OLD_SIZE {
            le16(raw, 128)
        } else {
            0
        };
        // A field of the extra area exists when i_extra_isize covers it and
        // it fits the record.
        let extra_end = GOOD_OLD_SIZE + extra_isize as usize;
        let has = |off: usize, len: usize| off + len <= extra_end && off + len <= raw.len();
        let opt32 = |off: usize| has(off, 4).then(|| le32(raw, off));
        let mut i_block = [0u8; I_BLOCK_LEN];
        if let Some(src) = raw.get(40..100) {
            i_block.copy_from_slice(src);
        }
        Inode {
            ino,
            mode: le16(raw, 0),
            uid: le16(raw, 2) as u32 | (le16(raw, 120) as u32) << 16,
            gid: le16(raw, 24) as u32 | (le16(raw, 122) as u32) << 16,
            size: le32(raw, 4) as u64 | (le32(raw, 108) as u64) << 32,
            atime: le32(raw, 8),
            ctime: le32(raw, 12),
            mtime: le32(raw, 16),
            dtime: le32(raw, 20),
            links_count: le16(raw, 26),
            blocks: le32(raw, 28) as u64 | (le16(raw, 116) as u64) << 32,
            flags: le32(raw, 32),
            version: le32(raw, 36),
            i_block,
            generation: le32(raw, 100),
            file_acl: le32(raw, 104) as u64 | (le16(raw, 118) as u64) << 32,
            checksum_lo: le16(raw, 124),
            extra_isize,
            checksum_hi: has(130, 2).then(|| le16(raw, 130)),
            ctime_extra: opt32(132),
            mtime_extra: opt32(136),
            atime_extra: opt32(140),
            crtime: opt32(144),
            crtime_extra: opt32(148),
            version_hi: opt32(152),
            projid: opt32(156),
            raw: raw.to_vec(),
        }
    }

    /// The `i_mode` file type bits.
    pub fn file_type(&self) -> u16 {
        self.mode & mode::FMT
    }
    /// Directory?
    pub fn is_dir(&self) -> bool {
        self.file_type() == mode::DIR
    }
    /// Regular file?
    pub fn is_reg(&self) -> bool {
        self.file_type() == mode::REG
    }
    /// Symbolic link?
    pub fn is_symlink(&self) -> bool {
        self.file_type() == mode::LNK
    }
    /// Uses an extent tree.
    pub fn has_extents(&self) -> bool {
        self.flags & flags::EXTENTS != 0
    }
    /// Contents are inline (i_block + `system.data`).
    pub fn has_inline_data(&self) -> bool {
        self.flags & flags::INLINE_DATA != 0
    }
    /// The `i_block` words (block pointers for ext2/3 files).
    pub fn block_ptrs(&self) -> [u32; 15] {
        let mut out = [0u32; 15];
        for (i, w) in out.iter_mut().enumerate() {
            *w = le32(&self.i_block, i * 4);
        }
        out
    }

    /// Whether `i_block` holds block pointers or an extent root rather than
    /// inline data or a fast symlink target (as `ext2fs_inode_has_valid_blocks2`).
    pub fn has_valid_blocks(&self) -> bool {
        if !self.is_dir() && !self.is_reg() && !self.is_symlink() {
            return false;
        }
        if self.is_symlink() {
            if self.file_acl == 0 {
                // No xattr block: any block means a slow symlink.
                if self.blocks & 0xFFFF_FFFF == 0 {
                    return false;
                }
            } else {
                // With an xattr block i_blocks counts it: guess from i_block.
                let size = self.size & 0xFFFF_FFFF;
                if size >= I_BLOCK_LEN as u64 {
                    return true;
                }
                return size > 4 && le32(&self.i_block, 4) == 0;
            }
        }
        !self.has_inline_data()
    }

    /// The xattr block as e2fsprogs reads it (`ext2fs_file_acl_block`): the
    /// high 16 bits count only on 64bit filesystems.
    pub fn acl_block(&self, is_64bit: bool) -> u64 {
        if is_64bit {
            self.file_acl
        } else {
            self.file_acl & 0xFFFF_FFFF
        }
    }

    /// The contents of an inline-data inode: `i_block` (up to 60 bytes) then
    /// the `system.data` xattr value, cut to `i_size`.
    pub fn inline_data(&self) -> Vec<u8> {
        let mut v = self.i_block.to_vec();
        v.extend(crate::xattr::inline_data_value(&self.raw, self.extra_isize));
        v.truncate(self.size.min(v.len() as u64) as usize);
        v
    }

    /// Fast symlink: the target is in `i_block` itself.
    pub fn is_fast_symlink(&self) -> bool {
        self.is_symlink() && !self.has_inline_data() && !self.has_valid_blocks()
    }
}

/// The per-inode checksum seed: crc32c of the inode number then generation,
/// chained from the filesystem seed.
pub fn inode_csum_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c(fs_seed, &ino.to_le_bytes());
    crc32c(s, &generation.to_le_bytes())
}

/// `(stored, computed)` checksum of an inode record (metadata_csum): crc32c
/// over the whole record with `l_i_checksum_lo` (124) and `i_checksum_hi`
/// (130) zeroed; only the low 16 bits when the record has no `i_checksum_hi`.
pub fn inode_csum(fs_seed: u32, ino: u32, raw: &[u8]) -> (u32, u32) {
    let ino_rec = Inode::parse(ino, raw);
    let has_hi = ino_rec.checksum_hi.is_some();
    let seed = inode_csum_seed(fs_seed, ino, ino_rec.generation);
    let zero = [0u8; 2];
    let mut crc = crc32c(seed, raw.get(..124).unwrap_or(raw));
    crc = crc32c(crc, &zero);
    if raw.len() > 126 {
        if has_hi {
            crc = crc32c(crc, raw.get(126..130).unwrap_or(&[]));
            crc = crc32c(crc, &zero);
            crc = crc32c(crc, raw.get(132..).unwrap_or(&[]));
        } else {
            crc = crc32c(crc, raw.get(126..).unwrap_or(&[]));
        }
    }
    let stored = ino_rec.checksum_lo as u32 | (ino_rec.checksum_hi.unwrap_or(0) as u32) << 16;
    if has_hi {
        (stored, crc)
    } else {
        (stored, crc & 0xFFFF)
    }
}

/// Stores the checksum [`inode_csum`] computes into `raw` (for the scrambler).
pub fn set_inode_csum(fs_seed: u32, ino: u32, raw: &mut [u8]) {
    let (_, crc) = inode_csum(fs_seed, ino, raw);
    if let Some(s) = raw.get_mut(124..126) {
        s.copy_from_slice(&(crc as u16).to_le_bytes());
    }
    if Inode::parse(ino, raw).checksum_hi.is_some() {
        if let Some(s) = raw.get_mut(130..132) {
            s.copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
        }
    }
}

/// Random block reads, as the block walk needs them. `Filesystem` implements
/// it; tests can use a byte slice.
pub trait BlockRead {
    /// Block size in bytes.
    fn block_size(&self) -> usize;
    /// Total blocks: pointers at or past it are invalid.
    fn blocks_count(&self) -> u64;
    /// Reads block `blk` into `buf` (one block).
    fn read_block_into(&self, blk: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A metadata block met on the way from an inode to its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum NodeKind {
    /// Extent tree block at this depth (0 = leaf).
    Extent {
        /// eh_depth of the node (as the parent expects it).
        depth: u16,
    },
    /// Single indirect block.
    Ind,
    /// Double indirect block.
    DInd,
    /// Triple indirect block.
    TInd,
}

/// What the block walk reports, in logical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEvent {
    /// A tree or indirect block of the file.
    Node {
        /// Physical block.
        block: u64,
        /// What it is.
        kind: NodeKind,
        /// First logical block it maps.
        logical: u64,
    },
    /// `len` logical blocks from `logical` live at `physical`.
    Data {
        /// First logical block.
        logical: u64,
        /// First physical block.
        physical: u64,
        /// Blocks.
        len: u64,
        /// Unwritten extent.
        uninit: bool,
    },
    /// A structure that could not be used; the walk skips it.
    Problem {
        /// Block concerned, if any.
        block: Option<u64>,
        /// Stable code (`extent.header`, `extent.pointer`, `indirect.pointer`...).
        code: &'static str,
        /// For people.
        message: String,
    },
}

/// How far the walk reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    /// Report data runs. Without it, extent leaves and single indirect
    /// blocks are reported but not read (all that the block map needs for a
    /// regular file).
    pub data: bool,
    /// Bound on tree and indirect blocks read for one inode.
    pub max_nodes: Option<usize>,
}

const DEFAULT_MAX_NODES: usize = 1 << 20;

struct Walker<'a> {
    r: &'a dyn BlockRead,
    opts: WalkOptions,
    seen: HashSet<u64>,
    visit: &'a mut dyn FnMut(MapEvent),
    pending: Option<(u64, u64, u64, bool)>,
    budget: usize,
}

impl Walker<'_> {
    fn flush(&mut self) {
        if let Some((logical, physical, len, uninit)) = self.pending.take() {
            (self.visit)(MapEvent::Data {
                logical,
                physical,
                len,
                uninit,
            });
        }
    }

    fn data(&mut self, logical: u64, physical: u64, len: u64, uninit: bool) {
        if let Some((l, p, n, u)) = &mut self.pending {
            if *l + *n == logical && *p + *n == physical && *u == uninit {
                *n += len;
                return;
            }
        }
        self.flush();
        self.pending = Some((logical, physical, len, uninit));
    }

    fn problem(&mut self, block: Option<u64>, code: &'static str, message: String) {
        self.flush();
        (self.visit)(MapEvent::Problem {
            block,
            code,
            message,
        });
    }

    fn valid(&self, blk: u64) -> bool {
        blk != 0 && blk < self.r.blocks_count()
    }

    /// Claims a node block: false if seen before (a loop or a shared block)
    /// or the budget is spent.
    fn claim(&mut self, blk: u64) -> bool {
        if self.budget == 0 {
            return false;
        }
        if !self.seen.insert(blk) {
            return false;
        }
        self.budget -= 1;
        true
    }

    fn read(&mut self, blk: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.r.block_size()];
        match self.r.read_block_into(blk, &mut buf) {
            Ok(()) => Some(buf),
            Err(e) => {
                self.problem(
                    Some(blk),
                    "block.read",
                    format!("cannot read block {blk}: {e}"),
                );
                None
            }
        }
    }

    fn extent_node(&mut self, node: &[u8], expect_depth: Option<u16>, at: Option<u64>) {
        let h = match extent::parse_header(node) {
            Ok(h) => h,
            Err(e) => {
                self.problem(at, "extent.header", e.to_string());
                return;
            }
        };
        if let Some(d) = expect_depth {
            if h.depth != d {
                self.problem(
                    at,
                    "extent.depth",
                    format!("extent node has depth {} where {d} was expected", h.depth),
                );
                return;
            }
        }
        if h.depth == 0 {
            for e in extent::extents(node, &h) {
                if e.len == 0 {
                    continue;
                }
                let end = e.start.saturating_add(e.len as u64);
                if !self.valid(e.start) || end > self.r.blocks_count() {
                    self.problem(
                        at,
                        "extent.pointer",
                        format!(
                            "extent of {} blocks at {} lies outside the filesystem",
                            e.len, e.start
                        ),
                    );
                    continue;
                }
                self.data(e.block as u64, e.start, e.len as u64, e.uninit);
            }
            return;
        }
        for ix in extent::indexes(node, &h) {
            if !self.valid(ix.leaf) {
                self.problem(
                    at,
                    "extent.pointer",
                    format!("extent index points to invalid block {}", ix.leaf),
                );
                continue;
            }
            if !self.claim(ix.leaf) {
                self.problem(
                    Some(ix.leaf),
                    "extent.loop",
                    format!("extent block {} is referenced twice", ix.leaf),
                );
                continue;
            }
            self.flush();
            let depth = h.depth - 1;
            (self.visit)(MapEvent::Node {
                block: ix.leaf,
                kind: NodeKind::Extent { depth },
                logical: ix.block as u64,
            });
            if depth == 0 && !self.opts.data {
                continue;
            }
            if let Some(child) = self.read(ix.leaf) {
                self.extent_node(&child, Some(depth), Some(ix.leaf));
            }
        }
    }

    /// Walks an indirect block of `level` (1 = single) mapping logical
    /// blocks from `logical`.
    fn indirect(&mut self, blk: u64, level: u32, logical: u64) {
        let kind = match level {
            1 => NodeKind::Ind,
            2 => NodeKind::DInd,
            _ => NodeKind::TInd,
        };
        if !self.valid(blk) {
            self.problem(
                None,
                "indirect.pointer",
                format!("indirect block pointer {blk} lies outside the filesystem"),
            );
            return;
        }
        if !self.claim(blk) {
            self.problem(
                Some(blk),
                "indirect.loop",
                format!("indirect block {blk} is referenced twice"),
            );
            return;
        }
        self.flush();
        (self.visit)(MapEvent::Node {
            block: blk,
            kind,
            logical,
        });
        if level == 1 && !self.opts.data {
            return;
        }
        let Some(buf) = self.read(blk) else { return };
        let per = (self.r.block_size() / 4) as u64;
        let span = per.pow(level - 1);
        for i in 0..per as usize {
            let p = le32(&buf, i * 4) as u64;
            if p == 0 {
                continue;
            }
            let lblk = logical + i as u64 * span;
            if level == 1 {
                if self.valid(p) {
                    self.data(lblk, p, 1, false);
                } else {
                    self.problem(
                        Some(blk),
                        "indirect.pointer",
                        format!("block pointer {p} lies outside the filesystem"),
                    );
                }
            } else {
                self.indirect(p, level - 1, lblk);
            }
        }
    }
}

/// Walks the blocks of `inode` in logical order, calling `visit` for each
/// tree/indirect block and each run of data blocks. Tolerant: a bad node is
/// reported as [`MapEvent::Problem`] and skipped; loops and repeated blocks
/// are cut; the number of nodes read is bounded.
pub fn walk_blocks(
    r: &dyn BlockRead,
    inode: &Inode,
    opts: WalkOptions,
    visit: &mut dyn FnMut(MapEvent),
) {
    let mut w = Walker {
        r,
        opts,
        seen: HashSet::new(),
        visit,
        pending: None,
        budget: opts.max_nodes.unwrap_or(DEFAULT_MAX_NODES),
    };
    if inode.has_inline_data() {
        return;
    }
    if inode.has_extents() {
        let root = inode.i_block;
        w.extent_node(&root, None, None);
    } else {
        let ptrs = inode.block_ptrs();
        for (i, &p) in ptrs.iter().take(12).enumerate() {
            if p == 0 {
                continue;
            }
            if w.valid(p as u64) {
                w.data(i as u64, p as u64, 1, false);
            } else {
                w.problem(
                    None,
                    "indirect.pointer",
                    format!("block pointer {p} lies outside the filesystem"),
                );
            }
        }
        let per = (r.block_size() / 4) as u64;
        let mut logical = 12u64;
        for (level, p) in [(1u32, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])] {
            if p != 0 {
                w.indirect(p as u64, level, logical);
            }
            logical += per.pow(level);
        }
    }
    w.flush();
}

/// Convenience: the data runs of an inode `(logical, physical, len, uninit)`
/// and its tree/indirect blocks.
pub fn block_map(r: &dyn BlockRead, inode: &Inode) -> (Vec<MapEvent>, Vec<MapEvent>) {
    let mut data = Vec::new();
    let mut nodes = Vec::new();
    walk_blocks(
        r,
        inode,
        WalkOptions {
            data: true,
            max_nodes: None,
        },
        &mut |e| match e {
            MapEvent::Data { .. } => data.push(e),
            other => nodes.push(other),
        },
    );
    (data, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_checksum_roundtrip() {
        let mut raw = vec![0u8; 256];
        raw[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
        raw[4..8].copy_from_slice(&1234u32.to_le_bytes());
        raw[108..112].copy_from_slice(&1u32.to_le_bytes());
        raw[128..130].copy_from_slice(&32u16.to_le_bytes());
        raw[100..104].copy_from_slice(&99u32.to_le_bytes());
        let i = Inode::parse(12, &raw);
        assert!(i.is_reg());
        assert_eq!(i.size, (1 << 32) | 1234);
        assert_eq!(i.extra_isize, 32);
        assert_eq!(i.projid, Some(0));
        set_inode_csum(0xdead_beef, 12, &mut raw);
        let (s, c) = inode_csum(0xdead_beef, 12, &raw);
        assert_eq!(s, c);
        raw[4] ^= 1;
        let (s, c) = inode_csum(0xdead_beef, 12, &raw);
        assert_ne!(s, c);
    }

    struct Mem(Vec<u8>);
    impl BlockRead for Mem {
        fn block_size(&self) -> usize {
            1024
        }
        fn blocks_count(&self) -> u64 {
            (self.0.len() / 1024) as u64
        }
        fn read_block_into(&self, blk: u64, buf: &mut [u8]) -> io::Result<()> {
            let o = blk as usize * 1024;
            buf.copy_from_slice(&self.0[o..o + 1024]);
            Ok(())
        }
    }

    #[test]
    fn indirect_loop_is_cut() {
        // Block 5 is a DIND block pointing at itself.
        let mut disk = vec![0u8; 1024 * 10];
        disk[5 * 1024..5 * 1024 + 4].copy_from_slice(&5u32.to_le_bytes());
        let mut raw = vec![0u8; 128];
        raw[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
        raw[40 + 13 * 4..40 + 14 * 4].copy_from_slice(&5u32.to_le_bytes());
        let ino = Inode::parse(12, &raw);
        let (data, nodes) = block_map(&Mem(disk), &ino);
        assert!(data.is_empty());
        assert!(nodes.iter().any(|e| matches!(
            e,
            MapEvent::Problem {
                code: "indirect.loop",
                ..
            }
        )));
    }
}

// ---------------------------------------------------------------------------
// On an opened filesystem.

use crate::finding::{Finding, Severity};
use crate::fs::{Error, Filesystem};
use crate::group::BG_INODE_UNINIT;

impl BlockRead for Filesystem {
    fn block_size(&self) -> usize {
        Filesystem::block_size(self) as usize
    }
    fn blocks_count(&self) -> u64 {
        Filesystem::blocks_count(self)
    }
    fn read_block_into(&self, blk: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_blocks(blk, 1, buf)
    }
}

/// Largest single read of an inode table chunk.
const SCAN_CHUNK_BYTES: u64 = 1 << 20;

/// The inodes of group `g` that a scan visits: all of them, except that with
/// group descriptor checksums an `INODE_UNINIT` group has none and the last
/// `bg_itable_unused` are skipped (as `ext2fs_get_next_inode` does).
pub fn group_scan_count(fs: &Filesystem, g: u32) -> u32 {
    let ipg = fs.inodes_per_group();
    let Some(gd) = fs.group(g) else { return 0 };
    let mut n = ipg;
    if fs.has_group_desc_csum() {
        if gd.has_flag(BG_INODE_UNINIT) {
            return 0;
        }
        n = n.saturating_sub(gd.itable_unused());
    }
    // The last group may hold fewer inodes than inodes_per_group says.
    let first = g as u64 * ipg as u64;
    let left = (fs.inodes_count() as u64).saturating_sub(first);
    n.min(left.min(u32::MAX as u64) as u32)
}

/// Calls `visit(ino, raw)` for every inode record a scan visits (see
/// [`group_scan_count`]), reading inode tables in large chunks. Tables
/// outside the filesystem and unreadable chunks become findings passed to
/// `problem`; the scan goes on.
pub fn scan_inodes(
    fs: &Filesystem,
    visit: &mut dyn FnMut(u32, &[u8]),
    problem: &mut dyn FnMut(Finding),
) {
    let bs = Filesystem::block_size(fs);
    let isz = fs.inode_size();
    if isz == 0 || bs == 0 {
        return;
    }
    let ipg = fs.inodes_per_group();
    let chunk_blocks = (SCAN_CHUNK_BYTES / bs).max(1);
    let mut buf = Vec::new();
    for g in 0..fs.group_count() {
        let n = group_scan_count(fs, g);
        if n == 0 {
            continue;
        }
        let Some(gd) = fs.group(g) else { continue };
        let table = gd.inode_table();
        let blocks = (n as u64 * isz).div_ceil(bs);
        let end = table.checked_add(blocks);
        if table == 0 || end.is_none_or(|e| e > Filesystem::blocks_count(fs)) {
            problem(Finding {
                severity: Severity::Error,
                code: "group.inode_table_location".into(),
                message: format!(
                    "group {g}'s inode table at block {table} lies outside the filesystem; its inodes are skipped"
                ),
                group: Some(g),
                inode: None,
                block: Some(table),
            });
            continue;
        }
        let mut done = 0u64; // blocks read of this table
        while done < blocks {
            let count = chunk_blocks.min(blocks - done);
            buf.resize((count * bs) as usize, 0);
            let first = table + done;
            if fs.read_blocks(first, count, &mut buf).is_err() {
                // Find the bad blocks one by one; zero them.
                for k in 0..count {
                    let s = (k * bs) as usize;
                    let slot = &mut buf[s..s + bs as usize];
                    if let Err(e) = fs.read_blocks(first + k, 1, slot) {
                        slot.fill(0);
                        problem(Finding {
                            severity: Severity::Error,
                            code: "inode.table_unreadable".into(),
                            message: format!("inode table block {} cannot be read: {e}", first + k),
                            group: Some(g),
                            inode: None,
                            block: Some(first + k),
                        });
                    }
                }
            }
            let first_idx = done * bs / isz;
            let recs = (count * bs / isz).min(n as u64 - first_idx.min(n as u64));
            for r in 0..recs {
                let idx = first_idx + r;
                let ino = g as u64 * ipg as u64 + idx + 1;
                let s = (r * isz) as usize;
                if let (Ok(ino), Some(raw)) = (u32::try_from(ino), buf.get(s..s + isz as usize)) {
                    visit(ino, raw);
                }
            }
            done += count;
        }
    }
}

impl Filesystem {
    /// Reads inode `ino` (numbered from 1).
    pub fn inode(&self, ino: u32) -> Result<Inode, Error> {
        let bad = |msg: String| Error::Read {
            what: format!("inode {ino}"),
            source: io::Error::new(io::ErrorKind::InvalidInput, msg),
        };
        let (blk, off) = self
            .inode_location(ino)
            .ok_or_else(|| bad(format!("there is no inode {ino} in this filesystem")))?;
        let isz = self.inode_size() as usize;
        let block = self.read_block(blk).map_err(|e| Error::Read {
            what: format!("inode {ino} (block {blk})"),
            source: e,
        })?;
        let raw = block
            .get(off..off + isz)
            .ok_or_else(|| bad("inode record crosses its block".into()))?;
        Ok(Inode::parse(ino, raw))
    }

    /// The data runs of inode `ino`: `(logical, physical, len, uninit)`.
    pub fn inode_runs(&self, inode: &Inode) -> Vec<(u64, u64, u64, bool)> {
        let mut out = Vec::new();
        walk_blocks(
            self,
            inode,
            WalkOptions {
                data: true,
                max_nodes: None,
            },
            &mut |e| {
                if let MapEvent::Data {
                    logical,
                    physical,
                    len,
                    uninit,
                } = e
                {
                    out.push((logical, physical, len, uninit));
                }
            },
        );
        out
    }
}

/// What `debugfs stat` shows of an inode, for the server's inode view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stat {
    /// The decoded inode.
    pub inode: Inode,
    /// `(stored, computed)` inode checksum when metadata_csum is on.
    pub checksum: Option<(u32, u32)>,
    /// Extent tree / indirect blocks `(block, kind)`.
    pub nodes: Vec<(u64, NodeKind)>,
    /// Data runs `(logical, physical, len, uninit)`, at most [`STAT_MAX_RUNS`].
    pub runs: Vec<(u64, u64, u64, bool)>,
    /// Whether `runs` was cut short.
    pub runs_truncated: bool,
    /// Problems met walking the blocks.
    pub problems: Vec<String>,
    /// In-inode xattr names `(name_index, name)`.
    pub xattrs: Vec<(u8, String)>,
}

/// Runs listed by [`stat`].
pub const STAT_MAX_RUNS: usize = 10_000;

/// Everything about one inode the inode view shows.
pub fn stat(fs: &Filesystem, ino: u32) -> Result<Stat, Error> {
    let inode = fs.inode(ino)?;
    let checksum = fs
        .has_metadata_csum()
        .then(|| inode_csum(fs.csum_seed(), ino, &inode.raw));
    let mut nodes = Vec::new();
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let mut truncated = false;
    if inode.has_valid_blocks() {
        walk_blocks(
            fs,
            &inode,
            WalkOptions {
                data: true,
                max_nodes: None,
            },
            &mut |e| match e {
                MapEvent::Node { block, kind, .. } => nodes.push((block, kind)),
                MapEvent::Data {
                    logical,
                    physical,
                    len,
                    uninit,
                } => {
                    if runs.len() < STAT_MAX_RUNS {
                        runs.push((logical, physical, len, uninit));
                    } else {
                        truncated = true;
                    }
                }
                MapEvent::Problem { message, .. } => problems.push(message),
            },
        );
    }
    let xattrs = crate::xattr::inode_entries(&inode.raw, inode.extra_isize)
        .into_iter()
        .map(|e| (e.name_index, String::from_utf8_lossy(&e.name).into_owned()))
        .collect();
    Ok(Stat {
        inode,
        checksum,
        nodes,
        runs,
        runs_truncated: truncated,
        problems,
        xattrs,
    })
}

/// Findings [`findings`] returns at most (a summary finding says when more
/// were cut).
pub const MAX_FINDINGS: usize = 10_000;

struct Collector {
    out: Vec<Finding>,
    dropped: u64,
}

impl Collector {
    fn push(&mut self, f: Finding) {
        if self.out.len() < MAX_FINDINGS {
            self.out.push(f);
        } else {
            self.dropped += 1;
        }
    }
    fn add(
        &mut self,
        sev: Severity,
        code: &str,
        message: String,
        ino: Option<u32>,
        block: Option<u64>,
    ) {
        self.push(Finding {
            severity: sev,
            code: code.into(),
            message,
            group: None,
            inode: ino,
            block,
        });
    }
}

/// Checksum and structure findings of inodes and what hangs off them:
/// inode checksums, extent tree blocks, directory blocks (leaf tails and
/// htree nodes), xattr blocks. Codes: `inode.checksum`, `extent.checksum`,
/// `extent.header`, `extent.depth`, `extent.pointer`, `extent.loop`,
/// `indirect.pointer`, `indirect.loop`, `block.read`, `dir.checksum`,
/// `dir.missing_checksum`, `dir.dx_checksum`, `dir.entry`, `xattr.magic`,
/// `xattr.checksum`, `group.inode_table_location`, `inode.table_unreadable`.
///
/// Bounded: inode tables are read in 1 MiB chunks, uninitialised groups and
/// unused table tails are skipped, each inode's tree walk is bounded, and
/// at most [`MAX_FINDINGS`] are returned.
pub fn findings(fs: &Filesystem) -> Vec<Finding> {
    let mut c = Collector {
        out: Vec::new(),
        dropped: 0,
    };
    let csum = fs.has_metadata_csum();
    let seed = fs.csum_seed();
    let mut xattr_seen: HashSet<u64> = HashSet::new();
    let mut problems = Vec::new();
    scan_inodes(
        fs,
        &mut |ino, raw| check_inode(fs, ino, raw, csum, seed, &mut xattr_seen, &mut c),
        &mut |f| problems.push(f),
    );
    for f in problems {
        c.push(f);
    }
    if c.dropped > 0 {
        let n = c.dropped;
        c.out.push(Finding {
            severity: Severity::Info,
            code: "findings.truncated".into(),
            message: format!("{n} more inode-level findings were not listed"),
            group: None,
            inode: None,
            block: None,
        });
    }
    c.out
}

fn check_inode(
    fs: &Filesystem,
    ino: u32,
    raw: &[u8],
    csum: bool,
    seed: u32,
    xattr_seen: &mut HashSet<u64>,
    c: &mut Collector,
) {
    let inode = Inode::parse(ino, raw);
    let in_use = inode.links_count != 0;
    if csum && raw.iter().any(|&b| b != 0) {
        let (stored, computed) = inode_csum(seed, ino, raw);
        if stored != computed {
            c.add(
                if in_use {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                "inode.checksum",
                format!("inode {ino} checksum is {stored:#x}, should be {computed:#x}"),
                Some(ino),
                None,
            );
        }
    }
    if !in_use {
        return;
    }
    let bs = Filesystem::block_size(fs) as usize;
    let acl = inode.acl_block(fs.is_64bit());
    if acl != 0 && xattr_seen.insert(acl) {
        let blk = acl;
        match fs.read_block(blk) {
            Err(e) => c.add(
                Severity::Error,
                "xattr.read",
                format!("xattr block {blk} of inode {ino} cannot be read: {e}"),
                Some(ino),
                Some(blk),
            ),
            Ok(b) => {
                let h = crate::xattr::block_header(&b);
                if h.magic != crate::xattr::MAGIC {
                    c.add(
                        Severity::Error,
                        "xattr.magic",
                        format!(
                            "xattr block {blk} of inode {ino} has bad magic {:#x}",
                            h.magic
                        ),
                        Some(ino),
                        Some(blk),
                    );
                } else if csum {
                    if let Some((s, k)) = crate::xattr::block_csum(seed, blk, &b) {
                        if s != k {
                            c.add(
                                Severity::Error,
                                "xattr.checksum",
                                format!("xattr block {blk} checksum is {s:#x}, should be {k:#x}"),
                                Some(ino),
                                Some(blk),
                            );
                        }
                    }
                }
            }
        }
    }
    if !inode.has_valid_blocks() {
        return;
    }
    let iseed = inode_csum_seed(seed, ino, inode.generation);
    let is_dir = inode.is_dir();
    let mut runs = Vec::new();
    let mut ext_nodes = Vec::new();
    walk_blocks(
        fs,
        &inode,
        WalkOptions {
            data: is_dir,
            max_nodes: None,
        },
        &mut |e| match e {
            MapEvent::Node {
                block,
                kind: NodeKind::Extent { .. },
                ..
            } => ext_nodes.push(block),
            MapEvent::Node { .. } => {}
            MapEvent::Data {
                logical,
                physical,
                len,
                uninit,
            } => {
                if !uninit {
                    runs.push((logical, physical, len))
                }
            }
            MapEvent::Problem {
                block,
                code,
                message,
            } => c.add(
                Severity::Error,
                code,
                format!("inode {ino}: {message}"),
                Some(ino),
                block,
            ),
        },
    );
    if csum {
        for blk in ext_nodes {
            let Ok(b) = fs.read_block(blk) else { continue };
            if let Some((s, k)) = crate::extent::verify_block(iseed, &b) {
                if s != k {
                    c.add(
                        Severity::Error,
                        "extent.checksum",
                        format!("extent block {blk} of inode {ino} checksum is {s:#x}, should be {k:#x}"),
                        Some(ino),
                        Some(blk),
                    );
                }
            }
        }
    }
    if !is_dir {
        return;
    }
    check_dir(fs, &inode, &runs, csum, iseed, bs, c);
}

/// Physical block of logical block `l` in `runs`.
pub fn logical_to_physical(runs: &[(u64, u64, u64)], l: u64) -> Option<u64> {
    runs.iter()
        .find(|(lo, _, n)| l >= *lo && l < lo + n)
        .map(|(lo, p, _)| p + (l - lo))
}

fn check_dir(
    fs: &Filesystem,
    inode: &Inode,
    runs: &[(u64, u64, u64)],
    csum: bool,
    iseed: u32,
    bs: usize,
    c: &mut Collector,
) {
    use crate::dir;
    let ino = inode.ino;
    let filetype = fs.has_incompat(crate::superblock::incompat::FILETYPE);
    let mut roles = std::collections::HashMap::new();
    if inode.flags & flags::INDEX != 0 && fs.has_compat(crate::superblock::compat::DIR_INDEX) {
        if let Some(root) = logical_to_physical(runs, 0).and_then(|p| fs.read_block(p).ok()) {
            let mut read =
                |l: u32| logical_to_physical(runs, l as u64).and_then(|p| fs.read_block(p).ok());
            for (l, role) in dir::dx_roles(&root, &mut read) {
                roles.insert(l as u64, role);
            }
        }
    }
    let mut budget = dir::MAX_DIR_BLOCKS;
    let mut buf = vec![0u8; bs];
    for &(lo, p, n) in runs {
        for k in 0..n {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let blk = p + k;
            if fs.read_blocks(blk, 1, &mut buf).is_err() {
                c.add(
                    Severity::Error,
                    "block.read",
                    format!("directory block {blk} of inode {ino} cannot be read"),
                    Some(ino),
                    Some(blk),
                );
                continue;
            }
            let node = match roles.get(&(lo + k)) {
                Some(dir::DirBlockRole::DxRoot) => dir::parse_dx_root(&buf).map(|x| x.1),
                Some(dir::DirBlockRole::DxNode) => dir::parse_dx_node(&buf),
                _ => None,
            };
            if let Some(node) = node {
                if csum {
                    if let Some((s, k2)) = dir::dx_csum(iseed, &buf, &node) {
                        if s != k2 {
                            c.add(
                                Severity::Error,
                                "dir.dx_checksum",
                                format!("htree block {blk} of directory {ino} checksum is {s:#x}, should be {k2:#x}"),
                                Some(ino),
                                Some(blk),
                            );
                        }
                    }
                }
                continue;
            }
            let (_, problem) = dir::parse_entries(&buf, bs, filetype);
            if let Some(p) = problem {
                c.add(
                    Severity::Error,
                    "dir.entry",
                    format!("directory block {blk} of inode {ino}: {}", p.message),
                    Some(ino),
                    Some(blk),
                );
            }
            if csum {
                match dir::leaf_csum(iseed, &buf) {
                    Some((s, k2)) if s != k2 => c.add(
                        Severity::Error,
                        "dir.checksum",
                        format!("directory block {blk} of inode {ino} checksum is {s:#x}, should be {k2:#x}"),
                        Some(ino),
                        Some(blk),
                    ),
                    Some(_) => {}
                    None => c.add(
                        Severity::Warning,
                        "dir.missing_checksum",
                        format!("directory block {blk} of inode {ino} has no checksum tail"),
                        Some(ino),
                        Some(blk),
                    ),
                }
            }
        }
    }
}
