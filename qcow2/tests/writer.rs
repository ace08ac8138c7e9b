//! The writer: images it produces must pass `qemu-img check` with no leaks
//! and no errors, compare identical to the source with `qemu-img compare`,
//! and honour the streaming contract (only cluster 0 is written out of order).

mod common;

use qcow2::{Compression, Image, WriteAt, Writer, WriterOptions};
use std::fs::File;
use std::path::Path;

/// Writes `raw` through a `Writer` in odd-sized pieces, skipping zero
/// pieces (gaps must read as zeros).
fn write_image(raw: &[u8], out: &Path, opts: WriterOptions) -> qcow2::Progress {
    let f = File::create(out).unwrap();
    let mut w = Writer::new(f, raw.len() as u64, opts).unwrap();
    let mut off = 0usize;
    let mut step = 7777usize;
    while off < raw.len() {
        let n = step.min(raw.len() - off);
        let piece = &raw[off..off + n];
        if piece.iter().any(|&b| b != 0) {
            w.write_at(off as u64, piece).unwrap();
        }
        off += n;
        step = if step > 300_000 { 7777 } else { step * 3 };
    }
    let p = w.progress();
    w.finish().unwrap();
    p
}

fn qemu_check_clean(img: &Path, what: &str) {
    let out = testkit::tool("qemu-img")
        .args(["check", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{what}: qemu-img check: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{what}: qemu-img check failed: {v}");
    assert_eq!(v["corruptions"].as_u64().unwrap_or(0), 0, "{what}: {v}");
    assert_eq!(v["leaks"].as_u64().unwrap_or(0), 0, "{what}: {v}");
    assert!(
        v.get("check-errors").is_none_or(|x| x.as_u64() == Some(0)),
        "{what}: {v}"
    );
}

fn qemu_compare(raw: &Path, img: &Path, what: &str) {
    let out = testkit::tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(raw)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn writer_output_passes_qemu_img_check_and_compare() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let fs = common::fs_image(dir.path(), "12M");
    let mut fs_bytes = std::fs::read(&fs).unwrap();
    // An unaligned virtual size: the last cluster is partial.
    fs_bytes.extend_from_slice(&common::noise(5, 1234));
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &fs_bytes).unwrap();
    let img = dir.path().join("w.qcow2");
    for cs in [512u64, 4096, 65536, 2 << 20] {
        for compression in [Compression::None, Compression::Zlib, Compression::Zstd] {
            let what = format!("cluster {cs}, {compression:?}");
            write_image(
                &fs_bytes,
                &img,
                WriterOptions {
                    cluster_size: cs,
                    compression,
                },
            );
            qemu_check_clean(&img, &what);
            qemu_compare(&raw, &img, &what);
            // Our own reader and check agree.
            let r = qcow2::check(File::open(&img).unwrap()).unwrap();
            assert!(r.is_clean(), "{what}: {:?}", r.problems);
            let back = Image::open(File::open(&img).unwrap()).unwrap();
            let mut buf = vec![0u8; fs_bytes.len()];
            back.read_at(&mut buf, 0).unwrap();
            assert!(buf == fs_bytes, "{what}: read back differs");
            if compression != Compression::None {
                assert!(r.compressed_clusters > 0, "{what}: nothing compressed");
            }
            // Zero clusters are not stored: the image is smaller than the disk.
            let len = std::fs::metadata(&img).unwrap().len();
            assert!(
                cs > 65536 || len < fs_bytes.len() as u64 * 3 / 4,
                "{what}: image of {len} bytes"
            );
        }
    }
}

#[test]
fn writer_small_and_empty_images() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let img = dir.path().join("s.qcow2");
    let raw = dir.path().join("s.raw");
    for (size, data) in [
        (0usize, false),
        (512, true),
        (1, true),
        (100_000, false),
        (3 << 20, true),
    ] {
        let bytes = if data {
            common::noise(size as u64, size)
        } else {
            vec![0; size]
        };
        std::fs::write(&raw, &bytes).unwrap();
        write_image(&bytes, &img, WriterOptions::default());
        let what = format!("size {size}");
        qemu_check_clean(&img, &what);
        qemu_compare(&raw, &img, &what);
    }
}

/// Records every write to check the streaming contract.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, usize)>,
    bytes: Vec<u8>,
}

impl WriteAt for Recorder {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.writes.push((offset, buf.len()));
        self.bytes.write_all_at(buf, offset)
    }
}

#[test]
fn writer_emits_in_order_and_header_last() {
    let cs = 4096u64;
    let size = 40u64 << 20;
    let mut w = Writer::new(
        Recorder::default(),
        size,
        WriterOptions {
            cluster_size: cs,
            compression: Compression::Zstd,
        },
    )
    .unwrap();
    let mut finals = Vec::new();
    // Data spread over several L2 ranges (one L2 covers 2 MiB here).
    for i in 0..200u64 {
        let off = i * 200_003 % (size - 70_000);
        let off = off.max(
            finals
                .last()
                .map(|p: &qcow2::Progress| p.guest_pos)
                .unwrap_or(0),
        );
        if off + 70_000 > size {
            break;
        }
        let mut d = common::noise(i, 70_000);
        d[..3000].fill(0);
        w.write_at(off, &d).unwrap();
        finals.push(w.progress());
    }
    // Going backwards is refused.
    assert!(w.write_at(0, b"x").is_err());
    assert!(w.write_at(size - 1, b"xy").is_err());
    let rec = w.finish().unwrap();
    let (last, rest) = rec.writes.split_last().unwrap();
    assert_eq!(
        *last,
        (0, cs as usize),
        "the header cluster is written last"
    );
    let mut end = cs;
    for &(off, len) in rest {
        assert_eq!(
            off, end,
            "writes are contiguous and ascending after cluster 0"
        );
        end = off + len as u64;
    }
    // Progress only ever promised bytes that were already written.
    let mut prev = 0;
    for p in &finals {
        assert!(p.final_end >= prev && p.final_end <= end);
        prev = p.final_end;
    }
    assert_eq!(rec.bytes.len() as u64, end);
    let r = qcow2::check(rec_storage(&rec.bytes)).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
}

struct Mem<'a>(&'a [u8]);
impl qcow2::ReadAt for Mem<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let s = offset as usize;
        let src = self
            .0
            .get(s..s + buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn rec_storage(b: &[u8]) -> Mem<'_> {
    Mem(b)
}

#[test]
fn writer_rejects_bad_options() {
    for cs in [0u64, 256, 3000, 4 << 20] {
        let o = WriterOptions {
            cluster_size: cs,
            compression: Compression::None,
        };
        assert!(
            Writer::new(Vec::new(), 1 << 20, o).is_err(),
            "cluster size {cs}"
        );
    }
    let o = WriterOptions {
        cluster_size: 512,
        compression: Compression::None,
    };
    assert!(
        Writer::new(Vec::new(), u64::MAX, o).is_err(),
        "L1 too large"
    );
}

/// Compressed clusters fill the space before each L2 table instead of zero
/// padding: an export touching many L2 ranges (one per block group's
/// metadata) costs its tables, not half a cluster of padding each.
#[test]
fn writer_fills_the_gap_before_l2_tables() {
    if !common::have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let cs = 64u64 << 10;
    let range = cs / 8 * cs; // guest bytes one L2 table covers
    let tables = 16u64;
    let size = tables * range;
    let raw = dir.path().join("gaps.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    let img = dir.path().join("gaps.qcow2");
    let mut w = Writer::new(
        File::create(&img).unwrap(),
        size,
        WriterOptions {
            cluster_size: cs,
            compression: Compression::Zstd,
        },
    )
    .unwrap();
    let mut compressed = 0u64;
    let mut plain = 0u64;
    for t in 0..tables {
        for c in 0..40u64 {
            let off = t * range + c * 3 * cs;
            // Compressible text-like clusters, and now and then one that
            // does not compress (stored plain, cluster-aligned).
            let data = if c == 20 {
                plain += 1;
                common::noise(t * 100 + c, cs as usize)
            } else {
                let line = format!("group {t} cluster {c} inode table-ish bytes ");
                let mut d = line.repeat(cs as usize / line.len() + 1);
                d.truncate(cs as usize);
                let mut d = d.into_bytes();
                let n = 2000 + (c as usize * 7919 + t as usize * 104_729) % 12_000;
                d[..n].copy_from_slice(&common::noise(t * 100 + c, n));
                // The writer's level (ZSTD_LEVEL in src/compress.rs).
                compressed += zstd::bulk::compress(&d, 4).unwrap().len() as u64;
                d
            };
            std::os::unix::fs::FileExt::write_all_at(&f, &data, off).unwrap();
            w.write_at(off, &data).unwrap();
        }
    }
    w.finish().unwrap();
    qemu_check_clean(&img, "gaps");
    qemu_compare(&raw, &img, "gaps");
    let len = std::fs::metadata(&img).unwrap().len();
    // Header, L1, refcount block and table, the L2 tables, plain clusters.
    let fixed = (4 + tables + plain) * cs;
    let waste = len as i64 - (fixed + compressed) as i64;
    // Padding once at the end at most, plus the few bytes a greedy fill
    // leaves per table (the old layout wasted ~16 x 32 KiB here).
    assert!(
        waste < (cs + tables * 4096) as i64,
        "{len} bytes: {waste} bytes of padding"
    );
}
