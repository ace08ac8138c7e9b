//! `support-agent export` / `fsck` against the reference tools: on
//! filesystems of many feature combinations (built with mke2fs -d, planted
//! marker strings in file data), the unscrambled export holds every block
//! `e2image -r` writes byte for byte, no file data, `qemu-img check` is
//! clean and `e2fsck -fn` says the same as on the original.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::{mkfs, run, run_text, tool};

const DATA_MARKER: &[u8] = b"ZQXDATAMARK";

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_support-agent"))
}

fn have_tools() -> bool {
    let ok = ["mke2fs", "e2image", "e2fsck", "debugfs", "qemu-img"]
        .iter()
        .all(|t| testkit::have_tool(t));
    if !ok {
        eprintln!("skipping: e2fsprogs or qemu-img missing");
    }
    ok
}

/// A tree with names, symlinks, xattrs, a big directory and files whose
/// data carries the marker.
fn populate(root: &Path, dir_entries: usize) {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root.join("docs/deeper")).unwrap();
    fs::create_dir_all(root.join("bigdir")).unwrap();
    let mut data = Vec::new();
    while data.len() < 12_000 {
        data.extend_from_slice(DATA_MARKER);
        data.extend_from_slice(b" file contents ");
    }
    for i in 0..6 {
        fs::write(root.join(format!("docs/report_{i}.txt")), &data).unwrap();
    }
    fs::write(root.join("docs/deeper/large.bin"), data.repeat(60)).unwrap();
    for i in 0..dir_entries {
        fs::write(root.join(format!("bigdir/entry_number_{i:05}")), b"").unwrap();
    }
    std::os::unix::fs::symlink("fast_target", root.join("fastlink")).unwrap();
    std::os::unix::fs::symlink("/slow/".repeat(30), root.join("slowlink")).unwrap();
}

/// Splits e2fsck output into lines without the image's name.
fn fsck(img: &Path) -> (i32, String) {
    let out = tool("e2fsck").arg("-fn").arg(img).output().unwrap();
    let name = img.to_string_lossy().into_owned();
    let text = String::from_utf8_lossy(&out.stdout).replace(&name, "IMG")
        + &String::from_utf8_lossy(&out.stderr).replace(&name, "IMG");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("e2fsck 1."))
        .map(|l| format!("{l}\n"))
        .collect();
    (out.status.code().unwrap_or(-1), text)
}

fn export(src: &Path, out: &Path, extra: &[&str]) -> Output {
    agent()
        .arg("export")
        .arg(src)
        .arg(out)
        .arg("--no-scramble")
        .args(extra)
        .output()
        .unwrap()
}

fn to_raw(qcow: &Path, raw: &Path) {
    let _ = fs::remove_file(raw);
    run(tool("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow)
        .arg(raw));
}

fn block_size(img: &Path) -> usize {
    let out = run_text(tool("dumpe2fs").arg("-h").arg(img));
    out.lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Exports `img` and checks it against e2image, qemu-img and e2fsck.
fn check_export(dir: &Path, img: &Path, label: &str) {
    let qcow = dir.join(format!("{label}.qcow2"));
    let out = export(img, &qcow, &["--compress", "none", "--json"]);
    assert!(
        out.status.success(),
        "{label}: export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["mapped_blocks"].as_u64().unwrap() > 0);
    let check = tool("qemu-img").arg("check").arg(&qcow).output().unwrap();
    assert!(check.status.success(), "{label}: qemu-img check: {check:?}");

    let ours = dir.join(format!("{label}.ours.raw"));
    to_raw(&qcow, &ours);
    let reference = dir.join(format!("{label}.e2image.raw"));
    let _ = fs::remove_file(&reference);
    run(tool("e2image").arg("-r").arg(img).arg(&reference));

    let bs = block_size(img);
    let a = fs::read(&reference).unwrap();
    let b = fs::read(&ours).unwrap();
    let orig = fs::read(img).unwrap();
    assert_eq!(a.len(), b.len(), "{label}: raw sizes differ");
    let mut compared = 0;
    for (i, (ra, rb)) in a.chunks(bs).zip(b.chunks(bs)).enumerate() {
        if ra.iter().any(|&x| x != 0) {
            compared += 1;
            assert_eq!(ra, rb, "{label}: block {i} differs from e2image -r");
        }
        if rb.iter().any(|&x| x != 0) {
            assert_eq!(
                rb,
                &orig[i * bs..(i + 1) * bs],
                "{label}: block {i} is not the original's"
            );
        }
    }
    assert!(compared > 0);
    assert!(contains(&orig, DATA_MARKER), "{label}: marker not planted");
    assert!(
        !contains(&b, DATA_MARKER),
        "{label}: file data leaked into the export"
    );

    let (rc_orig, text_orig) = fsck(img);
    let (rc_ours, text_ours) = fsck(&ours);
    assert_eq!(text_orig, text_ours, "{label}: e2fsck differs");
    assert_eq!(rc_orig, rc_ours, "{label}: e2fsck exit code differs");
    for p in [qcow, ours, reference] {
        let _ = fs::remove_file(p);
    }
}

fn case(label: &str, size: &str, args: &[&str], dir_entries: usize) {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree, dir_entries);
    let img = dir.path().join(format!("{label}.img"));
    mkfs(&img, size, args, Some(&tree));
    check_export(dir.path(), &img, label);
}

#[test]
fn ext4_default_4k_htree() {
    case("ext4", "64M", &["-t", "ext4", "-b", "4096"], 3000);
}

#[test]
fn ext4_1k_blocks() {
    case("ext4_1k", "48M", &["-t", "ext4", "-b", "1024"], 1500);
}

#[test]
fn ext2_indirect_blocks() {
    case("ext2", "32M", &["-t", "ext2", "-b", "1024"], 800);
}

#[test]
fn ext3_journal_indirect() {
    case("ext3", "64M", &["-t", "ext3", "-b", "4096"], 800);
}

#[test]
fn ext4_meta_bg_no_flex() {
    case(
        "metabg",
        "64M",
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "meta_bg,^resize_inode,^flex_bg",
        ],
        300,
    );
}

#[test]
fn ext4_bigalloc() {
    case(
        "bigalloc",
        "128M",
        &["-t", "ext4", "-O", "bigalloc", "-C", "16384"],
        300,
    );
}

#[test]
fn ext4_inline_data_ea_inode_casefold() {
    case(
        "inline",
        "64M",
        &[
            "-t",
            "ext4",
            "-I",
            "256",
            "-O",
            "inline_data,ea_inode,casefold",
        ],
        500,
    );
}

#[test]
fn ext4_gdt_csum_quota_mmp() {
    case(
        "uninit",
        "64M",
        &[
            "-t",
            "ext4",
            "-O",
            "^metadata_csum,uninit_bg,quota,mmp,^64bit",
        ],
        300,
    );
}

#[test]
fn ext4_orphan_file_sparse_super2() {
    case(
        "orphan",
        "64M",
        &["-t", "ext4", "-O", "orphan_file,sparse_super2"],
        300,
    );
}

/// A file fragmented on purpose (many holes freed, then one big file
/// written by debugfs) has an extent tree of depth >= 1.
#[test]
fn deep_extent_tree() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("frag")).unwrap();
    for i in 0..1200 {
        fs::write(tree.join(format!("frag/f{i}")), vec![b'x'; 1024]).unwrap();
    }
    let img = dir.path().join("frag.img");
    mkfs(&img, "16M", &["-t", "ext4", "-b", "1024"], Some(&tree));
    let mut cmds = String::new();
    for i in (0..1200).step_by(2) {
        cmds.push_str(&format!("rm frag/f{i}\n"));
    }
    let mut big = Vec::new();
    while big.len() < 500 * 1024 {
        big.extend_from_slice(DATA_MARKER);
        big.extend_from_slice(&[b'-'; 53]);
    }
    let src = dir.path().join("bigsrc");
    fs::write(&src, &big).unwrap();
    cmds.push_str(&format!("write {} bigfile\n", src.display()));
    let cmdfile = dir.path().join("cmds");
    fs::write(&cmdfile, cmds).unwrap();
    run(tool("debugfs").arg("-w").arg("-f").arg(&cmdfile).arg(&img));
    let ex = run_text(tool("debugfs").arg("-R").arg("ex bigfile").arg(&img));
    assert!(
        ex.lines().any(|l| l.trim_start().starts_with("1/")),
        "no interior extent level:\n{ex}"
    );
    check_export(dir.path(), &img, "frag");
}

#[test]
fn zstd_and_zlib_images_read_back_the_same() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree, 200);
    let img = dir.path().join("c.img");
    mkfs(&img, "32M", &["-t", "ext4"], Some(&tree));
    let mut raws: Vec<Vec<u8>> = Vec::new();
    for c in ["none", "zstd", "zlib"] {
        let q = dir.path().join(format!("{c}.qcow2"));
        let out = export(&img, &q, &["--compress", c]);
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run(tool("qemu-img").arg("check").arg(&q));
        let r = dir.path().join(format!("{c}.raw"));
        to_raw(&q, &r);
        raws.push(fs::read(&r).unwrap());
    }
    assert!(raws[0] == raws[1] && raws[1] == raws[2]);
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy().contains(".partial-") || p.extension().is_some_and(|e| e == "qcow2")
        })
        .collect()
}

#[test]
fn not_an_ext_filesystem_is_a_clear_error_and_leaves_nothing() {
    let dir = testkit::tempdir();
    let junk = dir.path().join("junk.img");
    fs::write(&junk, vec![0x5Au8; 4 << 20]).unwrap();
    let out_path = dir.path().join("out.qcow2");
    let out = export(&junk, &out_path, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no ext2/ext3/ext4 filesystem"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn unwritable_output_is_a_clear_error() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let img = dir.path().join("a.img");
    mkfs(&img, "8M", &["-t", "ext4"], None);
    let out = export(&img, Path::new("/nonexistent-dir/x/out.qcow2"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write /nonexistent-dir/x/out.qcow2"),
        "{err}"
    );
}

#[test]
fn scrambled_export_never_silently_exports_plain_data() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let img = dir.path().join("a.img");
    mkfs(&img, "8M", &["-t", "ext4"], None);
    let out_path = dir.path().join("s.qcow2");
    let out = agent()
        .arg("export")
        .arg(&img)
        .arg(&out_path)
        .output()
        .unwrap();
    if !out.status.success() {
        // No scrambler in this build: a clear refusal, nothing written.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--no-scramble"), "{err}");
        assert!(leftovers(dir.path()).is_empty());
    } else {
        run(tool("qemu-img").arg("check").arg(&out_path));
    }
}

#[test]
fn fsck_runs_e2fsck_on_the_image_and_cleans_up() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree, 50);
    let img = dir.path().join("a.img");
    mkfs(&img, "16M", &["-t", "ext4"], Some(&tree));
    let q = dir.path().join("a.qcow2");
    assert!(export(&img, &q, &[]).status.success());
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let out = agent()
        .arg("fsck")
        .arg(&q)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Pass 5"), "{text}");
    assert!(
        fs::read_dir(&tmp).unwrap().next().is_none(),
        "temporary raw copy left behind"
    );
    // Options after `--` go to e2fsck.
    let out = agent()
        .arg("fsck")
        .arg(&q)
        .args(["--", "-fn", "-v"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("regular files"));
    assert!(fs::read_dir(&tmp).unwrap().next().is_none());
}

/// Runs `cmd` with a time limit; `None` if it had to be killed.
fn run_limited(cmd: &mut Command, secs: u64) -> Option<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: t_out.join().unwrap(),
                stderr: t_err.join().unwrap(),
            });
        }
        if start.elapsed().as_secs() > secs {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Every corrupted corpus image that `e2fsck -fn` can open is exported
/// (scrambled and not), with no crash, no hang, a clean `qemu-img check`,
/// and never a partial file.
#[test]
fn corpus_images_that_e2fsck_opens_are_exported() {
    let images = testkit::corpus_images();
    if images.is_empty() || !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let mut exported = 0;
    let mut failures = Vec::new();
    for (name, path) in &images {
        let img = dir.path().join(format!("{name}.img"));
        testkit::decompress(path, &img);
        let Some(fsck) = run_limited(tool("e2fsck").arg("-fn").arg(&img), 60) else {
            continue;
        };
        let opens = fsck.status.code() != Some(8);
        for (label, extra) in [
            ("plain", &["--no-scramble", "--compress", "none"][..]),
            ("scrambled", &[][..]),
        ] {
            let out_path = dir.path().join(format!("{name}.{label}.qcow2"));
            let Some(out) = run_limited(
                agent().arg("export").arg(&img).arg(&out_path).args(extra),
                120,
            ) else {
                failures.push(format!("{name} ({label}): export hung"));
                continue;
            };
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if err.contains("panicked") {
                failures.push(format!("{name} ({label}): panic: {err}"));
            }
            if out.status.success() {
                let check = tool("qemu-img")
                    .arg("check")
                    .arg(&out_path)
                    .output()
                    .unwrap();
                if !check.status.success() {
                    failures.push(format!("{name} ({label}): qemu-img check failed"));
                }
                exported += 1;
            } else {
                if out_path.exists() {
                    failures.push(format!(
                        "{name} ({label}): failed but left {}",
                        out_path.display()
                    ));
                }
                if opens {
                    failures.push(format!(
                        "{name} ({label}): e2fsck opens it but export failed: {err}"
                    ));
                }
            }
            let _ = fs::remove_file(&out_path);
        }
        let left: Vec<_> = leftovers(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".partial-"))
            .collect();
        if !left.is_empty() {
            failures.push(format!("{name}: temporary files left: {left:?}"));
        }
        let _ = fs::remove_file(&img);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(exported > 100, "only {exported} exports");
}

/// With the primary superblock wiped, the export falls back to a backup
/// (as e2fsck does), says so, and e2fsck judges the image like the original.
#[test]
fn falls_back_to_a_backup_superblock() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree, 100);
    let img = dir.path().join("nosb.img");
    mkfs(&img, "32M", &["-t", "ext4", "-b", "1024"], Some(&tree));
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 1024], 1024).unwrap();
    drop(f);
    let qcow = dir.path().join("nosb.qcow2");
    let out = export(&img, &qcow, &["--compress", "none"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("using the backup in group 1"), "{err}");
    let raw = dir.path().join("nosb.raw");
    to_raw(&qcow, &raw);
    let (rc_a, a) = fsck(&img);
    let (rc_b, b) = fsck(&raw);
    assert_eq!(a, b);
    assert_eq!(rc_a, rc_b);
}
