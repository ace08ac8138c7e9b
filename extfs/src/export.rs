//! Walking the metadata in ascending disk order for an export.
//!
//! [`export`] reads the blocks of a [`BlockMap`] with large positioned reads
//! (adjacent ranges merged, megabytes at a time), passes every block through
//! a [`Transform`] (the scrambler, or [`Identity`] for `--no-scramble`), and
//! hands `(byte_offset, bytes)` in strictly ascending order to a [`Sink`].
//! All-zero blocks are not handed on (an image reads them back as zeros).
//! extfs knows nothing of the image format: the agent connects the sink to
//! the QCOW2 writer.
//!
//! Blocks that cannot be read are listed in the [`Summary`], left out, and
//! the export goes on.

use crate::blockmap::{BlockKind, BlockMap, Range};
use crate::finding::Finding;
use crate::fs::Filesystem;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;

/// Rewrites metadata blocks on their way into the image.
///
/// Contract for the scrambler (extfs/src/scramble.rs implements it):
/// - [`Transform::prepare`] is called once, after the block map is built and
///   before any block; it may read the filesystem freely (e.g. collect the
///   names of every directory, choose replacements that keep htree hashes in
///   their leaf's range, pick which inodes are unused).
/// - [`Transform::block`] is then called exactly once per mapped block, in
///   ascending block order, with the block's bytes as read (`data` is one
///   block). It changes them in place, including any checksum it
///   invalidates (dir leaf tails, dx tails, inode checksums, xattr block
///   checksums and hashes, extent tails). Zeroing a block drops it from the
///   image.
/// - Unreadable blocks are never passed.
/// - [`Transform::write_map`] is called after the export when the user asked
///   for `--map FILE` (replacement -> original names, inode numbers); the
///   map never goes into the image.
pub trait Transform {
    /// One pass over the filesystem before the export starts.
    fn prepare(&mut self, fs: &Filesystem, map: &BlockMap) -> Result<(), String>;
    /// Rewrites one block in place.
    fn block(&mut self, kind: &BlockKind, block_nr: u64, data: &mut [u8]);
    /// Writes the translation table (local only). Default: nothing to write.
    fn write_map(&self, _out: &mut dyn io::Write) -> io::Result<()> {
        Ok(())
    }
    /// Whether every block of this kind would come out all zeros (e.g. the
    /// journal when it is blanked): such blocks are then not even read.
    /// Default: no kind is skipped.
    fn skips(&self, _kind: &BlockKind) -> bool {
        false
    }
    /// Things the user must be told (e.g. "the journal needs recovery and was
    /// blanked"). Default: none.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The transform of `--no-scramble`: blocks go out as read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity;

impl Transform for Identity {
    fn prepare(&mut self, _fs: &Filesystem, _map: &BlockMap) -> Result<(), String> {
        Ok(())
    }
    fn block(&mut self, _kind: &BlockKind, _block_nr: u64, _data: &mut [u8]) {}
}

/// Where exported bytes go, in strictly ascending, non-overlapping order.
pub trait Sink {
    /// Writes `data` at byte `offset` of the filesystem's address space.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

impl<F: FnMut(u64, &[u8]) -> io::Result<()>> Sink for F {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self(offset, data)
    }
}

/// Tuning of [`export`].
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Largest single read.
    pub read_chunk_bytes: usize,
    /// Unmapped gaps up to this many blocks between two ranges are read
    /// through (and discarded) to save a syscall.
    pub max_gap_blocks: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            read_chunk_bytes: 4 << 20,
            max_gap_blocks: 8,
        }
    }
}

/// What an export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Block size of the filesystem.
    pub block_size: u64,
    /// Blocks in the filesystem (the image's virtual size / block size).
    pub blocks_count: u64,
    /// Blocks in the block map.
    pub mapped_blocks: u64,
    /// Blocks read successfully.
    pub read_blocks: u64,
    /// Blocks written to the sink (non-zero after the transform).
    pub written_blocks: u64,
    /// Mapped blocks that were zero after the transform (left out).
    pub zero_blocks: u64,
    /// Mapped blocks per kind name.
    pub blocks_per_kind: BTreeMap<String, u64>,
    /// Unreadable ranges `(first block, count)`, left out of the image.
    pub unreadable: Vec<(u64, u64)>,
    /// Problems the block map met (damaged trees, bad pointers...).
    pub findings: Vec<Finding>,
    /// Notes from the transform.
    pub notes: Vec<String>,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The transform could not prepare.
    #[error("cannot prepare scrambling: {0}")]
    Prepare(String),
    /// The sink refused bytes (disk full, I/O error).
    #[error("cannot write the image: {0}")]
    Sink(#[source] io::Error),
}

/// A read span: blocks `[start, end)`, covering ranges `ri..rj` of the map.
struct Span {
    start: u64,
    end: u64,
    ri: usize,
    rj: usize,
}

fn spans(ranges: &[Range], chunk_blocks: u64, max_gap: u64) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let mut s = r.start;
        let end = r.end();
        while s < end {
            if let Some(last) = out.last_mut() {
                let room_end = last.start + chunk_blocks;
                if s >= last.end && s - last.end <= max_gap && s < room_end {
                    last.end = end.min(room_end);
                    last.rj = i + 1;
                    s = last.end;
                    continue;
                }
            }
            let e = end.min(s + chunk_blocks);
            out.push(Span {
                start: s,
                end: e,
                ri: i,
                rj: i + 1,
            });
            s = e;
        }
    }
    out
}

fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    let mut acc = 0u128;
    for c in &mut chunks {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        acc |= u128::from_ne_bytes(w);
    }
    acc == 0 && chunks.remainder().iter().all(|&x| x == 0)
}

/// Exports the mapped blocks of `fs` through `transform` into `sink`.
pub fn export(
    fs: &Filesystem,
    map: &BlockMap,
    transform: &mut dyn Transform,
    sink: &mut dyn Sink,
    opts: ExportOptions,
) -> Result<Summary, ExportError> {
    transform.prepare(fs, map).map_err(ExportError::Prepare)?;
    let bs = fs.block_size();
    let bsu = bs as usize;
    let chunk_blocks = (opts.read_chunk_bytes as u64 / bs).max(1);
    let mut sum = Summary {
        block_size: bs,
        blocks_count: fs.blocks_count(),
        mapped_blocks: map.total_blocks(),
        findings: map.findings.clone(),
        ..Summary::default()
    };
    for r in &map.ranges {
        *sum.blocks_per_kind
            .entry(r.kind.name().to_string())
            .or_default() += r.len;
    }
    let ranges: Vec<Range> = map
        .ranges
        .iter()
        .filter(|r| {
            let skip = transform.skips(&r.kind);
            if skip {
                sum.zero_blocks += r.len;
            }
            !skip
        })
        .copied()
        .collect();
    let mut buf: Vec<u8> = Vec::new();
    let mut bad: Vec<bool> = Vec::new();
    let mut mapped: Vec<bool> = Vec::new();
    for sp in spans(&ranges, chunk_blocks, opts.max_gap_blocks) {
        let n = (sp.end - sp.start) as usize;
        buf.resize(n * bsu, 0);
        bad.clear();
        bad.resize(n, false);
        if fs.read_blocks(sp.start, n as u64, &mut buf).is_err() {
            // Block by block, to leave out only what is unreadable.
            for k in 0..n {
                let slot = &mut buf[k * bsu..(k + 1) * bsu];
                if fs.read_blocks(sp.start + k as u64, 1, slot).is_err() {
                    bad[k] = true;
                }
            }
        }
        // Transform the mapped blocks of the span.
        mapped.clear();
        mapped.resize(n, false);
        for r in &ranges[sp.ri..sp.rj] {
            let s = r.start.max(sp.start);
            let e = r.end().min(sp.end);
            for blk in s..e {
                let k = (blk - sp.start) as usize;
                if bad[k] {
                    continue;
                }
                mapped[k] = true;
                transform.block(&r.kind, blk, &mut buf[k * bsu..(k + 1) * bsu]);
            }
        }
        // Record unreadable mapped blocks.
        for r in &ranges[sp.ri..sp.rj] {
            let s = r.start.max(sp.start);
            let e = r.end().min(sp.end);
            for blk in s..e {
                if bad[(blk - sp.start) as usize] {
                    match sum.unreadable.last_mut() {
                        Some((f, c)) if *f + *c == blk => *c += 1,
                        _ => sum.unreadable.push((blk, 1)),
                    }
                }
            }
        }
        // Hand on runs of non-zero mapped blocks.
        let mut k = 0usize;
        while k < n {
            if !mapped[k] {
                k += 1;
                continue;
            }
            sum.read_blocks += 1;
            if is_zero(&buf[k * bsu..(k + 1) * bsu]) {
                sum.zero_blocks += 1;
                k += 1;
                continue;
            }
            let first = k;
            k += 1;
            while k < n && mapped[k] && !is_zero(&buf[k * bsu..(k + 1) * bsu]) {
                sum.read_blocks += 1;
                k += 1;
            }
            sum.written_blocks += (k - first) as u64;
            sink.write_at((sp.start + first as u64) * bs, &buf[first * bsu..k * bsu])
                .map_err(ExportError::Sink)?;
        }
    }
    sum.notes = transform.notes();
    Ok(sum)
}
