//! `support-agent export`: the filesystem's metadata as a QCOW2 image.
//!
//! The source is opened read-only. The image is written to a temporary file
//! next to OUT and renamed over OUT only when complete, so a failure (full
//! disk, Ctrl-C, a bug) never leaves a half-written file under OUT.

use anyhow::Context;
use extfs::export::{ExportOptions, Identity, Transform};
use extfs::Filesystem;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};

/// Compression of the image's data clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// Zstandard clusters (qemu-img reads them; smallest and fastest).
    Zstd,
    /// Deflate clusters (for old qemu-img versions).
    Zlib,
    /// Plain clusters.
    None,
}

/// Arguments of `support-agent export`.
#[derive(clap::Args)]
pub struct Args {
    /// Block device or raw image holding the ext2/3/4 filesystem (read only).
    pub source: PathBuf,
    /// The QCOW2 image to write.
    pub output: PathBuf,
    /// Export names, symlink targets, xattr values and inline data as they
    /// are (only for filesystems without private data).
    #[arg(long)]
    pub no_scramble: bool,
    /// Compression of the image.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compress: Compress,
    /// Keep the journal's contents (they hold copies of old metadata blocks,
    /// including names).
    #[arg(long)]
    pub include_journal: bool,
    /// Write the table from replacement names back to the originals to FILE
    /// (stays on this machine; never part of the image).
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,
    /// Print the export summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The scrambler with a fresh random key (the name map is the only way
/// back to the original names).
fn scrambler(include_journal: bool) -> anyhow::Result<Box<dyn Transform>> {
    let t = extfs::scramble::ScrambleTransform::with_random_key(include_journal)
        .context("cannot get random bytes for the scrambling key")?;
    Ok(Box::new(t))
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let summary = export(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Does the export; returns the summary (also used by `collect`).
pub fn export(args: &Args) -> anyhow::Result<extfs::export::Summary> {
    let src_name = args.source.display().to_string();
    let source = extfs::source::open_path(&args.source)
        .with_context(|| format!("cannot read {src_name}"))?;
    let fs = Filesystem::open(source).map_err(|e| match e {
        extfs::Error::NoSuperblock { .. } => anyhow::anyhow!(
            "{src_name} holds no ext2/ext3/ext4 filesystem (no usable superblock, primary or backup); check the device name"
        ),
        other => anyhow::Error::new(other).context(format!("cannot open the filesystem on {src_name}")),
    })?;
    if let Some(warning) = mounted_rw_warning(&args.source) {
        eprintln!("support-agent: warning: {warning}");
    }
    let loc = fs.superblock_location();
    if loc.is_backup() {
        eprintln!(
            "support-agent: warning: the primary superblock is unusable ({}); using the backup in group {} (block {}), as `e2fsck -b {}` would",
            fs.primary_superblock_problem().unwrap_or("unknown reason"),
            loc.group,
            loc.block,
            loc.block
        );
    }
    let mut transform: Box<dyn Transform> = if args.no_scramble {
        Box::new(Identity)
    } else {
        scrambler(args.include_journal)?
    };

    let map = extfs::blockmap::build(&fs);
    let virtual_size = fs
        .blocks_count()
        .checked_mul(fs.block_size())
        .context("the filesystem's size overflows")?;
    let compression = match args.compress {
        Compress::Zstd => qcow2::Compression::Zstd,
        Compress::Zlib => qcow2::Compression::Zlib,
        Compress::None => qcow2::Compression::None,
    };

    let out_name = args.output.display().to_string();
    let tmp = TempFile::create_next_to(&args.output)
        .with_context(|| format!("cannot write {out_name}"))?;
    let file = tmp
        .file()
        .try_clone()
        .with_context(|| format!("cannot write {out_name}"))?;
    let mut writer = qcow2::Writer::new(
        file,
        virtual_size,
        qcow2::WriterOptions {
            cluster_size: cluster_size_for(&map, fs.block_size()),
            compression,
        },
    )
    .with_context(|| format!("cannot write {out_name}"))?;
    let mut sink_err: Option<qcow2::Error> = None;
    let mut sink = |off: u64, data: &[u8]| -> io::Result<()> {
        writer.write_at(off, data).map_err(|e| {
            let msg = e.to_string();
            sink_err = Some(e);
            io::Error::other(msg)
        })
    };
    let summary = extfs::export::export(
        &fs,
        &map,
        transform.as_mut(),
        &mut sink,
        ExportOptions::default(),
    );
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let e = match sink_err {
                Some(q) => anyhow::Error::new(q),
                None => anyhow::Error::new(e),
            };
            return Err(e.context(format!("cannot write {out_name}")));
        }
    };
    let file = writer
        .finish()
        .with_context(|| format!("cannot write {out_name}"))?;
    file.sync_all()
        .with_context(|| format!("cannot write {out_name}"))?;
    drop(file);

    if let Some(map_path) = &args.map {
        let mtmp = TempFile::create_next_to(map_path)
            .with_context(|| format!("cannot write the name map {}", map_path.display()))?;
        {
            let mut w = io::BufWriter::new(mtmp.file());
            transform
                .write_map(&mut w)
                .and_then(|_| w.flush())
                .with_context(|| format!("cannot write the name map {}", map_path.display()))?;
        }
        mtmp.persist(map_path)
            .with_context(|| format!("cannot write the name map {}", map_path.display()))?;
    }
    tmp.persist(&args.output)
        .with_context(|| format!("cannot write {out_name}"))?;

    crate::pipeline::report_summary(&summary);
    eprintln!(
        "support-agent: exported {} metadata blocks ({} stored) of {} to {out_name}",
        summary.mapped_blocks, summary.written_blocks, src_name
    );
    Ok(summary)
}

/// The QCOW2 cluster size for this metadata layout.
///
/// 64 KiB clusters compress best, but every 512 MiB of the disk that holds
/// any metadata costs a 64 KiB L2 table, and each cluster touched is stored
/// whole when uncompressed. Metadata spread thinly over a huge filesystem (a
/// block bitmap every 2 GiB of a nearly empty 3 TiB array) would then cost
/// far more in tables than in data, so when the 64 KiB tables alone would
/// exceed a quarter of the metadata, the size whose estimated tables plus
/// touched clusters are smallest is used instead.
fn cluster_size_for(map: &extfs::blockmap::BlockMap, block_size: u64) -> u64 {
    use extfs::blockmap::BlockKind;
    // (region or cluster index) counts over the mapped blocks that usually
    // hold data (the journal and unused inode table tails are mostly zero).
    let estimate = |cs: u64| -> (u64, u64) {
        let l2_span = cs * (cs / 8);
        let (mut regions, mut clusters) = (0u64, 0u64);
        let (mut last_region, mut last_cluster) = (u64::MAX, u64::MAX);
        for r in &map.ranges {
            if matches!(
                r.kind,
                BlockKind::Journal { .. } | BlockKind::InodeTableUnused { .. }
            ) {
                continue;
            }
            let start = r.start * block_size;
            let end = r.end() * block_size - 1;
            let (r0, r1) = (start / l2_span, end / l2_span);
            regions += r1 - r0 + 1 - u64::from(r0 == last_region);
            last_region = r1;
            let (c0, c1) = (start / cs, end / cs);
            clusters += c1 - c0 + 1 - u64::from(c0 == last_cluster);
            last_cluster = c1;
        }
        (regions * cs, clusters * cs)
    };
    let data: u64 = map
        .ranges
        .iter()
        .filter(|r| {
            !matches!(
                r.kind,
                BlockKind::Journal { .. } | BlockKind::InodeTableUnused { .. }
            )
        })
        .map(|r| r.len * block_size)
        .sum();
    let (tables64, _) = estimate(64 << 10);
    if tables64 <= data / 4 {
        return 64 << 10;
    }
    [4u64 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10]
        .into_iter()
        .min_by_key(|&cs| {
            let (t, c) = estimate(cs);
            t + c
        })
        .unwrap_or(64 << 10)
}

/// Whether `source` is mounted read-write, as a warning sentence.
fn mounted_rw_warning(source: &Path) -> Option<String> {
    let target = std::fs::canonicalize(source).ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(dir), Some(_ty), Some(opts)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if !dev.starts_with('/') {
            continue;
        }
        let same = std::fs::canonicalize(dev).ok().as_deref() == Some(target.as_path())
            || loop_backing_file(dev).as_deref() == Some(target.as_path());
        if same && opts.split(',').any(|o| o == "rw") {
            return Some(format!(
                "{} is mounted read-write on {dir}; the image may be inconsistent (remount it read-only or unmount it for a faithful image)",
                source.display()
            ));
        }
    }
    None
}

/// The file behind a loop device (`/dev/loopN`), from sysfs.
fn loop_backing_file(dev: &str) -> Option<PathBuf> {
    let name = Path::new(dev).file_name()?.to_str()?;
    if !name.starts_with("loop") {
        return None;
    }
    let p = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    std::fs::canonicalize(p.trim()).ok()
}

// ---------------------------------------------------------------------------
// Temporary files that never outlive a failure or an interrupt.

fn cleanup_registry() -> &'static Mutex<Vec<PathBuf>> {
    static REG: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    REG.get_or_init(|| {
        install_signal_cleanup();
        Mutex::new(Vec::new())
    })
}

/// On SIGINT/SIGTERM/SIGHUP: remove every registered temporary file, then
/// exit as the signal would have.
fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            if let Ok(paths) = cleanup_registry().lock() {
                for p in paths.iter() {
                    let _ = std::fs::remove_file(p);
                }
            }
            eprintln!("support-agent: interrupted; temporary files removed");
            std::process::exit(128 + sig);
        }
    });
}

/// A file created next to its final name, removed on drop (and on Ctrl-C)
/// unless [`TempFile::persist`]ed.
pub struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `.NAME.partial-PID-N` in the folder of `final_path`.
    pub fn create_next_to(final_path: &Path) -> io::Result<TempFile> {
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = final_path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "the output path names no file")
            })?
            .to_string_lossy()
            .into_owned();
        Self::create_in(&dir, &name)
    }

    /// Creates a uniquely named temporary file in `dir`.
    pub fn create_in(dir: &Path, name: &str) -> io::Result<TempFile> {
        let reg = cleanup_registry();
        let pid = std::process::id();
        for n in 0..1000u32 {
            let path = dir.join(format!(".{name}.partial-{pid}-{n}"));
            // Register before creating, so an interrupt in between still
            // cleans up.
            if let Ok(mut r) = reg.lock() {
                r.push(path.clone());
            }
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) => {
                    unregister(&path);
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "cannot find a free temporary name",
        ))
    }

    /// The open file.
    pub fn file(&self) -> &File {
        // Present until persist/drop consume it.
        self.file.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `final_path`.
    pub fn persist(mut self, final_path: &Path) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        std::fs::rename(&self.path, final_path)?;
        unregister(&self.path);
        self.path = PathBuf::new();
        Ok(())
    }
}

fn unregister(path: &Path) {
    if let Ok(mut r) = cleanup_registry().lock() {
        r.retain(|p| p != path);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
            unregister(&self.path);
        }
    }
}
