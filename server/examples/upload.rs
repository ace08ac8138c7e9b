//! A minimal client of the upload protocol (docs/upload-protocol.md), used
//! by `bench/upload.sh`: creates an upload, sends the file in chunks with
//! their SHA-256 (several requests in flight, positioned reads, bounded
//! memory), hashes the whole file in parallel, and completes.
//!
//! `cargo run --release -p support-server --example upload -- URL TOKEN TICKET FILE [CHUNK] [CONCURRENCY]`

use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 5,
        "usage: upload URL TOKEN TICKET FILE [CHUNK_BYTES] [CONCURRENCY]"
    );
    let (url, token, ticket, path) = (&args[1], &args[2], &args[3], &args[4]);
    let chunk: usize = args
        .get(5)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8 << 20);
    let conc: usize = args.get(6).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let file = Arc::new(std::fs::File::open(path)?);
    let size = file.metadata()?.len();
    let t0 = Instant::now();
    let c = reqwest::Client::new();

    // The whole SHA-256 on its own thread while chunks go out.
    let f2 = file.clone();
    let whole = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 8 << 20];
        let mut pos = 0u64;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            f2.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(hex::encode(h.finalize()))
    });

    let r = c
        .post(format!("{url}/api/v1/uploads"))
        .bearer_auth(token)
        .json(&serde_json::json!({"ticket": ticket, "size": size}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 201,
        "create: {} {}",
        r.status(),
        r.text().await?
    );
    let v: serde_json::Value = r.json().await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();

    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let mut set = tokio::task::JoinSet::new();
    let mut off = 0u64;
    while off < size {
        let permit = sem.clone().acquire_owned().await?;
        let n = (size - off).min(chunk as u64) as usize;
        let (f, c, url, token, id) = (
            file.clone(),
            c.clone(),
            url.clone(),
            token.clone(),
            id.clone(),
        );
        set.spawn(async move {
            let _permit = permit;
            let (buf, h) =
                tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, String)> {
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, off)?;
                    let h = hex::encode(Sha256::digest(&buf));
                    Ok((buf, h))
                })
                .await??;
            let r = c
                .put(format!("{url}/api/v1/uploads/{id}/chunks/{off}"))
                .bearer_auth(&token)
                .header("x-chunk-sha256", h)
                .body(buf)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "chunk {off}: {}", r.status());
            Ok::<_, anyhow::Error>(())
        });
        while let Some(r) = set.try_join_next() {
            r??;
        }
        off += n as u64;
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let whole = whole.await??;
    let r = c
        .post(format!("{url}/api/v1/uploads/{id}/complete"))
        .bearer_auth(token)
        .json(&serde_json::json!({"sha256": whole}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status() == 200,
        "complete: {} {}",
        r.status(),
        r.text().await?
    );
    eprintln!(
        "uploaded {size} bytes as {id} in {:.3} s, sha256 {whole}",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
