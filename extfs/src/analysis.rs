//! The read-only analyses, each a pure function of an opened [`Filesystem`]:
//! the superblock summary (`dumpe2fs -h`), group stats (`dumpe2fs`'s group
//! list) and findings. [`inspect`] bundles them into the [`Report`] whose
//! JSON (`{"superblock": {...}, "groups": [...], "findings": [...]}`) the
//! agent prints and the server API serves unchanged.

mod groups;
mod summary;

pub use groups::GroupStats;
pub use summary::{
    base_summary, format_time, read_mmp, superblock_summary, MmpBlock, Render, SuperblockSummary,
    LABELS, MMP_MAGIC,
};

use crate::finding::{Finding, Severity};
use crate::fs::Filesystem;
use crate::journal;
use crate::superblock::{compat, incompat, ro_compat, STATE_ERROR, STATE_VALID};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Findings of one code kept individually; the rest are counted in one
/// summary finding so a wrecked image cannot produce megabytes of them.
pub const MAX_FINDINGS_PER_CODE: usize = 200;

/// Everything `inspect` reports about a filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `dumpe2fs -h`, field by field.
    pub superblock: SuperblockSummary,
    /// One entry per block group, as `dumpe2fs` lists them.
    pub groups: Vec<GroupStats>,
    /// Problems found, most severe first.
    pub findings: Vec<Finding>,
}

/// Runs every analysis (one pass over the bitmaps).
pub fn inspect(fs: &Filesystem) -> Report {
    let (groups, group_findings) = groups::scan(fs);
    Report {
        superblock: superblock_summary(fs),
        findings: collect(fs, group_findings),
        groups,
    }
}

/// Group stats alone.
pub fn group_stats(fs: &Filesystem) -> Vec<GroupStats> {
    groups::scan(fs).0
}

/// All findings: superblock, descriptors, bitmaps, journal, MMP, and the
/// inode-level checks.
pub fn findings(fs: &Filesystem) -> Vec<Finding> {
    collect(fs, groups::scan(fs).1)
}

fn collect(fs: &Filesystem, group_findings: Vec<Finding>) -> Vec<Finding> {
    let mut out = fs.open_findings().to_vec();
    superblock_findings(fs, &mut out);
    journal_findings(fs, &mut out);
    mmp_findings(fs, &mut out);
    out.extend(group_findings);
    // Inode, extent, directory and xattr checks (the inode-level module).
    out.extend(crate::inode::findings(fs));
    sort_and_limit(out)
}

/// Adds a finding (kept as a function so every producer goes through one
/// place).
pub(crate) fn push(out: &mut Vec<Finding>, f: Finding) {
    out.push(f);
}

/// Most severe first (stable within a severity), at most
/// [`MAX_FINDINGS_PER_CODE`] per code plus one "and N more" per code.
fn sort_and_limit(mut v: Vec<Finding>) -> Vec<Finding> {
    v.sort_by_key(|f| f.severity);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(v.len().min(4096));
    let mut extra: Vec<(String, Severity, usize)> = Vec::new();
    for f in v {
        let n = seen.entry(f.code.clone()).or_insert(0);
        *n += 1;
        if *n <= MAX_FINDINGS_PER_CODE {
            out.push(f);
        } else if *n == MAX_FINDINGS_PER_CODE + 1 {
            extra.push((f.code.clone(), f.severity, 0));
        }
    }
    for (code, severity, _) in extra {
        let total = seen.get(&code).copied().unwrap_or(0);
        let pos = out
            .iter()
            .rposition(|f| f.code == code)
            .map(|p| p + 1)
            .unwrap_or(out.len());
        out.insert(
            pos,
            Finding {
                severity,
                code: code.clone(),
                message: format!(
                    "{} more findings of this kind are not listed ({total} in all)",
                    total - MAX_FINDINGS_PER_CODE
                ),
                group: None,
                inode: None,
                block: None,
            },
        );
    }
    out
}

fn finding(severity: Severity, code: &str, message: String) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message,
        group: None,
        inode: None,
        block: None,
    }
}

fn superblock_findings(fs: &Filesystem, out: &mut Vec<Finding>) {
    let sb = fs.superblock();
    let loc = fs.superblock_location();
    if loc.is_backup() {
        out.push(finding(
            Severity::Error,
            "superblock.primary_unusable",
            format!(
                "the primary superblock is unusable ({}); using the backup in group {} at block {} ({} byte blocks)",
                fs.primary_superblock_problem().unwrap_or("unknown reason"),
                loc.group,
                loc.block,
                fs.block_size()
            ),
        ));
    }
    if sb.has_ro_compat(ro_compat::METADATA_CSUM) {
        if sb.checksum_type != crate::superblock::CRC32C_CHKSUM {
            out.push(finding(
                Severity::Error,
                "superblock.checksum_type",
                format!(
                    "superblock checksum type {} is unknown (only 1, crc32c, exists)",
                    sb.checksum_type
                ),
            ));
        }
        let c = sb.computed_checksum();
        if c != sb.checksum {
            let mut f = finding(
                Severity::Error,
                "superblock.checksum",
                format!(
                    "superblock checksum is 0x{:08x}, expected 0x{c:08x}",
                    sb.checksum
                ),
            );
            f.block = Some(loc.block);
            out.push(f);
        }
    }
    if sb.state & STATE_ERROR != 0 {
        out.push(finding(
            Severity::Warning,
            "superblock.state_errors",
            "the filesystem state says errors were detected; e2fsck has not repaired them yet"
                .into(),
        ));
    }
    if sb.state & STATE_VALID == 0 {
        out.push(finding(
            Severity::Warning,
            "superblock.not_clean",
            "the filesystem was not cleanly unmounted (or is mounted)".into(),
        ));
    }
    if sb.error_count != 0 || sb.first_error_time != 0 || sb.last_error_time != 0 {
        let mut msg = format!("the kernel recorded {} error(s)", sb.error_count);
        for (which, t, func, line, ino, blk) in [
            (
                "first",
                sb.first_error_time_full(),
                &sb.first_error_func,
                sb.first_error_line,
                sb.first_error_ino,
                sb.first_error_block,
            ),
            (
                "last",
                sb.last_error_time_full(),
                &sb.last_error_func,
                sb.last_error_line,
                sb.last_error_ino,
                sb.last_error_block,
            ),
        ] {
            if t == 0 {
                continue;
            }
            msg.push_str(&format!(
                "; {which} at {} in {}:{line}",
                format_time(t),
                crate::superblock::c_string(func)
            ));
            if ino != 0 {
                msg.push_str(&format!(" inode {ino}"));
            }
            if blk != 0 {
                msg.push_str(&format!(" block {blk}"));
            }
        }
        let mut f = finding(Severity::Info, "superblock.errors_recorded", msg);
        if sb.last_error_ino != 0 {
            f.inode = Some(sb.last_error_ino);
        }
        if sb.last_error_block != 0 {
            f.block = Some(sb.last_error_block);
        }
        out.push(f);
    }
    if sb.last_orphan != 0 {
        let mut f = finding(
            Severity::Warning,
            "superblock.orphan_list",
            format!(
                "the orphan list is not empty (first orphan inode {}): deletions or truncations were interrupted",
                sb.last_orphan
            ),
        );
        f.inode = Some(sb.last_orphan);
        out.push(f);
    }
    if sb.has_ro_compat(ro_compat::ORPHAN_PRESENT) {
        out.push(finding(
            Severity::Warning,
            "superblock.orphan_present",
            format!(
                "the orphan file (inode {}) has entries: deletions or truncations were interrupted",
                sb.orphan_file_inum
            ),
        ));
    }
    if sb.has_incompat(incompat::JOURNAL_DEV) {
        return; // an external journal has no groups or inodes
    }
    let expected_inodes = u64::from(fs.group_count()) * u64::from(sb.inodes_per_group);
    if u64::from(sb.inodes_count) != expected_inodes {
        out.push(finding(
            Severity::Error,
            "superblock.inodes_count",
            format!(
                "inode count {} does not match {} groups × {} inodes per group = {expected_inodes}",
                sb.inodes_count,
                fs.group_count(),
                sb.inodes_per_group
            ),
        ));
    }
    if sb.free_blocks_count() > sb.blocks_count() {
        out.push(finding(
            Severity::Error,
            "superblock.free_blocks_count",
            format!(
                "{} free blocks exceed the {} blocks of the filesystem",
                sb.free_blocks_count(),
                sb.blocks_count()
            ),
        ));
    } else {
        let sum: u64 = fs
            .groups()
            .iter()
            .map(|d| u64::from(d.free_blocks_count()))
            .sum();
        let sum = sum << fs.cluster_ratio_bits();
        if sum != sb.free_blocks_count() {
            out.push(finding(
                Severity::Warning,
                "superblock.free_blocks_count",
                format!(
                    "the superblock says {} free blocks, the group descriptors add up to {sum}",
                    sb.free_blocks_count()
                ),
            ));
        }
    }
    if sb.free_inodes_count > sb.inodes_count {
        out.push(finding(
            Severity::Error,
            "superblock.free_inodes_count",
            format!(
                "{} free inodes exceed the {} inodes of the filesystem",
                sb.free_inodes_count, sb.inodes_count
            ),
        ));
    } else {
        let sum: u64 = fs
            .groups()
            .iter()
            .map(|d| u64::from(d.free_inodes_count()))
            .sum();
        if sum != u64::from(sb.free_inodes_count) {
            out.push(finding(
                Severity::Warning,
                "superblock.free_inodes_count",
                format!(
                    "the superblock says {} free inodes, the group descriptors add up to {sum}",
                    sb.free_inodes_count
                ),
            ));
        }
    }
    if sb.r_blocks_count() > sb.blocks_count() {
        out.push(finding(
            Severity::Error,
            "superblock.reserved_blocks_count",
            format!(
                "{} reserved blocks exceed the {} blocks of the filesystem",
                sb.r_blocks_count(),
                sb.blocks_count()
            ),
        ));
    }
    let expect_first = u32::from(fs.block_size() == 1024 && fs.cluster_ratio() == 1);
    if sb.first_data_block != expect_first {
        out.push(finding(
            Severity::Error,
            "superblock.first_data_block",
            format!(
                "first data block is {}, expected {expect_first} for {} byte blocks",
                sb.first_data_block,
                fs.block_size()
            ),
        ));
    }
    if sb.has_incompat(incompat::META_BG) && u64::from(sb.first_meta_bg) > fs.desc_blocks() {
        out.push(finding(
            Severity::Error,
            "superblock.first_meta_bg",
            format!(
                "first meta block group {} is beyond the {} descriptor blocks",
                sb.first_meta_bg,
                fs.desc_blocks()
            ),
        ));
    }
    if sb.rev_level > 1 {
        out.push(finding(
            Severity::Warning,
            "superblock.revision",
            format!(
                "revision level {} is newer than any ext2/3/4 revision (1)",
                sb.rev_level
            ),
        ));
    }
    if sb.rev_level >= 1 && (sb.first_ino < 11 || sb.first_ino > sb.inodes_count) {
        out.push(finding(
            Severity::Error,
            "superblock.first_ino",
            format!("first non-reserved inode {} is impossible", sb.first_ino),
        ));
    }
    let unknown: Vec<String> = sb
        .feature_names()
        .into_iter()
        .filter(|n| n.starts_with("FEATURE_"))
        .collect();
    if !unknown.is_empty() {
        out.push(finding(
            Severity::Warning,
            "superblock.unknown_features",
            format!("unknown feature flags are set: {}", unknown.join(" ")),
        ));
    }
    let fs_bytes = sb.blocks_count().saturating_mul(fs.block_size());
    let dev = fs.source().size();
    if fs_bytes > dev {
        out.push(finding(
            Severity::Error,
            "superblock.device_too_small",
            format!(
                "the filesystem is {} blocks ({fs_bytes} bytes) but the device or image holds only {dev} bytes",
                sb.blocks_count()
            ),
        ));
    }
}

fn journal_findings(fs: &Filesystem, out: &mut Vec<Finding>) {
    let sb = fs.superblock();
    let external_dev = sb.has_incompat(incompat::JOURNAL_DEV);
    let has_journal = sb.has_compat(compat::HAS_JOURNAL);
    if sb.has_incompat(incompat::RECOVER) {
        out.push(finding(
            Severity::Warning,
            "journal.needs_recovery",
            "the journal needs recovery: the filesystem was not cleanly unmounted and has unreplayed transactions".into(),
        ));
    }
    if !external_dev && !has_journal {
        return;
    }
    if !external_dev && sb.journal_inum == 0 {
        if uuid_is_null(&sb.journal_uuid) && sb.journal_dev == 0 {
            out.push(finding(
                Severity::Error,
                "journal.missing",
                "has_journal is set but neither a journal inode nor an external journal is recorded".into(),
            ));
        }
        return; // external journal: its superblock is on another device
    }
    let (j, blk) = match journal::read_superblock(fs) {
        Ok(x) => x,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                "journal.unreadable",
                format!("the journal superblock cannot be read: {e}"),
            ));
            return;
        }
    };
    let mut f = |sev, code: &str, msg: String| {
        let mut x = finding(sev, code, msg);
        x.block = Some(blk);
        if !external_dev {
            x.inode = Some(sb.journal_inum);
        }
        out.push(x);
    };
    if !j.magic_ok()
        || !(j.blocktype == journal::SUPERBLOCK_V1 || j.blocktype == journal::SUPERBLOCK_V2)
    {
        f(
            Severity::Error,
            "journal.superblock_magic",
            format!(
                "the journal superblock has magic 0x{:08x} and type {} (expected 0x{:08x}, type 3 or 4)",
                j.magic,
                j.blocktype,
                journal::JBD2_MAGIC
            ),
        );
        return;
    }
    if j.has_csum_v2v3() {
        let c = j.computed_checksum();
        if c != j.checksum {
            f(
                Severity::Error,
                "journal.superblock_checksum",
                format!(
                    "journal superblock checksum is 0x{:08x}, expected 0x{c:08x}",
                    j.checksum
                ),
            );
        }
    }
    if u64::from(j.blocksize) != fs.block_size() {
        f(
            Severity::Error,
            "journal.block_size",
            format!(
                "journal block size {} differs from the filesystem's {}",
                j.blocksize,
                fs.block_size()
            ),
        );
    }
    if j.start != 0 && !sb.has_incompat(incompat::RECOVER) && !external_dev {
        f(
            Severity::Warning,
            "journal.needs_recovery",
            format!(
                "the journal has unreplayed transactions (log starts at block {}, sequence 0x{:08x}) but needs_recovery is not set",
                j.start, j.sequence
            ),
        );
    }
    if j.errno != 0 {
        f(
            Severity::Warning,
            "journal.errno",
            format!("the journal was aborted with error {}", j.errno),
        );
    }
}

fn mmp_findings(fs: &Filesystem, out: &mut Vec<Finding>) {
    let Some(m) = read_mmp(fs) else { return };
    let blk = fs.superblock().mmp_block;
    let mut f = |sev, code: &str, msg: String| {
        let mut x = finding(sev, code, msg);
        x.block = Some(blk);
        out.push(x);
    };
    match m {
        Err(e) => f(Severity::Error, "mmp.unreadable", e),
        Ok(m) => {
            if m.magic != MMP_MAGIC {
                f(
                    Severity::Error,
                    "mmp.magic",
                    format!(
                        "the MMP block has magic 0x{:08x}, expected 0x{MMP_MAGIC:08x}",
                        m.magic
                    ),
                );
                return;
            }
            if fs.has_metadata_csum() && m.checksum != m.computed_checksum {
                f(
                    Severity::Error,
                    "mmp.checksum",
                    format!(
                        "MMP block checksum is 0x{:08x}, expected 0x{:08x}",
                        m.checksum, m.computed_checksum
                    ),
                );
            }
            const SEQ_CLEAN: u32 = 0xFF4D_4D50;
            const SEQ_FSCK: u32 = 0xE24D_4D50;
            if m.seq != SEQ_CLEAN {
                f(
                    Severity::Warning,
                    "mmp.in_use",
                    format!(
                        "the MMP block says the filesystem is {} (node {:?}, device {:?})",
                        if m.seq == SEQ_FSCK {
                            "being checked by e2fsck"
                        } else {
                            "in use"
                        },
                        m.nodename,
                        m.bdevname
                    ),
                );
            }
        }
    }
}

fn uuid_is_null(u: &[u8; 16]) -> bool {
    u.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_keeps_per_code_cap_and_counts_the_rest() {
        let mk = |code: &str, sev| Finding {
            severity: sev,
            code: code.into(),
            message: String::new(),
            group: None,
            inode: None,
            block: None,
        };
        let mut v: Vec<Finding> = (0..MAX_FINDINGS_PER_CODE + 5)
            .map(|_| mk("a", Severity::Error))
            .collect();
        v.push(mk("b", Severity::Info));
        v.push(mk("c", Severity::Error));
        let out = sort_and_limit(v);
        assert_eq!(
            out.iter().filter(|f| f.code == "a").count(),
            MAX_FINDINGS_PER_CODE + 1
        );
        assert!(out.iter().any(|f| f.message.contains("5 more")));
        assert_eq!(out.last().unwrap().code, "b");
    }
}
