//! The reader against qemu-img on every kind of image: guest bytes, the
//! allocation map (`qemu-img map`) and the check counts (`qemu-img check`).

mod common;

use qcow2::{ExtentKind, Image};
use std::fs::File;
use std::path::Path;

/// Data ranges `qemu-img map --output=json` reports, merged.
fn qemu_data_ranges(img: &Path) -> Vec<(u64, u64)> {
    let out = testkit::run_text(
        testkit::tool("qemu-img")
            .args(["map", "--output=json"])
            .arg(img),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut r: Vec<(u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        if e["data"].as_bool() == Some(true) {
            let s = e["start"].as_u64().unwrap();
            let l = e["length"].as_u64().unwrap();
            match r.last_mut() {
                Some(x) if x.1 == s => x.1 = s + l,
                _ => r.push((s, s + l)),
            }
        }
    }
    r
}

fn my_data_ranges(img: &Image<File>) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = Vec::new();
    for e in img.map(0, img.virtual_size()).unwrap() {
        if e.kind == ExtentKind::Data {
            match r.last_mut() {
                Some(x) if x.1 == e.offset => x.1 = e.offset + e.len,
                _ => r.push((e.offset, e.offset + e.len)),
            }
        }
    }
    r
}

/// qemu-img check's (corruptions, leaks).
fn qemu_check_counts(img: &Path) -> (u64, u64) {
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

/// Reads the image through `read_at` from several threads at once, in
/// odd-sized pieces, and compares with the raw reference.
fn compare_reads(img: &Image<File>, raw: &[u8], name: &str) {
    let size = img.virtual_size();
    assert_eq!(size, raw.len() as u64, "{name}: virtual size");
    std::thread::scope(|s| {
        for t in 0..3u64 {
            s.spawn(move || {
                let piece = 65_537 + t * 4093;
                let mut buf = vec![0u8; piece as usize];
                let mut off = t * 1000;
                while off < size {
                    let n = piece.min(size - off) as usize;
                    img.read_at(&mut buf[..n], off).unwrap();
                    if buf[..n] != raw[off as usize..off as usize + n] {
                        panic!("{name}: read_at differs in [{off:#x}, +{n:#x})");
                    }
                    off += piece * 3;
                }
            });
        }
    });
    // Past the end is an error, not a panic or a short read.
    let mut b = [0u8; 2];
    assert!(img.read_at(&mut b, size - 1).is_err());
    assert!(img.read_at(&mut b, u64::MAX).is_err());
}

fn verify(img_path: &Path, dir: &Path, name: &str) {
    let reference = dir.join(format!("{name}.ref.raw"));
    common::qemu_raw(img_path, &reference);
    let raw = std::fs::read(&reference).unwrap();
    let img = Image::open(File::open(img_path).unwrap()).unwrap();
    compare_reads(&img, &raw, name);
    assert_eq!(
        my_data_ranges(&img),
        qemu_data_ranges(img_path),
        "{name}: data map"
    );
    let report = qcow2::check(File::open(img_path).unwrap()).unwrap();
    let (c, l) = qemu_check_counts(img_path);
    assert_eq!(
        (report.corruptions, report.leaks),
        (c, l),
        "{name}: check counts vs qemu-img check: {:?}",
        report.problems
    );
    std::fs::remove_file(&reference).unwrap();
}

#[test]
fn qemu_img_variants_read_like_qemu() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = common::fs_image(dir.path(), "24M");
    for (name, opts) in common::variants() {
        let img = dir.path().join(format!("{name}.qcow2"));
        common::qemu_qcow2(&raw, &img, &opts);
        verify(&img, dir.path(), name);
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn zero_clusters_read_like_qemu() {
    if !common::have_tools() || !testkit::have_tool("qemu-io") {
        return;
    }
    let dir = testkit::tempdir();
    let raw = common::fs_image(dir.path(), "16M");
    for (name, opts, cmds) in common::zero_variants() {
        let img = dir.path().join(format!("{name}.qcow2"));
        common::qemu_qcow2(&raw, &img, &opts);
        common::qemu_io(&img, &cmds);
        let opened = Image::open(File::open(&img).unwrap()).unwrap();
        let zero: u64 = opened
            .map(0, opened.virtual_size())
            .unwrap()
            .iter()
            .filter(|e| e.kind == ExtentKind::Zero)
            .map(|e| e.len)
            .sum();
        assert!(zero > 0, "{name}: qemu-io made no zero clusters");
        verify(&img, dir.path(), name);
    }
}

#[test]
fn e2image_q_reads_like_qemu() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    for (size, args) in [
        ("32M", vec!["-t", "ext4"]),
        ("8M", vec!["-t", "ext2", "-b", "1024"]),
        (
            "64M",
            vec!["-t", "ext4", "-O", "^has_journal", "-b", "2048"],
        ),
    ] {
        let tree = dir.path().join("tree");
        if !tree.exists() {
            common::populate(&tree);
        }
        let fs = dir.path().join("fs.raw");
        testkit::mkfs(&fs, size, &args, Some(&tree));
        let img = dir.path().join("e2.qcow2");
        let _ = std::fs::remove_file(&img);
        testkit::run(testkit::tool("e2image").arg("-Q").arg(&fs).arg(&img));
        let h = Image::open(File::open(&img).unwrap()).unwrap();
        assert_eq!(h.header().version, 2, "e2image -Q writes version 2");
        verify(&img, dir.path(), &format!("e2image-{size}"));
    }
}

#[test]
fn is_qcow2_detects_magic() {
    assert!(qcow2::is_qcow2(b"QFI\xfb\0\0\0\x03rest"));
    assert!(qcow2::is_qcow2(b"QFI\xfb\0\0\0\x02"));
    assert!(!qcow2::is_qcow2(b"QFI\xfb\0\0\0\x01"));
    assert!(!qcow2::is_qcow2(b"QFI"));
    assert!(!qcow2::is_qcow2(&[0u8; 512]));
}
