//! Choosing replacement names: private, consistent, unique, and placed so the
//! directory index stays valid.
//!
//! * Replacements are **numbered**: a name of four bytes or more becomes a
//!   filler fixed per length (keyed, so two exports look unrelated) followed
//!   by a number of up to eight hex digits. Numbers are handed out per
//!   length in the order names are met (disk order), so they say nothing
//!   about the names, and a block's replacements differ only in their last
//!   characters: they compress like the originals rather than like random
//!   text (hex rather than base 36: in a directory filled in order, names
//!   and inode numbers then repeat with the same period, which zstd finds).
//!   Shorter names (and names with bytes that must stay) are keyed PRF
//!   output instead.
//! * The **canonical** replacement of a name is the one numbered at its first
//!   appearance (a keyed PRF of the name for short ones). It is what every
//!   linear directory and every symlink component gets, so the same name maps
//!   to the same replacement across the image.
//! * Lowercase ASCII is stable under casefolding (`utf8` NFD + casefold is the
//!   identity on it), so the hash e2fsck computes for a casefolded directory
//!   is the hash of the replacement itself; and ASCII hashes the same with
//!   signed and unsigned chars.
//! * In an htree leaf, the replacement's hash must keep the relation the
//!   original had with the leaf's index range (see [`LeafRange::region`]).
//!   The canonical name is tried first; otherwise a candidate is taken from a
//!   shared pool of names sorted by hash (names of 1-3 characters: the
//!   whole space, enumerated once; longer: freshly numbered candidates, kept
//!   when they miss so later leaves find them). A name keeps its original bytes
//!   only when no candidate fits — in practice names of one or two bytes in
//!   large htree directories, or a leaf whose range is a single hash value.
//! * Names are unique within a directory: every name written (replaced or
//!   kept) is recorded per directory, and a taken candidate is skipped. A
//!   name seen twice in one directory (a corruption e2fsck reports) gets the
//!   same replacement again, so the duplicate stays visible.

use super::key::ScrambleKey;
use crate::hash::{dirhash, HashVersion};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Lowercase letters and digits: safe in every directory and casefold-stable.
pub(crate) const BASE36: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

const DOMAIN_CANONICAL: u64 = 0x6e61_6d65_0000_0000;
const DOMAIN_POOL: u64 = 0x706f_6f6c_0000_0000;
const DOMAIN_FINGERPRINT: u64 = 0x6670_0000_0000_0000;
const DOMAIN_START: u64 = 0x7374_6172_0000_0000;
const DOMAIN_FILLER: u64 = 0x6669_6c6c_0000_0000;

/// Names this long or longer get numbered replacements.
const NUMBERED_MIN_LEN: usize = 4;
/// Hex digits of a numbered replacement (at most; fewer in shorter names).
const NUMBER_DIGITS: usize = 8;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Bytes per chunk of the replacement store.
const STORE_CHUNK: usize = 1 << 20;

/// Candidates kept in the shared pools in total (bounds memory at ~20 MiB).
const POOL_CAP: usize = 600_000;
/// Hash evaluations spent on one name before it is kept as it is.
const MAX_DRAWS: u64 = 1 << 21;

/// The index range e2fsck assigns to an htree leaf block.
///
/// `lo` is the hash key of the index entry pointing at the leaf (0 for the
/// first entry), `hi` the next entry's key with bit 0 cleared, or
/// `0xfffffffe` for the last entry (e2fsck's `node_min_hash` /
/// `node_max_hash`). e2fsck reports a leaf whose smallest name hash is below
/// `lo` or whose largest is above `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRange {
    /// Smallest hash the leaf may hold (inclusive).
    pub lo: u32,
    /// Largest hash e2fsck accepts in the leaf (inclusive).
    pub hi: u32,
}

impl LeafRange {
    /// The hashes a replacement may have so that e2fsck's comparisons with
    /// `lo` and `hi` come out as they did for the original (`orig`, `None`
    /// when it cannot be computed and is assumed in range), as an inclusive
    /// interval, or `None` when empty.
    ///
    /// For a name inside the range the upper end is made exclusive (the
    /// kernel looks a hash equal to `hi` up in the next leaf) unless the leaf
    /// holds a single hash value.
    pub fn region(self, orig: Option<u32>) -> Option<(u32, u32)> {
        let (lo, hi) = (self.lo, self.hi);
        let h = orig.unwrap_or(lo);
        let below = orig.is_some() && h < lo;
        let above = orig.is_some() && h > hi;
        let (a, b) = match (below, above) {
            (false, false) => {
                if lo > hi {
                    // Only reachable when orig is None on a reversed range.
                    return None;
                }
                (lo, if hi > lo { hi - 1 } else { hi })
            }
            (true, false) => (0, lo.checked_sub(1)?.min(hi)),
            (false, true) => (lo.max(hi.checked_add(1)?), u32::MAX),
            (true, true) => (hi.checked_add(1)?, lo.checked_sub(1)?),
        };
        (a <= b).then_some((a, b))
    }
}

/// How a directory hashes its names, for placing replacements in htree
/// leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashTarget {
    /// The directory's effective hash version (root version + unsigned flag).
    pub version: HashVersion,
    /// The superblock's `s_hash_seed`.
    pub seed: [u32; 4],
    /// The leaf's index range.
    pub range: LeafRange,
}

/// What constrains the replacement of one directory entry name.
#[derive(Debug, Clone, Copy)]
pub struct NameContext {
    /// Directory inode the entry is in.
    pub dir: u32,
    /// Inode the entry points at (recorded in the map).
    pub inode: u32,
    /// The directory is casefolded (`EXT4_CASEFOLD_FL`).
    pub casefold: bool,
    /// Set for entries of htree leaves.
    pub target: Option<HashTarget>,
}

/// Bytes in a form JSON can carry losslessly: text when UTF-8, hex otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Name {
    /// The bytes as text (lossy when `hex` is present).
    pub text: String,
    /// The exact bytes in hex, only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hex: Option<String>,
}

impl Name {
    /// Wraps raw bytes.
    pub fn from_bytes(b: &[u8]) -> Name {
        match std::str::from_utf8(b) {
            Ok(s) => Name {
                text: s.to_owned(),
                hex: None,
            },
            Err(_) => Name {
                text: String::from_utf8_lossy(b).into_owned(),
                hex: Some(b.iter().map(|x| format!("{x:02x}")).collect()),
            },
        }
    }
}

/// One replaced directory entry name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMapping {
    /// Inode number of the directory holding the entry.
    pub dir: u32,
    /// Inode number the entry points at (first one seen).
    pub inode: u32,
    /// The name as it appears in the exported image.
    pub replacement: Name,
    /// The customer's name.
    pub original: Name,
}

/// One replaced symlink target or user xattr name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeMapping {
    /// Inode number of the symlink / the inode or xattr block holding the
    /// attribute (for xattr blocks: the block number).
    pub owner: u64,
    /// As it appears in the exported image.
    pub replacement: Name,
    /// The customer's bytes.
    pub original: Name,
}

/// The table the customer keeps (`--map FILE`): replacement -> original.
/// It is written locally by the CLI and never goes into the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameMap {
    /// Directory entry names, in the order they were replaced.
    pub entries: Vec<EntryMapping>,
    /// Symlink targets (fast, slow and inline).
    pub symlinks: Vec<InodeMapping>,
    /// `user.*` and `trusted.*` attribute names (without the prefix).
    pub xattr_names: Vec<InodeMapping>,
}

impl NameMap {
    /// The original name of `replacement` in directory `dir`, if replaced.
    pub fn original_of(&self, dir: u32, replacement: &[u8]) -> Option<&Name> {
        let r = Name::from_bytes(replacement);
        self.entries
            .iter()
            .find(|e| e.dir == dir && e.replacement == r)
            .map(|e| &e.original)
    }
}

/// Counts of what the namer did, for the export report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameStats {
    /// Entry names replaced by their canonical replacement.
    pub canonical: u64,
    /// Entry names replaced by another candidate (htree range or clash).
    pub placed: u64,
    /// Entry names left as they are because no candidate fitted; by length.
    pub kept: u64,
    /// Of `kept`, names of three or more bytes.
    pub kept_long: u64,
    /// Candidate hashes computed while placing names.
    pub hashes: u64,
}

#[derive(Default)]
struct Pool {
    /// (hash, candidate number), sorted by hash.
    set: BTreeSet<(u32, u64)>,
}

/// One replaced entry name; its replacement and original lie side by side
/// in the store (`store[chunk][off..off + 2 * len]`).
struct Replaced {
    dir: u32,
    inode: u32,
    chunk: u32,
    off: u32,
    len: u8,
}

/// The tables of one directory. Kept per directory, not image-wide: a
/// directory's blocks are scrambled one after another, and its small tables
/// stay in the CPU cache where image-wide ones miss it on every name.
#[derive(Default)]
struct DirTables {
    /// Hashes of the names present in the scrambled directory.
    used: HashSet<u64, FpBuild>,
    /// Fingerprint of an original -> index into `replaced`.
    memo: HashMap<u64, u32, FpBuild>,
}

/// The replacement engine. One per export.
pub struct Namer {
    key: ScrambleKey,
    /// Tables by directory (indexes from `dir_index`).
    dirs: Vec<DirTables>,
    dir_index: HashMap<u32, u32, FpBuild>,
    /// The directory looked up last and its index in `dirs`.
    cur_dir: Option<(u32, usize)>,
    /// Fingerprint of an original -> its canonical number.
    numbers: HashMap<u64, u64, FpBuild>,
    /// The next number to hand out, by name length.
    next_number: Vec<u64>,
    /// Keyed filler by name length (empty until first needed).
    fillers: Vec<Vec<u8>>,
    /// Pools by (hash version, length, wide charset).
    pools: HashMap<(u8, usize, u8), Pool>,
    pool_entries: usize,
    /// Entry names replaced, in order, and their bytes (in 1 MiB chunks:
    /// no large reallocations, a few bytes of bookkeeping per name).
    replaced: Vec<Replaced>,
    store: Vec<Vec<u8>>,
    /// Symlink targets and xattr names (entries are built from `replaced`).
    pub(crate) map: NameMap,
    pub(crate) stats: NameStats,
}

impl Namer {
    /// A namer drawing every replacement from `key`.
    pub fn new(key: ScrambleKey) -> Namer {
        Namer {
            key,
            dirs: Vec::new(),
            dir_index: HashMap::default(),
            cur_dir: None,
            numbers: HashMap::default(),
            next_number: Vec::new(),
            fillers: Vec::new(),
            pools: HashMap::new(),
            pool_entries: 0,
            replaced: Vec::new(),
            store: Vec::new(),
            map: NameMap::default(),
            stats: NameStats::default(),
        }
    }

    /// Makes room for about `names` entry names up front (rehashing the
    /// tables as they grow costs more than filling them). Capped: the hint
    /// comes from the superblock, which may lie.
    pub fn reserve(&mut self, names: usize) {
        let n = names.min(1 << 21);
        self.numbers.reserve(n);
        self.replaced.reserve(n);
    }

    /// Numbers the names of one block (those that may get numbered
    /// replacements) before they are replaced one by one: the lookups in
    /// the image-wide table of numbers miss the cache, and made back to back
    /// they overlap instead of each waiting in turn (the directory's own
    /// tables are small and stay cached). Numbers go in the order met, as
    /// [`Namer::entry_name`] would hand them out; a name that then takes
    /// another path just leaves its number unused.
    pub fn warm<'a>(&mut self, dir: u32, names: impl Iterator<Item = &'a [u8]>) {
        let mut fps: Vec<(u64, usize)> = Vec::with_capacity(128);
        for name in names {
            if name.len() >= NUMBERED_MIN_LEN && !is_kept_name(name) {
                fps.push((self.fingerprint(name), name.len()));
            }
        }
        for (fp, len) in fps {
            if self.next_number.len() <= len {
                self.next_number.resize(len + 1, 0);
            }
            let next = self.next_number[len];
            if *self.numbers.entry(fp).or_insert(next) == next {
                self.next_number[len] += 1;
            }
        }
        self.tables(dir);
    }

    /// The tables of `dir`, created when first needed.
    fn tables(&mut self, dir: u32) -> &mut DirTables {
        let i = self.dir_slot(dir);
        &mut self.dirs[i]
    }

    /// The index of `dir`'s tables in `dirs`, created when first needed.
    fn dir_slot(&mut self, dir: u32) -> usize {
        match self.cur_dir {
            Some((d, i)) if d == dir => i,
            _ => {
                let next = self.dirs.len();
                let i = *self.dir_index.entry(dir).or_insert(next as u32) as usize;
                if i == next {
                    self.dirs.push(DirTables::default());
                }
                self.cur_dir = Some((dir, i));
                i
            }
        }
    }

    fn fingerprint(&self, name: &[u8]) -> u64 {
        self.key.prf(DOMAIN_FINGERPRINT, name)
    }

    /// Fills `out` with keyed base-36 characters derived from `data`.
    pub(crate) fn fill_base36(&self, domain: u64, data: &[u8], out: &mut [u8]) {
        for (block, chunk) in out.chunks_mut(12).enumerate() {
            let mut v = self.key.prf(domain.wrapping_add(block as u64), data);
            for c in chunk {
                *c = BASE36[(v % 36) as usize];
                v /= 36;
            }
        }
    }

    /// The `k`-th keyed same-length replacement of `name` (k = 0 is the
    /// canonical one), with `pinned` bytes copied from the original.
    pub(crate) fn keyed(&self, name: &[u8], k: u64, pinned: &dyn Fn(u8) -> bool) -> Vec<u8> {
        let mut out = vec![0u8; name.len()];
        self.fill_base36(DOMAIN_CANONICAL ^ (k << 16), name, &mut out);
        for (o, &b) in out.iter_mut().zip(name) {
            if pinned(b) {
                *o = b;
            }
        }
        out
    }

    /// The keyed filler of numbered names of length `len`.
    fn filler(&mut self, len: usize) -> &[u8] {
        if self.fillers.len() <= len {
            self.fillers.resize(len + 1, Vec::new());
        }
        let n = len.saturating_sub(NUMBER_DIGITS);
        if self.fillers[len].len() != n {
            let mut f = vec![0u8; n];
            self.fill_base36(DOMAIN_FILLER, &(len as u64).to_le_bytes(), &mut f);
            self.fillers[len] = f;
        }
        &self.fillers[len]
    }

    /// Replacement number `n` for names of length `len`: the filler, then
    /// `n` in hex (most significant digit first, so consecutive numbers
    /// share all but the last characters). `None` when the digits cannot
    /// hold `n` or the length is too short.
    pub(crate) fn numbered(&mut self, len: usize, n: u64) -> Option<Vec<u8>> {
        if len < NUMBERED_MIN_LEN {
            return None;
        }
        let w = len.min(NUMBER_DIGITS);
        if n >= 16u64.pow(w as u32) {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(self.filler(len));
        out.extend_from_slice(&hex_digits(n, w)[..w]);
        Some(out)
    }

    /// A number never handed out before for names of length `len`.
    fn fresh_number(&mut self, len: usize) -> u64 {
        if self.next_number.len() <= len {
            self.next_number.resize(len + 1, 0);
        }
        let n = self.next_number[len];
        self.next_number[len] += 1;
        n
    }

    /// The canonical replacement of a name without pinned bytes whose
    /// fingerprint is `fp`: numbered at its first appearance, keyed when
    /// too short (or out of numbers).
    fn canonical_fp(&mut self, name: &[u8], fp: u64) -> Vec<u8> {
        if name.len() >= NUMBERED_MIN_LEN {
            // One probe of the (large, cache-missing) table per name.
            let len = name.len();
            if self.next_number.len() <= len {
                self.next_number.resize(len + 1, 0);
            }
            let next = self.next_number[len];
            let n = *self.numbers.entry(fp).or_insert(next);
            if n == next {
                self.next_number[len] += 1;
            }
            if let Some(c) = self.numbered(name.len(), n) {
                return c;
            }
        }
        self.keyed(name, 0, &|b| b == b'/' || b == 0)
    }

    /// The canonical replacement of a path component or attribute name.
    pub fn canonical(&mut self, name: &[u8]) -> Vec<u8> {
        if is_kept_name(name) {
            return name.to_vec();
        }
        if name.iter().any(|&b| b == b'/' || b == 0) {
            return self.keyed(name, 0, &|b| b == b'/' || b == 0);
        }
        let fp = self.fingerprint(name);
        self.canonical_fp(name, fp)
    }

    /// The map so far: every replaced entry name, symlink target and xattr
    /// name.
    pub fn name_map(&self) -> NameMap {
        let mut m = self.map.clone();
        m.entries = self
            .replaced
            .iter()
            .filter_map(|r| {
                let (s, len) = (r.off as usize, usize::from(r.len));
                let b = self.store.get(r.chunk as usize)?.get(s..s + 2 * len)?;
                Some(EntryMapping {
                    dir: r.dir,
                    inode: r.inode,
                    replacement: Name::from_bytes(&b[..len]),
                    original: Name::from_bytes(&b[len..]),
                })
            })
            .collect();
        m
    }

    /// The replacement recorded as `replaced[i]`.
    fn replacement_of(&self, i: u32) -> Option<Vec<u8>> {
        let r = self.replaced.get(i as usize)?;
        let (s, len) = (r.off as usize, usize::from(r.len));
        Some(self.store.get(r.chunk as usize)?.get(s..s + len)?.to_vec())
    }

    /// Records `original` -> `replacement` (same length, at most 255) in
    /// `dir`; returns its index.
    fn record(&mut self, dir: u32, inode: u32, replacement: &[u8], original: &[u8]) -> u32 {
        let len = original.len().min(255);
        let need = 2 * len;
        if self
            .store
            .last()
            .is_none_or(|c| c.len() + need > c.capacity())
        {
            self.store.push(Vec::with_capacity(STORE_CHUNK.max(need)));
        }
        let chunk = self.store.len() - 1;
        let c = &mut self.store[chunk];
        let off = c.len();
        c.extend_from_slice(&replacement[..len.min(replacement.len())]);
        c.resize(off + len, 0);
        c.extend_from_slice(&original[..len]);
        self.replaced.push(Replaced {
            dir,
            inode,
            chunk: chunk as u32,
            off: off as u32,
            len: len as u8,
        });
        (self.replaced.len() - 1) as u32
    }

    /// Marks `name` as present in `dir` (names kept as they are).
    fn mark_used(&mut self, dir: u32, name: &[u8]) {
        self.tables(dir).used.insert(name_hash(name));
    }

    fn is_used(&mut self, dir: u32, name: &[u8]) -> bool {
        self.tables(dir).used.contains(&name_hash(name))
    }

    fn fits(&mut self, t: &Option<HashTarget>, region: Option<(u32, u32)>, name: &[u8]) -> bool {
        match (t, region) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(t), Some((a, b))) => {
                self.stats.hashes += 1;
                let h = dirhash(t.version, name, &t.seed).0;
                a <= h && h <= b
            }
        }
    }

    /// The replacement for directory entry `name` (same length), or `None`
    /// to keep it as it is.
    pub fn entry_name(&mut self, ctx: &NameContext, name: &[u8]) -> Option<Vec<u8>> {
        if name.is_empty() || is_kept_name(name) {
            self.mark_used(ctx.dir, name);
            return None;
        }
        let region = ctx.target.map(|t| {
            let orig = original_hash(t.version, &t.seed, name, ctx.casefold);
            t.range.region(orig)
        });
        let region = region.flatten();
        let fp = self.fingerprint(name);
        if let Some(&i) = self.tables(ctx.dir).memo.get(&fp) {
            if let Some(prev) = self.replacement_of(i) {
                if self.fits(&ctx.target, region, &prev) {
                    return Some(prev);
                }
            }
        }
        // Bytes e2fsck judges a name by stay where they are: '/' and NUL
        // (illegal characters) and, in casefolded directories, the non-ASCII
        // bytes of a name that is not valid UTF-8 (replacing only ASCII bytes
        // by ASCII bytes keeps a byte string's UTF-8 validity as it was).
        let keep_high = ctx.casefold && std::str::from_utf8(name).is_err();
        let pinned = move |b: u8| b == b'/' || b == 0 || (keep_high && b >= 0x80);
        let has_pinned = name.iter().any(|&b| pinned(b));

        let mut marked = false;
        let chosen = if has_pinned {
            let mut found = None;
            for k in 0..MAX_DRAWS.min(1 << 16) {
                let c = self.keyed(name, k, &pinned);
                if !is_kept_name(&c)
                    && !self.is_used(ctx.dir, &c)
                    && self.fits(&ctx.target, region, &c)
                {
                    found = Some(c);
                    break;
                }
            }
            found
        } else {
            let c0 = self.canonical_fp(name, fp);
            if self.fits(&ctx.target, region, &c0)
                && self.tables(ctx.dir).used.insert(name_hash(&c0))
            {
                self.stats.canonical += 1;
                marked = true;
                Some(c0)
            } else {
                let found = self.search(ctx, name, region);
                if found.is_some() {
                    self.stats.placed += 1;
                }
                found
            }
        };
        match chosen {
            Some(c) => {
                if !marked {
                    self.mark_used(ctx.dir, &c);
                }
                let i = self.record(ctx.dir, ctx.inode, &c, name);
                self.tables(ctx.dir).memo.insert(fp, i);
                Some(c)
            }
            None => {
                self.stats.kept += 1;
                if name.len() >= 3 {
                    self.stats.kept_long += 1;
                }
                self.mark_used(ctx.dir, name);
                None
            }
        }
    }

    /// Finds an unused candidate of `name`'s length in `region` (or anywhere
    /// without a target).
    fn search(
        &mut self,
        ctx: &NameContext,
        name: &[u8],
        region: Option<(u32, u32)>,
    ) -> Option<Vec<u8>> {
        let len = name.len();
        let Some(t) = ctx.target else {
            // Linear directory: only a clash. Short names probe their whole
            // (small) space from a keyed start; long ones draw keyed
            // candidates.
            if len <= 3 {
                for wide in [false, true] {
                    if wide && len > 2 {
                        break;
                    }
                    let space = small_space(len, wide, ctx.casefold);
                    let n = space.len() as u64;
                    let start = self.key.prf(DOMAIN_START, name) % n.max(1);
                    for i in 0..n {
                        let c = space.name((start + i) % n);
                        if !is_kept_name(&c) && !self.is_used(ctx.dir, &c) {
                            return Some(c);
                        }
                    }
                }
                return None;
            }
            for k in 1..MAX_DRAWS {
                let n = self.fresh_number(len);
                let c = match self.numbered(len, n) {
                    Some(c) => c,
                    None => self.keyed(name, k, &|_| false),
                };
                if !self.is_used(ctx.dir, &c) {
                    return Some(c);
                }
            }
            return None;
        };
        let (a, b) = region?;
        let v = t.version.number();
        // Short names: the whole space sorted by hash, then a wider charset.
        if len <= 3 {
            for wide in [false, true] {
                if wide && len > 2 {
                    break;
                }
                let key = (v, len, u8::from(wide) + 2 * u8::from(ctx.casefold && wide));
                if !self.pools.contains_key(&key) {
                    let space = small_space(len, wide, ctx.casefold);
                    let mut pool = Pool::default();
                    for i in 0..space.len() as u64 {
                        let c = space.name(i);
                        let h = dirhash(t.version, &c, &t.seed).0;
                        pool.set.insert((h, i));
                    }
                    self.stats.hashes += space.len() as u64;
                    self.pools.insert(key, pool);
                }
                let space = small_space(len, wide, ctx.casefold);
                let di = self.dir_slot(ctx.dir);
                let used = &self.dirs[di].used;
                if let Some(p) = self.pools.get(&key) {
                    for &(_, i) in p.set.range((a, 0)..=(b, u64::MAX)) {
                        let c = space.name(i);
                        if !is_kept_name(&c) && !used.contains(&name_hash(&c)) {
                            return Some(c);
                        }
                    }
                }
            }
            return None;
        }
        // Longer names: the pool of keyed candidates of this length.
        let key = (v, len, 0);
        // Each candidate serves once: taken ones leave the pool, so the
        // first one in range is nearly always free.
        while let Some(&(h, i)) = self
            .pools
            .get(&key)
            .and_then(|p| p.set.range((a, 0)..=(b, u64::MAX)).next())
        {
            if let Some(p) = self.pools.get_mut(&key) {
                p.set.remove(&(h, i));
                self.pool_entries = self.pool_entries.saturating_sub(1);
            }
            let c = self.pool_name(v, len, i);
            if !self.is_used(ctx.dir, &c) {
                return Some(c);
            }
        }
        let mut found = None;
        let mut fresh = Vec::new();
        for _ in 0..MAX_DRAWS {
            let i = self.fresh_number(len);
            let c = self.pool_name(v, len, i);
            let h = dirhash(t.version, &c, &t.seed).0;
            self.stats.hashes += 1;
            if a <= h && h <= b && !self.is_used(ctx.dir, &c) {
                found = Some(c);
                break;
            }
            if self.pool_entries + fresh.len() < POOL_CAP {
                fresh.push((h, i));
            }
        }
        let pool = self.pools.entry(key).or_default();
        self.pool_entries += fresh.len();
        pool.set.extend(fresh);
        found
    }

    /// Pool candidate `i` (a number handed out for it): numbered, or keyed
    /// once the numbers no longer fit the length. The legacy hash mixes the
    /// last characters of a name so little that consecutive numbers land in
    /// a few narrow hash bands (70 draws a name instead of 2-3): its
    /// candidates are keyed.
    fn pool_name(&mut self, version: u8, len: usize, i: u64) -> Vec<u8> {
        let legacy = matches!(
            HashVersion::from_number(version),
            Some(HashVersion::Legacy | HashVersion::LegacyUnsigned)
        );
        if !legacy {
            if let Some(c) = self.numbered(len, i) {
                return c;
            }
        }
        let mut data = [0u8; 16];
        data[0] = version;
        data[1..3].copy_from_slice(&(len as u16).to_le_bytes());
        data[8..].copy_from_slice(&i.to_le_bytes());
        let mut out = vec![0u8; len];
        self.fill_base36(DOMAIN_POOL, &data, &mut out);
        out
    }

    /// Records a replaced symlink target.
    pub(crate) fn record_symlink(&mut self, ino: u32, replacement: &[u8], original: &[u8]) {
        self.map.symlinks.push(InodeMapping {
            owner: u64::from(ino),
            replacement: Name::from_bytes(replacement),
            original: Name::from_bytes(original),
        });
    }

    /// Records a replaced user xattr name.
    pub(crate) fn record_xattr_name(&mut self, owner: u64, replacement: &[u8], original: &[u8]) {
        self.map.xattr_names.push(InodeMapping {
            owner,
            replacement: Name::from_bytes(replacement),
            original: Name::from_bytes(original),
        });
    }
}

/// Hasher for keys that are already keyed-PRF fingerprints: mixing the
/// words is enough (and much cheaper than SipHash again).
#[derive(Default, Clone, Copy)]
struct FpBuild;

impl std::hash::BuildHasher for FpBuild {
    type Hasher = FpHasher;
    fn build_hasher(&self) -> FpHasher {
        FpHasher(0)
    }
}

struct FpHasher(u64);

impl std::hash::Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `n` as `w` hex digits (at most [`NUMBER_DIGITS`]), most significant
/// first.
fn hex_digits(n: u64, w: usize) -> [u8; NUMBER_DIGITS] {
    let mut digits = [0u8; NUMBER_DIGITS];
    let mut v = n;
    for d in digits[..w.min(NUMBER_DIGITS)].iter_mut().rev() {
        *d = HEX[(v % 16) as usize];
        v /= 16;
    }
    digits
}

/// An unkeyed 64-bit hash of a name for the set of names present in a
/// directory. A collision only makes a candidate look taken (another one is
/// then chosen), never two names equal, so it needs no key; the memo of
/// replacements, where a collision would merge two names, uses the keyed
/// fingerprint.
fn name_hash(name: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (name.len() as u64).wrapping_mul(K);
    let mut words = name.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    let mut b = [0u8; 8];
    b[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    h ^ (h >> 29)
}

/// `.`, `..` and `lost+found` are structure, not private, and stay.
pub fn is_kept_name(name: &[u8]) -> bool {
    matches!(name, b"." | b".." | b"lost+found")
}

/// The hash e2fsck computes for an original name, `None` when it depends on
/// Unicode casefolding this crate does not implement (non-ASCII valid UTF-8
/// in a casefolded directory).
fn original_hash(
    version: HashVersion,
    seed: &[u32; 4],
    name: &[u8],
    casefold: bool,
) -> Option<u32> {
    if casefold {
        if name.is_ascii() {
            let lower = name.to_ascii_lowercase();
            return Some(dirhash(version, &lower, seed).0);
        }
        if std::str::from_utf8(name).is_ok() {
            return None;
        }
        // Invalid UTF-8: e2fsprogs hashes the raw bytes.
    }
    Some(dirhash(version, name, seed).0)
}

/// All names of a short length over a charset, addressable by index.
struct SmallSpace {
    chars: Vec<u8>,
    len: usize,
}

impl SmallSpace {
    fn len(&self) -> usize {
        self.chars.len().pow(self.len as u32)
    }
    fn name(&self, mut i: u64) -> Vec<u8> {
        let n = self.chars.len() as u64;
        (0..self.len)
            .map(|_| {
                let c = self.chars[(i % n) as usize];
                i /= n;
                c
            })
            .collect()
    }
}

/// Base-36, or for `wide` every printable ASCII byte but `/` (and, in a
/// casefolded directory, but the upper-case letters).
fn small_space(len: usize, wide: bool, casefold: bool) -> SmallSpace {
    let chars = if wide {
        (0x21u8..0x7f)
            .filter(|&c| c != b'/' && !(casefold && c.is_ascii_uppercase()))
            .collect()
    } else {
        BASE36.to_vec()
    };
    SmallSpace { chars, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namer() -> Namer {
        Namer::new(ScrambleKey::from_bytes([7; 16]))
    }

    fn ctx(dir: u32, target: Option<HashTarget>) -> NameContext {
        NameContext {
            dir,
            inode: 12,
            casefold: false,
            target,
        }
    }

    #[test]
    fn canonical_is_consistent_private_and_same_length() {
        let mut n = namer();
        let a = n.entry_name(&ctx(2, None), b"MKRsecretname").unwrap();
        let b = n.entry_name(&ctx(11, None), b"MKRsecretname").unwrap();
        assert_eq!(a, b, "same name, same replacement across linear dirs");
        assert_eq!(a.len(), 13);
        assert!(a.iter().all(|c| BASE36.contains(c)));
        assert_ne!(a, b"MKRsecretname");
        assert_eq!(
            n.name_map().original_of(2, &a).map(|o| o.text.as_str()),
            Some("MKRsecretname")
        );
    }

    #[test]
    fn kept_names_and_pinned_bytes() {
        let mut n = namer();
        for k in [&b"."[..], b"..", b"lost+found"] {
            assert_eq!(n.entry_name(&ctx(2, None), k), None);
        }
        let r = n.entry_name(&ctx(2, None), b"ab/cd").unwrap();
        assert_eq!(r[2], b'/');
    }

    #[test]
    fn unique_within_a_directory_even_for_one_byte_names() {
        let mut n = namer();
        let mut seen = HashSet::new();
        for c in 0x21u8..0x7f {
            if c == b'/' || c == b'.' {
                continue;
            }
            let r = n.entry_name(&ctx(5, None), &[c]).unwrap_or(vec![c]);
            assert!(seen.insert(r), "replacement of {:?} clashes", c as char);
        }
    }

    #[test]
    fn duplicates_stay_duplicates() {
        let mut n = namer();
        let a = n.entry_name(&ctx(5, None), b"twice").unwrap();
        let b = n.entry_name(&ctx(5, None), b"twice").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn htree_replacements_land_in_the_leaf_range() {
        let mut n = namer();
        let seed = [0x1111, 0x2222, 0x3333, 0x4444];
        for version in [
            HashVersion::HalfMd4,
            HashVersion::Tea,
            HashVersion::LegacyUnsigned,
        ] {
            // 64 leaves; names of many lengths, each placed in its original's
            // leaf.
            let keys: Vec<u32> = (0..64u32).map(|i| (i << 26) & !1).collect();
            for i in 0..3000u32 {
                let name = format!("MKR{i:x}-{}", "x".repeat((i % 40) as usize));
                let h = dirhash(version, name.as_bytes(), &seed).0;
                let leaf = keys.iter().rposition(|&k| k <= h).unwrap();
                let range = LeafRange {
                    lo: keys[leaf],
                    hi: keys.get(leaf + 1).copied().unwrap_or(0xffff_fffe),
                };
                let t = HashTarget {
                    version,
                    seed,
                    range,
                };
                let r = n
                    .entry_name(
                        &ctx(100 + u32::from(version.number()), Some(t)),
                        name.as_bytes(),
                    )
                    .unwrap();
                let hr = dirhash(version, &r, &seed).0;
                assert!(range.lo <= hr && hr < range.hi, "{version:?} {name}");
                assert_eq!(r.len(), name.len());
            }
        }
        assert_eq!(n.stats.kept, 0);
    }

    #[test]
    fn numbered_replacements_compress_like_the_originals() {
        let mut n = namer();
        let mut seen = HashSet::new();
        let mut prefix: Option<Vec<u8>> = None;
        for i in 0..3000u32 {
            let name = format!("MKR_private_{i:05}_document.TXT");
            let r = n.entry_name(&ctx(9, None), name.as_bytes()).unwrap();
            assert_eq!(r.len(), name.len());
            assert!(r.iter().all(|c| BASE36.contains(c)), "{r:?}");
            assert!(seen.insert(r.clone()), "unique within the directory");
            // Everything but the digits is the same for every name of a
            // length: a block of replacements compresses to little more
            // than the numbers.
            let head = r[..r.len() - NUMBER_DIGITS].to_vec();
            assert_eq!(prefix.get_or_insert(head.clone()), &head);
        }
        // Numbers follow the order names are met: nothing of the name.
        let a = n.entry_name(&ctx(10, None), b"zzzz_first_met").unwrap();
        let b = n.entry_name(&ctx(10, None), b"aaaa_later_met").unwrap();
        assert!(a < b, "{a:?} {b:?}");
    }

    #[test]
    fn same_key_same_replacements_other_key_other_filler() {
        let run = |key: u8| {
            let mut n = Namer::new(ScrambleKey::from_bytes([key; 16]));
            (0..50)
                .map(|i| {
                    n.entry_name(&ctx(3, None), format!("secret-{i}.doc").as_bytes())
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        let (a, b) = (run(1), run(2));
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }

    #[test]
    fn symlink_components_and_entries_agree() {
        let mut n = namer();
        let e = n.entry_name(&ctx(2, None), b"projects").unwrap();
        assert_eq!(n.canonical(b"projects"), e);
        // Met first in a symlink, then as an entry.
        let c = n.canonical(b"holiday.jpg");
        assert_eq!(n.entry_name(&ctx(7, None), b"holiday.jpg").unwrap(), c);
        assert_eq!(n.canonical(b".."), b"..");
    }

    #[test]
    fn out_of_numbers_falls_back_to_keyed_names() {
        let mut n = namer();
        assert!(n.numbered(4, 16u64.pow(4) - 1).is_some());
        assert!(n.numbered(4, 16u64.pow(4)).is_none());
        assert!(n.numbered(3, 0).is_none());
        n.next_number = vec![0, 0, 0, 0, 16u64.pow(4) - 2];
        let mut seen = HashSet::new();
        for i in 0..200u32 {
            let name = format!("{i:04}");
            let r = n.entry_name(&ctx(4, None), name.as_bytes()).unwrap();
            assert_eq!(r.len(), 4);
            assert!(seen.insert(r), "unique after the numbers ran out");
        }
    }

    #[test]
    fn numbered_htree_names_in_every_hash_version() {
        let seed = [0x0bad_cafe, 0x1234_5678, 0x9abc_def0, 0x0f1e_2d3c];
        for version in [
            HashVersion::Legacy,
            HashVersion::HalfMd4,
            HashVersion::Tea,
            HashVersion::LegacyUnsigned,
            HashVersion::HalfMd4Unsigned,
            HashVersion::TeaUnsigned,
        ] {
            let mut n = namer();
            // A directory of 2000 names over 40 leaves (with a name whose
            // bytes are signed-sensitive, for the signed versions).
            let keys: Vec<u32> = (0..40u32).map(|i| (i * 0x0666_6666) & !1).collect();
            let mut seen = HashSet::new();
            for i in 0..2000u32 {
                let name = format!("file_{i:05}_with_a_longer_name_\u{e9}.txt");
                let h = dirhash(version, name.as_bytes(), &seed).0;
                let leaf = keys.iter().rposition(|&k| k <= h).unwrap();
                let range = LeafRange {
                    lo: keys[leaf],
                    hi: keys.get(leaf + 1).copied().unwrap_or(0xffff_fffe),
                };
                let t = HashTarget {
                    version,
                    seed,
                    range,
                };
                let r = n.entry_name(&ctx(50, Some(t)), name.as_bytes()).unwrap();
                let hr = dirhash(version, &r, &seed).0;
                assert!(range.lo <= hr && hr < range.hi, "{version:?} {name}");
                assert_eq!(r.len(), name.len());
                assert!(seen.insert(r), "{version:?}: unique");
            }
            assert_eq!(n.stats.kept, 0);
            // Mostly pool candidates, each hashed about once.
            assert!(n.stats.hashes < 2000 * 4, "{version:?}: {:?}", n.stats);
        }
    }

    #[test]
    fn warming_a_block_changes_no_replacement() {
        let names: Vec<String> = (0..300).map(|i| format!("name-{i}.dat")).collect();
        let (mut a, mut b) = (namer(), namer());
        b.warm(5, names.iter().map(|n| n.as_bytes()));
        for n in &names {
            assert_eq!(
                a.entry_name(&ctx(5, None), n.as_bytes()),
                b.entry_name(&ctx(5, None), n.as_bytes())
            );
        }
    }

    #[test]
    fn region_keeps_e2fsck_comparisons() {
        let r = LeafRange { lo: 100, hi: 200 };
        assert_eq!(r.region(Some(150)), Some((100, 199)));
        assert_eq!(r.region(Some(200)), Some((100, 199)));
        assert_eq!(r.region(Some(50)), Some((0, 99)));
        assert_eq!(r.region(Some(250)), Some((201, u32::MAX)));
        assert_eq!(r.region(None), Some((100, 199)));
        assert_eq!(
            LeafRange { lo: 100, hi: 100 }.region(Some(100)),
            Some((100, 100))
        );
        assert_eq!(
            LeafRange {
                lo: 0,
                hi: 0xffff_fffe
            }
            .region(Some(0)),
            Some((0, 0xffff_fffd))
        );
    }
}
