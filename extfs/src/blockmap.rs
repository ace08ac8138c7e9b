//! Which blocks of a filesystem are metadata: what an export includes.
//!
//! The selection follows e2fsprogs' `e2image -r` (misc/e2image.c,
//! `mark_table_blocks` and `write_raw_image_file`), so that an export holds
//! at least every block e2image writes:
//! - the primary superblock (block `s_first_data_block`) and the primary
//!   descriptor blocks (meta_bg aware);
//! - per group: the inode table unless `INODE_UNINIT`; with the `gdt_csum`
//!   feature (not metadata_csum) only up to the last block holding used
//!   inodes (`bg_itable_unused`), otherwise all of it; the block bitmap
//!   unless `BLOCK_UNINIT`; the inode bitmap unless `INODE_UNINIT`;
//! - for every scanned inode (see [`crate::inode::group_scan_count`]) with
//!   a link count: its xattr block; for directories, slow symlinks and the
//!   journal inode every block (data and tree); for other files only the
//!   extent tree / indirect blocks (which covers the resize inode's reserved
//!   GDT blocks).
//!
//! On top of e2image: superblock backups (one block each, what `e2fsck -b`
//! needs), the descriptor copy of the superblock in use when it is a backup,
//! the MMP block, and the data of quota files, the orphan file and EA inodes
//! (e2fsck reads all three, so an image without them would show problems
//! the filesystem does not have). Never a regular file's data block.
//!
//! Memory: a sorted list of ranges, not a per-block bitmap, so a 3 TiB
//! filesystem costs what its metadata costs.

use crate::dir::{self, DirBlockRole};
use crate::finding::{Finding, Severity};
use crate::fs::Filesystem;
use crate::group::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use crate::inode::{self, Inode, MapEvent, NodeKind, WalkOptions};
use crate::superblock::{incompat, ro_compat};
use serde::Serialize;
use std::collections::HashSet;

/// What a metadata block is, and who owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockKind {
    /// The superblock copy of a group (0 = primary).
    Superblock {
        /// Group.
        group: u32,
    },
    /// Group descriptor blocks (the copy of this group).
    GroupDescriptors {
        /// Group.
        group: u32,
    },
    /// Reserved GDT blocks of group 0 (also the resize inode's indirect
    /// blocks).
    ReservedGdt {
        /// Group.
        group: u32,
    },
    /// A group's block bitmap.
    BlockBitmap {
        /// Group.
        group: u32,
    },
    /// A group's inode bitmap.
    InodeBitmap {
        /// Group.
        group: u32,
    },
    /// Inode table blocks holding inodes a scan visits.
    InodeTable {
        /// Group.
        group: u32,
    },
    /// Inode table blocks past `bg_itable_unused` that e2image still
    /// includes (metadata_csum filesystems): no live inodes, should be zero.
    InodeTableUnused {
        /// Group.
        group: u32,
    },
    /// A directory block of entries.
    DirLeaf {
        /// Directory.
        ino: u32,
        /// Inclusive htree hash range of the leaf, when indexed.
        hash_range: Option<(u32, u32)>,
    },
    /// The htree root (logical block 0 of an indexed directory).
    DxRoot {
        /// Directory.
        ino: u32,
    },
    /// An interior htree node.
    DxNode {
        /// Directory.
        ino: u32,
    },
    /// An extent tree block.
    ExtentNode {
        /// Owner.
        ino: u32,
    },
    /// A single, double or triple indirect block.
    IndirectBlock {
        /// Owner.
        ino: u32,
    },
    /// An xattr block (first inode seen referencing it; may be shared).
    XattrBlock {
        /// Owner.
        ino: u32,
    },
    /// The target of a slow symlink.
    SymlinkBlock {
        /// Symlink.
        ino: u32,
    },
    /// The journal superblock (logical block 0 of the journal inode).
    JournalSuperblock {
        /// Journal inode.
        ino: u32,
    },
    /// Journal blocks after the superblock (old metadata copies: private).
    Journal {
        /// Journal inode.
        ino: u32,
    },
    /// Data of a quota file.
    QuotaFile {
        /// Quota inode.
        ino: u32,
    },
    /// Data of the orphan file.
    OrphanFile {
        /// Orphan file inode.
        ino: u32,
    },
    /// Data of an EA inode (a large xattr value: private).
    EaInodeData {
        /// EA inode.
        ino: u32,
    },
    /// The multi-mount protection block.
    Mmp,
}

impl BlockKind {
    /// Short name for counts and reports.
    pub fn name(&self) -> &'static str {
        match self {
            BlockKind::Superblock { .. } => "superblock",
            BlockKind::GroupDescriptors { .. } => "group_descriptors",
            BlockKind::ReservedGdt { .. } => "reserved_gdt",
            BlockKind::BlockBitmap { .. } => "block_bitmap",
            BlockKind::InodeBitmap { .. } => "inode_bitmap",
            BlockKind::InodeTable { .. } => "inode_table",
            BlockKind::InodeTableUnused { .. } => "inode_table_unused",
            BlockKind::DirLeaf { .. } => "dir_leaf",
            BlockKind::DxRoot { .. } => "dx_root",
            BlockKind::DxNode { .. } => "dx_node",
            BlockKind::ExtentNode { .. } => "extent_node",
            BlockKind::IndirectBlock { .. } => "indirect_block",
            BlockKind::XattrBlock { .. } => "xattr_block",
            BlockKind::SymlinkBlock { .. } => "symlink_block",
            BlockKind::JournalSuperblock { .. } => "journal_superblock",
            BlockKind::Journal { .. } => "journal",
            BlockKind::QuotaFile { .. } => "quota_file",
            BlockKind::OrphanFile { .. } => "orphan_file",
            BlockKind::EaInodeData { .. } => "ea_inode_data",
            BlockKind::Mmp => "mmp",
        }
    }

    /// Filesystem-wide structures win over inode-owned claims when a
    /// (corrupted) filesystem claims one block twice.
    fn priority(&self) -> u8 {
        match self {
            BlockKind::Superblock { .. } | BlockKind::GroupDescriptors { .. } => 0,
            BlockKind::ReservedGdt { .. } => 1,
            BlockKind::BlockBitmap { .. } | BlockKind::InodeBitmap { .. } => 2,
            BlockKind::InodeTable { .. } | BlockKind::InodeTableUnused { .. } => 3,
            BlockKind::Mmp => 4,
            BlockKind::JournalSuperblock { .. } => 5,
            BlockKind::DxRoot { .. } | BlockKind::DxNode { .. } => 6,
            BlockKind::ExtentNode { .. } | BlockKind::IndirectBlock { .. } => 7,
            BlockKind::XattrBlock { .. } => 8,
            _ => 9,
        }
    }
}

/// `len` blocks from `start`, all of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    /// First block.
    pub start: u64,
    /// Blocks.
    pub len: u64,
    /// What they are.
    pub kind: BlockKind,
}

impl Range {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The metadata blocks of a filesystem: sorted, non-overlapping ranges.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockMap {
    /// Sorted by `start`, non-overlapping, adjacent equal kinds merged.
    pub ranges: Vec<Range>,
    /// Problems met while building the map (bad trees, pointers outside the
    /// filesystem, blocks claimed twice...).
    pub findings: Vec<Finding>,
}

/// Findings kept by the block map at most.
const MAX_MAP_FINDINGS: usize = 10_000;

struct Builder<'a> {
    fs: &'a Filesystem,
    ranges: Vec<Range>,
    findings: Vec<Finding>,
    dropped: u64,
    /// Tree and indirect blocks the whole build may still read: a bound on
    /// the work hostile trees (many inodes sharing huge bogus trees) cause.
    node_budget: u64,
}

impl Builder<'_> {
    fn add(&mut self, start: u64, len: u64, kind: BlockKind) {
        let total = self.fs.blocks_count();
        if len == 0 || start >= total {
            return;
        }
        let len = len.min(total - start);
        if let Some(last) = self.ranges.last_mut() {
            if last.kind == kind && last.end() == start {
                last.len += len;
                return;
            }
        }
        self.ranges.push(Range { start, len, kind });
    }

    fn finding(&mut self, f: Finding) {
        if self.findings.len() < MAX_MAP_FINDINGS {
            self.findings.push(f);
        } else {
            self.dropped += 1;
        }
    }

    fn problem(&mut self, code: &str, message: String, ino: Option<u32>, block: Option<u64>) {
        self.finding(Finding {
            severity: Severity::Error,
            code: code.into(),
            message,
            group: None,
            inode: ino,
            block,
        });
    }
}

/// Builds the block map of `fs` (reads inode tables, directory htree roots
/// and tree blocks; not file data).
pub fn build(fs: &Filesystem) -> BlockMap {
    let mut b = Builder {
        fs,
        ranges: Vec::new(),
        findings: Vec::new(),
        dropped: 0,
        node_budget: fs.blocks_count().saturating_mul(2).max(1 << 22),
    };
    static_metadata(&mut b);
    inode_metadata(&mut b);
    let Builder {
        mut ranges,
        mut findings,
        dropped,
        ..
    } = b;
    let conflicts = normalize(&mut ranges);
    // e2image marks a cluster bitmap under bigalloc: a marked block brings
    // its whole cluster along.
    let ratio = fs.cluster_ratio();
    if ratio > 1 {
        let total = fs.blocks_count();
        for r in &mut ranges {
            let s = r.start - r.start % ratio;
            let e = r.end().div_ceil(ratio).saturating_mul(ratio).min(total);
            r.start = s;
            r.len = e - s;
        }
        normalize(&mut ranges);
    }
    if conflicts > 0 {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "blockmap.multiply_claimed".into(),
            message: format!("{conflicts} blocks are claimed by more than one structure"),
            group: None,
            inode: None,
            block: None,
        });
    }
    if dropped > 0 {
        findings.push(Finding {
            severity: Severity::Info,
            code: "findings.truncated".into(),
            message: format!("{dropped} more block map findings were not listed"),
            group: None,
            inode: None,
            block: None,
        });
    }
    BlockMap { ranges, findings }
}

fn static_metadata(b: &mut Builder) {
    let fs = b.fs;
    let first = fs.first_data_block();
    b.add(first, 1, BlockKind::Superblock { group: 0 });
    for j in 0..fs.desc_blocks() {
        let blk = fs.descriptor_block_loc(first, j);
        b.add(blk, 1, BlockKind::GroupDescriptors { group: 0 });
    }
    // Backup superblocks: one block each (what e2fsck -b falls back to).
    for g in 1..fs.group_count() {
        if fs.group_has_super(g) {
            b.add(
                fs.group_first_block(g),
                1,
                BlockKind::Superblock { group: g },
            );
        }
    }
    // When a backup is in use, its descriptor copy is what the image needs.
    let loc = fs.superblock_location();
    if loc.is_backup() {
        let layout = fs.group_layout(loc.group);
        if let Some(d) = layout.old_desc {
            b.add(
                d,
                layout.old_desc_blocks,
                BlockKind::GroupDescriptors { group: loc.group },
            );
        }
        if let Some(d) = layout.new_desc {
            b.add(d, 1, BlockKind::GroupDescriptors { group: loc.group });
        }
    }
    let layout0 = fs.group_layout(0);
    if let Some((s, n)) = layout0.reserved_gdt {
        b.add(s, n, BlockKind::ReservedGdt { group: 0 });
    }
    let ipb = (fs.block_size() / fs.inode_size().max(1)).max(1);
    let itb = fs.inode_blocks_per_group();
    let gdt_csum_only = fs.has_ro_compat(ro_compat::GDT_CSUM);
    let scan_tail = fs.has_group_desc_csum();
    for g in 0..fs.group_count() {
        let Some(gd) = fs.group(g) else { continue };
        let table = gd.inode_table();
        if !gd.has_flag(BG_INODE_UNINIT) && table != 0 {
            let mut end = itb;
            if gdt_csum_only {
                end = end.saturating_sub(gd.itable_unused() as u64 / ipb);
            }
            // Blocks holding inodes a scan visits; the rest (kept because
            // e2image keeps them) is marked unused.
            let used = if scan_tail {
                let n = inode::group_scan_count(fs, g) as u64;
                (n * fs.inode_size()).div_ceil(fs.block_size()).min(end)
            } else {
                end
            };
            b.add(table, used, BlockKind::InodeTable { group: g });
            b.add(
                table.saturating_add(used),
                end - used,
                BlockKind::InodeTableUnused { group: g },
            );
        }
        if !gd.has_flag(BG_BLOCK_UNINIT) && gd.block_bitmap() != 0 {
            b.add(gd.block_bitmap(), 1, BlockKind::BlockBitmap { group: g });
        }
        if !gd.has_flag(BG_INODE_UNINIT) && gd.inode_bitmap() != 0 {
            b.add(gd.inode_bitmap(), 1, BlockKind::InodeBitmap { group: g });
        }
    }
    if fs.has_incompat(incompat::MMP) {
        let m = fs.superblock().mmp_block;
        if m != 0 {
            b.add(m, 1, BlockKind::Mmp);
        }
    }
}

/// How the blocks of one inode are treated.
#[derive(Clone, Copy)]
enum Treat {
    /// Tree blocks only.
    TreeOnly,
    /// All blocks, data labelled with this kind maker.
    All(fn(u32) -> BlockKind),
    /// A directory.
    Dir,
    /// The journal: block 0 is its superblock.
    Journal,
}

fn inode_metadata(b: &mut Builder) {
    let fs = b.fs;
    let sb = fs.superblock();
    let journal = sb.journal_inum;
    let quota: HashSet<u32> = [sb.usr_quota_inum, sb.grp_quota_inum, sb.prj_quota_inum]
        .into_iter()
        .filter(|&i| i != 0)
        .collect();
    let orphan = sb.orphan_file_inum;
    let mut xattr_seen: HashSet<u64> = HashSet::new();
    let mut table_problems = Vec::new();
    inode::scan_inodes(
        fs,
        &mut |ino, raw| {
            let inode = Inode::parse(ino, raw);
            if inode.links_count == 0 {
                return;
            }
            let acl = inode.acl_block(fs.is_64bit());
            if acl != 0 && xattr_seen.insert(acl) {
                b.add_checked(acl, BlockKind::XattrBlock { ino }, ino);
            }
            if !inode.has_valid_blocks() {
                return;
            }
            let treat = if inode.is_dir() {
                Treat::Dir
            } else if ino == journal && journal != 0 {
                Treat::Journal
            } else if inode.is_symlink() {
                Treat::All(|ino| BlockKind::SymlinkBlock { ino })
            } else if quota.contains(&ino) {
                Treat::All(|ino| BlockKind::QuotaFile { ino })
            } else if ino == orphan && orphan != 0 {
                Treat::All(|ino| BlockKind::OrphanFile { ino })
            } else if inode.flags & inode::flags::EA_INODE != 0 {
                Treat::All(|ino| BlockKind::EaInodeData { ino })
            } else {
                let p = inode.block_ptrs();
                if !inode.has_extents() && p[12] == 0 && p[13] == 0 && p[14] == 0 {
                    return;
                }
                Treat::TreeOnly
            };
            if matches!(treat, Treat::TreeOnly) && inode.has_extents() {
                // Depth-0 trees live in the inode: nothing to add.
                if let Ok(h) = crate::extent::parse_header(&inode.i_block) {
                    if h.depth == 0 {
                        return;
                    }
                }
            }
            walk_inode(b, &inode, treat);
        },
        &mut |f| table_problems.push(f),
    );
    for f in table_problems {
        b.finding(f);
    }
}

impl Builder<'_> {
    fn add_checked(&mut self, blk: u64, kind: BlockKind, ino: u32) {
        if blk >= self.fs.blocks_count() || blk < self.fs.first_data_block() {
            self.problem(
                "xattr.pointer",
                format!("inode {ino}'s xattr block {blk} lies outside the filesystem"),
                Some(ino),
                Some(blk),
            );
            return;
        }
        self.add(blk, 1, kind);
    }
}

fn walk_inode(b: &mut Builder, inode: &Inode, treat: Treat) {
    let fs = b.fs;
    let ino = inode.ino;
    let mut data_runs: Vec<(u64, u64, u64)> = Vec::new();
    let mut events: Vec<MapEvent> = Vec::new();
    if b.node_budget == 0 {
        return;
    }
    let budget = usize::try_from(b.node_budget.min(1 << 20)).unwrap_or(1 << 20);
    inode::walk_blocks(
        fs,
        inode,
        WalkOptions {
            data: !matches!(treat, Treat::TreeOnly),
            max_nodes: Some(budget),
        },
        &mut |e| match e {
            MapEvent::Data {
                logical,
                physical,
                len,
                ..
            } => data_runs.push((logical, physical, len)),
            other => events.push(other),
        },
    );
    let nodes = events
        .iter()
        .filter(|e| matches!(e, MapEvent::Node { .. }))
        .count() as u64;
    b.node_budget = b.node_budget.saturating_sub(nodes);
    if b.node_budget == 0 {
        b.problem(
            "blockmap.budget",
            "too many extent tree and indirect blocks: the rest of the inodes' trees were not followed".into(),
            Some(ino),
            None,
        );
    }
    for e in events {
        match e {
            MapEvent::Node { block, kind, .. } => {
                let k = match kind {
                    NodeKind::Extent { .. } => BlockKind::ExtentNode { ino },
                    _ => BlockKind::IndirectBlock { ino },
                };
                b.add(block, 1, k);
            }
            MapEvent::Problem {
                block,
                code,
                message,
            } => b.problem(code, format!("inode {ino}: {message}"), Some(ino), block),
            MapEvent::Data { .. } => {}
        }
    }
    match treat {
        Treat::TreeOnly => {}
        Treat::All(make) => {
            for (_, p, n) in data_runs {
                b.add(p, n, make(ino));
            }
        }
        Treat::Journal => {
            for (l, p, n) in data_runs {
                if l == 0 {
                    b.add(p, 1, BlockKind::JournalSuperblock { ino });
                    b.add(p + 1, n - 1, BlockKind::Journal { ino });
                } else {
                    b.add(p, n, BlockKind::Journal { ino });
                }
            }
        }
        Treat::Dir => dir_blocks(b, inode, &data_runs),
    }
}

fn dir_blocks(b: &mut Builder, inode: &Inode, runs: &[(u64, u64, u64)]) {
    let fs = b.fs;
    let ino = inode.ino;
    let indexed = inode.flags & inode::flags::INDEX != 0;
    let mut roles: Vec<(u32, DirBlockRole)> = Vec::new();
    if indexed {
        let read = |l: u64| inode::logical_to_physical(runs, l).and_then(|p| fs.read_block(p).ok());
        if let Some(root) = read(0) {
            if dir::parse_dx_root(&root).is_some() {
                roles = dir::dx_roles(&root, &mut |l| read(l as u64));
            }
        }
    }
    let mut ri = 0usize;
    for &(l, p, n) in runs {
        for k in 0..n {
            let logical = l + k;
            // roles is sorted by logical block.
            while ri < roles.len() && (roles[ri].0 as u64) < logical {
                ri += 1;
            }
            let role = roles
                .get(ri)
                .filter(|(rl, _)| *rl as u64 == logical)
                .map(|(_, r)| r.clone());
            let kind = match role {
                Some(DirBlockRole::DxRoot) => BlockKind::DxRoot { ino },
                Some(DirBlockRole::DxNode) => BlockKind::DxNode { ino },
                Some(DirBlockRole::Leaf { hash_range }) => BlockKind::DirLeaf { ino, hash_range },
                None => BlockKind::DirLeaf {
                    ino,
                    hash_range: None,
                },
            };
            b.add(p + k, 1, kind);
        }
    }
}

/// Sorts, resolves overlaps (higher priority kind keeps the block) and
/// merges adjacent equal ranges. Returns the number of blocks claimed twice.
fn normalize(ranges: &mut Vec<Range>) -> u64 {
    ranges.sort_by_key(|r| (r.start, r.kind.priority()));
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    let mut conflicts = 0u64;
    for r in ranges.drain(..) {
        let mut r = r;
        // Cut the part already covered by earlier ranges. Since inputs are
        // sorted by start, only the tail of `out` can overlap.
        if let Some(last) = out.last() {
            if r.start < last.end() {
                let covered = (last.end() - r.start).min(r.len);
                // The resize inode's indirect blocks are the reserved GDT:
                // one structure seen twice, not a conflict.
                let resize_gdt = matches!(
                    (&last.kind, &r.kind),
                    (
                        BlockKind::ReservedGdt { .. },
                        BlockKind::IndirectBlock { ino: 7 }
                    ) | (
                        BlockKind::IndirectBlock { ino: 7 },
                        BlockKind::ReservedGdt { .. }
                    )
                );
                if !resize_gdt {
                    conflicts += covered;
                }
                r.start += covered;
                r.len -= covered;
                if r.len == 0 {
                    continue;
                }
            }
        }
        if let Some(last) = out.last_mut() {
            if last.kind == r.kind && last.end() == r.start {
                last.len += r.len;
                continue;
            }
        }
        out.push(r);
    }
    *ranges = out;
    conflicts
}

impl BlockMap {
    /// Total blocks in the map.
    pub fn total_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The kind of block `blk`, if it is in the map (binary search).
    pub fn kind_of(&self, blk: u64) -> Option<&BlockKind> {
        let i = self.ranges.partition_point(|r| r.end() <= blk);
        self.ranges
            .get(i)
            .filter(|r| r.start <= blk)
            .map(|r| &r.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_cuts_overlaps_and_merges() {
        let mut v = vec![
            Range {
                start: 10,
                len: 5,
                kind: BlockKind::Journal { ino: 8 },
            },
            Range {
                start: 0,
                len: 12,
                kind: BlockKind::InodeTable { group: 0 },
            },
            Range {
                start: 15,
                len: 2,
                kind: BlockKind::Journal { ino: 8 },
            },
        ];
        let c = normalize(&mut v);
        assert_eq!(c, 2);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].start, v[0].len), (0, 12));
        assert_eq!((v[1].start, v[1].len), (12, 5));
    }
}
