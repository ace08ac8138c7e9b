//! `support-agent collect` against a real `support-server` on loopback:
//! reaches `ready` with the superblock `inspect --json` shows; streams the
//! exact bytes `export` writes (checked with `--no-scramble`, where both are
//! deterministic); survives SIGKILL (resume re-sends little), a server
//! stopped for 10 s, and a proxy that cuts connections; creates no file
//! beyond its small state; refuses bad tokens, tickets, quotas, unreachable
//! servers and non-ext sources with one sentence and a non-zero exit.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TICKET: &str = "CASE-7";

fn collect(fs_img: &Path, url: &str, token: &str, state: &Path) -> Command {
    let mut c = agent();
    c.arg("collect")
        .arg(fs_img)
        .args(["--server", url, "--token", token, "--state-dir"])
        .arg(state)
        .args(["--json", "--chunk-kib", "64"]);
    c
}

fn export_bytes(fs_img: &Path, dir: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join("export.qcow2");
    let st = agent()
        .arg("export")
        .arg(fs_img)
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "export: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn download(server: &Server, id: &str, token: &str) -> Vec<u8> {
    let r = http()
        .get(format!("{}/api/v1/images/{id}/qcow2", server.url()))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert!(r.status().is_success());
    r.bytes().unwrap().to_vec()
}

fn received(server: &Server, id: &str, token: &str) -> u64 {
    http()
        .get(format!("{}/api/v1/uploads/{id}", server.url()))
        .bearer_auth(token)
        .send()
        .ok()
        .and_then(|r| r.json::<serde_json::Value>().ok())
        .and_then(|v| v["received"].as_u64())
        .unwrap_or(0)
}

fn no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("backtrace")
            && !stderr.contains("RUST_BACKTRACE"),
        "stack trace: {stderr}"
    );
}

#[test]
fn collect_reaches_ready_with_the_sources_superblock_and_leaves_no_files() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "64M", 3000);
    let server = Server::start(&[]);
    let up = server.token("uploader", Some(TICKET));
    let maint = server.token("maintainer", None);
    let flags = scramble_flags(&fs_img);
    let state = dir.path().join("state");
    let cwd = dir.path().join("cwd");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();

    // Watch the state dir and the temp dirs while collect runs: no file
    // larger than a few KiB may appear.
    let mut child = collect(&fs_img, &server.url(), &up, &state)
        .args(&flags)
        .current_dir(&cwd)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut biggest = 0u64;
    while child.try_wait().unwrap().is_none() {
        for d in [&state, &cwd, &tmp] {
            for (_, n) in files_under(d) {
                biggest = biggest.max(n);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "collect failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(biggest <= 4096, "collect created a file of {biggest} bytes");
    assert!(files_under(&cwd).is_empty() && files_under(&tmp).is_empty());
    assert!(files_under(&state).is_empty(), "state kept after success");

    let id = v["id"].as_str().unwrap();
    let sha = v["sha256"].as_str().unwrap();
    assert!(stderr.contains(id) && stderr.contains(sha) && stderr.contains("/api/v1/images/"));
    let img = server.wait_ready(id, &maint);
    assert_eq!(img["status"], "ready", "{img}");
    assert_eq!(img["ticket"], TICKET);
    let bytes = download(&server, id, &maint);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(bytes.len() as u64, v["size"].as_u64().unwrap());

    let sb = server.get_json(&format!("/api/v1/images/{id}/superblock"), &maint);
    let inspect = agent()
        .arg("inspect")
        .arg("--json")
        .arg(&fs_img)
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(sb, inspect["superblock"]);
}

#[test]
fn collect_streams_exactly_the_bytes_export_writes() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "32M", 1500);
    let server = Server::start(&[]);
    let up = server.token("uploader", Some(TICKET));
    let maint = server.token("maintainer", None);
    for compress in ["zstd", "none"] {
        let want = export_bytes(
            &fs_img,
            dir.path(),
            &["--no-scramble", "--compress", compress],
        );
        let (ok, v, err) = run_agent(
            collect(&fs_img, &server.url(), &up, &dir.path().join("s")).args([
                "--no-scramble",
                "--compress",
                compress,
                "--quiet",
            ]),
        );
        assert!(ok, "{err}");
        let id = v["id"].as_str().unwrap();
        assert_eq!(v["size"].as_u64().unwrap(), want.len() as u64);
        assert_eq!(
            v["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(&want))
        );
        assert_eq!(download(&server, id, &maint), want);
    }
    // --dry-run reports the same size without a server.
    let (ok, v, err) = run_agent(agent().arg("collect").arg(&fs_img).args([
        "--dry-run",
        "--json",
        "--no-scramble",
        "--compress",
        "none",
    ]));
    assert!(ok, "{err}");
    let want = export_bytes(
        &fs_img,
        dir.path(),
        &["--no-scramble", "--compress", "none"],
    );
    assert_eq!(v["size"].as_u64().unwrap(), want.len() as u64);
}

/// A collection whose upload is slowed by a throttling proxy.
struct Slow {
    dir: tempfile::TempDir,
    fs_img: std::path::PathBuf,
    server: Server,
    proxy: Proxy,
    up: String,
    maint: String,
    flags: Vec<&'static str>,
    size: u64,
}

fn slow(rate: u64, drop_every: u64) -> Slow {
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "96M", 4000);
    let server = Server::start(&[]);
    let proxy = Proxy::start(server.port, rate, drop_every);
    let up = server.token("uploader", Some(TICKET));
    let maint = server.token("maintainer", None);
    let mut flags = scramble_flags(&fs_img);
    flags.extend(["--compress", "none"]);
    let (ok, v, err) = run_agent(
        agent()
            .arg("collect")
            .arg(&fs_img)
            .args(["--dry-run", "--json"])
            .args(&flags),
    );
    assert!(ok, "{err}");
    let size = v["size"].as_u64().unwrap();
    Slow {
        dir,
        fs_img,
        server,
        proxy,
        up,
        maint,
        flags,
        size,
    }
}

#[test]
fn killed_collect_resumes_and_resends_at_most_a_quarter() {
    if !have_tools() {
        return;
    }
    // ~3 MB image at 400 KB/s: half way after a few seconds.
    let s = slow(400_000, 0);
    let state = s.dir.path().join("state");
    let mut child = collect(&s.fs_img, &s.proxy.url(), &s.up, &state)
        .args(&s.flags)
        .args(["--jobs", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let id = wait_upload_id(&state);
    loop {
        let got = received(&s.server, &id, &s.up);
        if got * 2 >= s.size {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "collect finished before half way"
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let held = received(&s.server, &id, &s.up);
    let sent_before = s
        .proxy
        .upstream_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("killed at {held} of {} bytes held", s.size);
    assert!(held < s.size);

    // Run again, same arguments, full speed.
    s.proxy.rate.store(0, std::sync::atomic::Ordering::Relaxed);
    let (ok, v, err) = run_agent(collect(&s.fs_img, &s.proxy.url(), &s.up, &state).args(&s.flags));
    assert!(ok, "resume failed: {err}");
    assert_eq!(
        v["id"].as_str().unwrap(),
        id,
        "did not resume the same upload"
    );
    let size = v["size"].as_u64().unwrap();
    assert_eq!(size, s.size);
    let sent = v["sent_bytes"].as_u64().unwrap();
    let skipped = v["skipped_bytes"].as_u64().unwrap();
    assert!(skipped >= held, "held {held} but skipped only {skipped}");
    assert_eq!(sent + skipped, size);
    // Everything that crossed the wire in both runs (bodies and headers).
    let total = s
        .proxy
        .upstream_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "first run {sent_before} B, second run sent {sent} B, wire total {total} B for {size} B"
    );
    assert!(
        total <= size + size / 4,
        "re-sent {} bytes (> 25% of {size})",
        total - size
    );
    let img = s.server.wait_ready(&id, &s.maint);
    assert_eq!(img["status"], "ready", "{img}");
    if s.flags.contains(&"--no-scramble") {
        let want = export_bytes(&s.fs_img, s.dir.path(), &s.flags);
        assert_eq!(download(&s.server, &id, &s.maint), want);
    }
}

#[test]
fn collect_waits_for_a_server_stopped_for_ten_seconds() {
    if !have_tools() {
        return;
    }
    let mut s = slow(500_000, 0);
    let state = s.dir.path().join("state");
    let child = collect(&s.fs_img, &s.proxy.url(), &s.up, &state)
        .args(&s.flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let id = wait_upload_id(&state);
    while received(&s.server, &id, &s.up) * 3 < s.size {
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    s.server.kill();
    std::thread::sleep(Duration::from_secs(10));
    s.server.restart();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "collect failed: {err}");
    assert!(err.contains("retrying"), "no retry reported: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), id);
    let img = s.server.wait_ready(&id, &s.maint);
    assert_eq!(img["status"], "ready", "{img}");
}

#[test]
fn collect_survives_a_proxy_that_cuts_connections() {
    if !have_tools() {
        return;
    }
    // The test image is a few MB: cut every connection after 256 KiB so
    // each worker's connection is cut several times.
    let s = slow(0, 256 << 10);
    eprintln!("image of {} bytes", s.size);
    let (ok, v, err) = run_agent(
        collect(
            &s.fs_img,
            &s.proxy.url(),
            &s.up,
            &s.dir.path().join("state"),
        )
        .args(&s.flags)
        .args(["--jobs", "2"]),
    );
    assert!(ok, "collect failed: {err}");
    let cuts = s.proxy.cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(cuts >= 2, "the proxy cut only {cuts} connections");
    let id = v["id"].as_str().unwrap();
    let img = s.server.wait_ready(id, &s.maint);
    assert_eq!(img["status"], "ready", "{img}");
    if s.flags.contains(&"--no-scramble") {
        let want = export_bytes(&s.fs_img, s.dir.path(), &s.flags);
        assert_eq!(download(&s.server, id, &s.maint), want);
    }
}

#[test]
fn refusals_are_one_sentence_and_fail() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "16M", 10);
    let flags = scramble_flags(&fs_img);
    let server = Server::start(&["--ticket-quota", "20000"]);
    let up = server.token("uploader", Some(TICKET));
    let state = dir.path().join("state");
    let check = |cmd: &mut Command, want: &str| {
        let (ok, _, err) = run_agent(cmd);
        assert!(!ok, "should fail ({want})");
        no_panic(&err);
        assert!(err.to_lowercase().contains(want), "want {want:?} in: {err}");
        assert!(err.trim().lines().count() <= 2, "not short: {err}");
    };
    // Bad token.
    check(
        collect(&fs_img, &server.url(), "nonsense-token", &state).args(&flags),
        "token",
    );
    // Another ticket.
    check(
        collect(&fs_img, &server.url(), &up, &state)
            .args(&flags)
            .args(["--ticket", "OTHER-1"]),
        "ticket other-1",
    );
    // Quota (20000 bytes): refused at completion.
    check(
        collect(&fs_img, &server.url(), &up, &state).args(&flags),
        "quota",
    );
    // Unreachable server.
    let port = free_port();
    check(
        collect(&fs_img, &format!("http://127.0.0.1:{port}"), &up, &state)
            .args(&flags)
            .args(["--retry-for", "2", "--quiet"]),
        "cannot reach",
    );
    // TLS to a plain HTTP server.
    check(
        collect(
            &fs_img,
            &format!("https://127.0.0.1:{}", server.port),
            &up,
            &state,
        )
        .args(&flags)
        .args(["--retry-for", "2", "--quiet"]),
        "127.0.0.1",
    );
    // Not an ext filesystem.
    let zero = dir.path().join("zero.img");
    std::fs::write(&zero, vec![0u8; 1 << 20]).unwrap();
    check(
        collect(&zero, &server.url(), &up, &state).args(&flags),
        "no ext2/ext3/ext4 filesystem",
    );
    // Missing device.
    check(
        collect(&dir.path().join("nope"), &server.url(), &up, &state).args(&flags),
        "does not exist",
    );
    // No server or token at all.
    check(agent().arg("collect").arg(&fs_img).args(&flags), "--server");
}
