//! Inode tables: unused inodes zeroed, and in used ones the private bytes —
//! fast symlink targets, inline data, in-inode xattrs — replaced.
//!
//! Inode fields used (`ext2_inode_large`): 0x00 i_mode, 0x04 i_size_lo,
//! 0x14 i_dtime, 0x1A i_links_count, 0x20 i_flags, 0x28 i_block (60 bytes),
//! 0x64 i_generation, 0x6C i_size_high, 0x7C i_checksum_lo, 0x80
//! i_extra_isize, 0x82 i_checksum_hi; in-inode xattrs at `0x80 +
//! i_extra_isize`.

use super::csum::crc_delta;
use super::dirent::scramble_entries;
use super::names::{NameContext, Namer};
use super::xattr::{scramble_area, MAGIC};
use super::{Params, Stats};
use crate::checksum::crc32c;

const S_IFMT: u16 = 0o170000;
const S_IFLNK: u16 = 0o120000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;

/// `i_flags` bits.
pub(crate) const ENCRYPT_FL: u32 = 0x800;
pub(crate) const EXTENTS_FL: u32 = 0x8_0000;
pub(crate) const INLINE_DATA_FL: u32 = 0x1000_0000;
pub(crate) const CASEFOLD_FL: u32 = 0x4000_0000;
/// `EXT4_INODE_CSUM_HI_EXTRA_END`: i_extra_isize that includes checksum_hi.
const CSUM_HI_EXTRA_END: u16 = 4;
const I_BLOCK: std::ops::Range<usize> = 0x28..0x64;

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Whether the inode's checksum fields cover the high half.
fn has_csum_hi(raw: &[u8]) -> bool {
    raw.len() > 128 && le16(raw, 0x80) >= CSUM_HI_EXTRA_END
}

/// `ext2fs_inode_csum_verify`, including its "all-zero inode passes" rule.
pub(crate) fn inode_csum_ok(seed: u32, ino: u32, raw: &[u8]) -> bool {
    if raw.len() < 128 {
        return false;
    }
    let hi = has_csum_hi(raw);
    let mut copy = raw.to_vec();
    copy[0x7C..0x7E].fill(0);
    if hi {
        copy[0x82..0x84].fill(0);
    }
    let mut crc = crc32c(seed, &ino.to_le_bytes());
    crc = crc32c(crc, &raw[0x64..0x68]);
    crc = crc32c(crc, &copy);
    let stored_lo = u32::from(le16(raw, 0x7C));
    let ok = if hi {
        (stored_lo | (u32::from(le16(raw, 0x82)) << 16)) == crc
    } else {
        stored_lo == crc & 0xffff
    };
    ok || raw[..128].iter().all(|&b| b == 0)
}

/// `ext2fs_extent_header_verify` on i_block, for e2fsck's "insane inode"
/// count (which an inode zeroed by us must not change).
fn extent_header_ok(i_block: &[u8]) -> bool {
    if le16(i_block, 0) != 0xF30A {
        return false;
    }
    let entries = le16(i_block, 2);
    let max = le16(i_block, 4);
    let room = ((i_block.len() - 12) / 12) as u16;
    entries <= max && max <= room && max >= room.saturating_sub(2)
}

/// `ext2fs_inode_has_valid_blocks2` for a symlink: whether e2fsprogs reads
/// i_block as block numbers (then its bytes are structure, not a target).
fn has_valid_blocks(raw: &[u8]) -> bool {
    let file_acl = u64::from(le32(raw, 0x68)) | (u64::from(le16(raw, 0x76)) << 32);
    let i_blocks = u64::from(le32(raw, 0x1C)) | (u64::from(le16(raw, 0x74)) << 32);
    let size = u64::from(le32(raw, 4));
    if file_acl == 0 {
        i_blocks != 0
    } else {
        size >= 60 || (size > 4 && le32(raw, 0x28 + 4) == 0)
    }
}

/// Whether e2fsck's verdict on this inode is the same when it is all zero:
/// links 0 (pass 1 skips it), not reserved or special, no dtime problem
/// (e2fsck reports links 0 with mode set and dtime 0, or a dtime that looks
/// like an orphan-list link), a valid checksum, and not counted as insane by
/// the inode-block garbage heuristic.
fn zero_safe(p: &Params, ino: u32, raw: &[u8]) -> bool {
    let mode = le16(raw, 0);
    let links = le16(raw, 0x1A);
    let dtime = le32(raw, 0x14);
    let flags = le32(raw, 0x20);
    if links != 0 || ino < p.first_ino || p.special_inodes.contains(&ino) {
        return false;
    }
    let dtime_ok = if dtime == 0 {
        mode == 0
    } else {
        dtime >= p.inodes_count
    };
    if !dtime_ok {
        return false;
    }
    if flags & EXTENTS_FL != 0 && !extent_header_ok(&raw[I_BLOCK]) {
        return false;
    }
    !p.metadata_csum || inode_csum_ok(p.csum_seed, ino, raw)
}

/// Replaces a symlink target held in `parts` (one logical buffer split over
/// slices, e.g. i_block and the system.data value): each path component by
/// its canonical replacement, keeping '/', "." and ".."; the first NUL stays
/// where it is (e2fsck compares `strnlen` with i_size) and what follows it is
/// zeroed.
pub(crate) fn symlink_target(parts: &mut [&mut [u8]], ino: u32, namer: &mut Namer) {
    let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let nul = joined.iter().position(|&b| b == 0).unwrap_or(joined.len());
    let target = &joined[..nul];
    let mut out = Vec::with_capacity(joined.len());
    for (i, comp) in target.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if comp.is_empty() {
            continue;
        }
        out.extend_from_slice(&namer.canonical(comp));
    }
    if out != target {
        namer.record_symlink(ino, &out, target);
    }
    out.resize(joined.len(), 0);
    let mut i = 0;
    for p in parts.iter_mut() {
        let n = p.len();
        p.copy_from_slice(&out[i..i + n]);
        i += n;
    }
}

/// One inode table block (`first_ino` is the number of its first inode).
pub(crate) fn inode_block(
    block: &mut [u8],
    first_ino: u32,
    p: &Params,
    namer: &mut Namer,
    stats: &mut Stats,
) {
    let isz = p.inode_size;
    if isz < 128 {
        return;
    }
    for (i, raw) in block.chunks_exact_mut(isz).enumerate() {
        let ino = first_ino.wrapping_add(i as u32);
        if ino == 0 || ino > p.inodes_count {
            continue;
        }
        one_inode(raw, ino, p, namer, stats);
    }
}

fn one_inode(raw: &mut [u8], ino: u32, p: &Params, namer: &mut Namer, stats: &mut Stats) {
    if raw.iter().all(|&b| b == 0) {
        return;
    }
    if zero_safe(p, ino, raw) {
        raw.fill(0);
        stats.inodes_zeroed += 1;
        return;
    }
    let mode = le16(raw, 0);
    let flags = le32(raw, 0x20);
    if flags & ENCRYPT_FL != 0 {
        stats.encrypted_skipped += 1;
        return;
    }
    let kind = mode & S_IFMT;
    let size = u64::from(le32(raw, 4)) | (u64::from(le32(raw, 0x6C)) << 32);
    let inline_flag = flags & INLINE_DATA_FL != 0;
    // Inline content as e2fsck reads it: the feature is on, and i_block is
    // not an extent tree (e2fsck inspects those bytes as one when the
    // extents flag is also set or they carry an extent header).
    let inline =
        inline_flag && p.inline_data && flags & EXTENTS_FL == 0 && !extent_header_ok(&raw[I_BLOCK]);
    let extra = usize::from(le16(raw, 0x80));
    let xattr_start = 128 + extra;
    let has_xattrs =
        raw.len() > 128 && xattr_start + 4 <= raw.len() && le32(raw, xattr_start) == MAGIC;
    if !inline && !has_xattrs && kind != S_IFLNK {
        // Nothing private in it (most inodes): no copy, no checksum work.
        return;
    }
    let old = raw.to_vec();

    let casefold = flags & CASEFOLD_FL != 0;
    let bs = p.block_size;
    let dir_ctx = NameContext {
        dir: ino,
        inode: 0,
        casefold,
        target: None,
    };
    // In-inode xattrs; with inline data, system.data holds the rest of the
    // file, scrambled together with i_block inside the xattr pass so the
    // entry hash is recomputed over the final bytes.
    let mut data_seen = false;
    if has_xattrs {
        let first = xattr_start + 4;
        let end = raw.len();
        let mut on_data = |b: &mut [u8], s: usize, t: usize, namer: &mut Namer| {
            data_seen = true;
            if !inline {
                if !inline_flag {
                    b[s..t].fill(0); // stale content of an inode no longer inline
                }
                return;
            }
            inline_content(b, Some((s, t)), kind, ino, bs, &dir_ctx, namer);
        };
        scramble_area(
            raw,
            first,
            first,
            end,
            u64::from(ino),
            namer,
            stats,
            &mut on_data,
        );
    }
    if inline {
        if !data_seen {
            inline_content(raw, None, kind, ino, bs, &dir_ctx, namer);
        }
        match kind {
            S_IFDIR => stats.inline_dirs += 1,
            S_IFLNK => stats.symlinks += 1,
            S_IFREG => stats.inline_files += 1,
            _ => {}
        }
    } else if kind == S_IFLNK
        && !inline_flag
        && size > 0
        && size < 60
        && flags & EXTENTS_FL == 0
        && !has_valid_blocks(raw)
    {
        // A fast symlink as e2fsck judges one (ext2fs_is_fast_symlink).
        symlink_target(&mut [&mut raw[I_BLOCK]], ino, namer);
        stats.symlinks += 1;
    }

    if p.metadata_csum && raw != &old[..] {
        let delta = crc_delta(&old, raw);
        let lo = le16(raw, 0x7C) ^ (delta & 0xffff) as u16;
        raw[0x7C..0x7E].copy_from_slice(&lo.to_le_bytes());
        if has_csum_hi(raw) {
            let hi = le16(raw, 0x82) ^ (delta >> 16) as u16;
            raw[0x82..0x84].copy_from_slice(&hi.to_le_bytes());
        }
    }
}

/// Inline file content: i_block plus, when present, the system.data value
/// at `raw[s..t]`.
#[allow(clippy::too_many_arguments)]
fn inline_content(
    raw: &mut [u8],
    tail: Option<(usize, usize)>,
    kind: u16,
    ino: u32,
    bs: usize,
    ctx: &NameContext,
    namer: &mut Namer,
) {
    let (head, rest) = raw.split_at_mut(I_BLOCK.end);
    let ib = &mut head[I_BLOCK.start..];
    let tail = tail.and_then(|(s, t)| {
        let (s, t) = (s.checked_sub(I_BLOCK.end)?, t.checked_sub(I_BLOCK.end)?);
        rest.get_mut(s..t)
    });
    match kind {
        S_IFDIR => {
            scramble_entries(ib, 4, 60, bs, ctx, namer);
            if let Some(t) = tail {
                let len = t.len();
                scramble_entries(t, 0, len, bs, ctx, namer);
            }
        }
        S_IFLNK => match tail {
            Some(t) => symlink_target(&mut [ib, t], ino, namer),
            None => symlink_target(&mut [ib], ino, namer),
        },
        S_IFREG => {
            ib.fill(0);
            if let Some(t) = tail {
                t.fill(0);
            }
        }
        _ => {}
    }
}
