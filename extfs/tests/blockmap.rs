//! The export walk over a source with unreadable blocks: they are listed,
//! left out, and everything else is exported in ascending order.

use extfs::blockmap::{self, BlockKind};
use extfs::export::{export, ExportOptions, Identity};
use extfs::source::{RawSource, Source};
use extfs::Filesystem;
use std::io;
use std::sync::Arc;
use testkit::mkfs;

/// A raw image whose reads fail when they touch one of `bad` (byte ranges).
struct Flaky {
    inner: RawSource,
    bad: Vec<(u64, u64)>,
}

impl Source for Flaky {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if self.bad.iter().any(|&(s, e)| offset < e && s < end) {
            return Err(io::Error::other("simulated media error"));
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

#[test]
fn unreadable_blocks_are_listed_and_skipped() {
    if !testkit::have_tool("mke2fs") {
        return;
    }
    let dir = testkit::tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    for i in 0..400 {
        std::fs::write(tree.join(format!("d/file_{i}")), b"x").unwrap();
    }
    let img = dir.path().join("a.img");
    mkfs(&img, "16M", &["-t", "ext4", "-b", "1024"], Some(&tree));
    let open = |bad: Vec<(u64, u64)>| {
        let inner = RawSource::new(std::fs::File::open(&img).unwrap()).unwrap();
        Filesystem::open(Arc::new(Flaky { inner, bad }) as Arc<dyn Source>).unwrap()
    };
    let fs = open(Vec::new());
    let map = blockmap::build(&fs);
    // Pick one directory leaf and one journal block to lose.
    let leaf = map
        .ranges
        .iter()
        .find(|r| matches!(r.kind, BlockKind::DirLeaf { ino, .. } if ino > 11))
        .unwrap()
        .start;
    let jblk = map
        .ranges
        .iter()
        .find(|r| matches!(r.kind, BlockKind::Journal { .. }))
        .unwrap()
        .start
        + 3;
    let bs = fs.block_size();
    let bad = vec![
        (leaf * bs, leaf * bs + bs),
        (jblk * bs + 100, jblk * bs + 101),
    ];
    let flaky = open(bad);
    let map2 = blockmap::build(&flaky);
    // The map comes from inode tables and tree blocks, which are readable.
    assert_eq!(map.ranges, map2.ranges);
    let mut writes: Vec<(u64, usize)> = Vec::new();
    let mut sink = |off: u64, data: &[u8]| -> io::Result<()> {
        writes.push((off, data.len()));
        Ok(())
    };
    let sum = export(
        &flaky,
        &map2,
        &mut Identity,
        &mut sink,
        ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(sum.unreadable, vec![(leaf, 1), (jblk, 1)]);
    // Strictly ascending, and neither lost block written.
    for w in writes.windows(2) {
        assert!(w[0].0 + w[0].1 as u64 <= w[1].0);
    }
    for (off, len) in &writes {
        for b in [leaf, jblk] {
            assert!(!(b * bs >= *off && b * bs < off + *len as u64));
        }
    }
    assert_eq!(sum.read_blocks + 2, sum.mapped_blocks);
}
