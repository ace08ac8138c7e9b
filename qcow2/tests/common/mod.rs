//! Helpers for the qcow2 tests: a populated ext4 filesystem to build images
//! from, the qemu-img variants, and a hole map through SEEK_DATA/SEEK_HOLE.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[allow(unused_imports)] // each test binary uses its own subset
pub use testkit::{data_blocks, noise};

/// Whether the reference tools are present; tests skip (with a message)
/// otherwise.
pub fn have_tools() -> bool {
    let ok = ["qemu-img", "mke2fs", "e2image"]
        .iter()
        .all(|t| testkit::have_tool(t));
    if !ok {
        eprintln!("skipping: qemu-img, mke2fs or e2image is not installed");
    }
    ok
}

/// Deterministic pseudo-random bytes.
/// A directory tree with random, compressible, sparse-ish and tiny files.
pub fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("d/e")).unwrap();
    for i in 0..120u64 {
        let len = (i as usize * 977) % 40_000 + 1;
        std::fs::write(dir.join(format!("d/r{i}")), noise(i, len)).unwrap();
        std::fs::write(
            dir.join(format!("d/e/t{i}")),
            format!("text file {i}\n").repeat(i as usize + 1),
        )
        .unwrap();
    }
    // A file with zero blocks between data: stored zero blocks in the image.
    let mut z = vec![0u8; 256 << 10];
    z[..5000].copy_from_slice(&noise(99, 5000));
    z[200_000..200_100].fill(7);
    std::fs::write(dir.join("zeros-inside"), z).unwrap();
    std::fs::write(dir.join("big"), noise(7, 3 << 20)).unwrap();
}

/// An ext4 filesystem image (raw) of `size` populated with [`populate`].
pub fn fs_image(dir: &Path, size: &str) -> PathBuf {
    let tree = dir.join("tree");
    populate(&tree);
    let raw = dir.join("fs.raw");
    testkit::mkfs(
        &raw,
        size,
        &["-t", "ext4", "-E", "root_owner=0:0"],
        Some(&tree),
    );
    raw
}

/// `qemu-img convert -f raw -O qcow2 <opts> raw out`.
pub fn qemu_qcow2(raw: &Path, out: &Path, opts: &[&str]) {
    let _ = std::fs::remove_file(out);
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .args(opts)
            .arg(raw)
            .arg(out),
    );
}

/// `qemu-img convert -O raw img out`.
pub fn qemu_raw(img: &Path, out: &Path) {
    let _ = std::fs::remove_file(out);
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(img)
            .arg(out),
    );
}

/// The variants of qemu-img output the reader must handle, as
/// `(name, qemu-img convert options)`.
pub fn variants() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("cs512-v2", vec!["-o", "cluster_size=512,compat=0.10"]),
        ("cs512-v3", vec!["-o", "cluster_size=512,compat=1.1"]),
        ("cs4k-v2", vec!["-o", "cluster_size=4k,compat=0.10"]),
        ("cs4k-v3", vec!["-o", "cluster_size=4k,compat=1.1"]),
        ("cs64k-v2", vec!["-o", "cluster_size=64k,compat=0.10"]),
        ("cs64k-v3", vec!["-o", "cluster_size=64k,compat=1.1"]),
        ("cs2M-v2", vec!["-o", "cluster_size=2M,compat=0.10"]),
        ("cs2M-v3", vec!["-o", "cluster_size=2M,compat=1.1"]),
        ("rb1", vec!["-o", "refcount_bits=1"]),
        ("rb2", vec!["-o", "refcount_bits=2,cluster_size=512"]),
        ("rb4", vec!["-o", "refcount_bits=4"]),
        ("rb8", vec!["-o", "refcount_bits=8"]),
        ("rb32", vec!["-o", "refcount_bits=32"]),
        ("rb64", vec!["-o", "refcount_bits=64,cluster_size=4k"]),
        (
            "zlib-512",
            vec!["-c", "-o", "compression_type=zlib,cluster_size=512"],
        ),
        ("zlib-64k", vec!["-c", "-o", "compression_type=zlib"]),
        ("zlib-v2", vec!["-c", "-o", "compat=0.10"]),
        (
            "zstd-4k",
            vec!["-c", "-o", "compression_type=zstd,cluster_size=4k"],
        ),
        (
            "zstd-2M",
            vec!["-c", "-o", "compression_type=zstd,cluster_size=2M"],
        ),
        ("extl2", vec!["-o", "extended_l2=on"]),
        (
            "extl2-zstd",
            vec![
                "-c",
                "-o",
                "extended_l2=on,compression_type=zstd,cluster_size=32k",
            ],
        ),
    ]
}

/// Applies qemu-io commands (zero writes, unmaps) to an image.
pub fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut c = testkit::tool("qemu-io");
    c.args(["-f", "qcow2"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    testkit::run(c.arg(img));
}

/// Variants with zero clusters made by qemu-io on top of a converted image.
pub fn zero_variants() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            "zero-keep",
            vec!["-o", "compat=1.1"],
            vec!["write -z 0 256k", "write -z 1M 64k"],
        ),
        (
            "zero-unmap",
            vec!["-o", "compat=1.1,cluster_size=4k"],
            vec!["write -z -u 0 64k", "write -z -u 2M 1M"],
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
    ]
}

/// Data segments `(star
/// Asserts two files are byte-identical, naming the first difference.
pub fn assert_same(a: &Path, b: &Path, what: &str) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(x.len(), y.len(), "{what}: lengths differ");
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}
