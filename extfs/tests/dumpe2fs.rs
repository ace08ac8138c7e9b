//! The analyses against the reference tool: filesystems of many kinds are
//! built with the real `mke2fs`, and every field of the superblock summary
//! and of every group must equal what `dumpe2fs -h` / `dumpe2fs` print for
//! the same image (parsed here, field by field), with the key sets equal.

use extfs::analysis::{self, GroupStats, Report};
use extfs::Filesystem;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Fixed creation time and UUID so runs are reproducible.
const FAKE_TIME: &str = "1700000000";
const UUID: &str = "6a1e2b3c-4d5e-4f60-8172-93a4b5c6d7e8";

fn mkfs(path: &Path, size: &str, args: &[&str], populate: Option<&Path>) {
    let _ = std::fs::remove_file(path);
    let mut cmd = testkit::tool("mke2fs");
    cmd.env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .arg("-q")
        .arg("-F")
        .args([
            "-U",
            UUID,
            "-E",
            "hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        ]);
    cmd.args(args);
    if let Some(d) = populate {
        cmd.arg("-d").arg(d);
    }
    cmd.arg(path).arg(size);
    testkit::run(&mut cmd);
}

fn tools_present() -> bool {
    let ok = testkit::have_tool("mke2fs") && testkit::have_tool("dumpe2fs");
    if !ok {
        eprintln!("skipping: e2fsprogs is not installed");
    }
    ok
}

/// `dumpe2fs` output even when it exits non-zero (damaged images).
fn dumpe2fs_any(path: &Path) -> String {
    let out = testkit::tool("dumpe2fs")
        .arg(path)
        .output()
        .expect("run dumpe2fs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dumpe2fs(path: &Path, header_only: bool) -> String {
    let mut cmd = testkit::tool("dumpe2fs");
    if header_only {
        cmd.arg("-h");
    }
    cmd.arg(path);
    let out = cmd.output().expect("run dumpe2fs");
    assert!(
        out.status.success(),
        "dumpe2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snake(label: &str) -> String {
    let mut s = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    s.trim_matches('_').to_string()
}

/// `dumpe2fs -h` as key → raw value text (continuation lines joined with a
/// space; the MMP block's indented `key: value` lines included).
fn parse_header(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            break; // the group list follows
        }
        if line.starts_with("MMP_block:") {
            continue;
        }
        if let Some((k, v)) = line
            .split_once(':')
            .filter(|(k, _)| !k.starts_with("  ") || k.trim().starts_with("mmp_"))
        {
            let key = snake(k);
            m.insert(key.clone(), v.trim().to_string());
            last = Some(key);
        } else if let Some(k) = &last {
            // "Journal users:" continuation lines.
            let e = m.get_mut(k).unwrap();
            e.push(' ');
            e.push_str(line.trim());
        }
    }
    m
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `ctime` text in UTC ("Tue Nov 14 22:13:20 2023") to seconds.
fn parse_ctime(s: &str) -> i64 {
    let p: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(p.len(), 5, "not a ctime date: {s:?}");
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == p[1]).unwrap() as i64 + 1;
    let d: i64 = p[2].parse().unwrap();
    let y: i64 = p[4].parse().unwrap();
    let hms: Vec<i64> = p[3].split(':').map(|x| x.parse().unwrap()).collect();
    days_from_civil(y, m, d) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
}

fn num(s: &str) -> i64 {
    let t = s.split_whitespace().next().unwrap_or("");
    if let Some(h) = t.strip_prefix("0x") {
        i64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
    } else {
        t.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
    }
}

const TIME_KEYS: &[&str] = &[
    "filesystem_created",
    "last_mount_time",
    "last_write_time",
    "last_checked",
    "next_check_after",
    "first_error_time",
    "last_error_time",
    "mmp_update_date",
];
const LIST_KEYS: &[&str] = &[
    "filesystem_features",
    "filesystem_flags",
    "default_mount_options",
    "journal_features",
];
const STRING_KEYS: &[&str] = &[
    "filesystem_volume_name",
    "last_mounted_on",
    "filesystem_uuid",
    "mount_options",
    "filesystem_state",
    "errors_behavior",
    "filesystem_os_type",
    "journal_uuid",
    "default_directory_hash",
    "directory_hash_seed",
    "journal_backup",
    "first_error_function",
    "last_error_function",
    "first_error_err",
    "last_error_err",
    "checksum_type",
    "encryption_pw_salt",
    "character_encoding",
    "journal_checksum_type",
    "mmp_node_name",
    "mmp_device_name",
];

fn lifetime(k: u64) -> String {
    if k < 1 << 13 {
        format!("{k} kB")
    } else if k < 1 << 23 {
        format!("{} MB", (k + (1 << 9)) >> 10)
    } else if k < 1 << 33 {
        format!("{} GB", (k + (1 << 19)) >> 20)
    } else {
        format!("{} TB", (k + (1 << 29)) >> 30)
    }
}

/// Every `dumpe2fs -h` key equals the summary's value, and the summary has
/// no key dumpe2fs does not print.
fn compare_header(name: &str, text: &str, summary: &Value) {
    let want = parse_header(text);
    let got = summary.as_object().unwrap();
    let want_keys: Vec<&String> = want.keys().collect();
    let mut got_keys: Vec<&String> = got.keys().collect();
    got_keys.sort();
    assert_eq!(want_keys, got_keys, "{name}: key sets differ");
    for (k, raw) in &want {
        let v = &got[k];
        let ctx = format!("{name}: {k}: dumpe2fs {raw:?}, ours {v}");
        let expected: Value = if matches!(raw.as_str(), "<none>" | "<not available>" | "n/a") {
            Value::Null
        } else if TIME_KEYS.contains(&k.as_str()) {
            json!(parse_ctime(raw))
        } else if LIST_KEYS.contains(&k.as_str()) {
            let words: Vec<&str> = raw.split_whitespace().filter(|w| *w != "(none)").collect();
            json!(words)
        } else if STRING_KEYS.contains(&k.as_str()) {
            json!(raw)
        } else if k == "journal_users" {
            json!(raw.split_whitespace().collect::<Vec<_>>())
        } else if k == "backup_block_groups" {
            json!(raw.split_whitespace().map(num).collect::<Vec<_>>())
        } else if k == "total_journal_size" {
            let kb = v.as_u64().expect(&ctx) / 1024;
            let shown = if kb < 8192 {
                format!("{kb}k")
            } else {
                format!("{}M", kb >> 10)
            };
            assert_eq!(&shown, raw, "{ctx}");
            continue;
        } else if k == "lifetime_writes" {
            assert_eq!(&lifetime(v.as_u64().expect(&ctx)), raw, "{ctx}");
            continue;
        } else {
            json!(num(raw))
        };
        assert_eq!(v, &expected, "{ctx}");
    }
}

/// One group of the full `dumpe2fs` output, as the JSON fields it maps to.
fn parse_groups(text: &str, cluster_ratio: u64) -> Vec<BTreeMap<&'static str, Value>> {
    let mut groups: Vec<BTreeMap<&'static str, Value>> = Vec::new();
    let range = |s: &str| -> (u64, u64) {
        let s = s.trim().trim_end_matches(',');
        match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (s.parse().unwrap(), s.parse().unwrap()),
        }
    };
    let word_after = |line: &str, pat: &str| -> Option<String> {
        line.find(pat).map(|i| {
            line[i + pat.len()..]
                .split([',', ' '])
                .next()
                .unwrap()
                .to_string()
        })
    };
    for line in text.lines().skip_while(|l| !l.starts_with("Group 0:")) {
        if let Some(rest) = line.strip_prefix("Group ") {
            let (g, rest) = rest.split_once(": (Blocks ").unwrap();
            let (blocks, rest) = rest.split_once(')').unwrap();
            let (a, b) = range(blocks);
            let mut m = BTreeMap::new();
            m.insert("group", json!(g.parse::<u64>().unwrap()));
            m.insert("first_block", json!(a));
            m.insert("last_block", json!(b));
            if let Some(c) = word_after(rest, "csum 0x") {
                let c = i64::from_str_radix(&c, 16).unwrap();
                m.insert("checksum", json!(c));
                let e = word_after(rest, "EXPECTED 0x")
                    .map(|e| i64::from_str_radix(e.trim_end_matches(')'), 16).unwrap())
                    .unwrap_or(c);
                m.insert("checksum_expected", json!(e));
            }
            let flags: Vec<String> = match rest.split_once('[') {
                Some((_, f)) => f
                    .trim_end_matches(']')
                    .split(", ")
                    .map(String::from)
                    .collect(),
                None => vec![],
            };
            m.insert("flags", json!(flags));
            groups.push(m);
            continue;
        }
        let Some(m) = groups.last_mut() else { continue };
        let l = line.trim();
        if let Some(s) = word_after(l, "superblock at ") {
            m.insert("superblock", json!(s.parse::<u64>().unwrap()));
        }
        if let Some(s) = word_after(l, "Group descriptors at ") {
            let (a, b) = range(&s);
            m.insert("group_descriptors", json!([a, b]));
        }
        if let Some(s) = word_after(l, "Group descriptor at ") {
            m.insert("group_descriptor", json!(s.parse::<u64>().unwrap()));
        }
        if let Some(s) = word_after(l, "Reserved GDT blocks at ") {
            let (a, b) = range(&s);
            m.insert("reserved_gdt_blocks", json!([a, b]));
        }
        for (pat, key, ckey) in [
            ("Block bitmap at ", "block_bitmap", "block_bitmap_checksum"),
            ("Inode bitmap at ", "inode_bitmap", "inode_bitmap_checksum"),
        ] {
            if let Some(i) = l.find(pat) {
                let part = &l[i..];
                let part = part.split(" Inode bitmap").next().unwrap();
                m.insert(
                    key,
                    json!(word_after(part, pat).unwrap().parse::<u64>().unwrap()),
                );
                if let Some(c) = word_after(part, "csum 0x") {
                    m.insert(ckey, json!(i64::from_str_radix(&c, 16).unwrap()));
                }
            }
        }
        if let Some(s) = word_after(l, "Inode table at ") {
            let (a, b) = range(&s);
            m.insert("inode_table", json!(a));
            m.insert("inode_table_last", json!(b));
        }
        if l.contains(" free inodes, ") {
            let nums: Vec<u64> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            m.insert("free_blocks", json!(nums[0]));
            m.insert("free_inodes", json!(nums[1]));
            m.insert("directories", json!(nums[2]));
            m.insert("unused_inodes", json!(nums.get(3).copied().unwrap_or(0)));
        }
        for (pat, key, ratio) in [
            ("Free blocks: ", "free_blocks_in_bitmap", cluster_ratio),
            ("Free inodes: ", "free_inodes_in_bitmap", 1),
        ] {
            if let Some(list) = l.strip_prefix(pat.trim_end()) {
                let count: u64 = list
                    .split(", ")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let (a, b) = range(s);
                        (b - a) / ratio + 1
                    })
                    .sum();
                m.insert(key, json!(count));
            }
        }
    }
    groups
}

fn compare_groups(name: &str, text: &str, groups: &[GroupStats], cluster_ratio: u64) {
    let want = parse_groups(text, cluster_ratio);
    assert_eq!(want.len(), groups.len(), "{name}: group count");
    for (w, g) in want.iter().zip(groups) {
        let v = serde_json::to_value(g).unwrap();
        let got = v.as_object().unwrap();
        for (k, wv) in w {
            assert_eq!(got.get(*k), Some(wv), "{name}: group {}: {k}", g.group);
        }
        // Our keys beyond dumpe2fs' are the computed checksums; everything
        // dumpe2fs prints must be present the same way.
        for k in got.keys() {
            if k.ends_with("_checksum_expected") {
                continue;
            }
            assert!(
                w.contains_key(k.as_str()),
                "{name}: group {}: extra key {k}",
                g.group
            );
        }
        // A healthy filesystem's bitmaps check out.
        assert_eq!(
            g.block_bitmap_checksum_expected.is_some(),
            g.block_bitmap_checksum_expected.is_some()
                && g.block_bitmap_checksum == g.block_bitmap_checksum_expected,
            "{name}: group {}: block bitmap checksum",
            g.group
        );
    }
}

fn inspect_path(path: &Path) -> (Filesystem, Report) {
    let src = extfs::source::open_path(path).expect("open source");
    let fs = Filesystem::open(src).expect("open filesystem");
    let r = analysis::inspect(&fs);
    (fs, r)
}

fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("small.txt"), b"hello, world\n").unwrap();
    std::fs::write(dir.join("sub/tiny"), b"x").unwrap();
    std::fs::write(dir.join("sub/deeper/big.bin"), vec![7u8; 300_000]).unwrap();
    for i in 0..40 {
        std::fs::write(dir.join(format!("sub/f{i:03}")), format!("{i}")).unwrap();
    }
    std::os::unix::fs::symlink("small.txt", dir.join("link")).unwrap();
}

/// Builds, inspects and compares one filesystem; returns the report.
fn check(name: &str, size: &str, args: &[&str], with_files: bool) -> Option<Report> {
    if !tools_present() {
        return None;
    }
    let tmp = testkit::tempdir();
    let img = tmp.path().join(format!("{name}.img"));
    let files = tmp.path().join("files");
    if with_files {
        populate(&files);
    }
    mkfs(&img, size, args, with_files.then_some(files.as_path()));
    Some(check_image(name, &img))
}

fn check_image(name: &str, img: &Path) -> Report {
    let (fs, r) = inspect_path(img);
    let summary = serde_json::to_value(&r.superblock).unwrap();
    compare_header(name, &dumpe2fs(img, true), &summary);
    if fs.group_count() > 0 {
        compare_groups(name, &dumpe2fs(img, false), &r.groups, fs.cluster_ratio());
    }
    let errors: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.severity == extfs::Severity::Error)
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: a fresh filesystem has errors: {errors:#?}"
    );
    r
}

#[test]
fn ext2() {
    check("ext2", "16M", &["-t", "ext2"], true);
}

#[test]
fn ext2_revision_0() {
    check("ext2r0", "8M", &["-t", "ext2", "-r", "0"], false);
}

#[test]
fn ext3_with_label_raid_and_mount_dir() {
    check(
        "ext3",
        "24M",
        &[
            "-t",
            "ext3",
            "-L",
            "customer-fs",
            "-M",
            "/srv/data",
            "-E",
            "stride=4,stripe_width=8",
            "-e",
            "remount-ro",
        ],
        true,
    );
}

#[test]
fn ext4_1k_blocks() {
    check("ext4-1k", "32M", &["-t", "ext4", "-b", "1024"], true);
}

#[test]
fn ext4_2k_blocks() {
    check("ext4-2k", "32M", &["-t", "ext4", "-b", "2048"], true);
}

#[test]
fn ext4_4k_blocks() {
    check("ext4-4k", "64M", &["-t", "ext4", "-b", "4096"], true);
}

#[test]
fn ext4_64k_blocks() {
    check("ext4-64k", "256M", &["-t", "ext4", "-b", "65536"], true);
}

#[test]
fn ext4_32bit_descriptors() {
    check(
        "ext4-32bit",
        "48M",
        &["-t", "ext4", "-O", "^64bit", "-b", "1024"],
        true,
    );
}

#[test]
fn ext4_without_flex_bg() {
    check(
        "ext4-noflex",
        "48M",
        &["-t", "ext4", "-O", "^flex_bg", "-b", "1024"],
        false,
    );
}

#[test]
fn ext4_meta_bg() {
    // 1 KiB blocks and 64-byte descriptors: 16 per block, so 80 groups
    // need 5 descriptor blocks spread over meta groups.
    check(
        "ext4-metabg",
        "640M",
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "meta_bg,^resize_inode",
            "-N",
            "4096",
        ],
        false,
    );
}

#[test]
fn ext4_meta_bg_32bit() {
    check(
        "ext4-metabg32",
        "600M",
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "meta_bg,^resize_inode,^64bit",
            "-N",
            "4096",
        ],
        false,
    );
}

#[test]
fn ext4_sparse_super2() {
    check(
        "ext4-ss2",
        "96M",
        &["-t", "ext4", "-b", "1024", "-O", "sparse_super2"],
        false,
    );
}

#[test]
fn ext4_no_sparse_super() {
    check(
        "ext4-nosparse",
        "48M",
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "^sparse_super,^resize_inode",
        ],
        false,
    );
}

#[test]
fn ext4_bigalloc() {
    check(
        "ext4-bigalloc",
        "256M",
        &["-t", "ext4", "-O", "bigalloc", "-C", "65536"],
        true,
    );
}

#[test]
fn ext4_bigalloc_1k_blocks() {
    check(
        "ext4-bigalloc1k",
        "64M",
        &["-t", "ext4", "-b", "1024", "-O", "bigalloc", "-C", "16384"],
        true,
    );
}

#[test]
fn ext4_without_resize_inode_and_huge_file() {
    check(
        "ext4-noresize",
        "32M",
        &["-t", "ext4", "-O", "^resize_inode,^huge_file"],
        false,
    );
}

#[test]
fn ext4_inline_data() {
    check(
        "ext4-inline",
        "32M",
        &["-t", "ext4", "-O", "inline_data"],
        true,
    );
}

#[test]
fn ext4_uninit_bg_without_metadata_csum() {
    check(
        "ext4-uninit",
        "48M",
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        true,
    );
}

#[test]
fn ext4_quota_and_project() {
    check(
        "ext4-quota",
        "32M",
        &["-t", "ext4", "-O", "quota,project"],
        true,
    );
}

#[test]
fn ext4_orphan_file() {
    check(
        "ext4-orphan",
        "64M",
        &["-t", "ext4", "-O", "orphan_file"],
        false,
    );
}

#[test]
fn ext4_mmp() {
    check("ext4-mmp", "32M", &["-t", "ext4", "-O", "mmp"], false);
}

#[test]
fn ext4_casefold_and_encrypt() {
    check(
        "ext4-casefold",
        "32M",
        &["-t", "ext4", "-O", "casefold,encrypt"],
        true,
    );
}

#[test]
fn ext4_csum_seed_and_small_inodes_no_journal() {
    check(
        "ext4-seed",
        "32M",
        &[
            "-t",
            "ext4",
            "-O",
            "metadata_csum_seed,^has_journal",
            "-I",
            "128",
        ],
        false,
    );
}

#[test]
fn ext4_custom_group_size() {
    check(
        "ext4-g",
        "16M",
        &["-t", "ext4", "-b", "1024", "-g", "2048"],
        false,
    );
}

#[test]
fn ext4_fast_commit() {
    check(
        "ext4-fc",
        "64M",
        &["-t", "ext4", "-O", "fast_commit"],
        false,
    );
}

#[test]
fn external_journal() {
    if !tools_present() {
        return;
    }
    let tmp = testkit::tempdir();
    let jdev = tmp.path().join("journal.img");
    let img = tmp.path().join("fs.img");
    mkfs(&jdev, "8M", &["-O", "journal_dev", "-b", "4096"], None);
    let r = check_image("journal-dev", &jdev);
    assert!(r.groups.is_empty());
    assert!(r.superblock.journal_features.is_some());
    assert!(r.superblock.total_journal_blocks.is_some());
    // `mke2fs -J device=` insists on a block device; record the external
    // journal the way it would (UUID, device number, has_journal) instead.
    mkfs(
        &img,
        "32M",
        &["-t", "ext4", "-b", "4096", "-O", "^has_journal"],
        None,
    );
    for c in [
        "ssv journal_uuid 0badc0de-1111-2222-3333-444455556666",
        "ssv journal_dev 2065",
        "feature has_journal",
    ] {
        testkit::run(testkit::tool("debugfs").args(["-w", "-R", c]).arg(&img));
    }
    let r = check_image("external-journal", &img);
    assert_eq!(r.superblock.journal_device, Some(2065));
    assert!(r.superblock.journal_uuid.is_some());
}

/// Error-tracking fields and state set with debugfs as the kernel would.
#[test]
fn kernel_recorded_errors() {
    if !tools_present() || !testkit::have_tool("debugfs") {
        return;
    }
    let tmp = testkit::tempdir();
    let img = tmp.path().join("err.img");
    // Without metadata_csum so the errcode bytes can be poked directly.
    mkfs(&img, "32M", &["-t", "ext4", "-O", "^metadata_csum"], None);
    let cmds = [
        "ssv state 3",
        "ssv error_count 7",
        "ssv first_error_time 1700001000",
        "ssv first_error_ino 12",
        "ssv first_error_block 345",
        "ssv first_error_func ext4_lookup",
        "ssv first_error_line 1811",
        "ssv last_error_time 1700002000",
        "ssv last_error_ino 13",
        "ssv last_error_line 99",
        "ssv last_error_func ext4_iget",
        "ssv last_orphan 14",
        "ssv checkinterval 1209600",
        "ssv kbytes_written 123456789",
        "ssv mtime 1700003000",
        "ssv mnt_count 4",
    ];
    // debugfs takes one -R; run them one by one.
    for c in cmds {
        testkit::run(testkit::tool("debugfs").args(["-w", "-R", c]).arg(&img));
    }
    {
        // s_first_error_errcode / s_last_error_errcode (debugfs cannot set them).
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[5, 2], 1024 + 0x27A).unwrap();
    }
    let r = check_image_allow_errors("errors", &img);
    let codes: Vec<&str> = r.findings.iter().map(|f| f.code.as_str()).collect();
    assert!(codes.contains(&"superblock.errors_recorded"), "{codes:?}");
    assert!(codes.contains(&"superblock.state_errors"), "{codes:?}");
    assert!(codes.contains(&"superblock.orphan_list"), "{codes:?}");
    assert_eq!(r.superblock.fs_error_count, Some(7));
    assert_eq!(
        r.superblock.first_error_err.as_deref(),
        Some("EFSCORRUPTED")
    );
    assert_eq!(r.superblock.last_error_err.as_deref(), Some("EIO"));
    assert_eq!(
        r.superblock.last_error_function.as_deref(),
        Some("ext4_iget")
    );
}

fn check_image_allow_errors(name: &str, img: &Path) -> Report {
    let (fs, r) = inspect_path(img);
    let summary = serde_json::to_value(&r.superblock).unwrap();
    compare_header(name, &dumpe2fs(img, true), &summary);
    compare_groups(name, &dumpe2fs(img, false), &r.groups, fs.cluster_ratio());
    r
}

/// A primary superblock wiped out: the backup is found and reported.
#[test]
fn backup_superblock_fallback() {
    if !tools_present() {
        return;
    }
    let tmp = testkit::tempdir();
    let img = tmp.path().join("bk.img");
    mkfs(&img, "32M", &["-t", "ext4", "-b", "1024"], None);
    let good = inspect_path(&img).1;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0u8; 1024], 1024).unwrap();
    }
    let src: Arc<dyn extfs::Source> = extfs::source::open_path(&img).unwrap();
    let fs = Filesystem::open(src).unwrap();
    assert!(fs.superblock_location().is_backup());
    assert_eq!(fs.superblock_location().block, 8193);
    let r = analysis::inspect(&fs);
    assert!(r
        .findings
        .iter()
        .any(|f| f.code == "superblock.primary_unusable"));
    assert_eq!(r.superblock.block_count, good.superblock.block_count);
    assert_eq!(r.groups.len(), good.groups.len());
    for (a, b) in r.groups.iter().zip(&good.groups) {
        assert_eq!(a.inode_table, b.inode_table);
    }
}

/// Damaged checksums are reported where e2fsck reports them.
#[test]
fn corrupted_checksums_are_found() {
    if !tools_present() {
        return;
    }
    let tmp = testkit::tempdir();
    let img = tmp.path().join("bad.img");
    mkfs(&img, "32M", &["-t", "ext4", "-b", "1024"], None);
    let (fs, r) = inspect_path(&img);
    let g0 = r.groups[0].clone();
    let desc_off = 2 * 1024 + 3 * fs.desc_size() as u64; // group 3's descriptor
    drop(fs);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        // Flip a bit in group 0's inode bitmap and block bitmap, and in group
        // 3's descriptor (its free inode count).
        for blk in [g0.inode_bitmap, g0.block_bitmap] {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, blk * 1024 + 100).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], blk * 1024 + 100).unwrap();
        }
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, desc_off + 0x0E).unwrap();
        f.write_all_at(&[b[0] ^ 1], desc_off + 0x0E).unwrap();
        // And the superblock's volume name without fixing its checksum.
        f.write_all_at(b"X", 1024 + 0x78).unwrap();
    }
    let (_, r) = inspect_path(&img);
    let has = |code: &str, group: Option<u32>| {
        r.findings
            .iter()
            .any(|f| f.code == code && f.group == group)
    };
    assert!(has("superblock.checksum", None), "{:#?}", r.findings);
    assert!(
        has("group.block_bitmap_checksum", Some(0)),
        "{:#?}",
        r.findings
    );
    assert!(
        has("group.inode_bitmap_checksum", Some(0)),
        "{:#?}",
        r.findings
    );
    assert!(has("group.checksum", Some(3)), "{:#?}", r.findings);
    // e2fsck agrees that these structures are damaged.
    let out = testkit::tool("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    // dumpe2fs shows the descriptor checksum as wrong too.
    let d = dumpe2fs_any(&img);
    assert!(d.contains("EXPECTED"), "{d}");
}
