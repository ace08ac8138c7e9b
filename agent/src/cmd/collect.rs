//! `support-agent collect`: export and upload in one go, while reading.
//!
//! The QCOW2 writer's output goes straight into fixed chunk windows that
//! upload workers send (see `upload::stream`); nothing is written to the
//! local disk but a small state file (upload id, scramble key) that lets a
//! re-run with the same arguments resume: the same key gives the same
//! bytes, the server says which windows it holds, only the rest is sent.
//! The header cluster, produced last, goes last; completion sends a
//! manifest of every chunk's SHA-256 and the server returns the whole
//! image's SHA-256 after verifying them all.

use crate::cmd::export::Compress;
use crate::pipeline;
use crate::progress::{self, Display};
use crate::state::{State, StateFile};
use crate::upload::client::{Client, ManifestChunk, UploadError};
use crate::upload::stream::{ChunkSink, Counters, Pool};
use crate::upload::{image_url, ServerArgs};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Arguments of `support-agent collect`.
#[derive(clap::Args)]
pub struct Args {
    /// Block device or raw image holding the ext2/3/4 filesystem (read only).
    pub source: PathBuf,
    /// Connection and display options.
    #[command(flatten)]
    pub server: ServerArgs,
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
    /// Export to nowhere: report the image's size and chunk count without
    /// contacting the server.
    #[arg(long)]
    pub dry_run: bool,
}

/// Counts what would be sent (`--dry-run`).
struct Counting {
    end: u64,
    bytes: u64,
}

impl qcow2::WriteAt for Counting {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.end = self.end.max(offset + buf.len() as u64);
        self.bytes += buf.len() as u64;
        Ok(())
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let src_name = args.source.display().to_string();
    let fs = pipeline::open(&args.source)?;
    let map = extfs::blockmap::build(&fs);
    if args.include_journal && !args.no_scramble {
        eprintln!("support-agent: warning: --include-journal keeps the journal's contents, which hold copies of old metadata blocks (file names included)");
    }
    if args.dry_run {
        let mut t = pipeline::transform(
            args.no_scramble,
            args.include_journal,
            pipeline::random_key(),
        );
        let (summary, c) = pipeline::run(
            &fs,
            &map,
            t.as_mut(),
            Counting { end: 0, bytes: 0 },
            args.compress,
            |_| {},
        )
        .with_context(|| format!("cannot export {src_name}"))?;
        pipeline::report_summary(&summary);
        let chunk = args.server.chunk_kib.unwrap_or(4096).max(64) << 10;
        let chunks = c.end.div_ceil(chunk);
        if args.server.json {
            println!(
                "{}",
                serde_json::json!({"dry_run": true, "size": c.end, "chunks": chunks, "chunk_size": chunk,
                    "mapped_blocks": summary.mapped_blocks, "written_blocks": summary.written_blocks,
                    "block_size": summary.block_size})
            );
        }
        eprintln!(
            "support-agent: dry run: would send an image of {} ({} bytes) in {chunks} chunks of at most {}; {} metadata blocks ({} non-zero) of {src_name}",
            progress::human(c.end),
            c.end,
            progress::human(chunk),
            summary.mapped_blocks,
            summary.written_blocks
        );
        return Ok(ExitCode::SUCCESS);
    }

    let res = args.server.resolve()?;
    let client = Client::new(&res.client)?;
    let say = |m: &str| {
        if !args.server.quiet {
            eprintln!("support-agent: {m}");
        }
    };
    let limits = client.limits(&say).map_err(anyhow::Error::new)?;

    let canonical = std::fs::canonicalize(&args.source).unwrap_or_else(|_| args.source.clone());
    let sb = fs.superblock();
    let identity = format!(
        "{}|uuid={}|blocks={}|wtime={}|mtime={}|free={}",
        canonical.display(),
        hex::encode(sb.uuid),
        fs.blocks_count(),
        sb.wtime,
        sb.mtime,
        sb.free_blocks_count_lo
    );
    let job = format!(
        "{}|{}|{}|scramble={}|journal={}|compress={:?}",
        client.base(),
        res.ticket.as_deref().unwrap_or("-"),
        canonical.display(),
        !args.no_scramble,
        args.include_journal,
        args.compress
    );
    let sf = StateFile::new(&res.state_dir, "collect", &job);

    for attempt in 0..2 {
        // Resume when the state matches this source and the server still
        // holds the upload.
        let mut resumed = None;
        if let Some(st) = sf
            .load()
            .filter(|s| s.source == identity && s.server == client.base())
        {
            match client.get(&st.upload_id, &say) {
                Ok(v) if v.status == "uploading" => resumed = Some((st, v.ranges)),
                Ok(v) => {
                    // Completed by the earlier run, which died before telling.
                    let img = client
                        .complete(&v.id, &serde_json::json!({}), &say)
                        .map_err(anyhow::Error::new)?;
                    sf.remove();
                    return finish_report(&args.server, &client, &img, 0, 0, 0);
                }
                Err(UploadError::UnknownUpload(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else if let Some(old) = sf.load() {
            // The source changed since the interrupted run: its chunks are
            // of no use.
            client.abandon(&old.upload_id);
            sf.remove();
        }
        let (state, held) = match resumed {
            Some((st, held)) => {
                let have: u64 = held.iter().map(|r| r.length).sum();
                say(&format!(
                    "resuming upload {} ({} already on the server)",
                    st.upload_id,
                    progress::human(have)
                ));
                (st, held)
            }
            None => {
                let key = pipeline::random_key();
                let name = canonical
                    .file_name()
                    .map(|n| format!("{}.qcow2", n.to_string_lossy()))
                    .unwrap_or_else(|| "image.qcow2".into());
                let v = client
                    .create(res.ticket.as_deref(), None, &name, &say)
                    .map_err(anyhow::Error::new)?;
                let st = State {
                    upload_id: v.id.clone(),
                    server: client.base().to_string(),
                    ticket: res.ticket.clone(),
                    key: Some(hex::encode(key)),
                    source: identity.clone(),
                    chunk_size: args.server.chunk_size(&limits),
                };
                sf.save(&st)?;
                (st, Vec::new())
            }
        };
        let key = state
            .key
            .as_deref()
            .and_then(|k| hex::decode(k).ok())
            .and_then(|k| <[u8; 16]>::try_from(k).ok())
            .context("the resume state holds no valid scramble key")?;
        match send(&args, &fs, &map, &client, &state, held, key, &src_name) {
            Ok((img, size, sent, skipped)) => {
                sf.remove();
                return finish_report(&args.server, &client, &img, size, sent, skipped);
            }
            Err(SendError::Conflict) if attempt == 0 => {
                say("the filesystem changed since the interrupted run; starting the upload over");
                client.abandon(&state.upload_id);
                sf.remove();
            }
            Err(SendError::Unknown) if attempt == 0 => {
                say("the server no longer holds the interrupted upload; starting over");
                sf.remove();
            }
            Err(SendError::Other(e)) => return Err(e),
            Err(_) => anyhow::bail!("the upload could not be resumed; run the same command again"),
        }
    }
    anyhow::bail!("the upload could not be resumed; run the same command again")
}

enum SendError {
    Conflict,
    Unknown,
    Other(anyhow::Error),
}

impl From<UploadError> for SendError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Conflict(_) => SendError::Conflict,
            UploadError::UnknownUpload(_) => SendError::Unknown,
            e => SendError::Other(e.into()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    args: &Args,
    fs: &extfs::Filesystem,
    map: &extfs::blockmap::BlockMap,
    client: &Client,
    state: &State,
    held: Vec<crate::upload::client::ByteRange>,
    key: [u8; 16],
    src_name: &str,
) -> Result<(serde_json::Value, u64, u64, u64), SendError> {
    let mut transform = pipeline::transform(args.no_scramble, args.include_journal, key);
    let counters = Arc::new(Counters::default());
    let limits_workers = args.server.jobs.unwrap_or(4).clamp(1, 32);
    let pool = Pool::start(
        client.clone(),
        state.upload_id.clone(),
        held,
        limits_workers,
        limits_workers * 2,
        counters.clone(),
    );
    let pos = pipeline::MapPosition::new(map, fs.block_size());
    let position = Arc::new(AtomicU64::new(0));
    let display = Display::start(
        progress::Source {
            position: position.clone(),
            total: pos.total_bytes,
            label: "of the metadata read",
            counters: counters.clone(),
        },
        args.server.quiet,
    );
    let sink = ChunkSink::new(&pool, state.chunk_size);
    let p2 = position.clone();
    let result = pipeline::run(
        fs,
        map,
        transform.as_mut(),
        sink,
        args.compress,
        move |off| p2.store(pos.done_at(off), Ordering::Relaxed),
    );
    let (summary, sink) = match result {
        Ok(x) => x,
        Err(e) => {
            display.finish();
            if let Some(up) = pool.take_error() {
                return Err(up.into());
            }
            return Err(SendError::Other(
                e.context(format!("cannot export {src_name}")),
            ));
        }
    };
    let size = match sink.finish() {
        Ok(s) => s,
        Err(_) => {
            display.finish();
            return Err(pool
                .take_error()
                .map(SendError::from)
                .unwrap_or_else(|| SendError::Other(anyhow::anyhow!("the upload stopped"))));
        }
    };
    let manifest = pool.finish();
    display.finish();
    let manifest = manifest?;
    pipeline::report_summary(&summary);
    check_tiling(&manifest, size).map_err(SendError::Other)?;
    let say = |m: &str| {
        if !args.server.quiet {
            eprintln!("support-agent: {m}");
        }
    };
    let body = serde_json::json!({ "size": size, "chunks": manifest });
    let img = client.complete(&state.upload_id, &body, &say)?;
    Ok((
        img,
        size,
        counters.sent.load(Ordering::Relaxed),
        counters.skipped.load(Ordering::Relaxed),
    ))
}

/// The manifest must cover `[0, size)` exactly, in order.
pub fn check_tiling(m: &[ManifestChunk], size: u64) -> anyhow::Result<()> {
    let mut pos = 0;
    for c in m {
        anyhow::ensure!(
            c.offset == pos,
            "internal error: chunk at {} expected at {pos}",
            c.offset
        );
        pos += c.length;
    }
    anyhow::ensure!(
        pos == size,
        "internal error: chunks cover {pos} of {size} bytes"
    );
    Ok(())
}

/// Prints the image id, its URL and SHA-256 (and JSON with `--json`).
pub fn finish_report(
    sa: &ServerArgs,
    client: &Client,
    img: &serde_json::Value,
    size: u64,
    sent: u64,
    skipped: u64,
) -> anyhow::Result<ExitCode> {
    let id = img["id"].as_str().unwrap_or("?");
    let sha = img["sha256"].as_str().unwrap_or("?");
    let ticket = img["ticket"].as_str().unwrap_or("?");
    let url = image_url(client.base(), id);
    if sa.json {
        println!(
            "{}",
            serde_json::json!({"id": id, "ticket": ticket, "url": url, "sha256": sha,
                "size": size, "sent_bytes": sent, "skipped_bytes": skipped,
                "status": img["status"]})
        );
    }
    eprintln!(
        "support-agent: uploaded image {id} to ticket {ticket} ({} sent{})",
        progress::human(sent),
        if skipped > 0 {
            format!(", {} already on the server", progress::human(skipped))
        } else {
            String::new()
        }
    );
    eprintln!("support-agent: image URL: {url}");
    eprintln!("support-agent: SHA-256: {sha}");
    Ok(ExitCode::SUCCESS)
}
