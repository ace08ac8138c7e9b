//! The scrambler as the exporter's [`Transform`]: routes each block by its
//! [`BlockKind`] to the [`Scrambler`] method for it.

use super::{DirInfo, LeafRange, Params, ScrambleKey, Scrambler, Stats};
use crate::blockmap::{BlockKind, BlockMap};
use crate::export::Transform;
use crate::fs::Filesystem;
use crate::hash::HashVersion;
use crate::superblock::incompat;
use std::collections::HashMap;
use std::io;

/// Journal superblock field `s_start` (big-endian, offset 0x1C): non-zero
/// when the log holds transactions to replay.
const JSB_S_START: usize = 0x1C;

/// [`Scrambler`] behind the export's [`Transform`] interface.
///
/// `prepare` reads, for every directory and slow symlink in the block map,
/// its inode flags (encrypted, casefolded) and, for indexed directories, the
/// hash version in the dx root, so blocks can then come in disk order.
pub struct ScrambleTransform {
    key: ScrambleKey,
    keep_journal: bool,
    inner: Option<Scrambler>,
    dirs: HashMap<u32, DirInfo>,
    encrypted_links: HashMap<u32, bool>,
    /// (first block of the group's inode table, first inode of the group).
    tables: Vec<(u64, u32)>,
    inodes_per_block: u32,
    needs_recovery: bool,
    journal_dirty: bool,
}

impl std::fmt::Debug for ScrambleTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrambleTransform")
            .field("keep_journal", &self.keep_journal)
            .finish_non_exhaustive()
    }
}

impl ScrambleTransform {
    /// A transform with its own key; `keep_journal` for `--include-journal`.
    pub fn new(key: ScrambleKey, keep_journal: bool) -> ScrambleTransform {
        ScrambleTransform {
            key,
            keep_journal,
            inner: None,
            dirs: HashMap::new(),
            encrypted_links: HashMap::new(),
            tables: Vec::new(),
            inodes_per_block: 1,
            needs_recovery: false,
            journal_dirty: false,
        }
    }

    /// A transform with a fresh random key.
    pub fn with_random_key(keep_journal: bool) -> io::Result<ScrambleTransform> {
        Ok(ScrambleTransform::new(ScrambleKey::random()?, keep_journal))
    }

    /// The filesystem says its journal needs recovery (`needs_recovery`
    /// feature, or a journal superblock with a non-zero `s_start`): the
    /// transactions not yet replayed were blanked unless the journal was
    /// kept.
    pub fn journal_needs_recovery(&self) -> bool {
        self.needs_recovery || self.journal_dirty
    }

    /// Counts so far (zero before `prepare`).
    pub fn stats(&self) -> Stats {
        self.inner
            .as_ref()
            .map(Scrambler::stats)
            .unwrap_or_default()
    }

    /// The map so far (replacement -> original), cloned.
    pub fn name_map(&self) -> super::NameMap {
        self.inner
            .as_ref()
            .map(|s| s.namer.name_map())
            .unwrap_or_default()
    }

    fn first_ino_of(&self, blk: u64) -> Option<u32> {
        // The last table starting at or before blk.
        let i = self.tables.partition_point(|&(start, _)| start <= blk);
        let (start, first) = *self.tables.get(i.checked_sub(1)?)?;
        let idx = u32::try_from(blk - start).ok()?;
        Some(first + idx.checked_mul(self.inodes_per_block)?)
    }
}

fn read_raw_inode(fs: &Filesystem, cache: &mut HashMap<u64, Vec<u8>>, ino: u32) -> Option<Vec<u8>> {
    let (blk, off) = fs.inode_location(ino)?;
    if !cache.contains_key(&blk) {
        let b = fs.read_block(blk).ok()?;
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(blk, b);
    }
    let isz = fs.inode_size() as usize;
    cache.get(&blk)?.get(off..off + isz).map(<[u8]>::to_vec)
}

impl Transform for ScrambleTransform {
    fn prepare(&mut self, fs: &Filesystem, map: &BlockMap) -> Result<(), String> {
        let params = Params::from_fs(fs);
        let unsigned = params.unsigned_hash;
        let isz = params.inode_size.max(1);
        self.inodes_per_block = (params.block_size / isz).max(1) as u32;
        let ipg = fs.inodes_per_group();
        let mut tables: Vec<(u64, u32)> = (0..fs.group_count())
            .filter_map(|g| {
                let t = fs.group(g)?.inode_table();
                Some((t, g.checked_mul(ipg)?.checked_add(1)?))
            })
            .collect();
        tables.sort_unstable();
        self.tables = tables;

        let mut cache = HashMap::new();
        let mut roots: HashMap<u32, u64> = HashMap::new();
        let mut dir_inos: Vec<u32> = Vec::new();
        let mut link_inos: Vec<u32> = Vec::new();
        for r in &map.ranges {
            match r.kind {
                BlockKind::DirLeaf { ino, .. } | BlockKind::DxNode { ino } => dir_inos.push(ino),
                BlockKind::DxRoot { ino } => {
                    dir_inos.push(ino);
                    roots.entry(ino).or_insert(r.start);
                }
                BlockKind::SymlinkBlock { ino } => link_inos.push(ino),
                BlockKind::JournalSuperblock { .. } => {
                    if let Ok(b) = fs.read_block(r.start) {
                        let s = b
                            .get(JSB_S_START..JSB_S_START + 4)
                            .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
                        self.journal_dirty |= s != 0;
                    }
                }
                _ => {}
            }
        }
        dir_inos.sort_unstable();
        dir_inos.dedup();
        link_inos.sort_unstable();
        link_inos.dedup();
        for ino in dir_inos {
            let raw = read_raw_inode(fs, &mut cache, ino).unwrap_or_default();
            let version = roots.get(&ino).and_then(|&blk| {
                let b = fs.read_block(blk).ok()?;
                HashVersion::from_root(*b.get(28)?, unsigned)
            });
            self.dirs
                .insert(ino, DirInfo::from_inode(ino, &raw, version));
        }
        for ino in link_inos {
            let raw = read_raw_inode(fs, &mut cache, ino).unwrap_or_default();
            self.encrypted_links
                .insert(ino, DirInfo::from_inode(ino, &raw, None).encrypted);
        }
        self.needs_recovery = fs.superblock().has_incompat(incompat::RECOVER);
        let sb = fs.superblock();
        let in_use = sb.inodes_count.saturating_sub(sb.free_inodes_count) as usize;
        let mut scrambler = Scrambler::new(params, self.key.clone(), self.keep_journal);
        // About one name per inode in use.
        scrambler.namer.reserve(in_use);
        self.inner = Some(scrambler);
        Ok(())
    }

    fn block(&mut self, kind: &BlockKind, block_nr: u64, data: &mut [u8]) {
        let first_ino = match kind {
            BlockKind::InodeTable { .. } | BlockKind::InodeTableUnused { .. } => {
                self.first_ino_of(block_nr)
            }
            _ => None,
        };
        let dir = |dirs: &HashMap<u32, DirInfo>, ino: u32| {
            dirs.get(&ino).copied().unwrap_or(DirInfo {
                ino,
                encrypted: false,
                casefold: false,
                hash_version: None,
            })
        };
        let Some(s) = self.inner.as_mut() else {
            return;
        };
        match *kind {
            BlockKind::InodeTable { .. } | BlockKind::InodeTableUnused { .. } => {
                if let Some(first) = first_ino {
                    s.inode_table(first, data);
                }
            }
            BlockKind::DirLeaf { ino, hash_range } => {
                let d = dir(&self.dirs, ino);
                // The block map gives [start, next key - 1]; e2fsck compares
                // with the next key itself.
                let range = hash_range.map(|(lo, hi)| LeafRange {
                    lo,
                    hi: hi.saturating_add(1),
                });
                s.dir_leaf(&d, range, data);
            }
            BlockKind::DxRoot { ino } => s.dx_node(&dir(&self.dirs, ino), true, data),
            BlockKind::DxNode { ino } => s.dx_node(&dir(&self.dirs, ino), false, data),
            BlockKind::XattrBlock { .. } => s.xattr_block(block_nr, data),
            BlockKind::SymlinkBlock { ino } => {
                let enc = self.encrypted_links.get(&ino).copied().unwrap_or(false);
                s.symlink_block(ino, enc, data);
            }
            BlockKind::Journal { .. } => s.journal_block(data),
            BlockKind::EaInodeData { .. } => s.ea_value_block(data),
            _ => {}
        }
    }

    fn write_map(&self, out: &mut dyn io::Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, &self.name_map())?;
        out.write_all(b"\n")
    }

    /// Journal blocks after the journal superblock come out all zero unless
    /// the journal is kept: not reading them saves most of the export's I/O
    /// (a 32 GiB filesystem has a 256 MiB journal, more than all its other
    /// metadata together). The journal superblock is its own kind and stays.
    fn skips(&self, kind: &BlockKind) -> bool {
        !self.keep_journal && matches!(kind, BlockKind::Journal { .. })
    }

    fn notes(&self) -> Vec<String> {
        let mut n = Vec::new();
        if self.journal_needs_recovery() {
            if self.keep_journal {
                n.push("The journal needs recovery; its unreplayed transactions are in the image as they are (--include-journal).".to_string());
            } else {
                n.push("WARNING: the journal needs recovery, and its unreplayed transactions were blanked for privacy: the image shows the filesystem as it is on disk, without them. Re-run with --include-journal to keep them (they contain names and other private metadata).".to_string());
            }
        } else if self.keep_journal {
            n.push("The journal was kept (--include-journal): it holds old copies of metadata blocks, names included, unscrambled.".to_string());
        }
        let st = self.stats();
        if st.names.kept_long > 0 {
            n.push(format!(
                "{} names of 3 or more characters kept as they are: no replacement fits their htree leaf.",
                st.names.kept_long
            ));
        }
        if st.dir_blocks_malformed > 0 {
            n.push(format!(
                "{} damaged directory blocks: names after the damage were left as they are.",
                st.dir_blocks_malformed
            ));
        }
        n
    }
}
