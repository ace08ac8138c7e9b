//! Replacing private content in metadata blocks while keeping the filesystem
//! exactly as consistent — or as broken — as it was.
//!
//! The exporter hands every metadata block to a [`Scrambler`] method chosen
//! by the block's role; each edits the block in place:
//!
//! | block | what changes |
//! | --- | --- |
//! | directory leaf ([`Scrambler::dir_leaf`]) | entry names (kept: `.`, `..`, `lost+found`), slack after names and deleted entries zeroed, leaf checksum moved along |
//! | htree root / node ([`Scrambler::dx_node`]) | unused index slots zeroed |
//! | inode table ([`Scrambler::inode_table`]) | unused inodes zeroed; fast symlink targets, inline data (files, dirs, symlinks), in-inode xattr values and `user.*`/`trusted.*` names; inode checksum moved along |
//! | xattr block ([`Scrambler::xattr_block`]) | values, `user.*`/`trusted.*` names, free space; entry hashes, block hash and checksum |
//! | slow symlink ([`Scrambler::symlink_block`]) | the target, component by component |
//! | journal ([`Scrambler::journal_block`]) | everything but the journal superblock blanked |
//! | EA inode data ([`Scrambler::ea_value_block`]) | blanked |
//!
//! **Privacy.** Replacements come from a keyed PRF ([`ScrambleKey`], fresh per
//! export): without the key nothing links a replacement to its original.
//! Names keep their length; see [`names`] for consistency and uniqueness.
//! Encrypted inodes and directories are left as they are (their names and
//! targets are ciphertext already).
//!
//! **Faithfulness** (`e2fsck -fn` prints the same on the export as on the
//! original): structure fields never change; htree replacements keep their
//! hash's relation to the leaf's index range; checksums are moved by the
//! CRC of the change so a valid one stays valid and a bad one stays bad by
//! the same error ([`csum`]); xattr hashes are recomputed only where they
//! were right; an inode is zeroed only when e2fsck's verdict on it cannot
//! change (see [`inode`]).

mod csum;
mod dirent;
mod inode;
pub mod key;
pub mod names;
mod transform;
mod xattr;

pub use key::ScrambleKey;
pub use names::{HashTarget, LeafRange, NameMap, NameStats, Namer};
pub use transform::ScrambleTransform;

use crate::hash::HashVersion;
use serde::{Deserialize, Serialize};

/// The filesystem facts the scrambler needs, explicit so every function can
/// be tested on bytes alone. [`Params::from_fs`] fills them from an opened
/// filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Block size in bytes.
    pub block_size: usize,
    /// On-disk inode size in bytes.
    pub inode_size: usize,
    /// `s_inodes_count`.
    pub inodes_count: u32,
    /// `s_first_ino`: inodes below it are reserved and never zeroed.
    pub first_ino: u32,
    /// `metadata_csum` is on.
    pub metadata_csum: bool,
    /// The checksum seed (crc32c of the UUID, or `s_checksum_seed`).
    pub csum_seed: u32,
    /// `s_hash_seed` as four little-endian words.
    pub hash_seed: [u32; 4],
    /// `EXT2_FLAGS_UNSIGNED_HASH` is set in `s_flags`.
    pub unsigned_hash: bool,
    /// The `inline_data` feature is on (e2fsck reads inline content only
    /// then).
    pub inline_data: bool,
    /// Inodes the superblock points at (journal, quota, orphan file): never
    /// zeroed whatever they look like.
    pub special_inodes: Vec<u32>,
}

impl Params {
    /// The parameters of an opened filesystem.
    pub fn from_fs(fs: &crate::fs::Filesystem) -> Params {
        let sb = fs.superblock();
        let mut hash_seed = [0u32; 4];
        for (w, c) in hash_seed.iter_mut().zip(sb.hash_seed.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let special_inodes = [
            sb.journal_inum,
            sb.usr_quota_inum,
            sb.grp_quota_inum,
            sb.prj_quota_inum,
            sb.orphan_file_inum,
        ]
        .into_iter()
        .filter(|&i| i != 0)
        .collect();
        Params {
            block_size: fs.block_size() as usize,
            inode_size: fs.inode_size() as usize,
            inodes_count: fs.inodes_count(),
            first_ino: fs.first_ino(),
            metadata_csum: fs.has_metadata_csum(),
            csum_seed: fs.csum_seed(),
            hash_seed,
            unsigned_hash: sb.flags & crate::superblock::FLAGS_UNSIGNED_HASH != 0,
            inline_data: sb.has_incompat(crate::superblock::incompat::INLINE_DATA),
            special_inodes,
        }
    }
}

/// What the scrambler needs to know about a directory for its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirInfo {
    /// The directory's inode number.
    pub ino: u32,
    /// `EXT4_ENCRYPT_FL`: blocks are left as they are.
    pub encrypted: bool,
    /// `EXT4_CASEFOLD_FL`: names hash casefolded.
    pub casefold: bool,
    /// The effective htree hash version ([`HashVersion::from_root`] of the
    /// dx root's version), when the directory is indexed.
    pub hash_version: Option<HashVersion>,
}

impl DirInfo {
    /// The info of directory `ino` from its raw on-disk inode (flags at
    /// 0x20), with the hash version read from its dx root if indexed.
    pub fn from_inode(ino: u32, raw_inode: &[u8], hash_version: Option<HashVersion>) -> DirInfo {
        let flags = raw_inode
            .get(0x20..0x24)
            .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        DirInfo {
            ino,
            encrypted: flags & inode::ENCRYPT_FL != 0,
            casefold: flags & inode::CASEFOLD_FL != 0,
            hash_version,
        }
    }
}

/// Counts of what was scrambled, for the export report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Directory leaf blocks processed.
    pub dir_blocks: u64,
    /// Of those, blocks with a malformed entry: from it on, left as is.
    pub dir_blocks_malformed: u64,
    /// Inline directories processed.
    pub inline_dirs: u64,
    /// Inline regular files blanked.
    pub inline_files: u64,
    /// Symlink targets replaced (fast, slow, inline).
    pub symlinks: u64,
    /// Unused inodes zeroed.
    pub inodes_zeroed: u64,
    /// Encrypted inodes and directory blocks left as they are.
    pub encrypted_skipped: u64,
    /// xattr values blanked.
    pub xattr_values: u64,
    /// `user.*` and `trusted.*` xattr names replaced.
    pub xattr_names: u64,
    /// xattr blocks processed.
    pub xattr_blocks: u64,
    /// Blocks given as xattr blocks without the xattr magic (left as is).
    pub xattr_blocks_unrecognised: u64,
    /// Journal blocks blanked.
    pub journal_blocks_blanked: u64,
    /// EA inode value blocks blanked.
    pub ea_value_blocks_blanked: u64,
    /// The name engine's counts.
    pub names: NameStats,
}

/// The jbd2 magic at the start of journal superblocks and descriptors.
const JBD2_MAGIC: u32 = 0xC03B_3998;

/// Scrambles metadata blocks in place. One per export; blocks may come in
/// any order.
pub struct Scrambler {
    params: Params,
    namer: Namer,
    stats: Stats,
    keep_journal: bool,
}

impl Scrambler {
    /// A scrambler for a filesystem described by `params`, drawing every
    /// replacement from `key`. With `keep_journal`, journal blocks pass
    /// unchanged (`--include-journal`: they hold copies of metadata blocks
    /// as they were, names included).
    pub fn new(params: Params, key: ScrambleKey, keep_journal: bool) -> Scrambler {
        Scrambler {
            params,
            namer: Namer::new(key),
            stats: Stats::default(),
            keep_journal,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// A directory leaf block (linear, or htree leaf with the range e2fsck
    /// derives for it from the index). Blocks that turn out to be index
    /// nodes are treated as such.
    pub fn dir_leaf(&mut self, dir: &DirInfo, range: Option<LeafRange>, block: &mut [u8]) {
        dirent::leaf_block(
            block,
            &self.params,
            dir,
            range,
            &mut self.namer,
            &mut self.stats,
        );
    }

    /// An htree root (`is_root`, logical block 0) or interior node.
    pub fn dx_node(&mut self, dir: &DirInfo, is_root: bool, block: &mut [u8]) {
        if dir.encrypted {
            return;
        }
        dirent::dx_block(block, &self.params, is_root);
    }

    /// A block of an inode table whose first inode is `first_ino`.
    pub fn inode_table(&mut self, first_ino: u32, block: &mut [u8]) {
        inode::inode_block(
            block,
            first_ino,
            &self.params,
            &mut self.namer,
            &mut self.stats,
        );
    }

    /// An xattr block at `blocknr`.
    pub fn xattr_block(&mut self, blocknr: u64, block: &mut [u8]) {
        xattr::xattr_block(
            block,
            blocknr,
            self.params.metadata_csum,
            &mut self.namer,
            &mut self.stats,
        );
    }

    /// The data block of a slow symlink `ino` (left alone when the inode is
    /// encrypted).
    pub fn symlink_block(&mut self, ino: u32, encrypted: bool, block: &mut [u8]) {
        if encrypted {
            self.stats.encrypted_skipped += 1;
            return;
        }
        inode::symlink_target(&mut [block], ino, &mut self.namer);
        self.stats.symlinks += 1;
    }

    /// A block of the journal: blanked unless it is the journal superblock
    /// (kept: e2fsck checks it) or the journal is kept.
    pub fn journal_block(&mut self, block: &mut [u8]) {
        if self.keep_journal {
            return;
        }
        let be32 = |o: usize| {
            block
                .get(o..o + 4)
                .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        };
        // Journal superblock v1 (3) or v2 (4).
        if be32(0) == JBD2_MAGIC && matches!(be32(4), 3 | 4) {
            return;
        }
        block.fill(0);
        self.stats.journal_blocks_blanked += 1;
    }

    /// A data block of an EA inode (an xattr value stored in an inode).
    pub fn ea_value_block(&mut self, block: &mut [u8]) {
        block.fill(0);
        self.stats.ea_value_blocks_blanked += 1;
    }

    /// Counts so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.names = self.namer.stats.clone();
        s
    }

    /// Ends the export: the customer's map and the counts.
    pub fn finish(self) -> (NameMap, Stats) {
        let mut s = self.stats;
        s.names = self.namer.stats.clone();
        (self.namer.name_map(), s)
    }
}
