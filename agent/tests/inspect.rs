//! `support-agent inspect` as a process: the JSON report is identical for a
//! raw image, its `e2image -Q` QCOW2 image and a zstd-compressed
//! `qemu-img convert` of it; the human form reads like `dumpe2fs -h`; bad
//! input gives one sentence on stderr.

use std::path::Path;
use std::process::{Command, Output};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_support-agent"))
}

fn inspect(args: &[&str], src: &Path) -> Output {
    agent()
        .arg("inspect")
        .args(args)
        .arg(src)
        .output()
        .expect("run support-agent")
}

fn json_of(src: &Path) -> serde_json::Value {
    let out = inspect(&["--json"], src);
    assert!(
        out.status.success(),
        "inspect --json {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object")
}

fn have(tools: &[&str]) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| !testkit::have_tool(t)).collect();
    if !missing.is_empty() {
        eprintln!("skipping: {missing:?} not installed");
    }
    missing.is_empty()
}

/// Builds a populated filesystem and returns (raw, e2image -Q, qemu-img zstd).
fn images(dir: &Path, args: &[&str]) -> [std::path::PathBuf; 3] {
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("a/b")).unwrap();
    for i in 0..30 {
        std::fs::write(files.join(format!("a/f{i}")), vec![i as u8; 5000 * i]).unwrap();
    }
    std::fs::write(files.join("a/b/c"), b"content").unwrap();
    let raw = dir.join("fs.img");
    let mut mk = testkit::tool("mke2fs");
    mk.env("E2FSPROGS_FAKE_TIME", "1700000000")
        .args(["-q", "-F", "-U", "01234567-89ab-cdef-0123-456789abcdef"])
        .args(args)
        .arg("-d")
        .arg(&files)
        .arg(&raw)
        .arg("64M");
    testkit::run(&mut mk);
    let q = dir.join("fs.e2i.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&raw).arg(&q));
    let z = dir.join("fs.zstd.qcow2");
    testkit::run(
        testkit::tool("qemu-img")
            .args([
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                "compression_type=zstd",
            ])
            .arg(&raw)
            .arg(&z),
    );
    [raw, q, z]
}

fn same_report_through_qcow2(args: &[&str]) {
    if !have(&["mke2fs", "e2image", "qemu-img"]) {
        return;
    }
    let tmp = testkit::tempdir();
    let [raw, q, z] = images(tmp.path(), args);
    let a = json_of(&raw);
    assert!(a["groups"].as_array().unwrap().len() > 1);
    assert_eq!(a["superblock"]["block_count"].as_u64().unwrap() > 0, true);
    let b = json_of(&q);
    assert_eq!(a, b, "raw and e2image -Q reports differ");
    let c = json_of(&z);
    assert_eq!(a, c, "raw and zstd qemu-img reports differ");
}

#[test]
fn json_identical_for_raw_e2image_and_zstd_qcow2_ext4() {
    same_report_through_qcow2(&["-t", "ext4", "-b", "1024"]);
}

#[test]
fn json_identical_for_raw_e2image_and_zstd_qcow2_ext3() {
    same_report_through_qcow2(&["-t", "ext3"]);
}

#[test]
fn json_identical_for_raw_e2image_and_zstd_qcow2_bigalloc_meta_bg() {
    same_report_through_qcow2(&[
        "-t",
        "ext4",
        "-b",
        "1024",
        "-O",
        "bigalloc,meta_bg,^resize_inode",
        "-C",
        "4096",
    ]);
}

#[test]
fn human_output_reads_like_dumpe2fs() {
    if !have(&["mke2fs", "e2image", "qemu-img", "dumpe2fs"]) {
        return;
    }
    let tmp = testkit::tempdir();
    let [raw, _, z] = images(tmp.path(), &["-t", "ext4"]);
    let out = inspect(&[], &z);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let d = testkit::run_text(testkit::tool("dumpe2fs").arg("-h").arg(&raw));
    // Lines whose values have no uid/gid names or interval words are equal.
    for line in d.lines().take_while(|l| !l.is_empty()) {
        if line.starts_with("Reserved blocks uid")
            || line.starts_with("Reserved blocks gid")
            || line.starts_with("Inode size")
        {
            continue;
        }
        let line = line.trim_end();
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("No findings.") || text.contains("Findings ("));
    assert!(text.contains("inode table"));
}

#[test]
fn errors_are_one_sentence() {
    let tmp = testkit::tempdir();
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, vec![0x5Au8; 200_000]).unwrap();
    for (src, expect) in [
        (junk.as_path(), "no usable ext2/3/4 superblock"),
        (
            Path::new("/nonexistent/device"),
            "No such file or directory",
        ),
    ] {
        let out = inspect(&["--json"], src);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(err.starts_with("support-agent: cannot inspect"), "{err}");
    }
    // A QCOW2 header with nothing valid behind it.
    let bad = tmp.path().join("bad.qcow2");
    let mut b = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    b.resize(4096, 0xFF);
    std::fs::write(&bad, b).unwrap();
    let out = inspect(&[], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("QCOW2"), "{err}");
}
