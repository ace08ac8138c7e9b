//! Load test, bounded in count and time, loopback only: 50 real
//! `support-agent upload` processes at once, each sending its own ext4
//! image (50 distinct filesystems built with `mke2fs -d` and turned into
//! QCOW2 by `e2image -Q`) to one of two `support-server` replicas
//! (alternating) on one PostgreSQL started by the test. Every image must
//! reach `ready` with the SHA-256 of its file.
//!
//! It reports (stderr; `--nocapture` to see it) the throughput (MB/s and
//! uploads/s from the first agent's start to the last agent's exit), the
//! time until all are ready, the agents' wall times, and the p50/p99
//! latency of chunk `PUT`s from the servers' own histograms
//! (`support_http_request_duration_seconds`, summed over both replicas,
//! interpolated inside the bucket like PromQL's `histogram_quantile`).
//! These are figures to read, not thresholds: speed is judged by
//! benchmarks, not by tests.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Agents (and images, and tickets).
const AGENTS: usize = 50;
/// Chunk size the agents use (the agent's smallest: 64 KiB), so every
/// upload is several chunks.
const CHUNK_KIB: &str = "64";
/// Safety net per agent; a normal run takes seconds.
const AGENT_TIMEOUT: Duration = Duration::from_secs(150);

/// A source tree shared by every image: many long names, so directory and
/// inode table blocks give each image some size.
fn source_tree(dir: &Path) -> PathBuf {
    let root = dir.join("src");
    std::fs::create_dir_all(root.join("d")).unwrap();
    for i in 0..1500u64 {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        std::fs::write(
            root.join("d")
                .join(format!("f{i:05}_{x:016x}{:016x}", x.rotate_left(29))),
            b"",
        )
        .unwrap();
    }
    root
}

/// Image `i`: the shared tree plus files of its own, its own label and
/// (random) UUID; returns the QCOW2 path.
fn image(dir: &Path, tree: &Path, i: usize) -> PathBuf {
    let own = tree.join(format!("own{i}"));
    std::fs::create_dir_all(&own).unwrap();
    for j in 0..(i % 7 + 1) {
        std::fs::write(own.join(format!("n{j}")), format!("{i}-{j}").repeat(j + 1)).unwrap();
    }
    let img = dir.join(format!("load{i}.img"));
    testkit::mkfs(
        &img,
        "8M",
        &["-t", "ext4", "-N", "2048", "-L", &format!("load{i}")],
        Some(tree),
    );
    std::fs::remove_dir_all(&own).unwrap();
    let q = dir.join(format!("load{i}.qcow2"));
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&img).arg(&q));
    std::fs::remove_file(&img).unwrap();
    q
}

/// Chunk PUT latency histogram of one replica: cumulative counts by upper
/// bound (seconds; `+Inf` as infinity), over every status.
fn chunk_histogram(metrics: &str, into: &mut BTreeMap<u64, (f64, u64)>) {
    let prefix = "support_http_request_duration_seconds_bucket{method=\"PUT\",route=\"/api/v1/uploads/{id}/chunks/{offset}\"";
    for line in metrics.lines().filter(|l| l.starts_with(prefix)) {
        let Some((labels, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        let e = into.entry(bound.to_bits()).or_insert((bound, 0));
        e.1 += n.parse::<u64>().unwrap();
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly
/// inside its bucket (as `histogram_quantile`).
fn quantile(h: &BTreeMap<u64, (f64, u64)>, q: f64) -> f64 {
    let mut buckets: Vec<(f64, u64)> = h.values().copied().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    let rank = q * total as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for (bound, n) in buckets {
        if n as f64 >= rank {
            if bound.is_infinite() {
                return lo;
            }
            let inside = (n - below).max(1) as f64;
            return lo + (bound - lo) * ((rank - below as f64) / inside);
        }
        (lo, below) = (bound, n);
    }
    lo
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_agents_upload_to_two_replicas_and_all_reach_ready() {
    if !testkit::have_tool("mke2fs") || !testkit::have_tool("e2image") {
        eprintln!("skipping the load test: mke2fs or e2image missing");
        return;
    }
    let Some(pg) = testkit::Postgres::start() else {
        return;
    };
    let agent = testkit::workspace_bin("support-agent", "support-agent");
    let tmp = testkit::tempdir();
    let t_build = Instant::now();
    let tree = source_tree(tmp.path());
    let images: Vec<PathBuf> = (0..AGENTS).map(|i| image(tmp.path(), &tree, i)).collect();
    let sizes: Vec<u64> = images
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    let total: u64 = sizes.iter().sum();
    eprintln!(
        "load: built {AGENTS} images ({total} bytes, {}..{} each) in {:.1} s",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
        t_build.elapsed().as_secs_f64()
    );

    let db = pg.url("load");
    let store = SharedStore::start("load").await;
    let (r1, r2) = two_replicas(&store, tmp.path(), &db, &["--workers", "1"]);
    let mut tokens = printed_tokens(&r1);
    tokens.extend(printed_tokens(&r2));
    let admin = tokens.pop().expect("a bootstrap token");
    let api = Api::new(&r1.url);
    let mut uploaders = Vec::new();
    for i in 0..AGENTS {
        uploaders.push(
            api.token(&admin, "uploader", Some(&format!("LOAD-{i}")))
                .await,
        );
    }

    // All agents at once, alternating replicas.
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, img) in images.iter().enumerate() {
        let url = if i % 2 == 0 { &r1.url } else { &r2.url };
        let mut cmd = tokio::process::Command::new(&agent);
        cmd.arg("upload")
            .arg(img)
            .args(["--server", url, "--token", &uploaders[i], "--state-dir"])
            .arg(tmp.path().join(format!("state{i}")))
            .args(["--json", "--quiet", "--chunk-kib", CHUNK_KIB])
            .env_remove("SUPPORT_SERVER")
            .env_remove("SUPPORT_TOKEN")
            .env_remove("SUPPORT_TICKET")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("NO_PROXY", "127.0.0.1")
            .env("XDG_CONFIG_HOME", "/nonexistent-support-agent-test")
            .kill_on_drop(true);
        set.spawn(async move {
            let start = Instant::now();
            let out = tokio::time::timeout(AGENT_TIMEOUT, cmd.output())
                .await
                .unwrap_or_else(|_| panic!("agent {i} still running after {AGENT_TIMEOUT:?}"))
                .unwrap();
            (i, start.elapsed(), out)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, took, out) = r.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "agent {i} failed: {stderr}");
        let v: serde_json::Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("agent {i} printed no JSON: {stderr}"));
        results.push((i, took, v));
    }
    let upload_secs = t0.elapsed().as_secs_f64();

    // Every image ready, with the SHA-256 of its file.
    let t_ready = Instant::now();
    loop {
        let (st, l) = api.get("/api/v1/images?status=ready&limit=1", &admin).await;
        assert_eq!(st, 200, "{l}");
        if l["total"] == AGENTS {
            break;
        }
        assert!(
            t_ready.elapsed() < Duration::from_secs(120),
            "not all ready: {l}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_secs = t0.elapsed().as_secs_f64();
    for (i, _, v) in &results {
        let want = sha(&std::fs::read(&images[*i]).unwrap());
        assert_eq!(v["sha256"].as_str(), Some(want.as_str()), "agent {i}: {v}");
        let id = v["id"].as_str().unwrap();
        let (st, img) = api.get(&format!("/api/v1/images/{id}"), &admin).await;
        assert_eq!(st, 200, "{img}");
        assert_eq!(img["status"], "ready", "{img}");
        assert_eq!(img["ticket"], format!("LOAD-{i}"));
        assert_eq!(img["sha256"].as_str(), Some(want.as_str()));
    }

    // Figures: the servers' chunk latency histograms, both replicas.
    let mut hist = BTreeMap::new();
    let mut stored = Vec::new();
    for s in [&r1, &r2] {
        let m = client()
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        chunk_histogram(&m, &mut hist);
        stored.push(counter(&m, "support_chunks_stored_total"));
    }
    assert!(
        stored.iter().all(|n| *n > 0),
        "both replicas must have stored chunks: {stored:?}"
    );
    let chunks = hist.values().map(|v| v.1).max().unwrap_or(0);
    let mut walls: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64()).collect();
    walls.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    eprintln!(
        "load: {AGENTS} agents -> 2 replicas ({} storage): {total} bytes in {upload_secs:.2} s = {:.2} MB/s, {:.1} uploads/s; all ready after {ready_secs:.2} s",
        store.kind(),
        total as f64 / 1e6 / upload_secs,
        AGENTS as f64 / upload_secs,
    );
    eprintln!(
        "load: chunk PUTs {chunks} (stored per replica {stored:?}): p50 {:.1} ms, p99 {:.1} ms (server histograms); agent wall time p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        quantile(&hist, 0.5) * 1e3,
        quantile(&hist, 0.99) * 1e3,
        pct(&walls, 0.5),
        pct(&walls, 0.99),
        walls[walls.len() - 1],
    );
}

#[test]
fn quantiles_interpolate_inside_buckets() {
    // 100 observations: 50 at <= 0.01 s, 49 more <= 0.1 s, 1 more <= 1 s.
    let mut h = BTreeMap::new();
    for (b, n) in [
        (0.01f64, 50u64),
        (0.1, 99),
        (1.0, 100),
        (f64::INFINITY, 100),
    ] {
        h.insert(b.to_bits(), (b, n));
    }
    assert!((quantile(&h, 0.5) - 0.01).abs() < 1e-9);
    assert!((quantile(&h, 0.99) - 0.1).abs() < 1e-9);
    assert!((quantile(&h, 0.995) - 0.55).abs() < 1e-9);
}
