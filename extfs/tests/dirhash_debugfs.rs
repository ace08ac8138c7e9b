//! The htree name hashes against `debugfs dx_hash`, the e2fsprogs oracle:
//! every algorithm, signed and unsigned, default and explicit seeds, names of
//! length 1..=255 with bytes above 0x7f.

use extfs::hash::{dirhash, HashVersion};
use std::io::Write;

/// A tiny deterministic generator so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Name bytes debugfs's command parser passes through unchanged.
fn name_byte(rng: &mut XorShift) -> u8 {
    loop {
        let b = (rng.next() & 0xff) as u8;
        if b > b' ' && !matches!(b, b'"' | b'\\' | b'#' | b'\'' | 0x7f) {
            return b;
        }
    }
}

fn uuid_of(seed: &[u32; 4]) -> String {
    let bytes: Vec<u8> = seed.iter().flat_map(|w| w.to_le_bytes()).collect();
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[test]
fn dirhash_matches_debugfs_for_all_versions() {
    if !testkit::have_tool("debugfs") {
        eprintln!("skipping: debugfs is not installed");
        return;
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut names: Vec<Vec<u8>> = (1..=255usize)
        .map(|len| (0..len).map(|_| name_byte(&mut rng)).collect())
        .collect();
    // Short names, including high bytes, where signedness decides.
    for _ in 0..40 {
        let len = 1 + (rng.next() % 8) as usize;
        names.push((0..len).map(|_| name_byte(&mut rng)).collect());
    }
    names.push(b"\xff\xfe\x80\x81".to_vec());
    let seeds = [
        [0u32; 4],
        [0x0123_4567, 0x89ab_cdef, 0xdead_beef, 0x0bad_f00d],
    ];

    let mut script = Vec::new();
    let mut expected = Vec::new();
    for seed in &seeds {
        for v in 0..6u8 {
            let version = HashVersion::from_number(v).unwrap();
            for name in names.iter().filter(|n| n[0] != b'-') {
                script
                    .extend_from_slice(format!("dx_hash -h {v} -s {} ", uuid_of(seed)).as_bytes());
                script.extend_from_slice(name);
                script.push(b'\n');
                expected.push((version, *seed, name.clone(), dirhash(version, name, seed)));
            }
        }
    }
    let dir = testkit::tempdir();
    let cmds = dir.path().join("cmds");
    std::fs::File::create(&cmds)
        .unwrap()
        .write_all(&script)
        .unwrap();
    let out = testkit::tool("debugfs")
        .arg("-f")
        .arg(&cmds)
        .output()
        .expect("run debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(u32, u32)> = text
        .lines()
        .filter(|l| l.starts_with("Hash of "))
        .map(|l| {
            let (_, tail) = l.rsplit_once(" is 0x").expect("hash line");
            let (major, minor) = tail.split_once(" (minor 0x").expect("minor");
            (
                u32::from_str_radix(major, 16).unwrap(),
                u32::from_str_radix(minor.trim_end_matches(')'), 16).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "debugfs answered every dx_hash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut checked_high = 0;
    for ((version, seed, name, mine), theirs) in expected.iter().zip(&got) {
        assert_eq!(
            mine,
            theirs,
            "{version:?} seed {seed:x?} name {:?} (len {})",
            String::from_utf8_lossy(name),
            name.len()
        );
        if name.iter().any(|&b| b >= 0x80) {
            checked_high += 1;
        }
    }
    assert!(checked_high > 100, "names with high bytes were covered");
}
