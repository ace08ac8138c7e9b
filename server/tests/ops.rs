//! Operations on a real `support-server` process and its real CLI, on
//! SQLite, on a PostgreSQL the test starts, and with S3 storage (moto):
//! closing tickets, the closed-ticket retention policy (API, `admin
//! retention run`, and the periodic pass in the server), and listing and
//! reaping expired uploads (API and `admin uploads list|reap`), each checked
//! down to the stored bytes.

mod common;

use common::{Api, Moto, Pg, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

// --------------------------------------------------------------- helpers --

/// Where the server under test keeps image bytes, to check they are gone.
enum Stored<'a> {
    /// `uploads/<id>.part` and `images/<id>.qcow2` under the data directory.
    Local(&'a Path),
    /// `<prefix>/uploads/<id>/...` and `<prefix>/images/<id>.qcow2` in a bucket.
    S3(&'a Moto, &'static str, &'static str),
}

impl Stored<'_> {
    async fn upload(&self, id: &str) -> bool {
        match self {
            Stored::Local(d) => d.join(format!("uploads/{id}.part")).exists(),
            Stored::S3(m, bucket, prefix) => !m
                .list(bucket, &format!("{prefix}/uploads/{id}/"))
                .await
                .is_empty(),
        }
    }

    async fn image(&self, id: &str) -> bool {
        match self {
            Stored::Local(d) => d.join(format!("images/{id}.qcow2")).exists(),
            Stored::S3(m, bucket, prefix) => !m
                .list(bucket, &format!("{prefix}/images/{id}.qcow2"))
                .await
                .is_empty(),
        }
    }
}

/// `support-server ARGS` on the server's state, which must succeed; stdout.
fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "support-server {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn call(api: &Api, method: &str, path: &str, token: &str) -> (u16, Value) {
    api.req(method, path, Some(token), None).await
}

/// Starts an upload of `data` and sends its first `sent` bytes.
async fn start_upload(api: &Api, token: &str, ticket: &str, data: &[u8], sent: usize) -> String {
    let id = api.create(token, ticket, data.len()).await;
    if sent > 0 {
        let (st, v) = api.put(token, &id, 0, &data[..sent]).await;
        assert_eq!(st, 201, "{v}");
    }
    id
}

/// A whole upload in one chunk, then waits until it is analysed (`ready`).
async fn upload_ready(api: &Api, token: &str, admin: &str, ticket: &str, data: &[u8]) -> String {
    let id = api.upload(token, ticket, data, data.len()).await;
    let v = api.wait_done(admin, &id).await;
    assert_eq!(v["status"], "ready", "{v}");
    id
}

async fn status_of(api: &Api, admin: &str, id: &str) -> u16 {
    call(api, "GET", &format!("/api/v1/images/{id}"), admin)
        .await
        .0
}

/// A small ext4 (files, a directory) as `e2image -Q` QCOW2 bytes.
fn fixture(dir: &Path, name: &str) -> Vec<u8> {
    let (_, q) = common::e2image_fixture(dir, name, "4M", 5);
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

// ----------------------------------------------------------------- tests --

/// Upload TTL of the server under test: long enough for a handful of
/// requests to see a fresh upload still fresh, short enough to wait for.
const TTL_SECS: u64 = 4;

/// Where a test's server keeps its bytes.
enum Backend {
    Local,
    S3(Moto),
}

async fn reap_and_retention(db_url: Option<&str>, backend: Backend) {
    let tmp = testkit::tempdir();
    let data = tmp.path().join("data");
    let env = match &backend {
        Backend::Local => Vec::new(),
        Backend::S3(moto) => {
            moto.create_bucket("ops").await;
            moto.env("ops", "site")
        }
    };
    let stored = match &backend {
        Backend::Local => Stored::Local(&data),
        Backend::S3(moto) => Stored::S3(moto, "ops", "site"),
    };
    let old_bytes = fixture(tmp.path(), "old");
    let late_bytes = fixture(tmp.path(), "late");
    let open_bytes = fixture(tmp.path(), "open");
    let ttl = format!("{TTL_SECS}s");
    let server = Server::start_env(
        &data,
        db_url,
        &["--upload-ttl", &ttl, "--workers", "1"],
        &env,
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
            let (st, v) = call(&api, m, p, t).await;
            assert_eq!(st, 403, "{m} {p}: {v}");
        }
    }
    let (st, doc) = call(&api, "GET", "/api/v1/openapi.json", &admin).await;
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
    let stale = start_upload(&api, &up_open, "OPEN-1", &junk, 100_000).await;
    assert!(stored.upload(&stale).await);
    tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 1100)).await;
    let fresh = start_upload(&api, &up_open, "OPEN-1", &junk, 50_000).await;
    let (st, v) = call(&api, "GET", "/api/v1/admin/uploads?expired=true", &admin).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids_in(&v, "uploads"), std::slice::from_ref(&stale), "{v}");
    assert_eq!(v["uploads"][0]["received"], 100_000);
    assert_eq!(v["uploads"][0]["expired"], true);
    let (_, all) = call(&api, "GET", "/api/v1/admin/uploads", &admin).await;
    let all = ids_in(&all, "uploads");
    assert!(all.contains(&stale) && all.contains(&fresh), "{all:?}");
    // The CLI sees the same.
    let listed = cli_ok(&server, &["admin", "uploads", "list", "--expired"]);
    assert!(
        listed.contains(&stale) && !listed.contains(&fresh),
        "{listed}"
    );
    let listed = cli_ok(&server, &["admin", "uploads", "list"]);
    assert!(
        listed.contains(&stale) && listed.contains(&fresh),
        "{listed}"
    );
    // Dry runs change nothing.
    let (st, v) = call(&api, "POST", "/api/v1/admin/reap?dry_run=true", &admin).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (ids_in(&v, "uploads"), &v["dry_run"]),
        (vec![stale.clone()], &json!(true))
    );
    let out = cli_ok(&server, &["admin", "uploads", "reap", "--dry-run"]);
    assert!(out.contains(&format!("would remove {stale}")), "{out}");
    assert!(stored.upload(&stale).await);
    // The real thing.
    let (st, v) = call(&api, "POST", "/api/v1/admin/reap", &admin).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids_in(&v, "uploads"), std::slice::from_ref(&stale), "{v}");
    assert_eq!(v["bytes"], 100_000);
    assert!(!stored.upload(&stale).await, "stored bytes left behind");
    let (st, _) = call(&api, "GET", &format!("/api/v1/uploads/{stale}"), &admin).await;
    assert_eq!(st, 404);
    assert!(stored.upload(&fresh).await);
    let (st, v) = call(&api, "GET", &format!("/api/v1/uploads/{fresh}"), &up_open).await;
    assert_eq!((st, &v["status"]), (200, &json!("uploading")), "{v}");
    // And through the CLI: another upload left to expire.
    let stale2 = start_upload(&api, &up_open, "OPEN-1", &junk, 10_000).await;
    tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 1100)).await;
    let out = cli_ok(&server, &["admin", "uploads", "reap"]);
    assert!(out.contains(&format!("removed {stale2}")), "{out}");
    assert!(!stored.upload(&stale2).await);

    // ---- tickets: closing and reopening, by whom.
    let old_img = upload_ready(&api, &up_old, &admin, "OLD-1", &old_bytes).await;
    let open_img = upload_ready(&api, &up_open, &admin, "OPEN-1", &open_bytes).await;
    let (st, v) = call(&api, "GET", "/api/v1/tickets/OLD-1", &maint).await;
    assert_eq!(
        (st, &v["state"], &v["images"]),
        (200, &json!("open"), &json!(1)),
        "{v}"
    );
    for t in [&up_old, &ts_open] {
        let (st, v) = call(&api, "POST", "/api/v1/tickets/OLD-1/close", t).await;
        assert_eq!(st, 403, "{v}");
    }
    let (st, _) = call(&api, "POST", "/api/v1/tickets/..%2Fx/close", &maint).await;
    assert_eq!(st, 400);
    let (st, v) = call(&api, "POST", "/api/v1/tickets/OLD-1/close", &maint).await;
    assert_eq!((st, &v["state"]), (200, &json!("closed")), "{v}");
    let closed_at = v["closed_at"].clone();
    assert!(
        closed_at.is_string() && v["delete_images_after"].is_null(),
        "{v}"
    );
    // The ticket system closes and reopens a ticket in its scope.
    let (st, v) = call(&api, "POST", "/api/v1/tickets/OPEN-1/close", &ts_open).await;
    assert_eq!((st, &v["state"]), (200, &json!("closed")), "{v}");
    let (st, v) = call(&api, "POST", "/api/v1/tickets/OPEN-1/reopen", &ts_open).await;
    assert_eq!(
        (st, &v["state"], &v["closed_at"]),
        (200, &json!("open"), &Value::Null),
        "{v}"
    );
    // An image uploaded after the closing is kept by the policy.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late_img = upload_ready(&api, &up_old, &admin, "OLD-1", &late_bytes).await;
    // Closing again keeps the first closing time.
    let (_, v) = call(&api, "POST", "/api/v1/tickets/OLD-1/close", &admin).await;
    assert_eq!(v["closed_at"], closed_at);

    // ---- retention: off in this server, so the API refuses ...
    let (st, v) = call(&api, "POST", "/api/v1/admin/retention?dry_run=true", &admin).await;
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
    let dry = cli_ok(&server, &[&policy[..], &["--dry-run"]].concat());
    assert!(dry.contains(&format!("would delete {old_img}")), "{dry}");
    for kept in [&open_img, &late_img] {
        assert!(!dry.contains(kept.as_str()), "{dry}");
    }
    assert!(stored.image(&old_img).await);
    assert_eq!(status_of(&api, &admin, &old_img).await, 200);
    let done = cli_ok(&server, &policy);
    assert!(done.contains(&format!("deleted {old_img}")), "{done}");
    assert_eq!(done.lines().count(), 1, "{done}");
    assert_eq!(status_of(&api, &admin, &old_img).await, 404);
    assert!(!stored.image(&old_img).await, "stored bytes left behind");
    for kept in [&open_img, &late_img] {
        assert_eq!(status_of(&api, &admin, kept).await, 200);
        assert!(stored.image(kept).await);
    }
    let (_, v) = call(&api, "GET", "/api/v1/tickets/OLD-1", &maint).await;
    assert_eq!(
        (&v["state"], &v["images"]),
        (&json!("closed"), &json!(1)),
        "{v}"
    );
    // A second pass finds nothing.
    let again = cli_ok(&server, &policy);
    assert!(again.trim().is_empty(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_and_retention_on_sqlite() {
    reap_and_retention(None, Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_and_retention_on_postgresql() {
    let Some(pg) = Pg::start() else {
        return;
    };
    reap_and_retention(Some(&pg.url("ops")), Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_and_retention_with_s3_storage_on_postgresql() {
    let Some(pg) = Pg::start() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    reap_and_retention(Some(&pg.url("ops")), Backend::S3(moto)).await;
}

/// The server applies the policy by itself: with a retention of 2 s, a
/// closed ticket's image goes within a few seconds, through the API too,
/// and an open ticket's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_applies_retention_periodically() {
    let tmp = testkit::tempdir();
    let a = fixture(tmp.path(), "a");
    let b = fixture(tmp.path(), "b");
    let data = tmp.path().join("data");
    let stored = Stored::Local(&data);
    let server = Server::start(
        &data,
        None,
        &["--closed-ticket-retention", "2s", "--workers", "1"],
    );
    let api = Api::new(&server.url);
    let admin = server.bootstrap_token();
    let up_a = api.token(&admin, "uploader", Some("A-1")).await;
    let up_b = api.token(&admin, "uploader", Some("B-1")).await;
    let img_a = upload_ready(&api, &up_a, &admin, "A-1", &a).await;
    let img_b = upload_ready(&api, &up_b, &admin, "B-1", &b).await;
    let (st, v) = call(&api, "POST", "/api/v1/tickets/A-1/close", &admin).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["delete_images_after"].is_string(), "{v}");
    // The admin API's dry run shows it once due (and deletes nothing).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, v) = call(&api, "POST", "/api/v1/admin/retention?dry_run=true", &admin).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["closed_ticket_retention_secs"], 2);
    let listed = ids_in(&v, "images");
    assert!(!listed.contains(&img_b), "{v}");
    let t0 = Instant::now();
    while status_of(&api, &admin, &img_a).await != 404 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not apply retention:\n{}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!stored.image(&img_a).await);
    assert_eq!(status_of(&api, &admin, &img_b).await, 200);
    assert!(stored.image(&img_b).await);
}
