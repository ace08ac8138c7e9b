//! `support-agent convert` against `qemu-img convert -O raw`: byte-identical
//! output and holes in the same 4 KiB blocks, for every kind of image
//! (qemu-img cluster sizes, compat levels, refcount widths, zlib/zstd
//! compression, extended L2, zero clusters, and `e2image -Q`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::{data_blocks, noise};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_support-agent"))
}

fn have_tools() -> bool {
    let ok = ["qemu-img", "qemu-io", "mke2fs", "e2image"]
        .iter()
        .all(|t| testkit::have_tool(t));
    if !ok {
        eprintln!("skipping: qemu-img, qemu-io, mke2fs or e2image is not installed");
    }
    ok
}

/// A populated ext4 filesystem (raw) to build images from.
fn fs_image(dir: &Path, size: &str) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    for i in 0..80u64 {
        let len = (i as usize * 1201) % 30_000 + 1;
        std::fs::write(tree.join(format!("d/f{i}")), noise(i, len)).unwrap();
        std::fs::write(
            tree.join(format!("t{i}")),
            format!("line {i}\n").repeat(i as usize),
        )
        .unwrap();
    }
    let mut z = vec![0u8; 300 << 10];
    z[..7000].copy_from_slice(&noise(3, 7000));
    z[250_000..250_010].fill(1);
    std::fs::write(tree.join("holey"), z).unwrap();
    std::fs::write(tree.join("big"), noise(9, 2 << 20)).unwrap();
    let raw = dir.join("fs.raw");
    testkit::mkfs(&raw, size, &["-t", "ext4"], Some(&tree));
    raw
}

/// 4 KiB blocks holding data, from SEEK_DATA/SEEK_HOLE.
fn same_bytes(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Converts with qemu-img and with the agent (file and stdout) and compares.
fn compare(img: &Path, dir: &Path, what: &str) {
    let theirs = dir.join("qemu.raw");
    let ours = dir.join("ours.raw");
    let _ = std::fs::remove_file(&theirs);
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(img)
            .arg(&theirs),
    );
    // Pre-existing content in the output must not survive.
    std::fs::write(&ours, vec![0xaa; 100_000]).unwrap();
    ok(
        agent().arg("convert").arg(img).arg(&ours).output().unwrap(),
        what,
    );
    let t = std::fs::read(&theirs).unwrap();
    same_bytes(&std::fs::read(&ours).unwrap(), &t, what);
    assert_eq!(
        data_blocks(&ours),
        data_blocks(&theirs),
        "{what}: holes differ from qemu-img's"
    );
    let piped = ok(
        agent().arg("convert").arg(img).arg("-").output().unwrap(),
        what,
    );
    same_bytes(&piped.stdout, &t, &format!("{what} (stdout)"));
}

#[test]
fn convert_matches_qemu_img_on_every_kind_of_image() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = fs_image(dir.path(), "20M");
    let variants: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "cs512-v2",
            vec!["-o", "cluster_size=512,compat=0.10"],
            vec![],
        ),
        (
            "cs512-v3",
            vec!["-o", "cluster_size=512,compat=1.1"],
            vec![],
        ),
        ("cs4k-v2", vec!["-o", "cluster_size=4k,compat=0.10"], vec![]),
        ("cs4k-v3", vec!["-o", "cluster_size=4k"], vec![]),
        ("cs64k-v2", vec!["-o", "compat=0.10"], vec![]),
        ("cs64k-v3", vec!["-o", "compat=1.1"], vec![]),
        ("cs2M-v2", vec!["-o", "cluster_size=2M,compat=0.10"], vec![]),
        ("cs2M-v3", vec!["-o", "cluster_size=2M"], vec![]),
        ("rb1", vec!["-o", "refcount_bits=1"], vec![]),
        ("rb8", vec!["-o", "refcount_bits=8,cluster_size=1k"], vec![]),
        ("rb64", vec!["-o", "refcount_bits=64"], vec![]),
        ("zlib", vec!["-c", "-o", "compression_type=zlib"], vec![]),
        (
            "zlib-512",
            vec!["-c", "-o", "compression_type=zlib,cluster_size=512"],
            vec![],
        ),
        (
            "zlib-v2",
            vec!["-c", "-o", "compat=0.10,cluster_size=2M"],
            vec![],
        ),
        ("zstd", vec!["-c", "-o", "compression_type=zstd"], vec![]),
        (
            "zstd-4k",
            vec!["-c", "-o", "compression_type=zstd,cluster_size=4k"],
            vec![],
        ),
        ("extl2", vec!["-o", "extended_l2=on"], vec![]),
        (
            "extl2-zstd",
            vec!["-c", "-o", "extended_l2=on,compression_type=zstd"],
            vec![],
        ),
        (
            "zero-keep",
            vec!["-o", "compat=1.1"],
            vec!["write -z 0 256k", "write -z 1M 64k"],
        ),
        (
            "zero-unmap",
            vec!["-o", "cluster_size=4k"],
            vec!["write -z -u 8k 64k", "write -z -u 2M 1M"],
        ),
        (
            "zero-extl2",
            vec!["-o", "extended_l2=on"],
            vec![
                "write -z 4k 4k",
                "write -z -u 64k 8k",
                "write -P 0x55 1M 2k",
            ],
        ),
    ];
    let img = dir.path().join("v.qcow2");
    for (name, opts, io) in variants {
        let _ = std::fs::remove_file(&img);
        testkit::run(
            testkit::tool("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .args(&opts)
                .arg(&raw)
                .arg(&img),
        );
        if !io.is_empty() {
            let mut c = testkit::tool("qemu-io");
            c.args(["-f", "qcow2"]);
            for x in &io {
                c.arg("-c").arg(x);
            }
            testkit::run(c.arg(&img));
        }
        compare(&img, dir.path(), name);
    }
}

#[test]
fn convert_matches_qemu_img_on_e2image_q() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let raw = fs_image(dir.path(), "48M");
    let img = dir.path().join("e2.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&raw).arg(&img));
    compare(&img, dir.path(), "e2image -Q");
    // Same through a 1 KiB-block filesystem (1 KiB clusters).
    let raw2 = dir.path().join("fs1k.raw");
    testkit::mkfs(
        &raw2,
        "16M",
        &["-t", "ext4", "-b", "1024"],
        Some(&dir.path().join("tree")),
    );
    let img2 = dir.path().join("e2-1k.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&raw2).arg(&img2));
    compare(&img2, dir.path(), "e2image -Q, 1 KiB blocks");
}

#[test]
fn convert_refuses_bad_input_in_one_line() {
    let dir = testkit::tempdir();
    let out = dir.path().join("o.raw");
    let notq = dir.path().join("not.qcow2");
    std::fs::write(&notq, b"hello, not an image at all").unwrap();
    let mut truncated = b"QFI\xfb\0\0\0\x03".to_vec();
    truncated.extend_from_slice(&[0; 40]);
    let trunc = dir.path().join("trunc.qcow2");
    std::fs::write(&trunc, &truncated).unwrap();
    for (p, expect) in [
        (notq.as_path(), "not a QCOW2 image"),
        (trunc.as_path(), "truncated"),
        (Path::new("/nonexistent/x.qcow2"), "cannot open"),
    ] {
        let r = agent().arg("convert").arg(p).arg(&out).output().unwrap();
        assert_eq!(r.status.code(), Some(2), "{p:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{p:?}: {err}");
        assert!(err.contains(expect), "{p:?}: {err}");
    }
}
