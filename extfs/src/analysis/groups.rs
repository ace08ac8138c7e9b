//! Group stats: what `dumpe2fs` prints per block group, plus the bitmap
//! checks that need the same reads.
//!
//! Bitmaps are read the way `ext2fs_read_bitmaps` does (a `BLOCK_UNINIT` /
//! `INODE_UNINIT` group with a valid descriptor checksum is not read; its
//! bitmap is synthesised), but never held for the whole filesystem: the
//! bitmap blocks to read are sorted by position and fetched in large
//! coalesced reads (a flex_bg's bitmaps are adjacent), each processed and
//! dropped before the next read.

use super::push;
use crate::finding::{Finding, Severity};
use crate::fs::Filesystem;
use crate::group::{bitmap_checksum, GroupDesc, BG_BLOCK_UNINIT, BG_INODE_UNINIT};
use crate::superblock::incompat;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One group as `dumpe2fs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Group number.
    pub group: u32,
    /// First block of the group.
    pub first_block: u64,
    /// Last block of the group.
    pub last_block: u64,
    /// Stored descriptor checksum ("csum 0x…"; with gdt_csum or metadata_csum).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum: Option<u16>,
    /// Checksum the descriptor should have (dumpe2fs prints it as
    /// "EXPECTED" when it differs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_expected: Option<u16>,
    /// `INODE_UNINIT`, `BLOCK_UNINIT`, `ITABLE_ZEROED` (only shown by
    /// dumpe2fs when descriptors have checksums).
    pub flags: Vec<String>,
    /// Block of the primary (group 0) or backup superblock in this group.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub superblock: Option<u64>,
    /// First and last block of the descriptor table copy in this group.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_descriptors: Option<[u64; 2]>,
    /// First and last reserved GDT block in this group.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reserved_gdt_blocks: Option<[u64; 2]>,
    /// The single meta_bg descriptor block this group holds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_descriptor: Option<u64>,
    /// Block bitmap location.
    pub block_bitmap: u64,
    /// Stored block bitmap checksum (metadata_csum).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub block_bitmap_checksum: Option<u32>,
    /// Checksum of the block bitmap as read (when it was read).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub block_bitmap_checksum_expected: Option<u32>,
    /// Inode bitmap location.
    pub inode_bitmap: u64,
    /// Stored inode bitmap checksum (metadata_csum).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode_bitmap_checksum: Option<u32>,
    /// Checksum of the inode bitmap as read (when it was read).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inode_bitmap_checksum_expected: Option<u32>,
    /// First block of the inode table.
    pub inode_table: u64,
    /// Last block of the inode table.
    pub inode_table_last: u64,
    /// Free blocks per the descriptor (clusters with bigalloc).
    pub free_blocks: u32,
    /// Free inodes per the descriptor.
    pub free_inodes: u32,
    /// Directories per the descriptor.
    pub directories: u32,
    /// Never-used inodes at the end of the table (`bg_itable_unused`).
    pub unused_inodes: u32,
    /// Clear bits of the block bitmap as dumpe2fs lists them under "Free
    /// blocks:" (clusters; uninitialised bitmaps synthesised as libext2fs
    /// does). Absent when the bitmap could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub free_blocks_in_bitmap: Option<u64>,
    /// Clear bits of the inode bitmap ("Free inodes:").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub free_inodes_in_bitmap: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Block,
    Inode,
}

/// Largest single read, in bytes.
const MAX_RUN_BYTES: u64 = 4 << 20;
/// Blocks between two wanted bitmap blocks that are read through rather
/// than split into two reads.
const MAX_GAP_BLOCKS: u64 = 16;
/// A metadata range is split over at most this many groups when marking
/// uninitialised groups (only hostile geometry needs more).
const MAX_MARK_SPAN_GROUPS: u64 = 64;

/// Group stats and the group-level findings of `fs`, in one pass.
pub fn scan(fs: &Filesystem) -> (Vec<GroupStats>, Vec<Finding>) {
    let n = fs.group_count();
    let mut findings = Vec::new();
    let csum_flag = fs.has_group_desc_csum();
    let metadata_csum = fs.has_metadata_csum();
    let blocks_count = fs.blocks_count();
    let ibpg = fs.inode_blocks_per_group();
    let bs = fs.block_size();

    let mut stats = Vec::with_capacity(n as usize);
    let mut desc_ok = Vec::with_capacity(n as usize);
    for g in 0..n {
        let Some(d) = fs.group(g) else { break };
        let expected = fs.group_desc_checksum(g);
        let ok = !csum_flag || expected == Some(d.checksum);
        desc_ok.push(ok);
        stats.push(base_stats(
            fs,
            g,
            d,
            csum_flag,
            metadata_csum,
            expected,
            ibpg,
        ));
        if csum_flag && !ok {
            push(
                &mut findings,
                Finding {
                    severity: Severity::Error,
                    code: "group.checksum".into(),
                    message: format!(
                        "group {g} descriptor checksum is 0x{:04x}, expected 0x{:04x} ({})",
                        d.checksum,
                        expected.unwrap_or(0),
                        if metadata_csum { "crc32c" } else { "crc16" }
                    ),
                    group: Some(g),
                    inode: None,
                    block: None,
                },
            );
        }
        check_descriptor(fs, g, d, &mut findings);
    }

    // Which bitmaps to read (as ext2fs_read_bitmaps decides).
    let mut wanted: Vec<(u64, u32, Kind)> = Vec::with_capacity(2 * n as usize);
    for (g, d) in fs.groups().iter().enumerate() {
        let g = g as u32;
        let ok = desc_ok.get(g as usize).copied().unwrap_or(true);
        let bb = d.block_bitmap();
        if !(csum_flag && d.has_flag(BG_BLOCK_UNINIT) && ok) && bb != 0 && bb < blocks_count {
            wanted.push((bb, g, Kind::Block));
        }
        let ib = d.inode_bitmap();
        if !(csum_flag && d.has_flag(BG_INODE_UNINIT) && ok) && ib != 0 && ib < blocks_count {
            wanted.push((ib, g, Kind::Inode));
        }
    }
    wanted.sort_unstable();

    let marks = uninit_marks(fs);
    let mut read_block_bitmap = vec![false; n as usize];
    let mut read_inode_bitmap = vec![false; n as usize];

    let max_run_blocks = (MAX_RUN_BYTES / bs).max(1);
    let mut i = 0;
    let mut buf = Vec::new();
    while i < wanted.len() {
        let start = wanted[i].0;
        let mut j = i + 1;
        let mut end = start; // last block needed
        while j < wanted.len() {
            let b = wanted[j].0;
            if b > end + MAX_GAP_BLOCKS || b - start >= max_run_blocks {
                break;
            }
            end = end.max(b);
            j += 1;
        }
        let count = end - start + 1;
        buf.resize((count * bs) as usize, 0);
        let whole = fs.read_blocks(start, count, &mut buf).is_ok();
        for &(blk, g, kind) in &wanted[i..j] {
            let off = ((blk - start) * bs) as usize;
            let block: Vec<u8>;
            let data: &[u8] = if whole {
                &buf[off..off + bs as usize]
            } else {
                match fs.read_block(blk) {
                    Ok(b) => {
                        block = b;
                        &block
                    }
                    Err(e) => {
                        push(
                            &mut findings,
                            Finding {
                                severity: Severity::Error,
                                code: match kind {
                                    Kind::Block => "group.block_bitmap_unreadable".into(),
                                    Kind::Inode => "group.inode_bitmap_unreadable".into(),
                                },
                                message: format!(
                                    "group {g} bitmap at block {blk} cannot be read: {e}"
                                ),
                                group: Some(g),
                                inode: None,
                                block: Some(blk),
                            },
                        );
                        continue;
                    }
                }
            };
            let Some(st) = stats.get_mut(g as usize) else {
                continue;
            };
            let Some(d) = fs.group(g) else { continue };
            match kind {
                Kind::Block => {
                    read_block_bitmap[g as usize] = true;
                    block_bitmap(fs, g, d, data, marks.get(&g), st, &mut findings);
                }
                Kind::Inode => {
                    read_inode_bitmap[g as usize] = true;
                    inode_bitmap(fs, g, d, data, st, &mut findings);
                }
            }
        }
        i = j;
    }

    // Bitmaps not read: synthesised as libext2fs does (zeros plus marks).
    let zeros = vec![0u8; bs as usize];
    for g in 0..n {
        let Some(d) = fs.group(g) else { break };
        let Some(st) = stats.get_mut(g as usize) else {
            break;
        };
        let bb = d.block_bitmap();
        let skipped_b = !read_block_bitmap[g as usize]
            && (bb == 0 || bb >= blocks_count || (csum_flag && d.has_flag(BG_BLOCK_UNINIT)));
        if skipped_b {
            let m = marks.get(&g);
            let (free, _) = count_block_bitmap(fs, g, &zeros, m);
            st.free_blocks_in_bitmap = Some(free);
            if bb == 0 || bb >= blocks_count {
                push(
                    &mut findings,
                    Finding {
                        severity: Severity::Error,
                        code: "group.block_bitmap_location".into(),
                        message: format!(
                            "group {g} block bitmap at {bb} lies outside the filesystem"
                        ),
                        group: Some(g),
                        inode: None,
                        block: Some(bb),
                    },
                );
            } else {
                let (_, valid_free) = count_block_bitmap(fs, g, &zeros, m);
                free_block_mismatch(g, d, valid_free, &mut findings);
            }
        }
        let ib = d.inode_bitmap();
        let skipped_i = !read_inode_bitmap[g as usize]
            && (ib == 0 || ib >= blocks_count || (csum_flag && d.has_flag(BG_INODE_UNINIT)));
        if skipped_i {
            st.free_inodes_in_bitmap = Some(u64::from(fs.inodes_per_group()));
            if ib == 0 || ib >= blocks_count {
                push(
                    &mut findings,
                    Finding {
                        severity: Severity::Error,
                        code: "group.inode_bitmap_location".into(),
                        message: format!(
                            "group {g} inode bitmap at {ib} lies outside the filesystem"
                        ),
                        group: Some(g),
                        inode: None,
                        block: Some(ib),
                    },
                );
            } else {
                free_inode_mismatch(g, d, u64::from(fs.inodes_per_group()), &mut findings);
            }
        }
    }
    overlap_check(fs, &mut findings);
    (stats, findings)
}

fn base_stats(
    fs: &Filesystem,
    g: u32,
    d: &GroupDesc,
    csum_flag: bool,
    metadata_csum: bool,
    expected: Option<u16>,
    ibpg: u64,
) -> GroupStats {
    let layout = fs.group_layout(g);
    GroupStats {
        group: g,
        first_block: fs.group_first_block(g),
        last_block: fs.group_last_block(g),
        checksum: csum_flag.then_some(d.checksum),
        checksum_expected: if csum_flag { expected } else { None },
        flags: if csum_flag {
            d.flag_names().into_iter().map(String::from).collect()
        } else {
            Vec::new()
        },
        superblock: if g == 0 || layout.superblock.is_some_and(|b| b != 0) {
            layout.superblock
        } else {
            None
        },
        group_descriptors: layout
            .old_desc
            .map(|b| [b, (b + layout.old_desc_blocks).saturating_sub(1)]),
        reserved_gdt_blocks: layout.reserved_gdt.map(|(b, c)| [b, b + c - 1]),
        group_descriptor: if layout.old_desc.is_none() {
            layout.new_desc
        } else {
            None
        },
        block_bitmap: d.block_bitmap(),
        block_bitmap_checksum: metadata_csum.then(|| d.block_bitmap_csum()),
        block_bitmap_checksum_expected: None,
        inode_bitmap: d.inode_bitmap(),
        inode_bitmap_checksum: metadata_csum.then(|| d.inode_bitmap_csum()),
        inode_bitmap_checksum_expected: None,
        inode_table: d.inode_table(),
        inode_table_last: d.inode_table().saturating_add(ibpg).saturating_sub(1),
        free_blocks: d.free_blocks_count(),
        free_inodes: d.free_inodes_count(),
        directories: d.used_dirs_count(),
        unused_inodes: d.itable_unused(),
        free_blocks_in_bitmap: None,
        free_inodes_in_bitmap: None,
    }
}

/// Count of clear bits among the first `bits` bits.
fn zero_bits(bytes: &[u8], bits: u64) -> u64 {
    let full = (bits / 8) as usize;
    let mut ones: u64 = bytes
        .iter()
        .take(full)
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let rest = (bits % 8) as u32;
    if rest > 0 {
        if let Some(b) = bytes.get(full) {
            ones += u64::from((b & ((1u8 << rest) - 1)).count_ones());
        }
    }
    let available = (bytes.len() as u64 * 8).min(bits);
    available.saturating_sub(ones)
}

/// First cluster of group `g`'s bitmap.
fn group_first_cluster(fs: &Filesystem, g: u32) -> u64 {
    fs.block_to_cluster(fs.first_data_block()) + u64::from(g) * fs.clusters_per_group()
}

/// Clusters of group `g` inside the filesystem.
fn group_clusters(fs: &Filesystem, g: u32) -> u64 {
    let first = group_first_cluster(fs, g);
    let last = fs.block_to_cluster(fs.blocks_count().saturating_sub(1));
    (last + 1)
        .saturating_sub(first)
        .min(fs.clusters_per_group())
}

/// Free clusters of a block bitmap (with the uninit marks ORed in): as
/// dumpe2fs counts them (all `clusters_per_group` bits) and inside the
/// filesystem only.
fn count_block_bitmap(
    fs: &Filesystem,
    g: u32,
    data: &[u8],
    marks: Option<&Vec<(u64, u64)>>,
) -> (u64, u64) {
    let cpg = fs.clusters_per_group();
    let nbytes = ((cpg / 8) as usize).min(data.len());
    let mut bm = data[..nbytes].to_vec();
    if let Some(marks) = marks {
        // Merge first: many uninit groups may mark the same clusters.
        let mut sorted = marks.clone();
        sorted.sort_unstable();
        let first = group_first_cluster(fs, g);
        let mut done_to: Option<u64> = None; // last cluster already set
        for (c0, c1) in sorted {
            let from = match done_to {
                Some(d) if d >= c1 => continue,
                Some(d) => c0.max(d + 1),
                None => c0,
            };
            for c in from..=c1 {
                if let Some(bit) = c.checked_sub(first) {
                    if let Some(byte) = bm.get_mut((bit / 8) as usize) {
                        *byte |= 1 << (bit % 8);
                    }
                }
            }
            done_to = Some(c1);
        }
    }
    (zero_bits(&bm, cpg), zero_bits(&bm, group_clusters(fs, g)))
}

fn block_bitmap(
    fs: &Filesystem,
    g: u32,
    d: &GroupDesc,
    data: &[u8],
    marks: Option<&Vec<(u64, u64)>>,
    st: &mut GroupStats,
    findings: &mut Vec<Finding>,
) {
    let nbytes = ((fs.clusters_per_group() / 8) as usize).min(data.len());
    if fs.has_metadata_csum() {
        let c = bitmap_checksum(&data[..nbytes], fs.csum_seed(), d.wide);
        st.block_bitmap_checksum_expected = Some(c);
        if c != d.block_bitmap_csum() {
            push(
                findings,
                Finding {
                    severity: Severity::Error,
                    code: "group.block_bitmap_checksum".into(),
                    message: format!(
                        "group {g} block bitmap checksum is 0x{:08x}, expected 0x{c:08x}",
                        d.block_bitmap_csum()
                    ),
                    group: Some(g),
                    inode: None,
                    block: Some(d.block_bitmap()),
                },
            );
        }
    }
    if data[nbytes..].iter().any(|&b| b != 0xFF) {
        push(
            findings,
            Finding {
                severity: Severity::Warning,
                code: "group.block_bitmap_padding".into(),
                message: format!(
                    "group {g} block bitmap padding after bit {} is not all set",
                    nbytes * 8
                ),
                group: Some(g),
                inode: None,
                block: Some(d.block_bitmap()),
            },
        );
    }
    let (free, valid_free) = count_block_bitmap(fs, g, data, marks);
    st.free_blocks_in_bitmap = Some(free);
    free_block_mismatch(g, d, valid_free, findings);
}

fn free_block_mismatch(g: u32, d: &GroupDesc, bitmap_free: u64, findings: &mut Vec<Finding>) {
    if u64::from(d.free_blocks_count()) != bitmap_free {
        push(
            findings,
            Finding {
                severity: Severity::Error,
                code: "group.free_blocks_count".into(),
                message: format!(
                    "group {g} descriptor says {} free blocks, its bitmap has {bitmap_free}",
                    d.free_blocks_count()
                ),
                group: Some(g),
                inode: None,
                block: None,
            },
        );
    }
}

fn free_inode_mismatch(g: u32, d: &GroupDesc, bitmap_free: u64, findings: &mut Vec<Finding>) {
    if u64::from(d.free_inodes_count()) != bitmap_free {
        push(
            findings,
            Finding {
                severity: Severity::Error,
                code: "group.free_inodes_count".into(),
                message: format!(
                    "group {g} descriptor says {} free inodes, its bitmap has {bitmap_free}",
                    d.free_inodes_count()
                ),
                group: Some(g),
                inode: None,
                block: None,
            },
        );
    }
}

fn inode_bitmap(
    fs: &Filesystem,
    g: u32,
    d: &GroupDesc,
    data: &[u8],
    st: &mut GroupStats,
    findings: &mut Vec<Finding>,
) {
    let ipg = u64::from(fs.inodes_per_group());
    let nbytes = ((ipg / 8) as usize).min(data.len());
    if fs.has_metadata_csum() {
        let c = bitmap_checksum(&data[..nbytes], fs.csum_seed(), d.wide);
        st.inode_bitmap_checksum_expected = Some(c);
        if c != d.inode_bitmap_csum() {
            push(
                findings,
                Finding {
                    severity: Severity::Error,
                    code: "group.inode_bitmap_checksum".into(),
                    message: format!(
                        "group {g} inode bitmap checksum is 0x{:08x}, expected 0x{c:08x}",
                        d.inode_bitmap_csum()
                    ),
                    group: Some(g),
                    inode: None,
                    block: Some(d.inode_bitmap()),
                },
            );
        }
    }
    if data[nbytes..].iter().any(|&b| b != 0xFF) {
        push(
            findings,
            Finding {
                severity: Severity::Warning,
                code: "group.inode_bitmap_padding".into(),
                message: format!(
                    "group {g} inode bitmap padding after bit {} is not all set",
                    nbytes * 8
                ),
                group: Some(g),
                inode: None,
                block: Some(d.inode_bitmap()),
            },
        );
    }
    let free = zero_bits(&data[..nbytes], ipg);
    st.free_inodes_in_bitmap = Some(free);
    free_inode_mismatch(g, d, free, findings);
    // Inodes past (ipg - itable_unused) must be free.
    let unused = u64::from(d.itable_unused());
    if fs.has_group_desc_csum() && unused > 0 && unused <= ipg {
        let first_unused = ipg - unused;
        let used_in_tail = (first_unused..ipg)
            .filter(|&bit| {
                data.get((bit / 8) as usize)
                    .is_some_and(|b| b & (1 << (bit % 8)) != 0)
            })
            .count();
        if used_in_tail > 0 {
            push(
                findings,
                Finding {
                    severity: Severity::Error,
                    code: "group.itable_unused".into(),
                    message: format!(
                        "group {g} marks {used_in_tail} inode(s) in use among the {unused} its descriptor says were never used"
                    ),
                    group: Some(g),
                    inode: None,
                    block: None,
                },
            );
        }
    }
}

/// Descriptor sanity: counts within the group, metadata inside the
/// filesystem and (without flex_bg) inside the group, like `ext2fs_check_desc`.
fn check_descriptor(fs: &Filesystem, g: u32, d: &GroupDesc, findings: &mut Vec<Finding>) {
    let ipg = fs.inodes_per_group();
    let mut bad = |code: &str, message: String, block: Option<u64>| {
        push(
            findings,
            Finding {
                severity: Severity::Error,
                code: code.into(),
                message,
                group: Some(g),
                inode: None,
                block,
            },
        );
    };
    if d.free_inodes_count() > ipg {
        bad(
            "group.free_inodes_count",
            format!(
                "group {g} claims {} free inodes but holds only {ipg}",
                d.free_inodes_count()
            ),
            None,
        );
    }
    if u64::from(d.free_blocks_count()) > fs.clusters_per_group() {
        bad(
            "group.free_blocks_count",
            format!(
                "group {g} claims {} free blocks but holds only {}",
                d.free_blocks_count(),
                fs.clusters_per_group()
            ),
            None,
        );
    }
    if fs.has_group_desc_csum() && d.itable_unused() > d.free_inodes_count() {
        bad(
            "group.itable_unused",
            format!(
                "group {g} claims {} never-used inodes but only {} free inodes",
                d.itable_unused(),
                d.free_inodes_count()
            ),
            None,
        );
    }
    let (lo, hi) = if fs.has_flex_bg() {
        (fs.first_data_block(), fs.blocks_count().saturating_sub(1))
    } else {
        (fs.group_first_block(g), fs.group_last_block(g))
    };
    let it = d.inode_table();
    let it_last = it
        .saturating_add(fs.inode_blocks_per_group())
        .saturating_sub(1);
    for (code, what, b, last) in [
        (
            "group.block_bitmap_location",
            "block bitmap",
            d.block_bitmap(),
            d.block_bitmap(),
        ),
        (
            "group.inode_bitmap_location",
            "inode bitmap",
            d.inode_bitmap(),
            d.inode_bitmap(),
        ),
        ("group.inode_table_location", "inode table", it, it_last),
    ] {
        // Out-of-filesystem bitmaps are reported once the bitmaps are scanned.
        let outside_fs = b == 0 || b >= fs.blocks_count();
        if code != "group.inode_table_location" && outside_fs {
            continue;
        }
        if b < lo || last > hi {
            bad(
                code,
                format!(
                    "group {g} {what} at {b}{} lies outside {}",
                    if last != b {
                        format!("-{last}")
                    } else {
                        String::new()
                    },
                    if fs.has_flex_bg() {
                        "the filesystem"
                    } else {
                        "its group"
                    }
                ),
                Some(b),
            );
        }
    }
}

/// Block ranges of metadata (`start`, `len`, owner group, what).
type MetaRange = (u64, u64, u32, &'static str);

/// Overlapping metadata (bitmaps, inode tables, superblock and descriptor
/// copies), found by sorting ranges rather than with a filesystem bitmap.
fn overlap_check(fs: &Filesystem, findings: &mut Vec<Finding>) {
    let ibpg = fs.inode_blocks_per_group();
    let bc = fs.blocks_count();
    let mut ranges: Vec<MetaRange> = Vec::new();
    for (g, d) in fs.groups().iter().enumerate() {
        let g = g as u32;
        let l = fs.group_layout(g);
        if let Some(s) = l.superblock {
            ranges.push((s, 1, g, "superblock"));
        }
        if let Some(o) = l.old_desc {
            let extra = if fs.has_incompat(incompat::META_BG) {
                0
            } else {
                l.reserved_gdt.map(|r| r.1).unwrap_or(0)
            };
            ranges.push((o, l.old_desc_blocks + extra, g, "group descriptors"));
        }
        if let Some(nd) = l.new_desc {
            ranges.push((nd, 1, g, "group descriptor"));
        }
        for (b, len, what) in [
            (d.block_bitmap(), 1, "block bitmap"),
            (d.inode_bitmap(), 1, "inode bitmap"),
            (d.inode_table(), ibpg, "inode table"),
        ] {
            if b != 0 && b < bc {
                ranges.push((b, len.min(bc - b), g, what));
            }
        }
    }
    ranges.sort_unstable();
    let mut reach: Option<(u64, u32, &'static str)> = None; // end (exclusive), owner
    for &(s, len, g, what) in &ranges {
        if let Some((end, og, owhat)) = reach {
            if s < end {
                push(
                    findings,
                    Finding {
                        severity: Severity::Error,
                        code: "group.metadata_overlap".into(),
                        message: format!(
                            "group {g} {what} at block {s} overlaps group {og} {owhat}"
                        ),
                        group: Some(g),
                        inode: None,
                        block: Some(s),
                    },
                );
            }
        }
        let e = s.saturating_add(len);
        if reach.is_none_or(|(end, _, _)| e > end) {
            reach = Some((e, g, what));
        }
    }
}

/// Clusters libext2fs marks in use for `BLOCK_UNINIT` groups
/// (`mark_uninit_bg_group_blocks`): each such group's superblock and
/// descriptor copies and its own bitmaps and inode table, wherever they are.
/// Keyed by the group the marks land in; inclusive cluster ranges.
fn uninit_marks(fs: &Filesystem) -> HashMap<u32, Vec<(u64, u64)>> {
    let mut out: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    let bc = fs.blocks_count();
    let fdb = fs.first_data_block();
    let ibpg = fs.inode_blocks_per_group();
    let meta_bg = fs.has_incompat(incompat::META_BG);
    let mut add = |start: u64, len: u64| {
        // Marks partly outside [first_data_block, blocks_count) are refused
        // by libext2fs as a whole.
        if len == 0 || start < fdb || start.saturating_add(len) > bc {
            return;
        }
        let c0 = fs.block_to_cluster(start);
        let c1 = fs.block_to_cluster(start + len - 1);
        let base = fs.block_to_cluster(fdb);
        let cpg = fs.clusters_per_group().max(1);
        let g0 = (c0 - base) / cpg;
        let g1 = ((c1 - base) / cpg).min(g0 + MAX_MARK_SPAN_GROUPS);
        for gg in g0..=g1 {
            let gs = base + gg * cpg;
            let ge = gs + cpg - 1;
            let (a, b) = (c0.max(gs), c1.min(ge));
            if a <= b {
                if let Ok(gg) = u32::try_from(gg) {
                    out.entry(gg).or_default().push((a, b));
                }
            }
        }
    };
    for (g, d) in fs.groups().iter().enumerate() {
        if !d.has_flag(BG_BLOCK_UNINIT) {
            continue;
        }
        let g = g as u32;
        let l = fs.group_layout(g);
        if let Some(s) = l.superblock {
            add(s, 1);
        }
        if g == 0 && fs.block_size() == 1024 && fs.cluster_ratio() > 1 {
            add(0, 1);
        }
        if let Some(o) = l.old_desc {
            let mut num = if meta_bg {
                l.old_desc_blocks
            } else {
                fs.desc_blocks() + u64::from(fs.superblock().reserved_gdt_blocks)
            };
            if o + num >= bc {
                num = bc.saturating_sub(o);
            }
            add(o, num);
        }
        if let Some(nd) = l.new_desc {
            add(nd, 1);
        }
        let it = d.inode_table();
        if it != 0 {
            add(it, ibpg);
        }
        for b in [d.block_bitmap(), d.inode_bitmap()] {
            if b != 0 && b < bc {
                add(b, 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bit_counting() {
        assert_eq!(zero_bits(&[0xFF, 0x00], 16), 8);
        assert_eq!(zero_bits(&[0x0F, 0x00], 12), 8);
        assert_eq!(zero_bits(&[0x01], 3), 2);
        assert_eq!(zero_bits(&[], 8), 0);
    }
}
