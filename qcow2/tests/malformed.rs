//! Malformed images: truncations, header fields at extremes, tables pointing
//! outside the file. Each must give correct data or a typed error — never a
//! panic, a hang or a huge allocation.

mod common;

use qcow2::{Header, Image};
use std::fs::File;
use std::path::Path;

struct Mem(Vec<u8>);
impl qcow2::ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let s = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = s
            .checked_add(buf.len())
            .and_then(|e| self.0.get(s..e))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn open(b: &[u8]) -> qcow2::Result<Image<Mem>> {
    Image::open(Mem(b.to_vec()))
}

fn patch(b: &[u8], at: usize, v: &[u8]) -> Vec<u8> {
    let mut x = b.to_vec();
    x[at..at + v.len()].copy_from_slice(v);
    x
}

/// Three small real images: qemu-img v3, qemu-img compressed v3, e2image v2.
fn samples(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let raw = common::fs_image(dir, "10M");
    let mut out = Vec::new();
    for (name, opts) in [
        ("plain", vec!["-o", "cluster_size=4k"]),
        (
            "zstd",
            vec!["-c", "-o", "compression_type=zstd,cluster_size=4k"],
        ),
        ("zlib-512", vec!["-c", "-o", "cluster_size=512"]),
    ] {
        let p = dir.join(format!("{name}.qcow2"));
        common::qemu_qcow2(&raw, &p, &opts);
        out.push((name, std::fs::read(&p).unwrap()));
    }
    let p = dir.join("e2.qcow2");
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&raw).arg(&p));
    out.push(("e2image", std::fs::read(&p).unwrap()));
    out
}

/// Converts fully; `Ok(bytes)` or the error message.
fn convert(b: &[u8]) -> Result<Vec<u8>, String> {
    let img = open(b).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    qcow2::convert::to_raw_stream(&img, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn truncated_images_error_or_match_qemu() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    for (name, bytes) in samples(dir.path()) {
        let full = convert(&bytes).unwrap();
        let len = bytes.len();
        let mut cuts: Vec<usize> = (0..24).map(|i| len * i / 24).collect();
        cuts.extend([
            0,
            3,
            4,
            7,
            8,
            71,
            72,
            103,
            104,
            511,
            512,
            4095,
            4096,
            len - 1,
        ]);
        for cut in cuts {
            let t = &bytes[..cut.min(len)];
            qcow2::fuzzing::exercise(t);
            let ours = convert(t);
            if let Err(msg) = &ours {
                assert!(
                    !msg.contains('\n'),
                    "{name} cut {cut}: multi-line error {msg}"
                );
                continue;
            }
            // It converted: the result must be what qemu-img makes of it.
            let p = dir.path().join("t.qcow2");
            std::fs::write(&p, t).unwrap();
            let q = dir.path().join("t.raw");
            let _ = std::fs::remove_file(&q);
            let status = testkit::tool("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&p)
                .arg(&q)
                .output()
                .unwrap();
            if status.status.success() {
                let theirs = std::fs::read(&q).unwrap();
                assert!(
                    ours.as_ref().unwrap() == &theirs,
                    "{name} cut {cut}: differs from qemu-img"
                );
            }
            if cut == len {
                assert!(ours.unwrap() == full);
            }
        }
    }
}

#[test]
fn header_fields_at_extremes_are_refused() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let samples = samples(dir.path());
    let (_, v3) = &samples[0];
    let (_, v2) = &samples[3];
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let len = v3.len() as u64;
    // (what, patched image, expected words in the error)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("magic", patch(v3, 0, b"QFI\0"), "not a QCOW2"),
        ("version 1", patch(v3, 4, &be32(1)), "version 1"),
        ("version 4", patch(v3, 4, &be32(4)), "version 4"),
        ("cluster_bits 0", patch(v3, 20, &be32(0)), "cluster_bits"),
        ("cluster_bits 8", patch(v3, 20, &be32(8)), "cluster_bits"),
        ("cluster_bits 22", patch(v3, 20, &be32(22)), "cluster_bits"),
        (
            "cluster_bits max",
            patch(v3, 20, &be32(u32::MAX)),
            "cluster_bits",
        ),
        ("size max", patch(v3, 24, &be64(u64::MAX)), "l1_size"),
        ("size 2^62", patch(v3, 24, &be64(1 << 62)), "l1_size"),
        ("aes", patch(v3, 32, &be32(1)), "encryption (AES"),
        ("luks", patch(v3, 32, &be32(2)), "encryption (LUKS"),
        ("l1_size 2^31", patch(v3, 36, &be32(1 << 31)), "l1_size"),
        ("l1_size max", patch(v3, 36, &be32(u32::MAX)), "l1_size"),
        (
            "l1 past eof",
            patch(v3, 40, &be64((len + 4095) & !4095)),
            "truncated",
        ),
        ("l1 huge", patch(v3, 40, &be64(!4095)), "L1 table"),
        (
            "l1 misaligned",
            patch(v3, 40, &be64(0x1234)),
            "L1 table offset",
        ),
        (
            "refcount table misaligned",
            patch(v3, 48, &be64(0x1234)),
            "refcount table",
        ),
        (
            "refcount table clusters max",
            patch(v3, 56, &be32(u32::MAX)),
            "refcount_table_clusters",
        ),
        (
            "data file",
            patch(v3, 72, &be64(1 << 2)),
            "external data file",
        ),
        (
            "unknown incompatible",
            patch(v3, 72, &be64(1 << 5)),
            "bit 5",
        ),
        (
            "refcount_order 7",
            patch(v3, 96, &be32(7)),
            "refcount_order",
        ),
        (
            "header_length odd",
            patch(v3, 100, &be32(105)),
            "header_length",
        ),
        (
            "header_length max",
            patch(v3, 100, &be32(u32::MAX)),
            "header_length",
        ),
        (
            "backing file",
            patch(&patch(v3, 8, &be64(0x200)), 16, &be32(4)),
            "backing file",
        ),
        ("v2 size max", patch(v2, 24, &be64(u64::MAX)), "l1_size"),
        ("v2 l1 past eof", patch(v2, 40, &be64(1 << 40)), "truncated"),
    ];
    for (what, img, expect) in cases {
        qcow2::fuzzing::exercise(&img);
        let err = match open(&img) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expect),
            "{what}: error {err:?} lacks {expect:?}"
        );
        assert!(!err.contains('\n'), "{what}: {err}");
    }
    // Snapshot count at its maximum with a bogus table: check copes.
    let snap = patch(&patch(v3, 60, &be32(u32::MAX)), 64, &be64(len * 2));
    let r = qcow2::check(Mem(snap)).unwrap();
    assert!(r.corruptions > 0);
}

/// Offsets of the first L1 entry and L2 table of an image.
fn tables(b: &[u8]) -> (Header, u64, u64) {
    let h = Header::read(&Mem(b.to_vec())).unwrap();
    let l1 = h.l1_table_offset;
    let e = u64::from_be_bytes(b[l1 as usize..l1 as usize + 8].try_into().unwrap());
    (h, l1, e & 0x00ff_ffff_ffff_fe00)
}

#[test]
fn tables_pointing_outside_the_file() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    for (name, bytes) in samples(dir.path()) {
        let (h, l1, l2) = tables(&bytes);
        let cs = h.cluster_size();
        let len = bytes.len() as u64;
        let far = ((len + cs) & !(cs - 1)) + (1 << 30);
        // First L2 entry that holds something.
        let step = h.l2_entry_size() as usize;
        let first_used = (0..(cs as usize / step))
            .map(|i| l2 as usize + i * step)
            .find(|&at| bytes[at..at + 8] != [0; 8])
            .unwrap();
        let entry = u64::from_be_bytes(bytes[first_used..first_used + 8].try_into().unwrap());
        let compressed = entry & (1 << 62) != 0;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "L1 entry past EOF",
                patch(&bytes, l1 as usize, &(far | 1 << 63).to_be_bytes()),
            ),
            (
                "L1 entry misaligned",
                patch(&bytes, l1 as usize, &(l2 + 512).to_be_bytes()),
            ),
            (
                "L1 entry onto the L1 table",
                patch(&bytes, l1 as usize, &(l1 | 1 << 63).to_be_bytes()),
            ),
            (
                "L2 entry past EOF",
                patch(&bytes, first_used, &(far | 1 << 63).to_be_bytes()),
            ),
            (
                "L2 entry misaligned",
                patch(
                    &bytes,
                    first_used,
                    &((entry & !(1 << 62)) | 0x200 | 1 << 63).to_be_bytes(),
                ),
            ),
            (
                "compressed entry with every sector bit",
                patch(
                    &bytes,
                    first_used,
                    &(entry | 0x3fff_ffff_ffff_ffff & !((1u64 << (62 - (h.cluster_bits - 8))) - 1))
                        .to_be_bytes(),
                ),
            ),
            (
                "compressed entry past EOF",
                patch(
                    &bytes,
                    first_used,
                    &((1u64 << 62) | (len + 100)).to_be_bytes(),
                ),
            ),
            (
                "refcount table entry past EOF",
                patch(&bytes, h.refcount_table_offset as usize, &far.to_be_bytes()),
            ),
        ];
        for (what, img) in cases {
            let what = format!("{name}: {what}");
            qcow2::fuzzing::exercise(&img);
            let r = qcow2::check(Mem(img.clone())).unwrap();
            assert!(
                r.corruptions > 0 || what.contains("every sector") && !compressed,
                "{what}: check found nothing: {r:?}"
            );
            let msg = r
                .problems
                .first()
                .map(|p| p.message.clone())
                .unwrap_or_default();
            assert!(!msg.contains('\n'));
            if what.contains("past EOF") && !what.contains("refcount") {
                let e = convert(&img).expect_err(&what);
                assert!(
                    e.contains("beyond the end") || e.contains("truncated"),
                    "{what}: {e}"
                );
                // The sparse-file path stops too (no worker left waiting).
                let out = tempfile::tempfile().unwrap();
                let opened = open(&img).unwrap();
                assert!(qcow2::convert::to_raw(&opened, &out).is_err(), "{what}");
            }
        }
    }
}

#[test]
fn check_counts_match_qemu_on_damaged_refcounts() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let (_, bytes) = samples(dir.path()).remove(0);
    let h = Header::read(&Mem(bytes.clone())).unwrap();
    let rt = h.refcount_table_offset as usize;
    let rb = (u64::from_be_bytes(bytes[rt..rt + 8].try_into().unwrap()) & !511) as usize;
    // Refcount of cluster 3 set to 0 (a corruption), of cluster 2 to 5.
    let damaged = patch(&patch(&bytes, rb + 6, &[0, 0]), rb + 4, &[0, 5]);
    let p = dir.path().join("d.qcow2");
    std::fs::write(&p, &damaged).unwrap();
    let out = testkit::tool("qemu-img")
        .args(["check", "--output=json"])
        .arg(&p)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = qcow2::check(File::open(&p).unwrap()).unwrap();
    assert_eq!(
        r.corruptions,
        v["corruptions"].as_u64().unwrap_or(0),
        "{v} vs {:?}",
        r.problems
    );
    assert_eq!(
        r.leaks,
        v["leaks"].as_u64().unwrap_or(0),
        "{v} vs {:?}",
        r.problems
    );
    assert!(r.corruptions > 0);
}
