//! An opened filesystem: the superblock in use, the group descriptors and
//! block reads, plus the geometry every other module computes with.
//!
//! Opening reads the primary superblock at byte 1024; when it is unusable
//! (bad magic, impossible geometry, unreadable) it searches the backups the
//! way `e2fsck -b` would be pointed at them: groups 1, 3, 5, 7, 9, 25, 27, …
//! for each block size from 1 KiB to 64 KiB, assuming mke2fs's default of
//! `8 × block size` blocks per group.

use crate::checksum::crc32c;
use crate::finding::{Finding, Severity};
use crate::group::{desc_checksum, GroupDesc};
use crate::source::Source;
use crate::superblock::{
    compat, incompat, ro_compat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a filesystem could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or device could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// What was opened.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Reading the source failed.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The image container (QCOW2) is unreadable.
    #[error("{0}")]
    Image(String),
    /// Neither the primary superblock nor any backup describes a usable
    /// ext2/3/4 filesystem.
    #[error("no usable ext2/3/4 superblock (primary: {primary}; no usable backup found)")]
    NoSuperblock {
        /// Why the primary was rejected.
        primary: String,
    },
    /// The filesystem is larger than this tool will hold in memory.
    #[error("{0}")]
    TooLarge(String),
}

/// Descriptor tables larger than this are refused rather than allocated
/// (2^21 groups of 64 bytes: 256 TiB at 4 KiB blocks).
pub const MAX_DESC_TABLE_BYTES: u64 = 128 << 20;

/// Where the superblock in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperblockLocation {
    /// Group whose copy is in use (0 for the primary).
    pub group: u32,
    /// Byte offset of the copy on the device.
    pub byte_offset: u64,
    /// The block number of the copy, in units of the filesystem's block
    /// size (what `e2fsck -b` takes; 1 or 0 for the primary).
    pub block: u64,
}

impl SuperblockLocation {
    /// Whether a backup is in use because the primary was unusable.
    pub fn is_backup(&self) -> bool {
        self.group != 0 || self.byte_offset != SUPERBLOCK_OFFSET
    }
}

/// An ext2/3/4 filesystem opened for reading metadata.
pub struct Filesystem {
    src: Arc<dyn Source>,
    sb: Superblock,
    location: SuperblockLocation,
    primary_problem: Option<String>,
    block_size: u64,
    group_count: u32,
    desc_size: usize,
    desc_blocks: u64,
    groups: Vec<GroupDesc>,
    gdt_raw: Vec<u8>,
    csum_seed: u32,
    open_findings: Vec<Finding>,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("location", &self.location)
            .field("block_size", &self.block_size)
            .field("group_count", &self.group_count)
            .finish_non_exhaustive()
    }
}

/// Groups holding backups under plain `sparse_super`: 1 and powers of 3, 5, 7
/// (the candidates tried when the primary superblock is unusable).
fn backup_candidates(limit: u64) -> Vec<u64> {
    let mut v = vec![1u64];
    for base in [3u64, 5, 7] {
        let mut p = base;
        while p < limit {
            v.push(p);
            p = p.saturating_mul(base);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

impl Filesystem {
    /// Opens the filesystem on `src`: the primary superblock, or a backup
    /// when the primary is unusable (see [`Filesystem::superblock_location`]),
    /// then the group descriptors. Damage short of "no usable superblock"
    /// is tolerated and reported by the analyses.
    pub fn open(src: Arc<dyn Source>) -> Result<Filesystem, Error> {
        let primary = read_superblock(&*src, SUPERBLOCK_OFFSET);
        let primary_problem = match &primary {
            Ok(sb) => sb.geometry_problem(),
            Err(e) => Some(format!("unreadable: {e}")),
        };
        let (sb, location) = match (primary, &primary_problem) {
            (Ok(sb), None) => {
                let block = SUPERBLOCK_OFFSET / sb.block_size().unwrap_or(1024);
                (
                    sb,
                    SuperblockLocation {
                        group: 0,
                        byte_offset: SUPERBLOCK_OFFSET,
                        block,
                    },
                )
            }
            (_, problem) => find_backup(&*src).ok_or_else(|| Error::NoSuperblock {
                primary: problem.clone().unwrap_or_default(),
            })?,
        };
        Self::with_superblock(src, sb, location, primary_problem)
    }

    /// Opens using the superblock copy at `block` (in units of `block_size`
    /// bytes), like `e2fsck -b block -B block_size`.
    pub fn open_backup(
        src: Arc<dyn Source>,
        block: u64,
        block_size: u64,
    ) -> Result<Filesystem, Error> {
        let off = block
            .checked_mul(block_size)
            .ok_or_else(|| Error::NoSuperblock {
                primary: "superblock position overflows".into(),
            })?;
        let sb = read_superblock(&*src, off).map_err(|e| Error::Read {
            what: format!("the superblock at block {block}"),
            source: e,
        })?;
        if let Some(p) = sb.geometry_problem() {
            return Err(Error::NoSuperblock { primary: p });
        }
        let group = if sb.rev_level >= 1 {
            u32::from(sb.block_group_nr)
        } else {
            0
        };
        let location = SuperblockLocation {
            group,
            byte_offset: off,
            block,
        };
        Self::with_superblock(src, sb, location, None)
    }

    fn with_superblock(
        src: Arc<dyn Source>,
        sb: Superblock,
        location: SuperblockLocation,
        primary_problem: Option<String>,
    ) -> Result<Filesystem, Error> {
        // geometry_problem() passed, so these are sane.
        let block_size = sb.block_size().unwrap_or(1024);
        let desc_size = usize::from(sb.desc_size()).max(32);
        let desc_per_block = block_size / desc_size as u64;
        let journal_dev = sb.has_incompat(incompat::JOURNAL_DEV);
        let group_count = if journal_dev {
            0
        } else {
            (sb.blocks_count() - u64::from(sb.first_data_block))
                .div_ceil(u64::from(sb.blocks_per_group))
        };
        let group_count = u32::try_from(group_count).map_err(|_| {
            Error::TooLarge(format!(
                "{group_count} block groups is more than ext4 allows"
            ))
        })?;
        let desc_blocks = u64::from(group_count).div_ceil(desc_per_block);
        let table_bytes = u64::from(group_count) * desc_size as u64;
        if table_bytes > MAX_DESC_TABLE_BYTES {
            return Err(Error::TooLarge(format!(
                "the filesystem claims {group_count} block groups ({table_bytes} bytes of descriptors), more than this tool reads"
            )));
        }
        let csum_seed = if sb.has_incompat(incompat::CSUM_SEED) {
            sb.checksum_seed
        } else {
            crc32c(!0, &sb.uuid)
        };
        let mut fs = Filesystem {
            src,
            sb,
            location,
            primary_problem,
            block_size,
            group_count,
            desc_size,
            desc_blocks,
            groups: Vec::new(),
            gdt_raw: Vec::new(),
            csum_seed,
            open_findings: Vec::new(),
        };
        fs.read_descriptors();
        Ok(fs)
    }

    /// Reads every descriptor block: the contiguous table after the
    /// superblock in one read, then (meta_bg) one block per meta group.
    /// Unreadable blocks become zeros plus a finding.
    fn read_descriptors(&mut self) {
        let bs = self.block_size;
        let mut raw = vec![0u8; (self.desc_blocks * bs) as usize];
        let group_block = if self.location.is_backup() {
            self.location.byte_offset / bs
        } else {
            u64::from(self.sb.first_data_block)
        };
        // Block 0 of a 1 KiB bigalloc filesystem is outside the fs proper.
        let zero_adjust = u64::from(group_block == 0 && bs == 1024);
        let meta_bg = self.sb.has_incompat(incompat::META_BG);
        let first_meta_bg = if meta_bg {
            u64::from(self.sb.first_meta_bg).min(self.desc_blocks)
        } else {
            self.desc_blocks
        };
        if first_meta_bg > 0 {
            let len = (first_meta_bg * bs) as usize;
            let start = group_block + zero_adjust + 1;
            if let Err(e) = self.read_blocks(start, first_meta_bg, &mut raw[..len]) {
                // Fall back block by block so one bad block spoils one block.
                for i in 0..first_meta_bg {
                    let s = (i * bs) as usize;
                    if let Err(e2) = self.read_blocks(start + i, 1, &mut raw[s..s + bs as usize]) {
                        self.note_unreadable_desc(start + i, &e2);
                    }
                }
                let _ = e;
            }
        }
        for i in first_meta_bg..self.desc_blocks {
            let blk = self.descriptor_block_loc(group_block, i);
            let s = (i * bs) as usize;
            if let Err(e) = self.read_blocks(blk, 1, &mut raw[s..s + bs as usize]) {
                self.note_unreadable_desc(blk, &e);
            }
        }
        let wide = self.sb.is_64bit();
        let n = self.group_count as usize;
        let desc_per_block = (bs as usize) / self.desc_size;
        let mut gdt = Vec::with_capacity(n * self.desc_size);
        let mut groups = Vec::with_capacity(n);
        for g in 0..n {
            // Descriptors fill whole blocks; a desc_size that does not divide
            // the block size never occurs (both are powers of two).
            let blk = g / desc_per_block;
            let off = blk * bs as usize + (g % desc_per_block) * self.desc_size;
            let d = &raw[off..off + self.desc_size];
            groups.push(GroupDesc::parse(d, wide));
            gdt.extend_from_slice(d);
        }
        self.groups = groups;
        self.gdt_raw = gdt;
    }

    fn note_unreadable_desc(&mut self, blk: u64, e: &io::Error) {
        self.open_findings.push(Finding {
            severity: Severity::Error,
            code: "group.desc_unreadable".into(),
            message: format!(
                "group descriptor block {blk} cannot be read ({e}); its groups read as zeros"
            ),
            group: None,
            inode: None,
            block: Some(blk),
        });
    }

    /// Block holding descriptor block `i` (`ext2fs_descriptor_block_loc2`):
    /// after the superblock for the classic table, else in the first (or,
    /// when reading backups, second) group of its meta group.
    pub fn descriptor_block_loc(&self, group_block: u64, i: u64) -> u64 {
        let adjust = u64::from(i == 0 && self.block_size == 1024 && self.cluster_ratio() > 1);
        if !self.sb.has_incompat(incompat::META_BG) || i < u64::from(self.sb.first_meta_bg) {
            return group_block + i + 1 + adjust;
        }
        let bg = self.desc_per_block() * i;
        let mut has_super = u64::from(self.bg_has_super(bg));
        let mut ret = self.group_first_block_u64(bg);
        if group_block != u64::from(self.sb.first_data_block)
            && ret + has_super + u64::from(self.sb.blocks_per_group) < self.blocks_count()
        {
            ret += u64::from(self.sb.blocks_per_group);
            has_super = u64::from(self.bg_has_super(bg + 1));
        }
        ret + has_super + adjust
    }

    /// The block source.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.src
    }
    /// The superblock in use.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    /// Where the superblock in use was found.
    pub fn superblock_location(&self) -> SuperblockLocation {
        self.location
    }
    /// Why the primary superblock was rejected, when a backup is in use.
    pub fn primary_superblock_problem(&self) -> Option<&str> {
        self.primary_problem.as_deref()
    }
    /// Problems met while opening (unreadable descriptor blocks).
    pub fn open_findings(&self) -> &[Finding] {
        &self.open_findings
    }
    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Number of block groups (0 for an external journal device).
    pub fn group_count(&self) -> u32 {
        self.group_count
    }
    /// Descriptor of group `g`.
    pub fn group(&self, g: u32) -> Option<&GroupDesc> {
        self.groups.get(g as usize)
    }
    /// All descriptors, by group number.
    pub fn groups(&self) -> &[GroupDesc] {
        &self.groups
    }
    /// The on-disk bytes of group `g`'s descriptor (`desc_size` bytes).
    pub fn group_desc_bytes(&self, g: u32) -> Option<&[u8]> {
        let s = g as usize * self.desc_size;
        self.gdt_raw.get(s..s + self.desc_size)
    }
    /// Bytes per group descriptor (`EXT2_DESC_SIZE`).
    pub fn desc_size(&self) -> usize {
        self.desc_size
    }
    /// Descriptors per block.
    pub fn desc_per_block(&self) -> u64 {
        self.block_size / self.desc_size as u64
    }
    /// Blocks of the descriptor table (`fs->desc_blocks`).
    pub fn desc_blocks(&self) -> u64 {
        self.desc_blocks
    }

    /// Reads `count` blocks from block `first` into `buf` (exactly
    /// `count × block_size` bytes) with one positioned read.
    pub fn read_blocks(&self, first: u64, count: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = count.checked_mul(self.block_size);
        if len != Some(buf.len() as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer size does not match the block count",
            ));
        }
        let off = first.checked_mul(self.block_size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block {first} is beyond any device"),
            )
        })?;
        self.src.read_exact_at(buf, off)
    }
    /// Reads one block.
    pub fn read_block(&self, blk: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.block_size as usize];
        self.read_blocks(blk, 1, &mut v)?;
        Ok(v)
    }

    /// Seed of all `metadata_csum` checksums: `s_checksum_seed` with
    /// `metadata_csum_seed`, else crc32c(~0, uuid).
    pub fn csum_seed(&self) -> u32 {
        self.csum_seed
    }
    /// Whether metadata carries crc32c checksums.
    pub fn has_metadata_csum(&self) -> bool {
        self.sb.has_ro_compat(ro_compat::METADATA_CSUM)
    }
    /// Whether descriptors carry checksums and uninit flags count
    /// (`ext2fs_has_group_desc_csum`: metadata_csum or gdt_csum).
    pub fn has_group_desc_csum(&self) -> bool {
        self.has_metadata_csum() || self.sb.has_ro_compat(ro_compat::GDT_CSUM)
    }
    /// Whether the old CRC16 descriptor checksum (`uninit_bg`) is on without
    /// `metadata_csum`.
    pub fn has_gdt_csum(&self) -> bool {
        !self.has_metadata_csum() && self.sb.has_ro_compat(ro_compat::GDT_CSUM)
    }
    /// The checksum group `g`'s descriptor should have.
    pub fn group_desc_checksum(&self, g: u32) -> Option<u16> {
        let raw = self.group_desc_bytes(g)?;
        Some(desc_checksum(
            raw,
            g,
            self.has_metadata_csum(),
            self.csum_seed,
            &self.sb.uuid,
        ))
    }

    /// Inode size in bytes.
    pub fn inode_size(&self) -> u64 {
        u64::from(self.sb.inode_size())
    }
    /// Inodes per group.
    pub fn inodes_per_group(&self) -> u32 {
        self.sb.inodes_per_group
    }
    /// Inodes in the filesystem as the superblock says.
    pub fn inodes_count(&self) -> u32 {
        self.sb.inodes_count
    }
    /// First non-reserved inode.
    pub fn first_ino(&self) -> u32 {
        self.sb.first_ino()
    }
    /// Blocks of each group's inode table.
    pub fn inode_blocks_per_group(&self) -> u64 {
        (u64::from(self.sb.inodes_per_group) * self.inode_size()).div_ceil(self.block_size)
    }
    /// Blocks in the filesystem.
    pub fn blocks_count(&self) -> u64 {
        self.sb.blocks_count()
    }
    /// First data block (1 with 1 KiB blocks, else 0).
    pub fn first_data_block(&self) -> u64 {
        u64::from(self.sb.first_data_block)
    }
    /// Blocks per group.
    pub fn blocks_per_group(&self) -> u64 {
        u64::from(self.sb.blocks_per_group)
    }
    /// Clusters per group (= blocks per group without bigalloc).
    pub fn clusters_per_group(&self) -> u64 {
        u64::from(self.sb.clusters_per_group)
    }
    /// log2 of blocks per cluster.
    pub fn cluster_ratio_bits(&self) -> u32 {
        self.sb
            .log_cluster_size
            .saturating_sub(self.sb.log_block_size)
    }
    /// Blocks per cluster (1 without bigalloc).
    pub fn cluster_ratio(&self) -> u64 {
        1 << self.cluster_ratio_bits()
    }
    /// Block to cluster number (`EXT2FS_B2C`).
    pub fn block_to_cluster(&self, blk: u64) -> u64 {
        blk >> self.cluster_ratio_bits()
    }
    /// Whether `feature` of the compat word is set.
    pub fn has_compat(&self, feature: u32) -> bool {
        self.sb.has_compat(feature)
    }
    /// Whether `feature` of the incompat word is set.
    pub fn has_incompat(&self, feature: u32) -> bool {
        self.sb.has_incompat(feature)
    }
    /// Whether `feature` of the ro_compat word is set.
    pub fn has_ro_compat(&self, feature: u32) -> bool {
        self.sb.has_ro_compat(feature)
    }
    /// `64bit`.
    pub fn is_64bit(&self) -> bool {
        self.sb.is_64bit()
    }
    /// `extents`.
    pub fn has_extents(&self) -> bool {
        self.has_incompat(incompat::EXTENTS)
    }
    /// `flex_bg`: bitmaps and tables may live in other groups.
    pub fn has_flex_bg(&self) -> bool {
        self.has_incompat(incompat::FLEX_BG)
    }
    /// `has_journal`.
    pub fn has_journal(&self) -> bool {
        self.has_compat(compat::HAS_JOURNAL)
    }

    /// First block of group `g`.
    pub fn group_first_block(&self, g: u32) -> u64 {
        self.group_first_block_u64(u64::from(g))
    }
    fn group_first_block_u64(&self, g: u64) -> u64 {
        self.first_data_block() + g * self.blocks_per_group()
    }
    /// Last block of group `g` (the last group may be short).
    pub fn group_last_block(&self, g: u32) -> u64 {
        if g + 1 >= self.group_count {
            self.blocks_count().saturating_sub(1)
        } else {
            self.group_first_block(g) + self.blocks_per_group() - 1
        }
    }
    /// Blocks in group `g`.
    pub fn group_blocks(&self, g: u32) -> u64 {
        (self.group_last_block(g) + 1).saturating_sub(self.group_first_block(g))
    }
    /// The group a block belongs to, if inside the filesystem.
    pub fn group_of_block(&self, blk: u64) -> Option<u32> {
        if blk < self.first_data_block() || blk >= self.blocks_count() {
            return None;
        }
        u32::try_from((blk - self.first_data_block()) / self.blocks_per_group()).ok()
    }
    /// The group an inode (numbered from 1) belongs to, and its index there.
    pub fn group_of_inode(&self, ino: u32) -> Option<(u32, u32)> {
        if ino == 0 || ino > self.inodes_count() {
            return None;
        }
        let ipg = self.inodes_per_group();
        let g = (ino - 1) / ipg;
        (g < self.group_count).then_some((g, (ino - 1) % ipg))
    }
    /// Block and byte offset in it of inode `ino` in its group's inode table.
    pub fn inode_location(&self, ino: u32) -> Option<(u64, usize)> {
        let (g, idx) = self.group_of_inode(ino)?;
        let table = self.group(g)?.inode_table();
        let byte = u64::from(idx) * self.inode_size();
        let blk = table.checked_add(byte / self.block_size)?;
        Some((blk, (byte % self.block_size) as usize))
    }

    /// Whether group `g` holds a superblock backup (`ext2fs_bg_has_super`).
    pub fn group_has_super(&self, g: u32) -> bool {
        self.bg_has_super(u64::from(g))
    }
    fn bg_has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return g == u64::from(self.sb.backup_bgs[0]) || g == u64::from(self.sb.backup_bgs[1]);
        }
        if g <= 1 || !self.has_ro_compat(ro_compat::SPARSE_SUPER) {
            return true;
        }
        if g & 1 == 0 {
            return false;
        }
        is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    /// Superblock and descriptor placement of group `g`
    /// (`ext2fs_super_and_bgd_loc2`).
    pub fn group_layout(&self, g: u32) -> GroupLayout {
        let mut group_block = self.group_first_block(g);
        if group_block == 0 && self.block_size == 1024 {
            group_block = 1;
        }
        let meta_bg = self.has_incompat(incompat::META_BG);
        let has_super = self.group_has_super(g);
        let mut layout = GroupLayout {
            superblock: has_super.then_some(group_block),
            old_desc: None,
            old_desc_blocks: 0,
            reserved_gdt: None,
            new_desc: None,
        };
        let per = self.desc_per_block();
        let mbg = u64::from(g) / per;
        if !meta_bg || mbg < u64::from(self.sb.first_meta_bg) {
            if has_super {
                let descs = if meta_bg {
                    u64::from(self.sb.first_meta_bg)
                } else {
                    self.desc_blocks
                };
                layout.old_desc = Some(group_block + 1);
                layout.old_desc_blocks = descs;
                if self.sb.reserved_gdt_blocks > 0 {
                    let first = group_block + 1 + descs;
                    layout.reserved_gdt = Some((first, u64::from(self.sb.reserved_gdt_blocks)));
                }
            }
        } else {
            let r = u64::from(g) % per;
            if r == 0 || r == 1 || r == per - 1 {
                layout.new_desc = Some(group_block + u64::from(has_super));
            }
        }
        layout
    }
}

/// Where a group's superblock copy and descriptors are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    /// Block of the superblock copy (primary for group 0).
    pub superblock: Option<u64>,
    /// First block of the classic descriptor table copy.
    pub old_desc: Option<u64>,
    /// Blocks of that copy (desc blocks, or `s_first_meta_bg` with meta_bg).
    pub old_desc_blocks: u64,
    /// Reserved GDT blocks: first block and count (after the table copy).
    pub reserved_gdt: Option<(u64, u64)>,
    /// The single meta_bg descriptor block this group holds.
    pub new_desc: Option<u64>,
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n % base == 0 {
        n /= base;
    }
    n == 1
}

fn read_superblock(src: &dyn Source, off: u64) -> io::Result<Superblock> {
    let mut buf = [0u8; SUPERBLOCK_SIZE];
    src.read_exact_at(&mut buf, off)?;
    Ok(Superblock::parse(&buf))
}

/// Searches backup superblocks as `e2fsck -b` candidates: for each block size,
/// groups 1, 3, 5, 7, 9, 25, 27, … with `8 × block size` blocks per group.
fn find_backup(src: &dyn Source) -> Option<(Superblock, SuperblockLocation)> {
    let size = src.size();
    for log in 0..=6u32 {
        let bs = 1024u64 << log;
        let bpg = bs * 8;
        let first = u64::from(bs == 1024);
        let groups = size / (bpg * bs) + 1;
        for g in backup_candidates(groups) {
            let block = g * bpg + first;
            let Some(off) = block.checked_mul(bs) else {
                break;
            };
            if off + SUPERBLOCK_SIZE as u64 > size {
                break;
            }
            let Ok(sb) = read_superblock(src, off) else {
                continue;
            };
            if sb.geometry_problem().is_some() || sb.block_size() != Some(bs) {
                continue;
            }
            if sb.rev_level >= 1 && u64::from(sb.block_group_nr) != g && sb.block_group_nr != 0 {
                continue;
            }
            let group = u32::try_from(g).unwrap_or(u32::MAX);
            return Some((
                sb,
                SuperblockLocation {
                    group,
                    byte_offset: off,
                    block,
                },
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_candidate_groups() {
        assert_eq!(backup_candidates(100), [1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let src: Arc<dyn Source> = Arc::new(crate::source::MemSource(vec![0xA5; 300_000]));
        let e = Filesystem::open(src).unwrap_err();
        assert!(
            e.to_string().contains("no usable ext2/3/4 superblock"),
            "{e}"
        );
        let src: Arc<dyn Source> = Arc::new(crate::source::MemSource(vec![0; 10]));
        assert!(Filesystem::open(src).is_err());
    }
}
