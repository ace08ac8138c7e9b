//! The inode-level readers against debugfs: `read_dir` equals `ls -p`,
//! inode fields equal `stat`, block maps equal `blocks`; `findings` is
//! empty on clean filesystems and names planted corruption (checked with
//! e2fsck too). The block map holds every block `e2image -r` writes.

use extfs::inode::{self, MapEvent};
use extfs::{dir, Filesystem};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use testkit::{mkfs, run, run_text, tool};

fn have_tools() -> bool {
    let ok = ["mke2fs", "debugfs", "e2fsck", "e2image"]
        .iter()
        .all(|t| testkit::have_tool(t));
    if !ok {
        eprintln!("skipping: e2fsprogs missing");
    }
    ok
}

fn open(img: &Path) -> Filesystem {
    Filesystem::open(extfs::source::open_path(img).unwrap()).unwrap()
}

fn debugfs(img: &Path, req: &str) -> String {
    run_text(tool("debugfs").arg("-R").arg(req).arg(img))
}

fn populate(root: &Path) {
    fs::create_dir_all(root.join("big")).unwrap();
    fs::create_dir_all(root.join("small/nested")).unwrap();
    for i in 0..2500 {
        fs::write(root.join(format!("big/some_file_name_{i}")), [b'z'; 1024]).unwrap();
    }
    fs::write(root.join("small/data"), vec![7u8; 300_000]).unwrap();
    fs::write(root.join("small/tiny"), b"hi").unwrap();
    std::os::unix::fs::symlink("short", root.join("small/fast")).unwrap();
    std::os::unix::fs::symlink("/long/".repeat(40), root.join("small/slow")).unwrap();
}

fn fragment(img: &Path, dir: &Path) {
    // Free every other small file, then write a big one into the holes.
    let mut cmds = String::new();
    for i in (0..2500).step_by(2) {
        cmds.push_str(&format!("rm big/some_file_name_{i}\n"));
    }
    let src = dir.join("src.bin");
    fs::write(&src, vec![1u8; 600_000]).unwrap();
    cmds.push_str(&format!("write {} frag\n", src.display()));
    let f = dir.join("cmds");
    fs::write(&f, cmds).unwrap();
    run(tool("debugfs").arg("-w").arg("-f").arg(&f).arg(img));
}

/// `(ino, name)` of `debugfs ls -p <ino>` lines: `/ino/mode/uid/gid/name/size/`.
fn debugfs_ls(img: &Path, ino: u32) -> BTreeSet<(u32, Vec<u8>)> {
    debugfs(img, &format!("ls -p <{ino}>"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() >= 7).then(|| (f[1].parse().unwrap(), f[5].as_bytes().to_vec()))
        })
        .filter(|(ino, _)| *ino != 0)
        .collect()
}

fn field<'a>(text: &'a str, label: &str) -> &'a str {
    let i = text
        .find(label)
        .unwrap_or_else(|| panic!("{label} not in {text}"));
    text[i + label.len()..].split_whitespace().next().unwrap()
}

fn all_inodes(img: &Path) -> Vec<u32> {
    // Every in-use inode: from `ls -p` of every directory, recursively.
    let fs = open(img);
    let mut out = vec![2u32];
    let mut i = 0;
    while i < out.len() {
        let ino = out[i];
        i += 1;
        let node = fs.inode(ino).unwrap();
        if node.is_dir() {
            for e in dir::read_dir(&fs, ino).unwrap() {
                if e.name != b"." && e.name != b".." && !out.contains(&e.inode) {
                    out.push(e.inode);
                }
            }
        }
    }
    out.push(7);
    out.push(8);
    out
}

fn compare_with_debugfs(img: &Path) {
    let fs = open(img);
    let inos = all_inodes(img);
    assert!(inos.len() > 1000);
    let mut checked_dirs = 0;
    for &ino in &inos {
        let node = fs.inode(ino).unwrap();
        // Inode fields against `stat` (sampled: stat is slow per call).
        if ino < 20 || ino % 97 == 0 || node.is_dir() || node.is_symlink() {
            let st = debugfs(img, &format!("stat <{ino}>"));
            assert_eq!(
                field(&st, "Mode:"),
                format!("{:04o}", node.mode & 0o7777),
                "ino {ino}"
            );
            assert_eq!(
                field(&st, "Links:").parse::<u16>().unwrap(),
                node.links_count
            );
            assert_eq!(
                field(&st, "Size:").parse::<u64>().unwrap(),
                node.size,
                "ino {ino}"
            );
            assert_eq!(field(&st, "User:").parse::<u32>().unwrap(), node.uid);
            assert_eq!(field(&st, "Group:").parse::<u32>().unwrap(), node.gid);
            assert_eq!(
                field(&st, "Generation:").parse::<u32>().unwrap(),
                node.generation
            );
            assert_eq!(
                field(&st, "Blockcount:").parse::<u64>().unwrap(),
                node.blocks,
                "ino {ino}"
            );
            let flags =
                u32::from_str_radix(field(&st, "Flags:").trim_start_matches("0x"), 16).unwrap();
            assert_eq!(flags, node.flags);
            if let Some(i) = st.find("Inode checksum:") {
                let v = st[i + 15..].split_whitespace().next().unwrap();
                let want = u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
                let (stored, computed) = inode::inode_csum(fs.csum_seed(), ino, &node.raw);
                assert_eq!(stored, want);
                assert_eq!(computed, want, "ino {ino}");
            }
            // Block map against `blocks` (data and tree blocks).
            if node.has_valid_blocks() {
                let want: BTreeSet<u64> = debugfs(img, &format!("blocks <{ino}>"))
                    .split_whitespace()
                    .map(|w| w.parse().unwrap())
                    .collect();
                let mut got = BTreeSet::new();
                let (data, nodes) = inode::block_map(&fs, &node);
                for e in data.iter().chain(nodes.iter()) {
                    match *e {
                        MapEvent::Data { physical, len, .. } => {
                            got.extend(physical..physical + len)
                        }
                        MapEvent::Node { block, .. } => {
                            got.insert(block);
                        }
                        MapEvent::Problem { ref message, .. } => panic!("ino {ino}: {message}"),
                    }
                }
                assert_eq!(got, want, "ino {ino} blocks");
            }
        }
        if node.is_dir() {
            let got: BTreeSet<(u32, Vec<u8>)> = dir::read_dir(&fs, ino)
                .unwrap()
                .into_iter()
                .map(|e| (e.inode, e.name))
                .collect();
            assert_eq!(got, debugfs_ls(img, ino), "directory {ino}");
            checked_dirs += 1;
        }
    }
    assert!(checked_dirs >= 4);
    assert!(
        inode::findings(&fs).is_empty(),
        "{:?}",
        inode::findings(&fs)
    );
}

#[test]
fn ext4_readers_match_debugfs() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree);
    let img = dir.path().join("a.img");
    mkfs(&img, "24M", &["-t", "ext4", "-b", "1024"], Some(&tree));
    fragment(&img, dir.path());
    let ex = debugfs(&img, "ex frag");
    assert!(ex.lines().any(|l| l.trim_start().starts_with("1/")), "{ex}");
    compare_with_debugfs(&img);
}

#[test]
fn ext2_indirect_readers_match_debugfs() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree);
    let img = dir.path().join("b.img");
    mkfs(&img, "24M", &["-t", "ext2", "-b", "1024"], Some(&tree));
    fragment(&img, dir.path());
    compare_with_debugfs(&img);
}

#[test]
fn inline_dirs_read_like_debugfs() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    for n in ["a", "bb", "ccc"] {
        fs::write(tree.join("d").join(n), b"x").unwrap();
    }
    let img = dir.path().join("c.img");
    mkfs(
        &img,
        "8M",
        &["-t", "ext4", "-I", "256", "-O", "inline_data"],
        Some(&tree),
    );
    let fsys = open(&img);
    let root = dir::read_dir(&fsys, 2).unwrap();
    let d = root.iter().find(|e| e.name == b"d").unwrap().inode;
    assert!(fsys.inode(d).unwrap().has_inline_data());
    let got: BTreeSet<(u32, Vec<u8>)> = dir::read_dir(&fsys, d)
        .unwrap()
        .into_iter()
        .map(|e| (e.inode, e.name))
        .collect();
    assert_eq!(got, debugfs_ls(&img, d));
}

/// Flips a byte of an inode and of a directory leaf: findings name both,
/// and e2fsck agrees they are checksum failures.
#[test]
fn findings_name_planted_checksum_damage() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree);
    let img = dir.path().join("d.img");
    mkfs(&img, "32M", &["-t", "ext4"], Some(&tree));
    let fsys = open(&img);
    let tiny = dir::read_dir(&fsys, 2)
        .unwrap()
        .into_iter()
        .find(|e| e.name == b"small")
        .map(|e| e.inode)
        .unwrap();
    let entries = dir::read_dir(&fsys, tiny).unwrap();
    let victim = entries.iter().find(|e| e.name == b"tiny").unwrap().inode;
    let (blk, off) = fsys.inode_location(victim).unwrap();
    let bs = fsys.block_size();
    let dir_block = fsys.inode_runs(&fsys.inode(tiny).unwrap())[0].1;
    drop(fsys);
    let f = fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&img)
        .unwrap();
    let mut b = [0u8; 1];
    // i_mtime low byte of the victim inode.
    let at = blk * bs + off as u64 + 16;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x55], at).unwrap();
    // A byte of the name "data" or "tiny" inside the small directory's leaf.
    let at = dir_block * bs + 40;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    drop(f);

    let fsys = open(&img);
    let found = inode::findings(&fsys);
    assert!(
        found
            .iter()
            .any(|f| f.code == "inode.checksum" && f.inode == Some(victim)),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.code == "dir.checksum" && f.block == Some(dir_block)),
        "{found:?}"
    );
    let out = tool("e2fsck").arg("-fn").arg(&img).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checksum"), "{text}");
}

/// Every block `e2image -r` writes is in the block map (and so in an
/// export); no regular file's data block is.
#[test]
fn blockmap_covers_e2image() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    populate(&tree);
    for (label, args) in [
        ("ext4", &["-t", "ext4"][..]),
        ("ext3", &["-t", "ext3", "-b", "1024"][..]),
        (
            "flex",
            &["-t", "ext4", "-G", "4", "-O", "^metadata_csum,uninit_bg"][..],
        ),
    ] {
        let img = dir.path().join(format!("{label}.img"));
        mkfs(&img, "48M", args, Some(&tree));
        fragment(&img, dir.path());
        let raw = dir.path().join(format!("{label}.raw"));
        let _ = fs::remove_file(&raw);
        run(tool("e2image").arg("-r").arg(&img).arg(&raw));
        let fsys = open(&img);
        let map = extfs::blockmap::build(&fsys);
        assert!(map.findings.is_empty(), "{label}: {:?}", map.findings);
        let bs = fsys.block_size() as usize;
        let data = fs::read(&raw).unwrap();
        for (i, blk) in data.chunks(bs).enumerate() {
            if blk.iter().any(|&x| x != 0) {
                assert!(
                    map.kind_of(i as u64).is_some(),
                    "{label}: e2image block {i} not mapped"
                );
            }
        }
        // The data blocks of the big regular files are never mapped.
        for name in ["frag"] {
            let ino = dir::read_dir(&fsys, 2)
                .unwrap()
                .into_iter()
                .find(|e| e.name == name.as_bytes())
                .unwrap()
                .inode;
            for (_, p, n, _) in fsys.inode_runs(&fsys.inode(ino).unwrap()) {
                for b in p..p + n {
                    assert!(
                        map.kind_of(b).is_none(),
                        "{label}: data block {b} of {name} mapped"
                    );
                }
            }
        }
    }
}

#[test]
fn inline_file_contents_read_back() {
    if !have_tools() {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let body: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    fs::write(tree.join("f"), &body).unwrap();
    let img = dir.path().join("e.img");
    mkfs(
        &img,
        "8M",
        &["-t", "ext4", "-I", "256", "-O", "inline_data"],
        Some(&tree),
    );
    let fsys = open(&img);
    let f = dir::read_dir(&fsys, 2)
        .unwrap()
        .into_iter()
        .find(|e| e.name == b"f")
        .unwrap()
        .inode;
    let node = fsys.inode(f).unwrap();
    assert!(node.has_inline_data());
    assert_eq!(node.inline_data(), body);
}
