//! Shared by agent/tests/collect.rs and upload.rs: a real `support-server`
//! on a loopback port with a fresh data dir, tokens made with its own CLI,
//! a throttling / connection-dropping TCP proxy, and test filesystems.
//!
//! The server binary is the `support-server` package's bin in the same
//! target dir as this test's `support-agent` (derived from
//! `CARGO_BIN_EXE_support-agent`); `cargo test --workspace` builds it, and
//! when it is missing (e.g. `cargo test -p support-agent`) it is built once
//! with `cargo build -p support-server` into that same target dir.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The agent binary.
pub fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_support-agent"));
    // Never pick up the developer's own configuration.
    c.env_remove("SUPPORT_SERVER")
        .env_remove("SUPPORT_TOKEN")
        .env_remove("SUPPORT_TICKET")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env("NO_PROXY", "127.0.0.1")
        .env("XDG_CONFIG_HOME", "/nonexistent-support-agent-test");
    c
}

/// The server binary, built when missing.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let agent = PathBuf::from(env!("CARGO_BIN_EXE_support-agent"));
        let dir = agent.parent().expect("bin dir").to_path_buf();
        let bin = dir.join("support-server");
        if !bin.is_file() {
            // <target>/<profile>/support-agent
            let profile = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("debug")
                .to_string();
            let target = dir.parent().expect("target dir");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "support-server", "--bin", "support-server"])
                .env("CARGO_TARGET_DIR", target)
                .current_dir(testkit::workspace_root());
            if profile == "release" {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build -p support-server");
            assert!(st.success(), "cargo build -p support-server failed");
        }
        assert!(
            bin.is_file(),
            "no support-server binary at {}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running (or stopped) support-server.
pub struct Server {
    pub data: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server with a fresh data dir; `extra` flags go to `serve`.
    pub fn start(extra: &[&str]) -> Server {
        let mut s = Server {
            data: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.restart();
        s
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("server.log"))
            .expect("log");
        let child = Command::new(server_bin())
            .arg("--data-dir")
            .arg(self.data.path().join("d"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start support-server");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok(r) = http().get(format!("{}/healthz", self.url())).send() {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// A new token.
    pub fn token(&self, role: &str, ticket: Option<&str>) -> String {
        let mut c = Command::new(server_bin());
        c.arg("--data-dir")
            .arg(self.data.path().join("d"))
            .args(["token", "create", "--role", role, "--name", "test"]);
        if let Some(t) = ticket {
            c.args(["--ticket", t]);
        }
        let out = c.output().expect("token create");
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// GET a JSON document with `token`.
    pub fn get_json(&self, path: &str, token: &str) -> serde_json::Value {
        let r = http()
            .get(format!("{}{}", self.url(), path))
            .bearer_auth(token)
            .send()
            .expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().expect("json")
    }

    /// Waits until the image leaves `queued`/`analyzing`; returns it.
    pub fn wait_ready(&self, id: &str, token: &str) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let img = self.get_json(&format!("/api/v1/images/{id}"), token);
            let st = img["status"].as_str().unwrap_or("").to_string();
            if st == "ready" || st == "failed" {
                return img;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "image stuck in {st}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client for the tests.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A TCP proxy in front of the server: throttles the client -> server
/// direction to `rate` bytes/s (0: unthrottled) and cuts every connection
/// after `drop_every` bytes (0: never). Counts what it forwarded upstream.
pub struct Proxy {
    pub port: u16,
    pub upstream_bytes: Arc<AtomicU64>,
    pub cuts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub rate: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts the proxy to `127.0.0.1:target`.
    pub fn start(target: u16, rate: u64, drop_every: u64) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(rate));
        let (ub, c2, s2, r2) = (
            upstream_bytes.clone(),
            cuts.clone(),
            stop.clone(),
            rate.clone(),
        );
        // One token bucket shared by all connections.
        let bucket = Arc::new(Mutex::new((Instant::now(), 0u64)));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue; // server down: the client sees a reset
                };
                let (ub, c2, r2, bucket) = (ub.clone(), c2.clone(), r2.clone(), bucket.clone());
                std::thread::spawn(move || pump(client, server, ub, c2, r2, bucket, drop_every));
            }
        });
        Proxy {
            port,
            upstream_bytes,
            cuts,
            stop,
            rate,
        }
    }

    /// Base URL through the proxy.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(
    client: TcpStream,
    server: TcpStream,
    ub: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    rate: Arc<AtomicU64>,
    bucket: Arc<Mutex<(Instant, u64)>>,
    drop_every: u64,
) {
    let (Ok(mut c_r), Ok(mut s_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (Ok(mut s_r), Ok(mut c_w)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let down = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = s_r.read(&mut buf) {
            if n == 0 || c_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_w.shutdown(Shutdown::Both);
    });
    let mut buf = vec![0u8; 16 << 10];
    let mut this_conn = 0u64;
    loop {
        let n = match c_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let r = rate.load(Ordering::Relaxed);
        if r > 0 {
            // Wait until the shared bucket allows n more bytes.
            loop {
                let wait = {
                    let mut b = bucket.lock().unwrap();
                    let allowed = (b.0.elapsed().as_secs_f64() * r as f64) as u64;
                    if b.1 + n as u64 <= allowed {
                        b.1 += n as u64;
                        None
                    } else {
                        Some(Duration::from_millis(5))
                    }
                };
                match wait {
                    None => break,
                    Some(d) => std::thread::sleep(d),
                }
            }
        }
        if s_w.write_all(&buf[..n]).is_err() {
            break;
        }
        ub.fetch_add(n as u64, Ordering::Relaxed);
        this_conn += n as u64;
        if drop_every > 0 && this_conn >= drop_every {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = down.join();
}

/// Whether the reference tools are here.
pub fn have_tools() -> bool {
    let ok = testkit::have_tool("mke2fs");
    if !ok {
        eprintln!("skipping: mke2fs missing");
    }
    ok
}

/// A small ext4 filesystem with `files` files of long random-looking names
/// (directory blocks that compress poorly, so the image has some size).
pub fn make_fs(dir: &Path, size: &str, files: usize) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..files {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = format!("f{i:06}_{x:016x}{:016x}", x.rotate_left(29));
        std::fs::write(root.join("d").join(name), b"").unwrap();
    }
    std::fs::write(root.join("hello.txt"), b"hello").unwrap();
    let img = dir.join("fs.img");
    testkit::mkfs(
        &img,
        size,
        &["-q", "-t", "ext4", "-N", &(files + 2048).to_string()],
        Some(&root),
    );
    std::fs::remove_dir_all(&root).unwrap();
    img
}

/// Options that make `collect` run here: the default (scrambled) when this
/// build can scramble, else `--no-scramble` (said on stderr).
pub fn scramble_flags(fs_img: &Path) -> Vec<&'static str> {
    let out = agent()
        .arg("collect")
        .arg(fs_img)
        .args(["--dry-run", "--quiet"])
        .output()
        .expect("dry run");
    if out.status.success() {
        vec![]
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("scrambl"), "dry run failed: {err}");
        eprintln!("note: this build cannot scramble yet; testing with --no-scramble");
        vec!["--no-scramble"]
    }
}

/// Runs the agent, returning (status ok, stdout JSON if any, stderr).
pub fn run_agent(cmd: &mut Command) -> (bool, serde_json::Value, String) {
    let out = cmd.output().expect("run agent");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The upload id recorded in the state dir (the only state file).
pub fn state_upload_id(state_dir: &Path) -> Option<String> {
    for e in std::fs::read_dir(state_dir).ok()? {
        let p = e.ok()?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
            return v["upload_id"].as_str().map(str::to_string);
        }
    }
    None
}

/// Every file under `dir` with its size.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(m) = p.metadata() {
            out.push((p, m.len()));
        }
    }
    out
}

/// Waits (up to 60 s) until a running agent has recorded its upload id in
/// the state directory, and returns it.
pub fn wait_upload_id(state_dir: &Path) -> String {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(id) = state_upload_id(state_dir) {
            return id;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the agent recorded no upload id within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
