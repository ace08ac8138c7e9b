//! Helpers shared by the tests of every crate: building ext filesystems with
//! the real `mke2fs`, running the reference tools (`e2image`, `dumpe2fs`,
//! `qemu-img`...) and locating the shared corpus of corrupted images.
//!
//! Helpers panic with the tool's stderr on failure: they are for tests only.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// `../shared/corpus/e2fsprogs-tests` next to the project, if present.
///
/// Tests that need it print why they skip and return when it is absent.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = workspace_root().join("../shared/corpus/e2fsprogs-tests");
    dir.is_dir().then_some(dir)
}

/// Every corpus image as `(name, compressed path)`, sorted by name; empty when
/// the corpus is absent.
pub fn corpus_images() -> Vec<(String, PathBuf)> {
    let Some(dir) = corpus_dir() else {
        eprintln!("skipping: ../shared/corpus is absent");
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("gz" | "bz2")))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, p)
        })
        .collect();
    out.sort();
    out
}

/// Decompresses a corpus image (`.gz` natively, `.bz2` through `bzip2 -dc`)
/// into `dest`.
pub fn decompress(src: &Path, dest: &Path) {
    let bytes = if src.extension().and_then(|e| e.to_str()) == Some("bz2") {
        run(Command::new("bzip2").arg("-dc").arg(src)).stdout
    } else {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(src).expect("open corpus image"))
            .read_to_end(&mut out)
            .expect("gunzip corpus image");
        out
    };
    std::fs::write(dest, bytes).expect("write decompressed image");
}

/// Whether a command exists on `PATH` (or in `/sbin`, `/usr/sbin`).
pub fn have_tool(name: &str) -> bool {
    find_tool(name).is_some()
}

/// The full path of a tool, searching `PATH` and the sbin folders that a
/// non-root `PATH` may lack (e2fsprogs installs there).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/sbin", "/usr/sbin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A `Command` for a reference tool, found with [`find_tool`].
pub fn tool(name: &str) -> Command {
    let path = find_tool(name).unwrap_or_else(|| panic!("{name} is not installed"));
    let mut cmd = Command::new(path);
    // Stable, untranslated output from the reference tools.
    cmd.env("LC_ALL", "C").env("TZ", "UTC");
    cmd
}

/// Runs a command and returns its output; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command and returns its stdout as text; panics if it fails.
pub fn run_text(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Builds an ext filesystem image with the real `mke2fs` on a sparse file.
///
/// `size` is in mke2fs's notation (`"64M"`, `"3T"`); `args` go to mke2fs
/// before the file name (e.g. `["-t", "ext4", "-O", "inline_data"]`);
/// `populate` is copied in with `-d`. The creation time and UUID are left to
/// mke2fs; pass `-U` and `E2FSPROGS_FAKE_TIME` yourself for fixed ones.
pub fn mkfs(path: &Path, size: &str, args: &[&str], populate: Option<&Path>) {
    let _ = std::fs::remove_file(path);
    let mut cmd = tool("mke2fs");
    cmd.arg("-q").arg("-F").args(args);
    if let Some(dir) = populate {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(path).arg(size);
    run(&mut cmd);
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exttest-")
        .tempdir()
        .expect("create temp dir")
}

/// Deterministic pseudo-random bytes (xorshift), for file contents that
/// neither compress nor repeat.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Data segments `(start, end)` of a file, from SEEK_DATA/SEEK_HOLE, rounded
/// out to 4 KiB blocks: how tests compare the holes of two sparse files.
pub fn data_blocks(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let f = std::fs::File::open(path).expect("open file to map");
    let size = f.metadata().expect("stat file to map").len();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(d) = seek(&f, SeekFrom::Data(pos)) else {
            break;
        };
        let h = seek(&f, SeekFrom::Hole(d)).expect("SEEK_HOLE after SEEK_DATA");
        let (s, e) = (d / 4096 * 4096, h.div_ceil(4096) * 4096);
        match out.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
        pos = h;
    }
    out
}

/// A PostgreSQL server of its own for one test: a cluster in a temporary
/// directory owned by `postgres`, on a free loopback port, started with
/// Debian's `initdb`/`pg_ctl` (as `postgres` through `runuser` when the test
/// runs as root: PostgreSQL refuses root). Stopped when dropped.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(bin: &Path, prog: &str) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(prog));
        c
    } else {
        Command::new(bin.join(prog))
    }
}

impl Postgres {
    /// Starts a cluster; `None` (with a message on stderr) when PostgreSQL
    /// is not installed, except under `CI=true`, where that is a failure.
    pub fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            let mut v: Vec<PathBuf> = d
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect();
            v.sort();
            v.into_iter()
                .rev()
                .find(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        });
        let Some(bin) = bin else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql/*/bin) is required in CI"
                );
            }
            eprintln!("skipping the PostgreSQL part: no /usr/lib/postgresql/*/bin/initdb here (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pgtest-")
            .tempdir()
            .expect("create temp dir");
        if Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n")
        {
            run(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        run(as_postgres(&bin, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        run(as_postgres(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-p {port} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=200",
                dir.path().display()
            ))
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "start"]));
        Some(Postgres { bin, dir, port })
    }

    /// Creates database `db` and returns its `postgres://` URL.
    pub fn url(&self, db: &str) -> String {
        run(as_postgres(&self.bin, "createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            db,
        ]));
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL statement with `psql` on database `db`; its unaligned,
    /// tuples-only output (`|` between columns).
    pub fn query(&self, db: &str, sql: &str) -> String {
        run_text(as_postgres(&self.bin, "psql").args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A binary of another package of this workspace, next to the running
/// test's own target directory (`<target>/<profile>/<name>`); built with
/// `cargo build -p <package>` into that target directory when missing
/// (e.g. under `cargo test -p` of a single package).
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    // The test binary is <target>/<profile>/deps/<test>-<hash>.
    let exe = std::env::current_exe().expect("current test binary");
    let deps = exe.parent().expect("deps dir");
    let dir = deps.parent().expect("profile dir").to_path_buf();
    let bin = dir.join(name);
    if !bin.is_file() {
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let target = dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package, "--bin", name])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(workspace_root());
        if profile == "release" {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo build -p {package}: {e}"));
        assert!(st.success(), "cargo build -p {package} failed");
    }
    assert!(bin.is_file(), "no {name} binary at {}", bin.display());
    bin
}
