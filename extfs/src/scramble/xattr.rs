//! Extended attributes, in the inode and in xattr blocks.
//!
//! Entry layout (`ext2_ext_attr_entry`): 0 e_name_len (u8), 1 e_name_index
//! (u8), 2 e_value_offs (le16), 4 e_value_inum (le32), 8 e_value_size (le32),
//! 12 e_hash (le32), 16 name, padded to 4 bytes; the list ends with 4 zero
//! bytes. Block header: 0 magic 0xEA020000, 4 refcount, 8 blocks, 12 h_hash,
//! 16 h_checksum, entries from 32, value offsets from the block start.
//! In-inode: magic at `128 + i_extra_isize`, entries after it, value offsets
//! from the first entry.
//!
//! What changes: `user.*` and `trusted.*` names (free-form, chosen by
//! people and programs: keyed lowercase names, unique per owner)
//! and values, except those e2fsprogs parses or that are structure (POSIX
//! ACLs, `system.*`, richacl, the encryption context; `system.data` is
//! inline file content, handed to the caller). Bytes that
//! belong to no entry and no value are zeroed. Entry hashes and the block
//! hash are recomputed only where they were right before.

use super::csum::crc_delta;
use super::names::Namer;
use super::Stats;
use std::collections::HashSet;

/// `e_name_index` values.
const INDEX_USER: u8 = 1;
const INDEX_TRUSTED: u8 = 4;
const INDEX_POSIX_ACL_ACCESS: u8 = 2;
const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
const INDEX_SYSTEM: u8 = 7;
/// Values e2fsprogs parses or that are structure rather than content:
/// POSIX ACLs (2, 3), other `system.*` (7; `system.data` is handled as
/// inline content), richacl (8) and the encryption context (9).
const KEEP_VALUES: [u8; 5] = [
    INDEX_POSIX_ACL_ACCESS,
    INDEX_POSIX_ACL_DEFAULT,
    INDEX_SYSTEM,
    8,
    9,
];

/// The xattr magic (`EXT2_EXT_ATTR_MAGIC`).
pub(crate) const MAGIC: u32 = 0xEA02_0000;

const NAME_HASH_SHIFT: u32 = 5;
const VALUE_HASH_SHIFT: u32 = 16;

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// `ext2fs_ext_attr_hash_entry` (unsigned chars) or its `_signed` twin, over
/// the name only.
fn name_hash(name: &[u8], signed: bool) -> u32 {
    name.iter().fold(0u32, |h, &c| {
        let c = if signed {
            c as i8 as i32 as u32
        } else {
            u32::from(c)
        };
        (h << NAME_HASH_SHIFT) ^ (h >> (32 - NAME_HASH_SHIFT)) ^ c
    })
}

/// Continues an entry hash over value words (value padded to 4 bytes).
fn value_hash(mut h: u32, padded: &[u8]) -> u32 {
    for w in padded.chunks_exact(4) {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        h = (h << VALUE_HASH_SHIFT) ^ (h >> (32 - VALUE_HASH_SHIFT)) ^ v;
    }
    h
}

/// `ext2fs_ext_attr_block_rehash` over the entries' stored hashes.
fn block_hash(hashes: &[u32]) -> u32 {
    let mut h = 0u32;
    for &e in hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

struct Entry {
    off: usize,
    name_len: usize,
    index: u8,
    value: Option<(usize, usize)>, // absolute [start, padded end)
    value_size: usize,
    inum: u32,
}

/// Parses the entry list at `buf[first..end]`; values at `value_base +
/// e_value_offs`. Returns the entries and whether the list was well formed
/// (terminated, every entry and value inside the area).
fn parse(buf: &[u8], first: usize, value_base: usize, end: usize) -> (Vec<Entry>, bool) {
    let mut out = Vec::new();
    let mut off = first;
    loop {
        if off + 4 > end {
            return (out, false);
        }
        if le32(buf, off) == Some(0) {
            return (out, true);
        }
        if off + 16 > end {
            return (out, false);
        }
        let name_len = usize::from(buf[off]);
        let index = buf[off + 1];
        let offs = usize::from(le16(buf, off + 2).unwrap_or(0));
        let inum = le32(buf, off + 4).unwrap_or(0);
        let size = le32(buf, off + 8).unwrap_or(0) as usize;
        let next = off + ((name_len + 16 + 3) & !3);
        if off + 16 + name_len > end {
            return (out, false);
        }
        let value = if inum == 0 && size != 0 {
            let s = value_base + offs;
            let e = s.checked_add((size + 3) & !3);
            match e {
                Some(e) if e <= end && s >= first => Some((s, e)),
                _ => None,
            }
        } else {
            None
        };
        out.push(Entry {
            off,
            name_len,
            index,
            value,
            value_size: size,
            inum,
        });
        off = next;
    }
}

/// What the caller does with the `system.data` value (inline file content):
/// called with the whole buffer and the value's `[start, end)`.
pub(crate) type InlineFn<'a> = &'a mut dyn FnMut(&mut [u8], usize, usize, &mut Namer);

/// Scrambles the entries in `buf[first..end]` (values at `value_base +
/// offset`). `owner` names the inode or block in the map. Returns the old
/// and new entry hashes (for the block hash) and whether the area parsed.
pub(crate) fn scramble_area(
    buf: &mut [u8],
    first: usize,
    value_base: usize,
    end: usize,
    owner: u64,
    namer: &mut Namer,
    stats: &mut Stats,
    inline: InlineFn<'_>,
) -> (Vec<u32>, Vec<u32>, bool) {
    let end = end.min(buf.len());
    let (entries, clean) = parse(buf, first, value_base, end);
    // The entry table (with its terminator when parsed to the end): a
    // value overlapping it (corruption) is left alone, or zeroing it would
    // rewrite the entries e2fsck walks.
    let table_end = entries
        .last()
        .map_or(first, |e| e.off + ((e.name_len + 16 + 3) & !3))
        + if clean { 4 } else { 0 };
    let mut old_hashes = Vec::new();
    let mut new_hashes = Vec::new();
    let mut names_here: HashSet<Vec<u8>> = HashSet::new();
    for e in &entries {
        let n = e.off + 16;
        names_here.insert(buf[n..n + e.name_len].to_vec());
    }
    // Phase 1: what every entry hash is before anything changes (values may
    // overlap on corrupted filesystems).
    struct Before {
        name: Vec<u8>,
        stored: u32,
        valid: bool,
    }
    let before: Vec<Before> = entries
        .iter()
        .map(|e| {
            let n = e.off + 16;
            let name = buf[n..n + e.name_len].to_vec();
            let stored = le32(buf, e.off + 12).unwrap_or(0);
            let value = e.value.map_or(&[][..], |(s, t)| &buf[s..t]);
            let valid = (e.value.is_some() || e.value_size == 0)
                && (stored == value_hash(name_hash(&name, false), value)
                    || stored == value_hash(name_hash(&name, true), value));
            Before {
                name,
                stored,
                valid,
            }
        })
        .collect();
    // Phase 2: names and values.
    for (e, b) in entries.iter().zip(&before) {
        let n = e.off + 16;
        let old_name = &b.name;
        // An EA-inode entry's hash chains the EA inode's own hash, which is
        // not at hand: its name changes only when signedness cannot matter.
        let ea_ambiguous = e.inum != 0 && old_name.iter().any(|&c| c >= 0x80);
        if (e.index == INDEX_USER || e.index == INDEX_TRUSTED) && e.name_len > 0 && !ea_ambiguous {
            let mut k = 0u64;
            let new_name = loop {
                let c = namer.keyed(old_name, k, &|_| false);
                if !names_here.contains(&c) || k > 1000 {
                    break c;
                }
                k += 1;
            };
            names_here.insert(new_name.clone());
            buf[n..n + e.name_len].copy_from_slice(&new_name);
            namer.record_xattr_name(owner, &new_name, old_name);
            stats.xattr_names += 1;
        }
        if let Some((s, t)) = e.value.filter(|&(s, _)| s >= table_end) {
            let is_data = e.index == INDEX_SYSTEM && old_name == b"data";
            if is_data {
                let vend = (s + e.value_size).min(t);
                inline(buf, s, vend, namer);
                buf[vend..t].fill(0);
            } else if !KEEP_VALUES.contains(&e.index) {
                buf[s..t].fill(0);
                stats.xattr_values += 1;
            }
        }
    }
    // Phase 3: entry hashes, only where they were right.
    for (e, b) in entries.iter().zip(&before) {
        let n = e.off + 16;
        let new_name = buf[n..n + e.name_len].to_vec();
        let new_hash = if e.inum != 0 {
            // EA inode: hash(name) chained with the EA inode's value hash,
            // which cancels out of the difference.
            let d = name_hash(&b.name, false) ^ name_hash(&new_name, false);
            Some(b.stored ^ d.rotate_left(VALUE_HASH_SHIFT))
        } else if b.valid {
            let value = e.value.map_or(&[][..], |(s, t)| &buf[s..t]);
            Some(value_hash(name_hash(&new_name, false), value))
        } else {
            None
        };
        old_hashes.push(b.stored);
        match new_hash {
            Some(h) => {
                if h != b.stored {
                    buf[e.off + 12..e.off + 16].copy_from_slice(&h.to_le_bytes());
                }
                new_hashes.push(h);
            }
            None => new_hashes.push(b.stored),
        }
    }
    if clean {
        // Zero what no entry and no value uses: stale values and names.
        let mut used = vec![false; end - first];
        let list_end = entries
            .last()
            .map_or(first, |e| e.off + ((e.name_len + 16 + 3) & !3))
            + 4;
        for u in used.iter_mut().take(list_end.min(end) - first) {
            *u = true;
        }
        for e in &entries {
            if let Some((s, t)) = e.value {
                for u in &mut used[s - first..t - first] {
                    *u = true;
                }
            } else if e.inum == 0 && e.value_size != 0 {
                // A value out of bounds: leave everything as it is.
                return (old_hashes, new_hashes, clean);
            }
        }
        for (i, u) in used.iter().enumerate() {
            if !u {
                buf[first + i] = 0;
            }
        }
    }
    (old_hashes, new_hashes, clean)
}

/// An xattr block: entries, values, block hash and checksum.
pub(crate) fn xattr_block(
    block: &mut [u8],
    blocknr: u64,
    metadata_csum: bool,
    namer: &mut Namer,
    stats: &mut Stats,
) {
    if le32(block, 0) != Some(MAGIC) || block.len() < 32 {
        stats.xattr_blocks_unrecognised += 1;
        return;
    }
    let old = block.to_vec();
    let bs = block.len();
    let (old_h, new_h, _) = scramble_area(
        block,
        32,
        0,
        bs,
        blocknr,
        namer,
        stats,
        &mut |b, s, t, _| b[s..t].fill(0),
    );
    let stored = le32(block, 12).unwrap_or(0);
    if stored == block_hash(&old_h) {
        block[12..16].copy_from_slice(&block_hash(&new_h).to_le_bytes());
    }
    if metadata_csum {
        let delta = crc_delta(&old, block);
        let c = le32(block, 16).unwrap_or(0) ^ delta;
        block[16..20].copy_from_slice(&c.to_le_bytes());
    }
    stats.xattr_blocks += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hash_signedness() {
        assert_eq!(name_hash(b"abc", false), name_hash(b"abc", true));
        assert_ne!(name_hash(b"\xe9", false), name_hash(b"\xe9", true));
    }
}
