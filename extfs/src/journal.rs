//! The jbd2 journal superblock (`journal_superblock_t`), big-endian.
//!
//! Layout: Linux `Documentation/filesystems/ext4/journal.rst`, e2fsprogs
//! `lib/ext2fs/kernel-jbd.h`. For an internal journal it is the first block
//! of the journal inode; for an external journal device (`journal_dev`) it is
//! the block after the ext superblock.
//!
//! Finding the journal inode's first block needs only a tiny block map
//! (extent tree or direct pointer), kept private here so the summary does
//! not depend on the full inode reader.

use crate::bytes::{le16, le32};
use crate::checksum::crc32c;
use crate::fs::Filesystem;
use crate::superblock::uuid_string;

/// `h_magic` of every jbd2 block.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;
/// `h_blocktype` of a version 1 superblock.
pub const SUPERBLOCK_V1: u32 = 3;
/// `h_blocktype` of a version 2 superblock.
pub const SUPERBLOCK_V2: u32 = 4;
/// Journal superblock size in bytes.
pub const JOURNAL_SB_SIZE: usize = 1024;
/// `s_checksum_type` for crc32c.
pub const JBD2_CRC32C_CHKSUM: u8 = 4;
/// Fast-commit blocks assumed when `s_num_fc_blks` is 0.
pub const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;
/// Most users (filesystems) a shared journal lists.
pub const USERS_MAX: usize = 48;

/// `s_feature_compat`: commit block checksums (v1).
pub const FEATURE_COMPAT_CHECKSUM: u32 = 0x1;
/// `s_feature_incompat`: revoke records.
pub const FEATURE_INCOMPAT_REVOKE: u32 = 0x1;
/// `s_feature_incompat`: 64-bit block numbers.
pub const FEATURE_INCOMPAT_64BIT: u32 = 0x2;
/// `s_feature_incompat`: asynchronous commits.
pub const FEATURE_INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
/// `s_feature_incompat`: checksum v2.
pub const FEATURE_INCOMPAT_CSUM_V2: u32 = 0x8;
/// `s_feature_incompat`: checksum v3.
pub const FEATURE_INCOMPAT_CSUM_V3: u32 = 0x10;
/// `s_feature_incompat`: fast commits.
pub const FEATURE_INCOMPAT_FAST_COMMIT: u32 = 0x20;

const COMPAT_NAMES: &[(u32, &str)] = &[(FEATURE_COMPAT_CHECKSUM, "journal_checksum")];
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (FEATURE_INCOMPAT_REVOKE, "journal_incompat_revoke"),
    (FEATURE_INCOMPAT_64BIT, "journal_64bit"),
    (FEATURE_INCOMPAT_ASYNC_COMMIT, "journal_async_commit"),
    (FEATURE_INCOMPAT_CSUM_V2, "journal_checksum_v2"),
    (FEATURE_INCOMPAT_CSUM_V3, "journal_checksum_v3"),
];

fn be32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// The journal superblock, fields as stored (offsets in comments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSuperblock {
    /// 0x00 `h_magic`.
    pub magic: u32,
    /// 0x04 `h_blocktype` (3 = v1, 4 = v2).
    pub blocktype: u32,
    /// 0x08 `h_sequence`.
    pub header_sequence: u32,
    /// 0x0C `s_blocksize`.
    pub blocksize: u32,
    /// 0x10 `s_maxlen`: blocks in the journal.
    pub maxlen: u32,
    /// 0x14 `s_first`: first log block.
    pub first: u32,
    /// 0x18 `s_sequence`: first commit ID expected.
    pub sequence: u32,
    /// 0x1C `s_start`: block of the log start; 0 means clean.
    pub start: u32,
    /// 0x20 `s_errno` set by `journal_abort`.
    pub errno: i32,
    /// 0x24 `s_feature_compat`.
    pub feature_compat: u32,
    /// 0x28 `s_feature_incompat`.
    pub feature_incompat: u32,
    /// 0x2C `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// 0x30 `s_uuid`.
    pub uuid: [u8; 16],
    /// 0x40 `s_nr_users`.
    pub nr_users: u32,
    /// 0x44 `s_dynsuper`.
    pub dynsuper: u32,
    /// 0x48 `s_max_transaction`.
    pub max_transaction: u32,
    /// 0x4C `s_max_trans_data`.
    pub max_trans_data: u32,
    /// 0x50 `s_checksum_type`.
    pub checksum_type: u8,
    /// 0x54 `s_num_fc_blks`.
    pub num_fc_blks: u32,
    /// 0xFC `s_checksum`: crc32c(~0) of the 1024 bytes with this field zeroed.
    pub checksum: u32,
    /// 0x100 `s_users`: 48 UUIDs of the filesystems sharing the journal.
    pub users: Vec<[u8; 16]>,
    /// The 1024 bytes as read.
    pub raw: Box<[u8; JOURNAL_SB_SIZE]>,
}

impl JournalSuperblock {
    /// Decodes the first 1024 bytes of a journal (short input reads as 0).
    pub fn parse(b: &[u8]) -> JournalSuperblock {
        let mut raw = Box::new([0u8; JOURNAL_SB_SIZE]);
        let n = b.len().min(JOURNAL_SB_SIZE);
        raw[..n].copy_from_slice(&b[..n]);
        let b: &[u8] = &raw[..];
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x30..0x40]);
        let users = (0..USERS_MAX)
            .map(|i| {
                let mut u = [0u8; 16];
                u.copy_from_slice(&b[0x100 + 16 * i..0x110 + 16 * i]);
                u
            })
            .collect();
        JournalSuperblock {
            magic: be32(b, 0x00),
            blocktype: be32(b, 0x04),
            header_sequence: be32(b, 0x08),
            blocksize: be32(b, 0x0C),
            maxlen: be32(b, 0x10),
            first: be32(b, 0x14),
            sequence: be32(b, 0x18),
            start: be32(b, 0x1C),
            errno: be32(b, 0x20) as i32,
            feature_compat: be32(b, 0x24),
            feature_incompat: be32(b, 0x28),
            feature_ro_compat: be32(b, 0x2C),
            uuid,
            nr_users: be32(b, 0x40),
            dynsuper: be32(b, 0x44),
            max_transaction: be32(b, 0x48),
            max_trans_data: be32(b, 0x4C),
            checksum_type: b[0x50],
            num_fc_blks: be32(b, 0x54),
            checksum: be32(b, 0xFC),
            users,
            raw,
        }
    }

    /// Whether the magic is jbd2's.
    pub fn magic_ok(&self) -> bool {
        self.magic == JBD2_MAGIC
    }
    /// Whether a v2/v3 checksum protects this superblock.
    pub fn has_csum_v2v3(&self) -> bool {
        self.feature_incompat & (FEATURE_INCOMPAT_CSUM_V2 | FEATURE_INCOMPAT_CSUM_V3) != 0
    }
    /// The checksum `s_checksum` should hold (`jbd2_superblock_csum`).
    pub fn computed_checksum(&self) -> u32 {
        let mut copy = *self.raw;
        copy[0xFC..0x100].fill(0);
        crc32c(!0, &copy)
    }
    /// Feature words as `dumpe2fs` prints them (compat, incompat, ro_compat).
    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (word, names, letter) in [
            (self.feature_compat, COMPAT_NAMES, 'C'),
            (self.feature_incompat, INCOMPAT_NAMES, 'I'),
            (self.feature_ro_compat, &[][..], 'R'),
        ] {
            for bit in 0..32 {
                let m = 1u32 << bit;
                if word & m == 0 {
                    continue;
                }
                match names.iter().find(|(b, _)| *b == m) {
                    Some((_, n)) => out.push((*n).to_string()),
                    None => out.push(format!("FEATURE_{letter}{bit}")),
                }
            }
        }
        out
    }
    /// Fast-commit blocks as `dumpe2fs` counts them when the filesystem has
    /// `fast_commit` (`s_num_fc_blks`, default 256), else 0.
    pub fn fast_commit_blocks(&self, fs_fast_commit: bool) -> u32 {
        if !fs_fast_commit {
            0
        } else if self.num_fc_blks == 0 {
            DEFAULT_FAST_COMMIT_BLOCKS
        } else {
            self.num_fc_blks
        }
    }
    /// Users listed, as UUID strings, the way `dumpe2fs` lists them (only
    /// when there is more than one user or the first is non-zero).
    pub fn user_strings(&self) -> Vec<String> {
        let n = (self.nr_users as usize).min(USERS_MAX);
        if self.nr_users <= 1 && self.users.first().is_none_or(|u| u.iter().all(|&b| b == 0)) {
            return Vec::new();
        }
        self.users[..n]
            .iter()
            .map(|u| uuid_string(u).unwrap_or_else(|| "<none>".into()))
            .collect()
    }
}

/// Why a journal superblock could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalError {
    /// The journal inode does not map its first block.
    NoFirstBlock(String),
    /// Reading failed.
    Read(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::NoFirstBlock(s) | JournalError::Read(s) => f.write_str(s),
        }
    }
}

/// Reads the journal superblock of `fs`: for an external journal device the
/// block after the superblock, else the first block of `s_journal_inum`.
/// Returns the superblock and the block it was read from.
pub fn read_superblock(fs: &Filesystem) -> Result<(JournalSuperblock, u64), JournalError> {
    let sb = fs.superblock();
    let blk = if sb.has_incompat(crate::superblock::incompat::JOURNAL_DEV) {
        u64::from(sb.first_data_block) + 1
    } else {
        journal_first_block(fs, sb.journal_inum)?
    };
    let mut buf = vec![0u8; JOURNAL_SB_SIZE.max(fs.block_size() as usize)];
    let bs = fs.block_size() as usize;
    fs.read_blocks(blk, 1, &mut buf[..bs])
        .map_err(|e| JournalError::Read(format!("journal superblock at block {blk}: {e}")))?;
    Ok((JournalSuperblock::parse(&buf[..JOURNAL_SB_SIZE]), blk))
}

/// Inode flag: the inode uses extents.
const EXTENTS_FL: u32 = 0x0008_0000;
/// Extent header magic.
const EXT_MAGIC: u16 = 0xF30A;
/// Deepest extent tree the kernel allows.
const MAX_EXTENT_DEPTH: u16 = 5;

/// Physical block of logical block 0 of inode `ino`: direct pointer 0 for
/// block-mapped inodes, or a walk down the extent tree.
fn journal_first_block(fs: &Filesystem, ino: u32) -> Result<u64, JournalError> {
    let (blk, off) = fs
        .inode_location(ino)
        .ok_or_else(|| JournalError::NoFirstBlock(format!("journal inode {ino} does not exist")))?;
    let block = fs
        .read_block(blk)
        .map_err(|e| JournalError::Read(format!("journal inode {ino} at block {blk}: {e}")))?;
    let isz = fs.inode_size() as usize;
    let raw = block
        .get(off..off + isz.min(160))
        .ok_or_else(|| JournalError::Read(format!("journal inode {ino} lies outside its block")))?;
    let flags = le32(raw, 0x20);
    let i_block = &raw[0x28..0x28 + 60];
    if flags & EXTENTS_FL == 0 {
        let b = u64::from(le32(i_block, 0));
        return if b == 0 {
            Err(JournalError::NoFirstBlock(format!(
                "journal inode {ino} has no first block"
            )))
        } else {
            Ok(b)
        };
    }
    let mut node: Vec<u8> = i_block.to_vec();
    let mut expected_depth: Option<u16> = None;
    for _ in 0..=MAX_EXTENT_DEPTH {
        let magic = le16(&node, 0);
        let entries = le16(&node, 2) as usize;
        let depth = le16(&node, 6);
        if magic != EXT_MAGIC
            || depth > MAX_EXTENT_DEPTH
            || expected_depth.is_some_and(|d| d != depth)
        {
            return Err(JournalError::NoFirstBlock(format!(
                "journal inode {ino} has a bad extent header"
            )));
        }
        let cap = (node.len() - 12) / 12;
        let entries = entries.min(cap);
        if depth == 0 {
            for i in 0..entries {
                let e = 12 + 12 * i;
                let lblk = le32(&node, e);
                let mut len = u32::from(le16(&node, e + 4));
                if len > 32768 {
                    len -= 32768; // uninitialised extent
                }
                let start = u64::from(le32(&node, e + 8)) | (u64::from(le16(&node, e + 6)) << 32);
                if lblk == 0 && len > 0 {
                    return Ok(start);
                }
            }
            return Err(JournalError::NoFirstBlock(format!(
                "journal inode {ino} does not map block 0"
            )));
        }
        // Index node: the first entry covering logical block 0.
        if entries == 0 || le32(&node, 12) != 0 {
            return Err(JournalError::NoFirstBlock(format!(
                "journal inode {ino} does not map block 0"
            )));
        }
        let child = u64::from(le32(&node, 16)) | (u64::from(le16(&node, 20)) << 32);
        node = fs
            .read_block(child)
            .map_err(|e| JournalError::Read(format!("journal extent block {child}: {e}")))?;
        expected_depth = Some(depth - 1);
    }
    Err(JournalError::NoFirstBlock(format!(
        "journal inode {ino} has a too deep extent tree"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_big_endian_fields_and_checksum() {
        let mut b = [0u8; 1024];
        b[0..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&4u32.to_be_bytes());
        b[0x0C..0x10].copy_from_slice(&4096u32.to_be_bytes());
        b[0x28..0x2C].copy_from_slice(
            &(FEATURE_INCOMPAT_REVOKE | FEATURE_INCOMPAT_CSUM_V3 | 0x40).to_be_bytes(),
        );
        let j = JournalSuperblock::parse(&b);
        assert!(j.magic_ok());
        assert_eq!(j.blocksize, 4096);
        assert_eq!(
            j.feature_names(),
            [
                "journal_incompat_revoke",
                "journal_checksum_v3",
                "FEATURE_I6"
            ]
        );
        let c = j.computed_checksum();
        b[0xFC..0x100].copy_from_slice(&c.to_be_bytes());
        let j2 = JournalSuperblock::parse(&b);
        assert_eq!(j2.checksum, j2.computed_checksum());
    }
}
