//! Every deliberately corrupted image of e2fsprogs' own test suite
//! (`../shared/corpus/e2fsprogs-tests`) is inspected without a panic or a
//! hang: a report, or a clear error. Where `e2fsck -fn` reports a checksum
//! failure of a structure these analyses cover (superblock, group
//! descriptors, bitmaps, MMP block), the findings must report it too.

use extfs::analysis::{self, Report};
use extfs::Filesystem;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Far above the milliseconds a small image takes; a hang is a bug.
const PER_IMAGE_TIMEOUT: Duration = Duration::from_secs(60);

fn inspect_with_timeout(path: &Path) -> Result<Report, String> {
    let shown = path.display().to_string();
    let path = path.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| {
            let src = extfs::source::open_path(&path).map_err(|e| e.to_string())?;
            let fs = Filesystem::open(src).map_err(|e| e.to_string())?;
            Ok::<Report, String>(analysis::inspect(&fs))
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(PER_IMAGE_TIMEOUT) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("inspect panicked on {}", shown),
        Err(_) => panic!("inspect did not finish within {PER_IMAGE_TIMEOUT:?}"),
    }
}

/// `e2fsck -fn` output (stdout and stderr), or `None` if it runs longer
/// than 20 s.
fn e2fsck_with_timeout(img: &Path) -> Option<String> {
    let dir = img.parent().unwrap();
    let out_path = dir.join("e2fsck.out");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut child = testkit::tool("e2fsck")
        .arg("-fn")
        .arg(img)
        .stdin(std::process::Stdio::null())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .expect("run e2fsck");
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned());
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `e2fsck -fn` says about checksums (and magic numbers) of
/// structures covered here, as `(finding code prefix, group)` the report
/// must contain.
fn e2fsck_checksum_claims(text: &str) -> Vec<(&'static str, Option<u32>)> {
    let mut v = Vec::new();
    let group_before = |l: &str, pat: &str| -> Option<Option<u32>> {
        let i = l.find(pat)?;
        let head = &l[..i];
        let g = head.rsplit("Group ").next()?.trim().parse().ok();
        Some(g)
    };
    for line in text.lines() {
        let l = line.trim();
        if l.contains("Superblock checksum does not match superblock") {
            v.push(("superblock.checksum", None));
        }
        if l.contains("Superblock invalid, trying backup blocks") {
            v.push(("superblock.primary_unusable", None));
        }
        if let Some(rest) = l.strip_prefix("Group descriptor ") {
            if rest.contains(" checksum is ") {
                let g = rest.split_whitespace().next().and_then(|s| s.parse().ok());
                v.push(("group.checksum", g));
            }
        }
        if l.starts_with("One or more block group descriptor checksums are invalid") {
            v.push(("group.checksum", None));
        }
        if let Some(g) = group_before(l, " block bitmap does not match checksum") {
            v.push(("group.block_bitmap_checksum", g));
        }
        if let Some(g) = group_before(l, " inode bitmap does not match checksum") {
            v.push(("group.inode_bitmap_checksum", g));
        }
        if l.contains("Superblock MMP block checksum does not match") {
            v.push(("mmp.checksum", None));
        }
        if l.contains("Superblock has invalid MMP magic") {
            v.push(("mmp.magic", None));
        }
        if l.starts_with("Journal superblock is corrupt") {
            v.push(("journal.superblock_", None));
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_corpus_image_inspects_without_panic_or_hang() {
    let images = testkit::corpus_images();
    if images.is_empty() {
        return; // corpus absent: corpus_images() said why
    }
    let have_e2fsck = testkit::have_tool("e2fsck");
    let tmp = testkit::tempdir();
    let mut reports = 0;
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    let mut claims = 0;
    for (name, compressed) in &images {
        let img = tmp.path().join(format!("{name}.img"));
        testkit::decompress(compressed, &img);
        let t = std::time::Instant::now();
        let result = inspect_with_timeout(&img);
        eprintln!("{name}: {:?}", t.elapsed());
        match result {
            Err(e) => {
                // A clear, one-line error.
                assert!(
                    !e.is_empty() && !e.contains('\n'),
                    "{name}: unclear error {e:?}"
                );
                errors.push(format!("{name}: {e}"));
            }
            Ok(r) => {
                reports += 1;
                serde_json::to_string(&r).expect("report serialises");
                if have_e2fsck {
                    // e2fsck itself loops on some of these images: bounded.
                    let Some(text) = e2fsck_with_timeout(&img) else {
                        eprintln!("{name}: e2fsck -fn did not finish; not compared");
                        continue;
                    };
                    for (code, group) in e2fsck_checksum_claims(&text) {
                        let found = r.findings.iter().any(|f| {
                            f.code.starts_with(code) && (group.is_none() || f.group == group)
                        });
                        claims += 1;
                        if !found {
                            missing.push(format!(
                                "{name}: e2fsck reports {code} (group {group:?}), findings do not"
                            ));
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&img);
    }
    eprintln!("{reports} reports, {} clear errors:", errors.len());
    for e in &errors {
        eprintln!("  {e}");
    }
    eprintln!("{claims} e2fsck checksum/magic reports compared");
    assert!(
        !have_e2fsck || claims > 5,
        "the e2fsck output parser found almost nothing"
    );
    assert!(
        missing.is_empty(),
        "checksum failures e2fsck sees but the findings miss:\n{}",
        missing.join("\n")
    );
    assert!(
        reports > images.len() / 2,
        "most corpus images should give a report"
    );
}

/// A cheap, deterministic stand-in for fuzzing in `cargo test`: random
/// bytes of a small filesystem's metadata area are overwritten and the
/// result inspected in memory; every outcome must be a report or an error.
#[test]
fn mutated_filesystems_never_panic() {
    if !testkit::have_tool("mke2fs") {
        eprintln!("skipping: mke2fs is not installed");
        return;
    }
    let tmp = testkit::tempdir();
    let img = tmp.path().join("m.img");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(files.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(files.join(format!("d/f{i}")), vec![b'x'; 100 * i]).unwrap();
    }
    testkit::mkfs(
        &img,
        "4M",
        &["-t", "ext4", "-b", "1024", "-O", "inline_data"],
        Some(&files),
    );
    let base = std::fs::read(&img).unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..1000 {
        let mut data = base.clone();
        let n = 1 + next() % 16;
        for _ in 0..n {
            // Mostly the superblock and descriptors, sometimes anywhere in
            // the first 300 KiB (bitmaps, inode tables, directories).
            let span = if next() % 2 == 0 { 4096 } else { 300 * 1024 };
            let off = (next() % span) as usize;
            data[off] = next() as u8;
        }
        let src: std::sync::Arc<dyn extfs::Source> =
            std::sync::Arc::new(extfs::source::MemSource(data));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(fs) = Filesystem::open(src) {
                let rep = analysis::inspect(&fs);
                serde_json::to_string(&rep).unwrap();
            }
        }));
        assert!(r.is_ok(), "round {round} panicked");
    }
}
