//! `support-agent upload` against a real `support-server` on loopback: the
//! agent's own export and an `e2image -Q` image reach `ready` with the
//! stored bytes' SHA-256 equal to the file's; a killed upload resumes and
//! sends only what the server lacks; a file that is not QCOW2 is refused.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TICKET: &str = "CASE-8";

fn upload(img: &Path, url: &str, token: &str, state: &Path) -> Command {
    let mut c = agent();
    c.arg("upload")
        .arg(img)
        .args(["--server", url, "--token", token, "--state-dir"])
        .arg(state)
        .args(["--json", "--chunk-kib", "64", "--quiet"]);
    c
}

#[test]
fn uploads_of_agent_and_e2image_images_reach_ready() {
    if !have_tools() || !testkit::have_tool("e2image") {
        return;
    }
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "32M", 500);
    let server = Server::start(&[]);
    let up = server.token("uploader", Some(TICKET));
    let maint = server.token("maintainer", None);

    let ours = dir.path().join("ours.qcow2");
    let st = agent()
        .arg("export")
        .arg(&fs_img)
        .arg(&ours)
        .arg("--no-scramble")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let theirs = dir.path().join("theirs.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&fs_img).arg(&theirs));

    let inspect = agent()
        .arg("inspect")
        .arg("--json")
        .arg(&fs_img)
        .output()
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    for img in [&ours, &theirs] {
        let (ok, v, err) = run_agent(&mut upload(img, &server.url(), &up, &dir.path().join("s")));
        assert!(ok, "upload failed: {err}");
        let bytes = std::fs::read(img).unwrap();
        assert_eq!(
            v["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(&bytes))
        );
        assert_eq!(v["sent_bytes"].as_u64().unwrap(), bytes.len() as u64);
        let id = v["id"].as_str().unwrap();
        let done = server.wait_ready(id, &maint);
        assert_eq!(done["status"], "ready", "{done}");
        let sb = server.get_json(&format!("/api/v1/images/{id}/superblock"), &maint);
        assert_eq!(sb, inspect["superblock"]);
    }
}

#[test]
fn killed_upload_resumes_sending_only_the_rest() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let fs_img = make_fs(dir.path(), "64M", 2000);
    let img = dir.path().join("img.qcow2");
    let st = agent()
        .arg("export")
        .arg(&fs_img)
        .arg(&img)
        .args(["--no-scramble", "--compress", "none"])
        .output()
        .unwrap();
    assert!(st.status.success());
    let size = std::fs::metadata(&img).unwrap().len();
    let server = Server::start(&[]);
    let proxy = Proxy::start(server.port, 300_000, 0);
    let up = server.token("uploader", Some(TICKET));
    let state = dir.path().join("state");
    let mut child = upload(&img, &proxy.url(), &up, &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let id = wait_upload_id(&state);
    let received = || -> u64 {
        http()
            .get(format!("{}/api/v1/uploads/{id}", server.url()))
            .bearer_auth(&up)
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .and_then(|v| v["received"].as_u64())
            .unwrap_or(0)
    };
    while received() * 2 < size {
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let held = received();
    proxy.rate.store(0, std::sync::atomic::Ordering::Relaxed);
    let (ok, v, err) = run_agent(&mut upload(&img, &proxy.url(), &up, &state));
    assert!(ok, "resume failed: {err}");
    assert_eq!(v["id"].as_str().unwrap(), id);
    let sent = v["sent_bytes"].as_u64().unwrap();
    assert!(
        sent + held <= size,
        "sent {sent} with {held} of {size} held"
    );
    let total = proxy
        .upstream_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(total <= size + size / 4, "wire total {total} for {size}");
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(
        v["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&bytes))
    );
}

#[test]
fn a_file_that_is_not_qcow2_is_refused() {
    let dir = testkit::tempdir();
    let f = dir.path().join("x.img");
    std::fs::write(&f, b"not an image at all").unwrap();
    let (ok, _, err) = run_agent(&mut upload(
        &f,
        "http://127.0.0.1:9",
        "t",
        &dir.path().join("s"),
    ));
    assert!(!ok);
    assert!(err.contains("is not a QCOW2 image"), "{err}");
    assert!(!err.contains("panicked"));
}
