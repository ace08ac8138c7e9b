//! The directory-index (htree) name hashes, as e2fsprogs computes them.
//!
//! Three algorithms exist (legacy `dx_hack_hash`, `half_md4`, `tea`), each in
//! a "signed" and an "unsigned" variant that differ only for name bytes
//! `>= 0x80` (they were once computed with the platform's `char`). The
//! version stored in a dx root is 0-2; the superblock flag
//! `EXT2_FLAGS_UNSIGNED_HASH` adds 3 ([`HashVersion::from_root`]).
//!
//! The result follows `ext2fs_dirhash`: the major hash has its low bit
//! cleared (the index uses that bit as the "collision continues" flag).
//! e2fsck judges htree leaves with exactly this function, so this module
//! follows e2fsprogs rather than the kernel where the two differ (the
//! kernel additionally maps the major hash `0xfffffffe` to `0xfffffffc`).

/// The seed `ext2fs_dirhash` uses when the superblock's `s_hash_seed` is all
/// zero (the MD4 initial state).
pub const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// A directory hash algorithm with its character signedness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashVersion {
    /// `dx_hack_hash` over signed chars (on-disk 0).
    Legacy,
    /// Truncated MD4 over signed chars (on-disk 1).
    HalfMd4,
    /// TEA in Davies-Meyer mode over signed chars (on-disk 2).
    Tea,
    /// `dx_hack_hash` over unsigned chars (3).
    LegacyUnsigned,
    /// Truncated MD4 over unsigned chars (4).
    HalfMd4Unsigned,
    /// TEA over unsigned chars (5).
    TeaUnsigned,
}

impl HashVersion {
    /// The version as numbered by e2fsprogs (`EXT2_HASH_*`, 0-5).
    pub fn from_number(n: u8) -> Option<HashVersion> {
        Some(match n {
            0 => HashVersion::Legacy,
            1 => HashVersion::HalfMd4,
            2 => HashVersion::Tea,
            3 => HashVersion::LegacyUnsigned,
            4 => HashVersion::HalfMd4Unsigned,
            5 => HashVersion::TeaUnsigned,
            _ => return None,
        })
    }

    /// The number e2fsprogs uses for this version (`EXT2_HASH_*`).
    pub fn number(self) -> u8 {
        match self {
            HashVersion::Legacy => 0,
            HashVersion::HalfMd4 => 1,
            HashVersion::Tea => 2,
            HashVersion::LegacyUnsigned => 3,
            HashVersion::HalfMd4Unsigned => 4,
            HashVersion::TeaUnsigned => 5,
        }
    }

    /// The effective version of a directory whose dx root says
    /// `root_version`, on a filesystem whose superblock has (or lacks) the
    /// `EXT2_FLAGS_UNSIGNED_HASH` flag, as e2fsck pass 2 derives it.
    ///
    /// Versions above 2 in the root are taken literally; unknown ones
    /// (e.g. 6, SipHash for encrypted+casefolded dirs) give `None`.
    pub fn from_root(root_version: u8, unsigned_flag: bool) -> Option<HashVersion> {
        let n = if root_version <= 2 && unsigned_flag {
            root_version + 3
        } else {
            root_version
        };
        HashVersion::from_number(n)
    }

    /// The name `debugfs dx_hash -h` accepts for the algorithm (signedness
    /// is chosen there with `-s`/`-u`... not at all in 1.47: see tests).
    pub fn algorithm_name(self) -> &'static str {
        match self {
            HashVersion::Legacy | HashVersion::LegacyUnsigned => "legacy",
            HashVersion::HalfMd4 | HashVersion::HalfMd4Unsigned => "half_md4",
            HashVersion::Tea | HashVersion::TeaUnsigned => "tea",
        }
    }

    fn unsigned(self) -> bool {
        matches!(
            self,
            HashVersion::LegacyUnsigned | HashVersion::HalfMd4Unsigned | HashVersion::TeaUnsigned
        )
    }
}

/// Hash of `name` with `version` and the superblock's `s_hash_seed`
/// (an all-zero seed means [`DEFAULT_SEED`]), as `(major, minor)`.
///
/// `major` has bit 0 cleared; `minor` is 0 for the legacy hash.
pub fn dirhash(version: HashVersion, name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    let mut buf = if seed.iter().all(|&w| w == 0) {
        DEFAULT_SEED
    } else {
        *seed
    };
    let unsigned = version.unsigned();
    let (major, minor) = match version {
        HashVersion::Legacy | HashVersion::LegacyUnsigned => (dx_hack_hash(name, unsigned), 0),
        HashVersion::HalfMd4 | HashVersion::HalfMd4Unsigned => {
            for chunk in name.chunks(32) {
                let mut words = [0u32; 8];
                str2hashbuf(chunk, name_len_from(name, chunk), &mut words, unsigned);
                half_md4_transform(&mut buf, &words);
            }
            (buf[1], buf[2])
        }
        HashVersion::Tea | HashVersion::TeaUnsigned => {
            for chunk in name.chunks(16) {
                let mut words = [0u32; 4];
                str2hashbuf(chunk, name_len_from(name, chunk), &mut words, unsigned);
                tea_transform(&mut buf, &words);
            }
            (buf[0], buf[1])
        }
    };
    (major & !1, minor)
}

/// The remaining length e2fsprogs passes to `str2hashbuf` for `chunk`: the
/// padding word is built from the length left, not the chunk's length.
fn name_len_from(name: &[u8], chunk: &[u8]) -> usize {
    let start = chunk.as_ptr() as usize - name.as_ptr() as usize;
    name.len() - start
}

/// A byte as the C code sees it through a signed or unsigned `char`.
#[inline]
fn char_value(b: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(b)
    } else {
        b as i8 as i32 as u32
    }
}

fn dx_hack_hash(name: &[u8], unsigned: bool) -> u32 {
    let (mut hash0, mut hash1): (u32, u32) = (0x12a3_fe2d, 0x37ab_e8f9);
    for &b in name {
        let c = char_value(b, unsigned);
        let mut hash = hash1.wrapping_add(hash0 ^ c.wrapping_mul(7_152_373));
        if hash & 0x8000_0000 != 0 {
            hash = hash.wrapping_sub(0x7fff_ffff);
        }
        hash1 = hash0;
        hash0 = hash;
    }
    hash0 << 1
}

/// Packs up to `4 * words.len()` bytes of `chunk` big-endian-ish into words,
/// padding with a word made of the remaining length (`len_left`).
fn str2hashbuf(chunk: &[u8], len_left: usize, words: &mut [u32], unsigned: bool) {
    let len8 = len_left as u32 & 0xff;
    let mut pad = len8 | (len8 << 8);
    pad |= pad << 16;
    let num = words.len();
    let take = chunk.len().min(num * 4);
    let mut val = pad;
    let mut w = 0;
    for (i, &b) in chunk[..take].iter().enumerate() {
        val = char_value(b, unsigned).wrapping_add(val << 8);
        if i % 4 == 3 {
            words[w] = val;
            w += 1;
            val = pad;
        }
    }
    if w < num {
        words[w] = val;
        w += 1;
    }
    for word in &mut words[w..] {
        *word = pad;
    }
}

fn tea_transform(buf: &mut [u32; 4], input: &[u32; 4]) {
    const DELTA: u32 = 0x9E37_79B9;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let [a, b, c, d] = *input;
    let mut sum: u32 = 0;
    for _ in 0..16 {
        sum = sum.wrapping_add(DELTA);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ b1.wrapping_add(sum) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ b0.wrapping_add(sum) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    #[inline(always)]
    fn f(x: u32, y: u32, z: u32) -> u32 {
        z ^ (x & (y ^ z))
    }
    #[inline(always)]
    fn g(x: u32, y: u32, z: u32) -> u32 {
        (x & y).wrapping_add((x ^ y) & z)
    }
    #[inline(always)]
    fn h(x: u32, y: u32, z: u32) -> u32 {
        x ^ y ^ z
    }
    #[inline(always)]
    fn step(fun: fn(u32, u32, u32) -> u32, a: u32, b: u32, c: u32, d: u32, w: u32, s: u32) -> u32 {
        a.wrapping_add(fun(b, c, d)).wrapping_add(w).rotate_left(s)
    }
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;

    a = step(f, a, b, c, d, x[0], 3);
    d = step(f, d, a, b, c, x[1], 7);
    c = step(f, c, d, a, b, x[2], 11);
    b = step(f, b, c, d, a, x[3], 19);
    a = step(f, a, b, c, d, x[4], 3);
    d = step(f, d, a, b, c, x[5], 7);
    c = step(f, c, d, a, b, x[6], 11);
    b = step(f, b, c, d, a, x[7], 19);

    a = step(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    d = step(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    c = step(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    b = step(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    a = step(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    d = step(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    c = step(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    b = step(g, b, c, d, a, x[6].wrapping_add(K2), 13);

    a = step(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    d = step(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    c = step(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    b = step(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    a = step(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    d = step(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    c = step(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    b = step(h, b, c, d, a, x[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_unsigned_flag() {
        for n in 0..6 {
            assert_eq!(HashVersion::from_number(n).map(|v| v.number()), Some(n));
        }
        assert_eq!(
            HashVersion::from_root(1, true),
            Some(HashVersion::HalfMd4Unsigned)
        );
        assert_eq!(HashVersion::from_root(1, false), Some(HashVersion::HalfMd4));
        assert_eq!(HashVersion::from_root(6, false), None);
    }

    #[test]
    fn signedness_matters_only_for_high_bytes() {
        let seed = [1, 2, 3, 4];
        for (s, u) in [
            (HashVersion::Legacy, HashVersion::LegacyUnsigned),
            (HashVersion::HalfMd4, HashVersion::HalfMd4Unsigned),
            (HashVersion::Tea, HashVersion::TeaUnsigned),
        ] {
            assert_eq!(
                dirhash(s, b"plain-ascii", &seed),
                dirhash(u, b"plain-ascii", &seed)
            );
            assert_ne!(
                dirhash(s, b"caf\xc3\xa9", &seed),
                dirhash(u, b"caf\xc3\xa9", &seed)
            );
        }
    }

    #[test]
    fn zero_seed_is_default_seed() {
        assert_eq!(
            dirhash(HashVersion::HalfMd4, b"name", &[0; 4]),
            dirhash(HashVersion::HalfMd4, b"name", &DEFAULT_SEED)
        );
    }
}
