//! The protocol's extension for streaming clients (docs/upload-protocol.md,
//! "Streaming clients"), against the real binary on loopback: an upload
//! created without a size, chunks sent header-last, completed with a
//! manifest; the server returns the SHA-256 it computed. Bad manifests,
//! mismatching chunks, a missing size and an exceeded quota are refused.

use sha2::{Digest, Sha256};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Srv {
    _dir: tempfile::TempDir,
    child: Child,
    url: String,
    token: String,
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Srv {
    let bin = env!("CARGO_BIN_EXE_support-server");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "token", "create", "--role", "uploader", "--ticket", "CASE-S",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Srv {
        _dir: dir,
        child,
        url: format!("http://127.0.0.1:{port}"),
        token,
    }
}

async fn ready(s: &Srv, c: &reqwest::Client) {
    let t0 = Instant::now();
    while c
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn create(s: &Srv, c: &reqwest::Client) -> String {
    let r = c
        .post(format!("{}/api/v1/uploads", s.url))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"name": "stream.qcow2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["size"], 0);
    assert_eq!(v["missing"], serde_json::json!([]));
    v["id"].as_str().unwrap().to_string()
}

async fn put(s: &Srv, c: &reqwest::Client, id: &str, off: usize, b: &[u8]) -> u16 {
    c.put(format!("{}/api/v1/uploads/{id}/chunks/{off}", s.url))
        .bearer_auth(&s.token)
        .header("x-chunk-sha256", sha(b))
        .body(b.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn complete(
    s: &Srv,
    c: &reqwest::Client,
    id: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c
        .post(format!("{}/api/v1/uploads/{id}/complete", s.url))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or_default())
}

fn manifest(data: &[u8], chunk: usize) -> Vec<serde_json::Value> {
    data.chunks(chunk)
        .enumerate()
        .map(|(i, c)| serde_json::json!({"offset": i * chunk, "length": c.len(), "sha256": sha(c)}))
        .collect()
}

#[tokio::test]
async fn streaming_upload_with_size_and_manifest_at_completion() {
    let s = start(&[]);
    let c = reqwest::Client::new();
    ready(&s, &c).await;
    // An image that is not ext: the upload protocol does not care; the
    // pipeline fails it later.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let chunk = 65536;
    let id = create(&s, &c).await;
    // Data first, the first chunk (the "header") last.
    for (i, part) in data.chunks(chunk).enumerate().skip(1) {
        assert_eq!(put(&s, &c, &id, i * chunk, part).await, 201);
    }
    // Missing size.
    let (st, v) = complete(
        &s,
        &c,
        &id,
        serde_json::json!({"chunks": manifest(&data, chunk)}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("size_required")),
        "{v}"
    );
    // Incomplete: chunk 0 not sent yet.
    let body = serde_json::json!({"size": data.len(), "chunks": manifest(&data, chunk)});
    let (st, v) = complete(&s, &c, &id, body.clone()).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("incomplete")),
        "{v}"
    );
    assert_eq!(put(&s, &c, &id, 0, &data[..chunk]).await, 201);
    // A manifest with a gap, and one whose chunk differs from the bytes.
    let mut gap = manifest(&data, chunk);
    gap.remove(1);
    let (st, v) = complete(
        &s,
        &c,
        &id,
        serde_json::json!({"size": data.len(), "chunks": gap}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_manifest")),
        "{v}"
    );
    // Size smaller than what was received.
    let short = &data[..data.len() - 10];
    let (st, v) = complete(
        &s,
        &c,
        &id,
        serde_json::json!({"size": short.len(), "chunks": manifest(short, chunk)}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("size_mismatch")),
        "{v}"
    );
    let mut wrong = manifest(&data, chunk);
    wrong[2]["sha256"] = sha(b"something else").into();
    let (st, v) = complete(
        &s,
        &c,
        &id,
        serde_json::json!({"size": data.len(), "chunks": wrong}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("chunk_mismatch")),
        "{v}"
    );
    assert_eq!(
        v["error"]["details"]["offsets"],
        serde_json::json!([2 * chunk])
    );
    // (A completion that got as far as hashing has fixed the size.)
    // The right one: the server returns the SHA-256 it computed.
    let (st, v) = complete(&s, &c, &id, body.clone()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sha256"].as_str(), Some(sha(&data).as_str()));
    assert_eq!(v["size"].as_u64(), Some(data.len() as u64));
    // Completing again is answered with the image again.
    let (st, v2) = complete(&s, &c, &id, body).await;
    assert_eq!(st, 200);
    assert_eq!(v2["sha256"], v["sha256"]);
}

#[tokio::test]
async fn streaming_upload_respects_the_quota_at_completion() {
    let s = start(&["--ticket-quota", "100000"]);
    let c = reqwest::Client::new();
    ready(&s, &c).await;
    let data = vec![7u8; 150_000];
    let id = create(&s, &c).await;
    for (i, part) in data.chunks(65536).enumerate() {
        assert_eq!(put(&s, &c, &id, i * 65536, part).await, 201);
    }
    let (st, v) = complete(
        &s,
        &c,
        &id,
        serde_json::json!({"size": data.len(), "chunks": manifest(&data, 65536)}),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (413, Some("quota_exceeded")),
        "{v}"
    );
}
