//! `support-agent inspect`: a `dumpe2fs -h`-like summary, a compact group
//! table and the findings of a block device, raw image or QCOW2 image; or,
//! with `--json`, the analysis report the server serves.

use anyhow::Context;
use extfs::analysis::{self, GroupStats, Report};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `support-agent inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Block device, raw image or QCOW2 image (detected from its content).
    pub source: PathBuf,
    /// Print one JSON object `{"superblock", "groups", "findings"}`.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand. Exit status 0 whenever a report was produced (the
/// findings say what is wrong).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let what = || {
        format!(
            "cannot inspect {} (check that it is an ext2/3/4 device or image, or a QCOW2 image of one)",
            args.source.display()
        )
    };
    let src = extfs::source::open_path(&args.source).with_context(what)?;
    let fs = extfs::Filesystem::open(src).with_context(what)?;
    let report = analysis::inspect(&fs);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let written = if args.json {
        serde_json::to_writer(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_human(&mut out, &report)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `inspect … | head` is fine.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write the report to standard output"),
    }
}

/// The human form: `dumpe2fs -h` lines, the group table, the findings.
pub fn write_human(out: &mut impl Write, r: &Report) -> io::Result<()> {
    for (label, value) in r.superblock.lines() {
        writeln!(out, "{:<26}{value}", format!("{label}:"))?;
    }
    writeln!(out)?;
    if !r.groups.is_empty() {
        writeln!(
            out,
            "{:>6} {:>23} {:<13} {:>11} {:>11} {:>23} {:>9} {:>9} {:>6} {:>6}  csum",
            "group",
            "blocks",
            "flags",
            "block bmap",
            "inode bmap",
            "inode table",
            "free blk",
            "free ino",
            "dirs",
            "unused"
        )?;
        for g in &r.groups {
            writeln!(
                out,
                "{:>6} {:>23} {:<13} {:>11} {:>11} {:>23} {:>9} {:>9} {:>6} {:>6}  {}",
                g.group,
                format!("{}-{}", g.first_block, g.last_block),
                short_flags(g),
                g.block_bitmap,
                g.inode_bitmap,
                format!("{}-{}", g.inode_table, g.inode_table_last),
                g.free_blocks,
                g.free_inodes,
                g.directories,
                g.unused_inodes,
                csum_status(g)
            )?;
        }
        writeln!(out)?;
    }
    if r.findings.is_empty() {
        writeln!(out, "No findings.")?;
    } else {
        writeln!(out, "Findings ({}):", r.findings.len())?;
        for f in &r.findings {
            let sev = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut place = String::new();
            if let Some(g) = f.group {
                place.push_str(&format!(" group {g}"));
            }
            if let Some(i) = f.inode {
                place.push_str(&format!(" inode {i}"));
            }
            if let Some(b) = f.block {
                place.push_str(&format!(" block {b}"));
            }
            writeln!(out, "  {sev:<7} {:<30}{place}: {}", f.code, f.message)?;
        }
    }
    Ok(())
}

fn short_flags(g: &GroupStats) -> String {
    let s: Vec<&str> = g
        .flags
        .iter()
        .map(|f| match f.as_str() {
            "INODE_UNINIT" => "IU",
            "BLOCK_UNINIT" => "BU",
            "ITABLE_ZEROED" => "IZ",
            other => other,
        })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(",")
    }
}

fn csum_status(g: &GroupStats) -> String {
    let mut bad = Vec::new();
    if g.checksum.is_some() && g.checksum != g.checksum_expected {
        bad.push("desc");
    }
    if g.block_bitmap_checksum_expected.is_some()
        && g.block_bitmap_checksum != g.block_bitmap_checksum_expected
    {
        bad.push("bbmap");
    }
    if g.inode_bitmap_checksum_expected.is_some()
        && g.inode_bitmap_checksum != g.inode_bitmap_checksum_expected
    {
        bad.push("ibmap");
    }
    if g.checksum.is_none() && g.block_bitmap_checksum.is_none() {
        "-".into()
    } else if bad.is_empty() {
        "ok".into()
    } else {
        format!("BAD {}", bad.join(","))
    }
}
