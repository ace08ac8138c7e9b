//! Directory blocks: leaf blocks (linear and htree), dx index blocks, and the
//! entry lists of inline directories.
//!
//! Entry layout (`ext2_dir_entry_2`): 0 inode (le32), 4 rec_len (le16),
//! 6 name_len (u8), 7 file_type (u8), 8 name. Checksummed leaves end with a
//! 12-byte fake entry (inode 0, rec_len 12, name_len 0, type 0xde, crc32c).
//! Only names and dead bytes change; every structural field stays, so
//! e2fsck's walk over the block is the one it did on the original.

use super::csum::crc_delta;
use super::names::{HashTarget, LeafRange, NameContext, Namer};
use super::{DirInfo, Params, Stats};

const TAIL_LEN: usize = 12;

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// `ext2fs_get_rec_len`: block sizes of 64 KiB and more encode the length.
pub(crate) fn rec_len(raw: u16, block_size: usize) -> usize {
    let len = usize::from(raw);
    if block_size < 65536 {
        len
    } else if raw == 65535 || raw == 0 {
        block_size
    } else {
        (len & 65532) | ((len & 3) << 16)
    }
}

/// Whether the block ends in a checksum tail (by its fixed fields).
pub(crate) fn has_tail(block: &[u8]) -> bool {
    let Some(t) = block.len().checked_sub(TAIL_LEN) else {
        return false;
    };
    le32(block, t) == Some(0)
        && le16(block, t + 4) == Some(TAIL_LEN as u16)
        && block.get(t + 6) == Some(&0)
        && block.get(t + 7) == Some(&0xde)
}

/// Whether a non-first directory block is an htree interior node as e2fsck
/// recognises one (fake entry spanning the block, limit as expected).
pub(crate) fn looks_like_dx_node(block: &[u8], metadata_csum: bool) -> bool {
    let bs = block.len();
    let csum = if metadata_csum { 8 } else { 0 };
    le32(block, 0) == Some(0)
        && rec_len(le16(block, 4).unwrap_or(0), bs) == bs
        && block.get(6) == Some(&0)
        && le16(block, 8).map(usize::from) == Some((bs - (8 + csum)) / 8)
}

/// Whether block 0 looks like a dx root: "." then ".." spanning the rest,
/// followed by a dx_root_info with `reserved_zero == 0` and `info_length 8`.
fn looks_like_dx_root(block: &[u8]) -> bool {
    let bs = block.len();
    block.get(8) == Some(&b'.')
        && le16(block, 16).map(|r| rec_len(r, bs)) == Some(bs - 12)
        && block.get(18) == Some(&2)
        && block.get(20..22) == Some(&b".."[..])
        && le32(block, 24) == Some(0)
        && block.get(29) == Some(&8)
}

/// Replaces the names of the entries in `buf[start..end]` and zeroes dead
/// bytes (the slack after each name, deleted entries' names). Returns false
/// when the walk met a malformed entry; the bytes from there on are left as
/// they are (e2fsck salvages them by heuristics this must not disturb).
pub(crate) fn scramble_entries(
    buf: &mut [u8],
    start: usize,
    end: usize,
    block_size: usize,
    ctx: &NameContext,
    namer: &mut Namer,
) -> bool {
    let end = end.min(buf.len());
    namer.warm(
        ctx.dir,
        EntryNames {
            buf,
            off: start,
            end,
            block_size,
        },
    );
    // The name being replaced (the entry's bytes change under it).
    let mut copy: Vec<u8> = Vec::with_capacity(255);
    let mut off = start;
    while off < end {
        if end - off < 8 {
            return false;
        }
        let (Some(ino), Some(raw)) = (le32(buf, off), le16(buf, off + 4)) else {
            return false;
        };
        let rl = rec_len(raw, block_size);
        let name_len = usize::from(buf[off + 6]);
        if rl < 12 || rl % 4 != 0 || off + rl > end || (name_len + 8 + 3) & !3 > rl {
            return false;
        }
        let name_end = off + 8 + name_len;
        if ino != 0 && name_len > 0 {
            copy.clear();
            copy.extend_from_slice(&buf[off + 8..name_end]);
            let name = &copy[..];
            let c = NameContext { inode: ino, ..*ctx };
            if let Some(r) = namer.entry_name(&c, name) {
                buf[off + 8..name_end].copy_from_slice(&r);
            }
            // e2fsck checks the byte after "." and ".." is NUL: keep it.
            let keep = usize::from(name == b"." || name == b"..");
            if name == b".." && off == 12 && start == 0 && looks_like_dx_root(buf) {
                // An htree root read as a leaf: its index lives here.
            } else {
                buf[(name_end + keep).min(off + rl)..off + rl].fill(0);
            }
        } else {
            buf[off + 8..off + rl].fill(0);
        }
        off += rl;
    }
    true
}

/// The names of live entries in `buf[off..end]`, as [`scramble_entries`]
/// walks them (stops at the first malformed entry).
struct EntryNames<'a> {
    buf: &'a [u8],
    off: usize,
    end: usize,
    block_size: usize,
}

impl<'a> Iterator for EntryNames<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let off = self.off;
            if off >= self.end || self.end - off < 8 {
                return None;
            }
            let ino = le32(self.buf, off)?;
            let rl = rec_len(le16(self.buf, off + 4)?, self.block_size);
            let name_len = usize::from(*self.buf.get(off + 6)?);
            if rl < 12 || rl % 4 != 0 || off + rl > self.end || (name_len + 8 + 3) & !3 > rl {
                return None;
            }
            self.off = off + rl;
            if ino != 0 && name_len > 0 {
                return self.buf.get(off + 8..off + 8 + name_len);
            }
        }
    }
}

/// A leaf block of a directory (linear, or an htree leaf with its range).
pub(crate) fn leaf_block(
    block: &mut [u8],
    p: &Params,
    dir: &DirInfo,
    range: Option<LeafRange>,
    namer: &mut Namer,
    stats: &mut Stats,
) {
    if dir.encrypted {
        stats.encrypted_skipped += 1;
        return;
    }
    let bs = block.len();
    if looks_like_dx_node(block, p.metadata_csum) {
        dx_block(block, p, false);
        return;
    }
    let tail = p.metadata_csum && has_tail(block);
    let end = if tail { bs - TAIL_LEN } else { bs };
    let old = if tail {
        block[..end].to_vec()
    } else {
        Vec::new()
    };
    let target = match (range, dir.hash_version) {
        (Some(range), Some(version)) => Some(HashTarget {
            version,
            seed: p.hash_seed,
            range,
        }),
        _ => None,
    };
    let ctx = NameContext {
        dir: dir.ino,
        inode: 0,
        casefold: dir.casefold,
        target,
    };
    if !scramble_entries(block, 0, end, bs, &ctx, namer) {
        stats.dir_blocks_malformed += 1;
    }
    stats.dir_blocks += 1;
    if tail {
        let delta = crc_delta(&old, &block[..end]);
        if let Some(c) = block.get_mut(bs - 4..) {
            let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ delta;
            c.copy_from_slice(&stored.to_le_bytes());
        }
    }
}

/// An htree root or interior node: the index is hashes and block numbers
/// (kept); the unused entry slots between `count` and `limit` are zeroed
/// (they are outside the node checksum).
pub(crate) fn dx_block(block: &mut [u8], p: &Params, is_root: bool) {
    let bs = block.len();
    let co = if is_root {
        24 + usize::from(block.get(29).copied().unwrap_or(8))
    } else {
        8
    };
    let csum = if p.metadata_csum { 8 } else { 0 };
    let (Some(limit), Some(count)) = (le16(block, co), le16(block, co + 2)) else {
        return;
    };
    let (limit, count) = (usize::from(limit), usize::from(count));
    let expect = bs.saturating_sub(csum + co) / 8;
    if count <= limit && limit <= expect {
        if let Some(s) = block.get_mut(co + 8 * count..co + 8 * limit) {
            s.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rec_len_large_blocks() {
        assert_eq!(rec_len(12, 4096), 12);
        assert_eq!(rec_len(0, 65536), 65536);
        assert_eq!(rec_len(65535, 65536), 65536);
        assert_eq!(rec_len(4 | 1, 65536), 4 | 65536);
    }
}
