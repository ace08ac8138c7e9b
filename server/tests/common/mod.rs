//! Helpers shared by the integration tests that start the real
//! `support-server` binary: the server process, a small HTTP API client,
//! image fixtures and their oracles (`e2image -Q`, `qemu-img convert`,
//! `inspect`), a PostgreSQL of the test's own and an S3-protocol server
//! (moto). Each test file uses only some of them.
#![allow(dead_code)]

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- server --

/// A `support-server serve` process; killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub db_url: Option<String>,
    /// Extra environment (e.g. the S3 storage settings), kept for restarts
    /// and `cli`.
    pub env: Vec<(String, String)>,
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 and waits for its "listening" line.
    pub fn start(data: &Path, db_url: Option<&str>, extra: &[&str]) -> Server {
        Server::start_env(data, db_url, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_env(
        data: &Path,
        db_url: Option<&str>,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_support-server"));
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0", "--job-lease", "5s"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(u) = db_url {
            cmd.env("DATABASE_URL", u);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("start support-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("support-server: listening on ") {
                    let _ = tx.send(u.to_string());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start:\n{}", log.lock().unwrap()));
        Server {
            child,
            url,
            data: data.to_path_buf(),
            db_url: db_url.map(str::to_string),
            env: env.to_vec(),
            log,
        }
    }

    /// The admin token printed at first start.
    pub fn bootstrap_token(&self) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log.lock().unwrap().clone();
            if let Some(t) = log.lines().map(str::trim).find(|l| l.starts_with("sst_")) {
                return t.to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no bootstrap token:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `support-server token ...` on the same state.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_support-server"));
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("DATABASE_URL");
        if let Some(u) = &self.db_url {
            cmd.env("DATABASE_URL", u);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("run support-server")
    }

    /// Starts a new process on the same state; the old one must be dead
    /// or is killed.
    pub fn restart(&mut self) {
        let new = Server::start_env(
            &self.data.clone(),
            self.db_url.clone().as_deref(),
            &[],
            &self.env.clone(),
        );
        drop(std::mem::replace(self, new));
    }
}

// ------------------------------------------------------------------ http --

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub struct Api {
    pub c: reqwest::Client,
    pub url: String,
}

impl Api {
    pub fn new(url: &str) -> Api {
        Api {
            c: client(),
            url: url.to_string(),
        }
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.c.request(m, format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.req("GET", path, Some(token), None).await
    }

    pub async fn bytes(&self, path: &str, token: &str, range: Option<&str>) -> (u16, Vec<u8>) {
        let mut r = self.c.get(format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(rg) = range {
            r = r.header("range", rg);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    pub async fn token(&self, admin: &str, role: &str, ticket: Option<&str>) -> String {
        let (st, v) = self
            .req(
                "POST",
                "/api/v1/tokens",
                Some(admin),
                Some(json!({"role": role, "ticket": ticket, "name": format!("test {role}")})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub async fn create(&self, token: &str, ticket: &str, size: usize) -> String {
        let (st, v) = self
            .req(
                "POST",
                "/api/v1/uploads",
                Some(token),
                Some(json!({"ticket": ticket, "size": size})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn put(&self, token: &str, id: &str, off: usize, b: &[u8]) -> (u16, Value) {
        self.put_with(token, id, off, b, &sha(b)).await
    }

    pub async fn put_with(
        &self,
        token: &str,
        id: &str,
        off: usize,
        b: &[u8],
        h: &str,
    ) -> (u16, Value) {
        let resp = self
            .c
            .put(format!("{}/api/v1/uploads/{id}/chunks/{off}", self.url))
            .bearer_auth(token)
            .header("x-chunk-sha256", h)
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        (st, resp.json().await.unwrap_or_default())
    }

    pub async fn complete(&self, token: &str, id: &str, whole: &str) -> (u16, Value) {
        self.req(
            "POST",
            &format!("/api/v1/uploads/{id}/complete"),
            Some(token),
            Some(json!({"sha256": whole})),
        )
        .await
    }

    /// Whole upload in order, one chunk size.
    pub async fn upload(&self, token: &str, ticket: &str, data: &[u8], chunk: usize) -> String {
        let id = self.create(token, ticket, data.len()).await;
        for (i, part) in data.chunks(chunk).enumerate() {
            let (st, v) = self.put(token, &id, i * chunk, part).await;
            assert_eq!(st, 201, "{v}");
        }
        let (st, v) = self.complete(token, &id, &sha(data)).await;
        assert_eq!(st, 200, "{v}");
        id
    }

    pub async fn wait_done(&self, token: &str, id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let (st, v) = self.get(&format!("/api/v1/images/{id}"), token).await;
            assert_eq!(st, 200, "{v}");
            if v["status"] == "ready" || v["status"] == "failed" {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "image stuck: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// -------------------------------------------------------------- fixtures --

/// A small ext4 with files, directories and a symlink, as `e2image -Q`
/// QCOW2; returns (raw fs, qcow2).
pub fn e2image_fixture(dir: &Path, name: &str, size: &str, files: usize) -> (PathBuf, PathBuf) {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..files {
        std::fs::write(
            src.join(format!("file{i}.txt")),
            format!("{name} {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    std::fs::write(src.join("sub/deeper/leaf"), b"leaf").unwrap();
    std::os::unix::fs::symlink("sub/deeper/leaf", src.join("link")).unwrap();
    let img = dir.join(format!("{name}.img"));
    testkit::mkfs(&img, size, &["-t", "ext4", "-L", name], Some(&src));
    let q = dir.join(format!("{name}.qcow2"));
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&img).arg(&q));
    (img, q)
}

/// What `support-agent inspect --json` prints for an image (computed with
/// the same library call the agent makes).
pub fn inspect(path: &Path) -> Value {
    let src = extfs::source::open_path(path).unwrap();
    let fs = extfs::fs::Filesystem::open(src).unwrap();
    serde_json::to_value(extfs::analysis::inspect(&fs)).unwrap()
}

pub fn qemu_raw(q: &Path, out: &Path) -> Vec<u8> {
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(q)
            .arg(out),
    );
    std::fs::read(out).unwrap()
}

/// Deterministic shuffle (no rand dependency in tests).
pub fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

// ------------------------------------------------------------ postgresql --

/// A PostgreSQL server of its own for one test (see `testkit::Postgres`).
#[allow(unused_imports)] // not every test file uses it
pub use testkit::Postgres as Pg;

// -------------------------------------------------------------------- s3 --

/// An S3-protocol server of the test's own: moto's server mode on a free
/// loopback port; stopped on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// `None` (with a message) when moto is not installed, except in CI,
    /// where that is a failure.
    pub fn start() -> Option<Moto> {
        let have = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !have {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("moto's S3 server (python3 -m moto.server) is required in CI");
            }
            eprintln!("skipping the S3 test: python3 cannot import moto.server (pip install 'moto[server]')");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Creates a bucket (moto does not check signatures).
    pub async fn create_bucket(&self, bucket: &str) {
        let r = client()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Keys under `prefix` in `bucket` (one listing page is plenty here).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = client()
            .get(format!("{}/{bucket}", self.endpoint))
            .query(&[("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "list: {}", r.status());
        let xml = r.text().await.unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// The environment that makes `support-server` store images in
    /// `bucket` here.
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("SUPPORT_STORAGE", "s3"),
            ("SUPPORT_S3_BUCKET", bucket),
            ("SUPPORT_S3_ENDPOINT", &self.endpoint),
            ("SUPPORT_S3_REGION", "us-east-1"),
            ("SUPPORT_S3_ALLOW_HTTP", "true"),
            ("SUPPORT_S3_PREFIX", prefix),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// A counter or gauge from a server's `/metrics`.
pub async fn metric(url: &str, name: &str) -> u64 {
    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

// -------------------------------------------------------------- replicas --

/// The image store replicas share: a bucket in moto's S3 server when
/// python3 can import it (always in CI), else one local data directory for
/// all (said on stderr).
pub struct SharedStore {
    moto: Option<Moto>,
    bucket: String,
}

impl SharedStore {
    /// Starts moto and creates `bucket`, or falls back to local storage.
    pub async fn start(bucket: &str) -> SharedStore {
        let moto = Moto::start();
        match &moto {
            Some(m) => m.create_bucket(bucket).await,
            None => eprintln!("replicas share one local data directory instead"),
        }
        SharedStore {
            moto,
            bucket: bucket.to_string(),
        }
    }

    /// `s3` or `local`.
    pub fn kind(&self) -> &'static str {
        if self.moto.is_some() {
            "s3"
        } else {
            "local"
        }
    }

    /// Environment of a replica using it.
    pub fn env(&self) -> Vec<(String, String)> {
        match &self.moto {
            Some(m) => m.env(&self.bucket, "replicas"),
            None => Vec::new(),
        }
    }

    /// Data directory of replica `n` under `base`: its own with S3 (so
    /// nothing local is shared), the shared one otherwise.
    pub fn data_dir(&self, base: &Path, n: usize) -> PathBuf {
        match &self.moto {
            Some(_) => base.join(format!("replica{n}")),
            None => base.join("shared"),
        }
    }

    /// Starts replica `n` on `db_url` with `extra` flags.
    pub fn replica(&self, base: &Path, n: usize, db_url: &str, extra: &[&str]) -> Server {
        Server::start_env(&self.data_dir(base, n), Some(db_url), extra, &self.env())
    }
}

/// Two replicas (same flags) on one database and one image store, started
/// at the same time.
pub fn two_replicas(
    store: &SharedStore,
    base: &Path,
    db_url: &str,
    extra: &[&str],
) -> (Server, Server) {
    let start = |n: usize| {
        let (d, u, e, env) = (
            store.data_dir(base, n),
            db_url.to_string(),
            extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            store.env(),
        );
        std::thread::spawn(move || {
            let e: Vec<&str> = e.iter().map(String::as_str).collect();
            Server::start_env(&d, Some(&u), &e, &env)
        })
    };
    let (a, b) = (start(0), start(1));
    (a.join().unwrap(), b.join().unwrap())
}

/// Bootstrap admin tokens a replica printed.
pub fn printed_tokens(s: &Server) -> Vec<String> {
    s.log
        .lock()
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("sst_"))
        .map(str::to_string)
        .collect()
}
