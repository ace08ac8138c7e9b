//! Structural check in the spirit of `qemu-img check`: every table and data
//! cluster inside the file and aligned, no two structures in one cluster
//! unless shared on purpose, and stored refcounts equal to the references
//! found. Refcounts above the references are leaks; below (or a cluster used
//! with refcount 0) are corruptions, as qemu counts them.

use crate::error::{Error, Result};
use crate::header::{self, Header};
use crate::image::{compressed_extent, COPIED, L2_COMPRESSED, L2_ZERO, OFFSET_MASK};
use crate::ReadAt;
use std::collections::BTreeMap;

/// Problems listed in a report at most (counts keep going).
const MAX_LISTED: usize = 1000;

/// Whether a problem loses data (corruption) or only space (leak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Metadata is wrong: reads may return wrong data.
    Corruption,
    /// A cluster is marked used but nothing uses it.
    Leak,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Corruption or leak.
    pub severity: Severity,
    /// File offset concerned.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

/// Result of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// QCOW2 version.
    pub version: u32,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// File size in bytes.
    pub file_size: u64,
    /// Guest clusters in the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters with stored data.
    pub allocated_clusters: u64,
    /// Of those, compressed.
    pub compressed_clusters: u64,
    /// Guest clusters with the zero flag.
    pub zero_clusters: u64,
    /// End of the last cluster in use (like qemu's "Image end offset").
    pub image_end_offset: u64,
    /// Number of corruptions found.
    pub corruptions: u64,
    /// Number of leaked clusters found.
    pub leaks: u64,
    /// The dirty bit is set (refcounts may legitimately be stale).
    pub dirty: bool,
    /// The first problems found (at most 1000).
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// No corruption and no leak.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0
    }

    fn add(&mut self, severity: Severity, offset: u64, message: String) {
        match severity {
            Severity::Corruption => self.corruptions += 1,
            Severity::Leak => self.leaks += 1,
        }
        if self.problems.len() < MAX_LISTED {
            self.problems.push(Problem {
                severity,
                offset,
                message,
            });
        }
    }
}

/// What owns a cluster, for overlap messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Free,
    Header,
    L1,
    RefTable,
    RefBlock,
    L2,
    Data,
    Compressed,
    Snapshots,
    Other,
}

impl Owner {
    fn name(self) -> &'static str {
        match self {
            Owner::Free => "nothing",
            Owner::Header => "the header",
            Owner::L1 => "an L1 table",
            Owner::RefTable => "the refcount table",
            Owner::RefBlock => "a refcount block",
            Owner::L2 => "an L2 table",
            Owner::Data => "a data cluster",
            Owner::Compressed => "compressed data",
            Owner::Snapshots => "the snapshot table",
            Owner::Other => "bitmap data",
        }
    }
}

struct Walk<'a, R: ReadAt + ?Sized> {
    storage: &'a R,
    h: &'a Header,
    cb: u32,
    nb_clusters: u64,
    counts: Vec<u32>,
    owner: Vec<Owner>,
    report: CheckReport,
}

impl<R: ReadAt + ?Sized> Walk<'_, R> {
    fn cs(&self) -> u64 {
        1 << self.cb
    }

    /// Counts one reference to every cluster of `[offset, offset+len)`;
    /// `false` when the range is outside the file.
    fn reference(
        &mut self,
        offset: u64,
        len: u64,
        owner: Owner,
        what: &str,
        at: u64,
        times: u32,
    ) -> bool {
        let Some(end) = offset.checked_add(len.max(1)) else {
            self.report.add(
                Severity::Corruption,
                at,
                format!("{what} at {offset:#x} has an impossible size"),
            );
            return false;
        };
        let first = offset >> self.cb;
        let last = (end - 1) >> self.cb;
        if last >= self.nb_clusters {
            self.report.add(
                Severity::Corruption,
                at,
                format!("{what} at {offset:#x} lies beyond the end of the file"),
            );
            return false;
        }
        for k in first..=last {
            let i = k as usize;
            self.counts[i] = self.counts[i].saturating_add(times);
            let prev = self.owner[i];
            let shared_ok =
                prev == owner && matches!(owner, Owner::Compressed | Owner::Data | Owner::L2);
            if prev != Owner::Free && !shared_ok {
                self.report.add(
                    Severity::Corruption,
                    at,
                    format!(
                        "{what} at {offset:#x} overlaps {} in cluster {:#x}",
                        prev.name(),
                        k << self.cb
                    ),
                );
            }
            if prev == Owner::Free {
                self.owner[i] = owner;
            }
        }
        true
    }

    fn read_u64s(&mut self, offset: u64, count: u64, what: &str) -> Result<Vec<u64>> {
        let mut raw = vec![0u8; (count * 8) as usize];
        header::read(self.storage, &mut raw, offset, what)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    /// Walks one L1 table (referenced `times` times), recording the L2
    /// tables it points to. Each distinct table is read once, whatever the
    /// number of references, so hostile sharing cannot multiply the work.
    #[allow(clippy::too_many_arguments)]
    fn walk_l1(
        &mut self,
        l1_offset: u64,
        l1_size: u64,
        times: u32,
        active: bool,
        what: &str,
        l2s: &mut BTreeMap<u64, L2Use>,
        copied: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let cs = self.cs();
        if l1_size == 0 {
            return Ok(());
        }
        if l1_offset % cs != 0 {
            self.report.add(
                Severity::Corruption,
                l1_offset,
                format!("{what} at {l1_offset:#x} is not cluster aligned"),
            );
            return Ok(());
        }
        if !self.reference(l1_offset, l1_size * 8, Owner::L1, what, l1_offset, times) {
            return Ok(());
        }
        let l1 = self.read_u64s(l1_offset, l1_size, what)?;
        for (i, &e) in l1.iter().enumerate() {
            let at = l1_offset + i as u64 * 8;
            let l2 = e & OFFSET_MASK;
            if e & !(OFFSET_MASK | COPIED) != 0 {
                self.report.add(
                    Severity::Corruption,
                    at,
                    format!("L1 entry {i} has reserved bits set ({e:#018x})"),
                );
            }
            if l2 == 0 {
                continue;
            }
            if l2 % cs != 0 {
                self.report.add(
                    Severity::Corruption,
                    at,
                    format!("L1 entry {i}: L2 table offset {l2:#x} is not cluster aligned"),
                );
                continue;
            }
            if !self.reference(l2, cs, Owner::L2, "L2 table", at, times) {
                continue;
            }
            if active {
                copied.push((at, e));
            }
            let u = l2s.entry(l2).or_insert(L2Use {
                times: 0,
                active: false,
            });
            u.times = u.times.saturating_add(times);
            u.active |= active;
        }
        Ok(())
    }

    /// Walks one L2 table, counting its clusters `u.times` times.
    fn walk_l2(&mut self, l2: u64, u: L2Use, copied: &mut Vec<(u64, u64)>) -> Result<()> {
        let cs = self.cs();
        let ext = self.h.extended_l2();
        let esz = self.h.l2_entry_size();
        let per_l2 = cs / esz;
        let times = u.times;
        let active = u.active;
        let tab = self.read_u64s(l2, cs / 8, "L2 table")?;
        for j in 0..per_l2 {
            let (e2, bitmap) = if ext {
                (
                    tab.get((j * 2) as usize).copied().unwrap_or(0),
                    tab.get((j * 2 + 1) as usize).copied().unwrap_or(0),
                )
            } else {
                (tab.get(j as usize).copied().unwrap_or(0), 0)
            };
            let eat = l2 + j * esz;
            if e2 & L2_COMPRESSED != 0 {
                if e2 & COPIED != 0 {
                    self.report.add(
                        Severity::Corruption,
                        eat,
                        "compressed cluster has the COPIED flag set".into(),
                    );
                }
                let (host, size) = compressed_extent(self.cb, e2 & !COPIED);
                if active {
                    self.report.allocated_clusters += 1;
                    self.report.compressed_clusters += 1;
                }
                // A compressed cluster may end in the file's last, partial
                // sector.
                let size = size.min(self.report.file_size.saturating_sub(host)).max(1);
                self.reference(
                    host,
                    size,
                    Owner::Compressed,
                    "compressed cluster",
                    eat,
                    times,
                );
                continue;
            }
            let host = e2 & OFFSET_MASK;
            if e2 & !(OFFSET_MASK | COPIED | L2_ZERO) != 0 {
                self.report.add(
                    Severity::Corruption,
                    eat,
                    format!("L2 entry has reserved bits set ({e2:#018x})"),
                );
            }
            let zero = if ext {
                bitmap >> 32 != 0 && bitmap as u32 == 0
            } else {
                e2 & L2_ZERO != 0
            };
            if e2 & L2_ZERO != 0 && (self.h.version < 3 || ext) {
                self.report.add(
                    Severity::Corruption,
                    eat,
                    "zero flag set where the format has none".into(),
                );
            }
            if ext && (bitmap as u32) & ((bitmap >> 32) as u32) != 0 {
                self.report.add(
                    Severity::Corruption,
                    eat + 8,
                    "subclusters marked both allocated and zero".into(),
                );
            }
            if host == 0 {
                if active && zero {
                    self.report.zero_clusters += 1;
                }
                if ext && bitmap as u32 != 0 {
                    self.report.add(
                        Severity::Corruption,
                        eat,
                        "subclusters allocated without a host cluster".into(),
                    );
                }
                continue;
            }
            if host % cs != 0 {
                self.report.add(
                    Severity::Corruption,
                    eat,
                    format!("data cluster offset {host:#x} is not cluster aligned"),
                );
                continue;
            }
            if active {
                if zero {
                    self.report.zero_clusters += 1;
                } else {
                    self.report.allocated_clusters += 1;
                }
            }
            if self.reference(host, cs, Owner::Data, "data cluster", eat, times) && active {
                copied.push((eat, e2));
            }
        }
        Ok(())
    }
}

/// How often an L2 table is referenced, and whether by the active L1.
#[derive(Clone, Copy)]
struct L2Use {
    times: u32,
    active: bool,
}

/// Checks an image's structure. Errors only when the header itself cannot
/// be used (not QCOW2, unsupported feature, unreadable); everything found
/// beyond that is in the report.
pub fn check<R: ReadAt>(storage: R) -> Result<CheckReport> {
    let h = Header::read(&storage)?;
    let file_size = storage
        .size()
        .map_err(|e| Error::io("getting the image size", e))?;
    let cb = h.cluster_bits;
    let cs = h.cluster_size();
    let nb_clusters = file_size.div_ceil(cs);
    let mut w = Walk {
        storage: &storage,
        h: &h,
        cb,
        nb_clusters,
        counts: vec![0; nb_clusters as usize],
        owner: vec![Owner::Free; nb_clusters as usize],
        report: CheckReport {
            version: h.version,
            cluster_size: cs,
            virtual_size: h.size,
            file_size,
            total_clusters: h.size.div_ceil(cs),
            dirty: h.incompatible_features & header::INCOMPAT_DIRTY != 0,
            ..CheckReport::default()
        },
    };
    w.reference(0, cs, Owner::Header, "header", 0, 1);

    // Refcount table and blocks.
    let rt_off = h.refcount_table_offset;
    let rt_len = u64::from(h.refcount_table_clusters) * cs;
    let mut stored_blocks: Vec<(u64, u64)> = Vec::new(); // (table index, block offset)
    if rt_len == 0 || rt_off == 0 {
        w.report.add(
            Severity::Corruption,
            48,
            "the image has no refcount table".into(),
        );
    } else if w.reference(rt_off, rt_len, Owner::RefTable, "refcount table", 48, 1) {
        let rt = w.read_u64s(rt_off, rt_len / 8, "refcount table")?;
        for (i, &e) in rt.iter().enumerate() {
            let at = rt_off + i as u64 * 8;
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if e & !OFFSET_MASK != 0 || off % cs != 0 {
                w.report.add(
                    Severity::Corruption,
                    at,
                    format!("refcount table entry {i} ({e:#018x}) is not a cluster-aligned offset"),
                );
                continue;
            }
            if w.reference(off, cs, Owner::RefBlock, "refcount block", at, 1) {
                stored_blocks.push((i as u64, off));
            }
        }
    }

    // Active L1 and its tables.
    let mut l2s = BTreeMap::new();
    let mut active = Vec::new();
    w.walk_l1(
        h.l1_table_offset,
        u64::from(h.l1_size),
        1,
        true,
        "L1 table",
        &mut l2s,
        &mut active,
    )?;
    let mut snapshot_l1s: BTreeMap<(u64, u64), u32> = BTreeMap::new();

    // Snapshots: their table, L1 tables and what those reference.
    if h.nb_snapshots > 0 {
        let mut pos = h.snapshots_offset;
        let mut ok = pos % cs == 0 && pos != 0;
        if !ok {
            w.report.add(
                Severity::Corruption,
                64,
                format!("snapshot table offset {pos:#x} is not cluster aligned"),
            );
        }
        let start = pos;
        for n in 0..h.nb_snapshots {
            if !ok {
                break;
            }
            let mut fixed = [0u8; 40];
            if pos.checked_add(40).is_none_or(|e| e > file_size) {
                w.report.add(
                    Severity::Corruption,
                    pos,
                    format!("snapshot {n} lies beyond the end of the file"),
                );
                ok = false;
                break;
            }
            header::read(&storage, &mut fixed, pos, "snapshot table")?;
            let l1_off = u64::from_be_bytes(fixed[0..8].try_into().unwrap_or([0; 8]));
            let l1_size = u32::from_be_bytes(fixed[8..12].try_into().unwrap_or([0; 4]));
            let id_len = u16::from_be_bytes(fixed[12..14].try_into().unwrap_or([0; 2]));
            let name_len = u16::from_be_bytes(fixed[14..16].try_into().unwrap_or([0; 2]));
            let extra = u32::from_be_bytes(fixed[36..40].try_into().unwrap_or([0; 4]));
            let len = (40 + u64::from(extra) + u64::from(id_len) + u64::from(name_len) + 7) & !7;
            if u64::from(l1_size) * 8 > header::MAX_L1_BYTES {
                w.report.add(
                    Severity::Corruption,
                    pos + 8,
                    format!("snapshot {n} has an L1 table of {l1_size} entries"),
                );
            } else {
                let t = snapshot_l1s
                    .entry((l1_off, u64::from(l1_size)))
                    .or_insert(0);
                *t = t.saturating_add(1);
            }
            pos += len;
        }
        if ok && pos > start {
            w.reference(
                start,
                pos - start,
                Owner::Snapshots,
                "snapshot table",
                64,
                1,
            );
        }
    }

    for ((off, size), times) in snapshot_l1s {
        let mut ignored = Vec::new();
        w.walk_l1(
            off,
            size,
            times,
            false,
            "snapshot L1 table",
            &mut l2s,
            &mut ignored,
        )?;
    }
    for (off, u) in l2s {
        w.walk_l2(off, u, &mut active)?;
    }

    // Bitmaps extension: directory, bitmap tables and their clusters.
    if let Some((nb, dir_size, dir_off)) = h.bitmaps {
        if w.reference(
            dir_off,
            dir_size,
            Owner::Other,
            "bitmap directory",
            dir_off,
            1,
        ) && dir_size <= 64 << 20
        {
            let mut dir = vec![0u8; dir_size as usize];
            header::read(&storage, &mut dir, dir_off, "bitmap directory")?;
            let mut p = 0usize;
            for _ in 0..nb {
                let Some(ent) = dir.get(p..p + 24) else { break };
                let t_off = u64::from_be_bytes(ent[0..8].try_into().unwrap_or([0; 8]));
                let t_size = u32::from_be_bytes(ent[8..12].try_into().unwrap_or([0; 4]));
                let name = u16::from_be_bytes(ent[18..20].try_into().unwrap_or([0; 2]));
                let extra = u32::from_be_bytes(ent[20..24].try_into().unwrap_or([0; 4]));
                if w.reference(
                    t_off,
                    u64::from(t_size) * 8,
                    Owner::Other,
                    "bitmap table",
                    dir_off,
                    1,
                ) && u64::from(t_size) * 8 <= 64 << 20
                {
                    let tab = w.read_u64s(t_off, u64::from(t_size), "bitmap table")?;
                    for e in tab {
                        let o = e & OFFSET_MASK;
                        if o != 0 {
                            w.reference(o, cs, Owner::Other, "bitmap data", t_off, 1);
                        }
                    }
                }
                p += (24 + extra as usize + name as usize + 7) & !7;
            }
        }
    }

    // Stored refcounts versus references.
    let bits = h.refcount_bits();
    let per_block = cs * 8 / u64::from(bits);
    // Compared block by block, so memory stays at one counter per cluster;
    // only "refcount is exactly one" is remembered, for the COPIED flags.
    let mut is_one = vec![0u64; (nb_clusters as usize).div_ceil(64)];
    let blocks: BTreeMap<u64, u64> = stored_blocks.iter().copied().collect();
    let mut block = vec![0u8; cs as usize];
    for i in 0..nb_clusters.div_ceil(per_block) {
        let have = match blocks.get(&i) {
            Some(&off) => {
                header::read(&storage, &mut block, off, "refcount block")?;
                true
            }
            None => false,
        };
        // Like qemu, refcounts past the end of the file are not counted.
        for k in i * per_block..((i + 1) * per_block).min(nb_clusters) {
            let r = if have {
                refcount_at(&block, k - i * per_block, bits)
            } else {
                0
            };
            if r == 1 {
                is_one[(k / 64) as usize] |= 1 << (k % 64);
            }
            let c = u64::from(w.counts[k as usize]);
            if c > 0 {
                w.report.image_end_offset = (k + 1) << cb;
            }
            if r == c {
                continue;
            }
            let off = k << cb;
            if r < c {
                w.report.add(
                    Severity::Corruption,
                    off,
                    format!("cluster {off:#x} has refcount {r} but {c} references"),
                );
            } else {
                w.report.add(
                    Severity::Leak,
                    off,
                    format!("cluster {off:#x} has refcount {r} but {c} references (leaked)"),
                );
            }
        }
    }
    // COPIED flags must say "refcount is exactly one".
    for (at, e) in active {
        let off = e & OFFSET_MASK;
        let k = off >> cb;
        let one = is_one
            .get((k / 64) as usize)
            .is_some_and(|b| b & (1 << (k % 64)) != 0);
        if (e & COPIED != 0) != one {
            let r = if one { "is" } else { "is not" };
            w.report.add(
                Severity::Corruption,
                at,
                format!("COPIED flag of the entry for {off:#x} disagrees with its refcount, which {r} 1"),
            );
        }
    }
    Ok(w.report)
}

fn refcount_at(block: &[u8], k: u64, bits: u32) -> u64 {
    match bits {
        1 | 2 | 4 => {
            let per_byte = 8 / bits as u64;
            let byte = block.get((k / per_byte) as usize).copied().unwrap_or(0);
            let shift = (k % per_byte) as u32 * bits;
            u64::from(byte >> shift) & ((1 << bits) - 1)
        }
        8 => u64::from(block.get(k as usize).copied().unwrap_or(0)),
        _ => {
            let n = (bits / 8) as usize;
            let at = k as usize * n;
            block
                .get(at..at + n)
                .map(|s| s.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
                .unwrap_or(0)
        }
    }
}
