//! Operations on a real `support-server` process and its real CLI, on
//! SQLite and on a PostgreSQL the test starts: closing tickets, the
//! closed-ticket retention policy (API, `admin retention run`, and the
//! periodic pass in the server), and listing and reaping expired uploads
//! (API and `admin uploads list|reap`), with their stored bytes.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- server --

struct Server {
    child: Child,
    url: String,
    data: PathBuf,
    db_url: Option<String>,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `serve` on 127.0.0.1:0; waits for its "listening" line.
    fn start(data: &Path, db_url: Option<&str>, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_support-server"));
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("SUPPORT_CLOSED_TICKET_RETENTION")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(u) = db_url {
            cmd.env("DATABASE_URL", u);
        }
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
            log,
        }
    }

    /// The admin token printed at first start.
    fn bootstrap_token(&self) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log.lock().unwrap().clone();
            if let Some(t) = log.lines().map(str::trim).find(|l| l.starts_with("sst_")) {
                return t.to_string();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no token:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `support-server ARGS` on the same database and data directory.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_support-server"));
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("SUPPORT_CLOSED_TICKET_RETENTION");
        if let Some(u) = &self.db_url {
            cmd.env("DATABASE_URL", u);
        }
        cmd.output().expect("run support-server")
    }

    /// `cli`, which must succeed; its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "support-server {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn image_file(&self, id: &str) -> PathBuf {
        self.data.join(format!("images/{id}.qcow2"))
    }

    fn part_file(&self, id: &str) -> PathBuf {
        self.data.join(format!("uploads/{id}.part"))
    }
}

// ------------------------------------------------------------------ http --

struct Api {
    c: reqwest::Client,
    url: String,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Api {
    fn new(url: &str) -> Api {
        Api {
            c: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: url.to_string(),
        }
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .c
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(token);
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

    async fn token(&self, admin: &str, role: &str, ticket: Option<&str>) -> String {
        let (st, v) = self
            .req(
                "POST",
                "/api/v1/tokens",
                admin,
                Some(json!({"role": role, "ticket": ticket, "name": format!("test {role}")})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Starts an upload of `size` bytes and sends its first `sent` bytes.
    async fn start_upload(&self, token: &str, ticket: &str, data: &[u8], sent: usize) -> String {
        let (st, v) = self
            .req(
                "POST",
                "/api/v1/uploads",
                token,
                Some(json!({"ticket": ticket, "size": data.len()})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        if sent > 0 {
            let part = &data[..sent];
            let resp = self
                .c
                .put(format!("{}/api/v1/uploads/{id}/chunks/0", self.url))
                .bearer_auth(token)
                .header("x-chunk-sha256", sha(part))
                .body(part.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
        }
        id
    }

    /// A whole upload, then waits until it is analysed (`ready`).
    async fn upload_ready(&self, token: &str, admin: &str, ticket: &str, data: &[u8]) -> String {
        let id = self.start_upload(token, ticket, data, data.len()).await;
        let (st, v) = self
            .req(
                "POST",
                &format!("/api/v1/uploads/{id}/complete"),
                token,
                Some(json!({"sha256": sha(data)})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let t0 = Instant::now();
        loop {
            let (st, v) = self
                .req("GET", &format!("/api/v1/images/{id}"), admin, None)
                .await;
            assert_eq!(st, 200, "{v}");
            if v["status"] == "ready" {
                return id;
            }
            assert_ne!(v["status"], "failed", "{v}");
            assert!(t0.elapsed() < Duration::from_secs(60), "stuck: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status_of(&self, admin: &str, id: &str) -> u16 {
        self.req("GET", &format!("/api/v1/images/{id}"), admin, None)
            .await
            .0
    }
}

/// A small ext4 (files, a directory) as `e2image -Q` QCOW2 bytes.
fn fixture(dir: &Path, name: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..5 {
        std::fs::write(src.join(format!("f{i}")), format!("{name} {i}\n")).unwrap();
    }
    let img = dir.join(format!("{name}.img"));
    testkit::mkfs(&img, "4M", &["-t", "ext4", "-L", name], Some(&src));
    let q = dir.join(format!("{name}.qcow2"));
    testkit::run(testkit::tool("e2image").arg("-Q").arg(&img).arg(&q));
    std::fs::read(q).unwrap()
}

fn ids_in(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------ postgresql --

/// A PostgreSQL of its own on a free loopback port (stopped on drop).
struct Pg {
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

impl Pg {
    fn start() -> Option<Pg> {
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
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "PostgreSQL is required in CI"
            );
            eprintln!("skipping the PostgreSQL part: no /usr/lib/postgresql/*/bin/initdb");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("pgtest-")
            .tempdir()
            .unwrap();
        testkit::run(
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path()),
        );
        let data = dir.path().join("data");
        testkit::run(
            as_postgres(&bin, "initdb")
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
                .arg(&data),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        testkit::run(
            as_postgres(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -h 127.0.0.1 -k {} -c fsync=off",
                    dir.path().display()
                ))
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "start"]),
        );
        Some(Pg { bin, dir, port })
    }

    fn url(&self, db: &str) -> String {
        testkit::run(as_postgres(&self.bin, "createdb").args([
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
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

// ----------------------------------------------------------------- tests --

/// Upload TTL of the server under test: long enough for a handful of
/// requests to see a fresh upload still fresh, short enough to wait for.
const TTL_SECS: u64 = 4;

async fn reap_and_retention(db_url: Option<&str>) {
    let tmp = testkit::tempdir();
    let old_bytes = fixture(tmp.path(), "old");
    let late_bytes = fixture(tmp.path(), "late");
    let open_bytes = fixture(tmp.path(), "open");
    let ttl = format!("{TTL_SECS}s");
    let server = Server::start(
        &tmp.path().join("data"),
        db_url,
        &["--upload-ttl", &ttl, "--workers", "1"],
    );
    let api = Api::new(&server.url);
    let admin = server.bootstrap_token();
    let maint = api.token(&admin, "maintainer", None).await;
    let ts_open = api.token(&admin, "ticket-system", Some("OPEN-*")).await;
    let up_old = api.token(&admin, "uploader", Some("OLD-1")).await;
    let up_open = api.token(&admin, "uploader", Some("OPEN-1")).await;

    // Only admins reach the admin API.
    for t in [&maint, &ts_open, &up_old] {
        for (m, p) in [
            ("GET", "/api/v1/admin/uploads?expired=true"),
            ("POST", "/api/v1/admin/reap"),
            ("POST", "/api/v1/admin/retention?dry_run=true"),
        ] {
            let (st, v) = api.req(m, p, t, None).await;
            assert_eq!(st, 403, "{m} {p}: {v}");
        }
    }
    let (st, doc) = api.req("GET", "/api/v1/openapi.json", &admin, None).await;
    assert_eq!(st, 200);
    for p in [
        "/api/v1/admin/uploads",
        "/api/v1/admin/reap",
        "/api/v1/admin/retention",
        "/api/v1/tickets/{ticket}/close",
        "/api/v1/tickets/{ticket}/reopen",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI doc"
        );
    }

    // ---- expired uploads: an abandoned one is listed and reaped with its
    // bytes; a fresh one is neither.
    let junk = testkit::noise(7, 300_000);
    let stale = api.start_upload(&up_open, "OPEN-1", &junk, 100_000).await;
    assert!(server.part_file(&stale).exists());
    tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 1100)).await;
    let fresh = api.start_upload(&up_open, "OPEN-1", &junk, 50_000).await;
    let (st, v) = api
        .req("GET", "/api/v1/admin/uploads?expired=true", &admin, None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids_in(&v, "uploads"), std::slice::from_ref(&stale), "{v}");
    assert_eq!(v["uploads"][0]["received"], 100_000);
    assert_eq!(v["uploads"][0]["expired"], true);
    let (_, all) = api.req("GET", "/api/v1/admin/uploads", &admin, None).await;
    let all = ids_in(&all, "uploads");
    assert!(all.contains(&stale) && all.contains(&fresh), "{all:?}");
    // The CLI sees the same.
    let listed = server.cli_ok(&["admin", "uploads", "list", "--expired"]);
    assert!(
        listed.contains(&stale) && !listed.contains(&fresh),
        "{listed}"
    );
    let listed = server.cli_ok(&["admin", "uploads", "list"]);
    assert!(
        listed.contains(&stale) && listed.contains(&fresh),
        "{listed}"
    );
    // Dry runs change nothing.
    let (st, v) = api
        .req("POST", "/api/v1/admin/reap?dry_run=true", &admin, None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (ids_in(&v, "uploads"), &v["dry_run"]),
        (vec![stale.clone()], &json!(true))
    );
    let out = server.cli_ok(&["admin", "uploads", "reap", "--dry-run"]);
    assert!(out.contains(&format!("would remove {stale}")), "{out}");
    assert!(server.part_file(&stale).exists());
    // The real thing.
    let (st, v) = api.req("POST", "/api/v1/admin/reap", &admin, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids_in(&v, "uploads"), std::slice::from_ref(&stale), "{v}");
    assert_eq!(v["bytes"], 100_000);
    assert!(
        !server.part_file(&stale).exists(),
        "stored bytes left behind"
    );
    let (st, _) = api
        .req("GET", &format!("/api/v1/uploads/{stale}"), &admin, None)
        .await;
    assert_eq!(st, 404);
    assert!(server.part_file(&fresh).exists());
    let (st, v) = api
        .req("GET", &format!("/api/v1/uploads/{fresh}"), &up_open, None)
        .await;
    assert_eq!((st, &v["status"]), (200, &json!("uploading")), "{v}");
    // And through the CLI: another upload left to expire.
    let stale2 = api.start_upload(&up_open, "OPEN-1", &junk, 10_000).await;
    tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 1100)).await;
    let out = server.cli_ok(&["admin", "uploads", "reap"]);
    assert!(out.contains(&format!("removed {stale2}")), "{out}");
    assert!(!server.part_file(&stale2).exists());

    // ---- tickets: closing and reopening, by whom.
    let old_img = api.upload_ready(&up_old, &admin, "OLD-1", &old_bytes).await;
    let open_img = api
        .upload_ready(&up_open, &admin, "OPEN-1", &open_bytes)
        .await;
    let (st, v) = api.req("GET", "/api/v1/tickets/OLD-1", &maint, None).await;
    assert_eq!(
        (st, &v["state"], &v["images"]),
        (200, &json!("open"), &json!(1)),
        "{v}"
    );
    for t in [&up_old, &ts_open] {
        let (st, v) = api
            .req("POST", "/api/v1/tickets/OLD-1/close", t, None)
            .await;
        assert_eq!(st, 403, "{v}");
    }
    let (st, _) = api
        .req("POST", "/api/v1/tickets/..%2Fx/close", &maint, None)
        .await;
    assert_eq!(st, 400);
    let (st, v) = api
        .req("POST", "/api/v1/tickets/OLD-1/close", &maint, None)
        .await;
    assert_eq!((st, &v["state"]), (200, &json!("closed")), "{v}");
    let closed_at = v["closed_at"].clone();
    assert!(
        closed_at.is_string() && v["delete_images_after"].is_null(),
        "{v}"
    );
    // The ticket system closes and reopens a ticket in its scope.
    let (st, v) = api
        .req("POST", "/api/v1/tickets/OPEN-1/close", &ts_open, None)
        .await;
    assert_eq!((st, &v["state"]), (200, &json!("closed")), "{v}");
    let (st, v) = api
        .req("POST", "/api/v1/tickets/OPEN-1/reopen", &ts_open, None)
        .await;
    assert_eq!(
        (st, &v["state"], &v["closed_at"]),
        (200, &json!("open"), &Value::Null),
        "{v}"
    );
    // An image uploaded after the closing is kept by the policy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late_img = api
        .upload_ready(&up_old, &admin, "OLD-1", &late_bytes)
        .await;
    // Closing again keeps the first closing time.
    let (_, v) = api
        .req("POST", "/api/v1/tickets/OLD-1/close", &admin, None)
        .await;
    assert_eq!(v["closed_at"], closed_at);

    // ---- retention: off in this server, so the API refuses ...
    let (st, v) = api
        .req("POST", "/api/v1/admin/retention?dry_run=true", &admin, None)
        .await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (409, &json!("retention_off")),
        "{v}"
    );
    let out = server.cli(&["admin", "retention", "run"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed-ticket-retention"));
    // ... and the CLI runs the policy given to it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let policy = [
        "admin",
        "--closed-ticket-retention",
        "1s",
        "retention",
        "run",
    ];
    let dry = server.cli_ok(&[&policy[..], &["--dry-run"]].concat());
    assert!(dry.contains(&format!("would delete {old_img}")), "{dry}");
    for kept in [&open_img, &late_img] {
        assert!(!dry.contains(kept.as_str()), "{dry}");
    }
    assert!(server.image_file(&old_img).exists());
    assert_eq!(api.status_of(&admin, &old_img).await, 200);
    let done = server.cli_ok(&policy);
    assert!(done.contains(&format!("deleted {old_img}")), "{done}");
    assert_eq!(done.lines().count(), 1, "{done}");
    assert_eq!(api.status_of(&admin, &old_img).await, 404);
    assert!(
        !server.image_file(&old_img).exists(),
        "stored bytes left behind"
    );
    for kept in [&open_img, &late_img] {
        assert_eq!(api.status_of(&admin, kept).await, 200);
        assert!(server.image_file(kept).exists());
    }
    let (_, v) = api.req("GET", "/api/v1/tickets/OLD-1", &maint, None).await;
    assert_eq!(
        (&v["state"], &v["images"]),
        (&json!("closed"), &json!(1)),
        "{v}"
    );
    // A second pass finds nothing.
    let again = server.cli_ok(&policy);
    assert!(again.trim().is_empty(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_and_retention_on_sqlite() {
    reap_and_retention(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_and_retention_on_postgresql() {
    let Some(pg) = Pg::start() else {
        return;
    };
    reap_and_retention(Some(&pg.url("ops"))).await;
}

/// The server applies the policy by itself: with a retention of 2 s, a
/// closed ticket's image goes within a few seconds, through the API too,
/// and an open ticket's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_applies_retention_periodically() {
    let tmp = testkit::tempdir();
    let a = fixture(tmp.path(), "a");
    let b = fixture(tmp.path(), "b");
    let server = Server::start(
        &tmp.path().join("data"),
        None,
        &["--closed-ticket-retention", "2s", "--workers", "1"],
    );
    let api = Api::new(&server.url);
    let admin = server.bootstrap_token();
    let up_a = api.token(&admin, "uploader", Some("A-1")).await;
    let up_b = api.token(&admin, "uploader", Some("B-1")).await;
    let img_a = api.upload_ready(&up_a, &admin, "A-1", &a).await;
    let img_b = api.upload_ready(&up_b, &admin, "B-1", &b).await;
    let (st, v) = api
        .req("POST", "/api/v1/tickets/A-1/close", &admin, None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["delete_images_after"].is_string(), "{v}");
    // The admin API's dry run shows it once due (and deletes nothing).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, v) = api
        .req("POST", "/api/v1/admin/retention?dry_run=true", &admin, None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["closed_ticket_retention_secs"], 2);
    let listed = ids_in(&v, "images");
    assert!(!listed.contains(&img_b), "{v}");
    let t0 = Instant::now();
    while api.status_of(&admin, &img_a).await != 404 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not apply retention:\n{}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!server.image_file(&img_a).exists());
    assert_eq!(api.status_of(&admin, &img_b).await, 200);
    assert!(server.image_file(&img_b).exists());
}
