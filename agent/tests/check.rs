//! `support-agent check` against `qemu-img check`: exit status, counts of
//! corruptions and leaks, and the JSON report.

use std::path::Path;
use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_support-agent"))
}

fn have_tools() -> bool {
    let ok = ["qemu-img", "mke2fs", "e2image"]
        .iter()
        .all(|t| testkit::have_tool(t));
    if !ok {
        eprintln!("skipping: qemu-img, mke2fs or e2image is not installed");
    }
    ok
}

fn fs(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..50 {
        std::fs::write(tree.join(format!("f{i}")), format!("{i} ").repeat(i * 100)).unwrap();
    }
    let raw = dir.join("fs.raw");
    testkit::mkfs(&raw, "16M", &["-t", "ext4"], Some(&tree));
    raw
}

/// `(corruptions, leaks)` as qemu-img check counts them.
fn qemu_counts(img: &Path) -> (u64, u64) {
    let out = testkit::tool("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["corruptions"].as_u64().unwrap_or(0),
        v["leaks"].as_u64().unwrap_or(0),
    )
}

fn agent_json(img: &Path) -> (Option<i32>, serde_json::Value) {
    let out = agent()
        .arg("check")
        .arg("--json")
        .arg(img)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), v)
}

#[test]
fn clean_image_exits_zero() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = fs(dir.path());
    let img = dir.path().join("c.qcow2");
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&raw)
            .arg(&img),
    );
    assert_eq!(qemu_counts(&img), (0, 0));
    let out = agent().arg("check").arg(&img).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No errors were found"));
    let (code, v) = agent_json(&img);
    assert_eq!(code, Some(0));
    assert_eq!(v["corruptions"], 0);
    assert_eq!(v["leaks"], 0);
    assert!(v["compressed_clusters"].as_u64().unwrap() > 0);
}

#[test]
fn e2image_leak_is_reported_like_qemu() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = fs(dir.path());
    let img = dir.path().join("e2.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&raw).arg(&img));
    let (c, l) = qemu_counts(&img);
    let (code, v) = agent_json(&img);
    assert_eq!(
        (
            v["corruptions"].as_u64().unwrap(),
            v["leaks"].as_u64().unwrap()
        ),
        (c, l)
    );
    assert_eq!(code, Some(if c + l > 0 { 1 } else { 0 }));
}

#[test]
fn corruption_is_reported_like_qemu() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = fs(dir.path());
    let img = dir.path().join("k.qcow2");
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-O", "qcow2", "-o", "cluster_size=4k"])
            .arg(&raw)
            .arg(&img),
    );
    // Zero the refcount block pointer's block: every cluster loses its count.
    let mut b = std::fs::read(&img).unwrap();
    let rt = u64::from_be_bytes(b[48..56].try_into().unwrap()) as usize;
    let rb = (u64::from_be_bytes(b[rt..rt + 8].try_into().unwrap()) & !511) as usize;
    b[rb..rb + 64].fill(0);
    std::fs::write(&img, &b).unwrap();
    let (c, l) = qemu_counts(&img);
    assert!(c > 0);
    let (code, v) = agent_json(&img);
    assert_eq!(code, Some(1));
    assert_eq!(
        (
            v["corruptions"].as_u64().unwrap(),
            v["leaks"].as_u64().unwrap()
        ),
        (c, l)
    );
    let text = agent().arg("check").arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("{c} errors were found")));
}

#[test]
fn unreadable_image_exits_two_with_one_line() {
    let dir = testkit::tempdir();
    let p = dir.path().join("x.qcow2");
    let mut h = b"QFI\xfb\0\0\0\x03".to_vec();
    h.resize(512, 0);
    h[23] = 16; // cluster_bits
    h[35] = 1; // crypt_method = AES
    h[103] = 104; // header_length
    std::fs::write(&p, &h).unwrap();
    let out = agent().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("encryption"), "{err}");
}
