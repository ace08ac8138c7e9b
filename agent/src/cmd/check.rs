//! `support-agent check`: structural check of a QCOW2 image.

use anyhow::Context;
use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `support-agent check`.
#[derive(clap::Args)]
pub struct Args {
    /// The QCOW2 image to check.
    pub image: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand: exit 0 when clean, 1 when problems were found
/// (2 when the image cannot be checked at all, via `main`).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file =
        File::open(&args.image).with_context(|| format!("cannot open {}", args.image.display()))?;
    let report =
        qcow2::check(file).with_context(|| format!("cannot check {}", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            let tag = match p.severity {
                qcow2::check::Severity::Corruption => "ERROR",
                qcow2::check::Severity::Leak => "Leaked cluster",
            };
            println!("{tag}: {} (offset {:#x})", p.message, p.offset);
        }
        let listed = report.problems.len() as u64;
        if report.corruptions + report.leaks > listed {
            println!(
                "... and {} more problems not listed",
                report.corruptions + report.leaks - listed
            );
        }
        if report.is_clean() {
            println!("No errors were found on the image.");
        } else {
            if report.corruptions > 0 {
                println!(
                    "{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
                    report.corruptions
                );
            }
            if report.leaks > 0 {
                println!(
                    "{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.",
                    report.leaks
                );
            }
        }
        if report.dirty {
            println!("The image's dirty bit is set: refcounts may be stale.");
        }
        let pct = if report.total_clusters > 0 {
            report.allocated_clusters as f64 * 100.0 / report.total_clusters as f64
        } else {
            0.0
        };
        println!(
            "{}/{} = {:.2}% allocated, {} compressed clusters",
            report.allocated_clusters, report.total_clusters, pct, report.compressed_clusters
        );
        println!("Image end offset: {}", report.image_end_offset);
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
