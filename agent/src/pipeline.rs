//! The export pipeline of `collect`: open the source, build the block map,
//! run the extfs export through a transform into a QCOW2 writer over any
//! [`qcow2::WriteAt`] sink.
//!
//! `export` writes to a temporary file; `collect` writes to a streaming
//! uploader ([`crate::upload::stream::ChunkSink`]). Both produce the same
//! bytes for the same filesystem, options and scramble key (same cluster
//! size, compression and transform as `export`).

use anyhow::Context;
use extfs::blockmap::BlockMap;
use extfs::export::{ExportOptions, Summary, Transform};
use extfs::Filesystem;
use std::io;
use std::path::Path;

/// Compression of the image's data clusters (mirrors `export --compress`).
pub use crate::cmd::export::Compress;

/// Cluster size of every image the agent writes (as `export`).
pub const CLUSTER_SIZE: u64 = 64 << 10;

/// Opens `source` read-only and its filesystem, with one-sentence errors.
pub fn open(source: &Path) -> anyhow::Result<Filesystem> {
    let src_name = source.display().to_string();
    let src = extfs::source::open_path(source).map_err(|e| {
        let kind = match &e {
            extfs::Error::Open { source, .. } => Some(source.kind()),
            _ => None,
        };
        let what = match kind {
            None => format!("cannot read {src_name}: {e}"),
            Some(k) => match k {
                io::ErrorKind::PermissionDenied => format!(
                "permission denied reading {src_name}; run as root (or as a user in the `disk` group)"
            ),
                io::ErrorKind::NotFound => {
                format!("{src_name} does not exist; check the device name (see `lsblk`)")
            }
            _ => format!("cannot read {src_name}: {e}"),
            },
        };
        anyhow::anyhow!(what)
    })?;
    let fs = Filesystem::open(src).map_err(|e| match e {
        extfs::Error::NoSuperblock { .. } => anyhow::anyhow!(
            "{src_name} holds no ext2/ext3/ext4 filesystem (no usable superblock, primary or backup); check the device name"
        ),
        other => anyhow::Error::new(other).context(format!("cannot open the filesystem on {src_name}")),
    })?;
    let loc = fs.superblock_location();
    if loc.is_backup() {
        eprintln!(
            "support-agent: warning: the primary superblock is unusable ({}); using the backup in group {} (block {})",
            fs.primary_superblock_problem().unwrap_or("unknown reason"),
            loc.group,
            loc.block
        );
    }
    Ok(fs)
}

/// The transform for the options: [`extfs::export::Identity`] with
/// `no_scramble`, else the scrambler seeded with `key` (the same key gives
/// the same bytes, which is what makes a re-run of `collect` resumable).
pub fn transform(no_scramble: bool, include_journal: bool, key: [u8; 16]) -> Box<dyn Transform> {
    if no_scramble {
        return Box::new(extfs::export::Identity);
    }
    Box::new(extfs::scramble::ScrambleTransform::new(
        extfs::scramble::ScrambleKey::from_bytes(key),
        include_journal,
    ))
}

/// A fresh random scramble key.
pub fn random_key() -> [u8; 16] {
    let mut k = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut k[..]);
    k
}

/// Converts `--compress` to the writer's setting.
pub fn compression(c: Compress) -> qcow2::Compression {
    match c {
        Compress::Zstd => qcow2::Compression::Zstd,
        Compress::Zlib => qcow2::Compression::Zlib,
        Compress::None => qcow2::Compression::None,
    }
}

/// Progress of the read side: how much of the block map lies before a byte
/// offset of the filesystem.
pub struct MapPosition {
    starts: Vec<u64>,
    prefix: Vec<u64>,
    block_size: u64,
    /// Bytes of metadata in the map.
    pub total_bytes: u64,
}

impl MapPosition {
    /// Prefix sums over the map's ranges.
    pub fn new(map: &BlockMap, block_size: u64) -> MapPosition {
        let mut starts = Vec::with_capacity(map.ranges.len());
        let mut prefix = Vec::with_capacity(map.ranges.len() + 1);
        let mut acc = 0u64;
        for r in &map.ranges {
            starts.push(r.start);
            prefix.push(acc);
            acc += r.end() - r.start;
        }
        prefix.push(acc);
        MapPosition {
            starts,
            prefix,
            block_size: block_size.max(1),
            total_bytes: acc * block_size,
        }
    }

    /// Metadata bytes before byte `offset` of the filesystem.
    pub fn done_at(&self, offset: u64) -> u64 {
        let blk = offset / self.block_size;
        let i = self.starts.partition_point(|&s| s <= blk);
        if i == 0 {
            return 0;
        }
        let (s, p, next) = (self.starts[i - 1], self.prefix[i - 1], self.prefix[i]);
        (p + (blk - s)).min(next) * self.block_size
    }
}

/// Messages to the writer thread: bytes at a filesystem offset, or the end
/// of a complete export (`None`). A closed channel without `None` means the
/// export failed: the image is then not finished.
type WriteMsg = Option<(u64, Vec<u8>)>;

/// Runs of blocks queued for the writer thread (each at most one read of
/// [`ExportOptions::read_chunk_bytes`], 4 MiB).
const WRITE_QUEUE: usize = 4;

/// Runs the export of `fs` through `transform` into a QCOW2 writer over
/// `sink`; returns the summary and the sink after `finish` (every byte
/// written). `on_block(fs_offset)` is told where the export is.
///
/// The writer (cluster assembly, compression on every core, output) runs on
/// its own thread, so compressing overlaps reading and scrambling; the bytes
/// and their order are the same as on one thread.
pub fn run<W: qcow2::WriteAt + Send>(
    fs: &Filesystem,
    map: &BlockMap,
    transform: &mut dyn Transform,
    sink: W,
    compress: Compress,
    mut on_block: impl FnMut(u64),
) -> anyhow::Result<(Summary, W)> {
    let virtual_size = fs
        .blocks_count()
        .checked_mul(fs.block_size())
        .context("the filesystem's size overflows")?;
    let writer = qcow2::Writer::new(
        sink,
        virtual_size,
        qcow2::WriterOptions {
            cluster_size: CLUSTER_SIZE,
            compression: compression(compress),
        },
    )?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<WriteMsg>(WRITE_QUEUE);
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<Option<W>, qcow2::Error> {
            let mut writer = writer;
            for msg in rx {
                match msg {
                    Some((off, data)) => writer.write_at(off, &data)?,
                    None => return writer.finish().map(Some),
                }
            }
            Ok(None)
        });
        let mut esink = |off: u64, data: &[u8]| -> io::Result<()> {
            on_block(off);
            tx.send(Some((off, data.to_vec())))
                .map_err(|_| io::Error::other("the image writer stopped"))
        };
        let summary =
            extfs::export::export(fs, map, transform, &mut esink, ExportOptions::default());
        if summary.is_ok() {
            // The writer may have failed already: then this send fails too,
            // and its error is reported below.
            let _ = tx.send(None);
        }
        drop(tx);
        let written = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the image writer crashed"))?;
        match (summary, written) {
            // The writer's error is the cause of a sink error in the export.
            (_, Err(q)) => Err(anyhow::Error::new(q)),
            (Err(e), _) => Err(anyhow::Error::new(e)),
            (Ok(summary), Ok(Some(sink))) => Ok((summary, sink)),
            (Ok(_), Ok(None)) => Err(anyhow::anyhow!("the image writer stopped early")),
        }
    })
}

/// Prints the export's notes and warnings as `export` does.
pub fn report_summary(summary: &Summary) {
    for note in &summary.notes {
        eprintln!("support-agent: {note}");
    }
    if !summary.unreadable.is_empty() {
        let n: u64 = summary.unreadable.iter().map(|r| r.1).sum();
        eprintln!(
            "support-agent: warning: {n} metadata blocks could not be read and are missing from the image (first at block {})",
            summary.unreadable[0].0
        );
    }
    if !summary.findings.is_empty() {
        eprintln!(
            "support-agent: {} damaged structures were met and skipped (`export --json` lists them)",
            summary.findings.len()
        );
    }
}
