//! `support-agent upload`: sends an existing QCOW2 image (the agent's own or
//! one from `e2image -Q`), resumably.
//!
//! The file is read once, in fixed chunk windows, by the same upload
//! workers as `collect`; completion sends the manifest of chunk SHA-256s
//! (the server verifies them and the whole image in one pass), so no
//! separate hashing pass over the file is needed. A re-run asks the server
//! which windows it holds and sends the rest.

use crate::cmd::collect::{check_tiling, finish_report};
use crate::progress::{self, Display};
use crate::state::{State, StateFile};
use crate::upload::client::{Client, UploadError};
use crate::upload::stream::{Counters, Pool};
use crate::upload::ServerArgs;
use anyhow::Context;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Arguments of `support-agent upload`.
#[derive(clap::Args)]
pub struct Args {
    /// The QCOW2 image to send.
    pub image: PathBuf,
    /// Connection and display options.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Report the size and chunk count without contacting the server.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = args.image.display().to_string();
    let file = std::fs::File::open(&args.image).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{name} does not exist"),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!("permission denied reading {name}"),
        _ => anyhow::anyhow!("cannot read {name}: {e}"),
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?;
    let size = meta.len();
    let mut magic = [0u8; 4];
    if size < 4 || file.read_exact_at(&mut magic, 0).is_err() || &magic != b"QFI\xfb" {
        anyhow::bail!("{name} is not a QCOW2 image; create one with `support-agent export` (or use `support-agent collect`)");
    }
    if args.dry_run {
        let chunk = args.server.chunk_kib.unwrap_or(4096).max(64) << 10;
        eprintln!(
            "support-agent: dry run: would send {} ({size} bytes) in {} chunks",
            progress::human(size),
            size.div_ceil(chunk)
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
    let canonical = std::fs::canonicalize(&args.image).unwrap_or_else(|_| args.image.clone());
    let identity = format!(
        "{}|size={size}|mtime={}.{}|ino={}",
        canonical.display(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    );
    let job = format!(
        "{}|{}|{}",
        client.base(),
        res.ticket.as_deref().unwrap_or("-"),
        canonical.display()
    );
    let sf = StateFile::new(&res.state_dir, "upload", &job);

    let mut resumed = None;
    if let Some(st) = sf.load() {
        if st.source == identity && st.server == client.base() {
            match client.get(&st.upload_id, &say) {
                Ok(v) if v.status == "uploading" => resumed = Some((st, v.ranges)),
                Ok(v) => {
                    let img = client
                        .complete(&v.id, &serde_json::json!({}), &say)
                        .map_err(anyhow::Error::new)?;
                    sf.remove();
                    return finish_report(&args.server, &client, &img, size, 0, 0);
                }
                Err(UploadError::UnknownUpload(_)) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            client.abandon(&st.upload_id);
            sf.remove();
        }
    }
    let (state, held) = match resumed {
        Some(x) => {
            say(&format!("resuming upload {}", x.0.upload_id));
            x
        }
        None => {
            let file_name = canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image.qcow2".into());
            let v = client
                .create(res.ticket.as_deref(), Some(size), &file_name, &say)
                .map_err(anyhow::Error::new)?;
            let st = State {
                upload_id: v.id.clone(),
                server: client.base().to_string(),
                ticket: res.ticket.clone(),
                key: None,
                source: identity.clone(),
                chunk_size: args.server.chunk_size(&limits),
            };
            sf.save(&st)?;
            (st, Vec::new())
        }
    };

    let counters = Arc::new(Counters::default());
    let workers = args.server.workers(&limits);
    let pool = Pool::start(
        client.clone(),
        state.upload_id.clone(),
        held,
        workers,
        workers * 2,
        counters.clone(),
    );
    let position = Arc::new(AtomicU64::new(0));
    let display = Display::start(
        progress::Source {
            position: position.clone(),
            total: size,
            label: "of the image read",
            counters: counters.clone(),
        },
        args.server.quiet,
    );
    let chunk = state.chunk_size.max(1);
    let mut off = 0u64;
    let mut read_err = None;
    while off < size {
        let n = chunk.min(size - off);
        let mut buf = vec![0u8; n as usize];
        if let Err(e) = file.read_exact_at(&mut buf, off) {
            read_err = Some(e);
            break;
        }
        if pool.send(off, buf).is_err() {
            break;
        }
        off += n;
        position.store(off, Ordering::Relaxed);
    }
    let manifest = pool.finish();
    display.finish();
    if let Some(e) = read_err {
        anyhow::bail!(
            "cannot read {name} at offset {off}: {e}; run the same command again to resume"
        );
    }
    let manifest = match manifest {
        Ok(m) => m,
        Err(UploadError::Conflict(_)) => {
            sf.remove();
            client.abandon(&state.upload_id);
            anyhow::bail!("the server holds different bytes for this upload (the file changed?); run the same command again to start over");
        }
        Err(UploadError::UnknownUpload(_)) => {
            sf.remove();
            anyhow::bail!("the server no longer holds this upload (it expired); run the same command again to start over");
        }
        Err(e) => return Err(e.into()),
    };
    check_tiling(&manifest, size)?;
    let body = serde_json::json!({ "size": size, "chunks": manifest });
    let img = client
        .complete(&state.upload_id, &body, &say)
        .map_err(anyhow::Error::new)?;
    sf.remove();
    finish_report(
        &args.server,
        &client,
        &img,
        size,
        counters.sent.load(Ordering::Relaxed),
        counters.skipped.load(Ordering::Relaxed),
    )
}
