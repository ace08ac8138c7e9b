//! The real `support-server` binary on a loopback port with a fresh data
//! dir, driven over HTTP, on SQLite and on a real PostgreSQL the test starts
//! itself. The oracles: `e2image -Q` builds the images, `qemu-img convert`
//! gives the raw view, the `extfs` library's `inspect` (what `support-agent
//! inspect --json` prints) gives the analyses.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ----------------------------------------------------------------- story --

/// The whole story on one backend: roles, a shuffled concurrent upload with
/// re-sends, the pipeline, results equal to `inspect`, raw equal to
/// `qemu-img convert`, triage, webhooks-free listing, bad input.
async fn story(db_url: Option<&str>) {
    let tmp = testkit::tempdir();
    let server = Server::start(&tmp.path().join("data"), db_url, &[]);
    let api = Api::new(&server.url);
    let admin = server.bootstrap_token();

    let maint = api.token(&admin, "maintainer", None).await;
    let ts = api.token(&admin, "ticket-system", Some("CASE-*")).await;
    let other_ts = api.token(&admin, "ticket-system", Some("OTHER-*")).await;
    // The ticket system grants an uploader token for its ticket.
    let (st, g) = api
        .req(
            "POST",
            "/api/v1/grants",
            Some(&ts),
            Some(json!({"ticket": "CASE-1", "name": "customer"})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let up = g["token"].as_str().unwrap().to_string();
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/grants",
            Some(&ts),
            Some(json!({"ticket": "OTHER-1"})),
        )
        .await;
    assert_eq!(st, 403, "a ticket system grants only inside its scope");
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/grants",
            Some(&up),
            Some(json!({"ticket": "CASE-1"})),
        )
        .await;
    assert_eq!(st, 403, "uploaders cannot grant");
    let up_other = api.token(&admin, "uploader", Some("CASE-2")).await;

    // The image: e2image -Q of a small ext4.
    let (img, q) = e2image_fixture(tmp.path(), "story", "24M", 20);
    let data = std::fs::read(&q).unwrap();
    let whole = sha(&data);

    // Create: uploader without ticket = its own; another ticket is refused.
    let (st, v) = api
        .req(
            "POST",
            "/api/v1/uploads",
            Some(&up),
            Some(json!({"size": data.len()})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["ticket"], "CASE-1");
    assert_eq!(v["limits"]["hash"], "sha256");
    let id = v["id"].as_str().unwrap().to_string();
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/uploads",
            Some(&up),
            Some(json!({"ticket": "CASE-2", "size": 10})),
        )
        .await;
    assert_eq!(st, 403);

    // Chunks of different sizes, shuffled, 4 at a time; the header chunk
    // (offset 0) is sent last, as the agent does.
    let mut cuts = vec![0usize];
    let sizes = [40_000usize, 65_536, 100_000, 12_345, 77_777];
    let mut k = 0;
    while *cuts.last().unwrap() < data.len() {
        let next = (cuts.last().unwrap() + sizes[k % sizes.len()]).min(data.len());
        cuts.push(next);
        k += 1;
    }
    let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    let first = pieces.remove(0);
    shuffle(&mut pieces, 7);
    pieces.push(first);
    let api = Arc::new(api);
    let data = Arc::new(data);
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    for (s, e) in pieces.iter().copied() {
        let (api, data, id, up, sem) = (
            api.clone(),
            data.clone(),
            id.clone(),
            up.clone(),
            sem.clone(),
        );
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let (st, v) = api.put(&up, &id, s, &data[s..e]).await;
            assert_eq!(st, 201, "chunk {s}: {v}");
        });
        if s == first.0 {
            // Everything else is acknowledged before the header goes.
            while set.len() > 1 {
                set.join_next().await.unwrap().unwrap();
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // A re-send is acknowledged without storing; an overlapping chunk with
    // the same bytes is fine; with different bytes it is refused.
    let (s0, e0) = pieces[0];
    let (st, v) = api.put(&up, &id, s0, &data[s0..e0]).await;
    assert_eq!((st, &v["stored"]), (200, &json!(false)), "{v}");
    let (st, v) = api.put(&up, &id, s0 + 10, &data[s0 + 10..e0 + 10]).await;
    assert_eq!(st, 200, "{v}");
    let mut evil = data[s0..e0].to_vec();
    evil[5] ^= 0xff;
    let (st, v) = api.put(&up, &id, s0, &evil).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("overlap_conflict")),
        "{v}"
    );
    // Bad chunks: wrong checksum, past the end, no checksum.
    let (st, v) = api.put_with(&up, &id, 0, b"abc", &sha(b"abd")).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("bad_checksum")),
        "{v}"
    );
    let (st, _) = api.put(&up, &id, data.len() - 1, b"xy").await;
    assert_eq!(st, 416);
    let (st, _) = api.put_with(&up, &id, 0, b"abc", "nothex").await;
    assert_eq!(st, 400);
    // Another ticket's uploader sees nothing of it.
    let (st, _) = api.put(&up_other, &id, 0, &data[..10]).await;
    assert_eq!(st, 404);
    let (st, _) = api.get(&format!("/api/v1/uploads/{id}"), &up_other).await;
    assert_eq!(st, 404);
    // Resume view: everything is there.
    let (st, v) = api.get(&format!("/api/v1/uploads/{id}"), &up).await;
    assert_eq!(st, 200);
    assert_eq!(v["missing"], json!([]), "{v}");
    assert_eq!(v["ranges"], json!([{"offset": 0, "length": data.len()}]));
    // A wrong whole SHA-256 is refused; the right one completes.
    let (st, v) = api.complete(&up, &id, &sha(b"not it")).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("checksum_mismatch")),
        "{v}"
    );
    let (st, v) = api.complete(&up, &id, &whole).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sha256"], whole.as_str());
    let (st, _) = api.put(&up, &id, 0, &data[..10]).await;
    assert_eq!(st, 409, "no chunk after completion");

    // Uploaders read nothing; the pipeline reaches ready.
    let (st, _) = api.get(&format!("/api/v1/images/{id}"), &up).await;
    assert_eq!(st, 403);
    let (st, _) = api.get("/api/v1/images", &up).await;
    assert_eq!(st, 403);
    let v = api.wait_done(&maint, &id).await;
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["label"], "story");
    assert!(v["features"].as_array().unwrap().contains(&json!("extent")));
    assert_eq!(v["fs_type"], "ext4");
    assert_eq!(v["size"], data.len());

    // Results equal inspect --json of the source.
    let want = inspect(&q);
    let want_img = inspect(&img);
    assert_eq!(want["superblock"], want_img["superblock"]);
    let (st, sb) = api
        .get(&format!("/api/v1/images/{id}/superblock"), &ts)
        .await;
    assert_eq!(st, 200);
    assert_eq!(sb, want["superblock"]);
    let (_, groups) = api
        .get(&format!("/api/v1/images/{id}/groups"), &maint)
        .await;
    assert_eq!(groups, want["groups"]);
    let n = want["groups"].as_array().unwrap().len();
    assert!(n >= 3, "the fixture should have several groups");
    let (_, page) = api
        .get(
            &format!("/api/v1/images/{id}/groups?offset=1&limit=2"),
            &maint,
        )
        .await;
    assert_eq!(page, json!(want["groups"].as_array().unwrap()[1..3]));
    let (_, findings) = api
        .get(&format!("/api/v1/images/{id}/findings"), &maint)
        .await;
    assert_eq!(findings, want["findings"]);
    assert_eq!(v["group_count"], n);
    assert_eq!(v["fs_uuid"], want["superblock"]["filesystem_uuid"]);

    // Downloads: the stored QCOW2, and the raw view against qemu-img.
    let (st, got) = api
        .bytes(&format!("/api/v1/images/{id}/qcow2"), &maint, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(sha(&got), whole);
    let raw = qemu_raw(&q, &tmp.path().join("story.raw"));
    let (st, got) = api
        .bytes(&format!("/api/v1/images/{id}/raw"), &ts, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(got.len(), raw.len());
    assert!(got == raw, "raw view differs from qemu-img convert");
    for (range, s, e) in [
        ("bytes=0-4095", 0, 4096),
        ("bytes=1024-2047", 1024, 2048),
        ("bytes=1000000-3000000", 1_000_000, 3_000_001),
        ("bytes=-5000", raw.len() - 5000, raw.len()),
        (
            &format!("bytes={}-", raw.len() - 3) as &str,
            raw.len() - 3,
            raw.len(),
        ),
    ] {
        let (st, got) = api
            .bytes(&format!("/api/v1/images/{id}/raw"), &maint, Some(range))
            .await;
        assert_eq!(st, 206, "{range}");
        assert!(got == raw[s..e], "range {range} differs");
    }
    let (st, _) = api
        .bytes(
            &format!("/api/v1/images/{id}/raw"),
            &maint,
            Some(&format!("bytes={}-", raw.len())),
        )
        .await;
    assert_eq!(st, 416);
    let (st, got) = api
        .bytes(
            &format!("/api/v1/images/{id}/qcow2"),
            &maint,
            Some("bytes=0-3"),
        )
        .await;
    assert_eq!((st, got.as_slice()), (206, &b"QFI\xfb"[..]));

    // Browsing.
    let (st, root) = api
        .get(&format!("/api/v1/images/{id}/dirs/2"), &maint)
        .await;
    assert_eq!(st, 200, "{root}");
    let names: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for want in [".", "..", "lost+found", "sub", "link", "file0.txt"] {
        assert!(names.contains(&want), "{want} missing in {names:?}");
    }
    let (st, ino) = api
        .get(&format!("/api/v1/images/{id}/inodes/2"), &maint)
        .await;
    assert_eq!((st, &ino["type"]), (200, &json!("directory")), "{ino}");
    let (st, _) = api
        .get(&format!("/api/v1/images/{id}/inodes/0"), &maint)
        .await;
    assert_eq!(st, 400);
    let (st, _) = api
        .get(&format!("/api/v1/images/{id}/inodes/99999999"), &maint)
        .await;
    assert_eq!(st, 404);

    // Listing with filters; scoping of ticket systems.
    let uuid = v["fs_uuid"].as_str().unwrap().to_string();
    for (q, total) in [
        ("ticket=CASE-1".to_string(), 1),
        ("status=ready".into(), 1),
        ("feature=extent".into(), 1),
        ("feature=ext".into(), 0),
        (format!("fs_uuid={uuid}"), 1),
        ("label=story".into(), 1),
        (
            "since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into(),
            1,
        ),
        ("until=2000-01-01T00:00:00Z".into(), 0),
        ("has_errors=false&sort=-size&limit=5".into(), 1),
    ] {
        let (st, l) = api.get(&format!("/api/v1/images?{q}"), &maint).await;
        assert_eq!(st, 200, "{q}: {l}");
        assert_eq!(l["total"], total, "{q}: {l}");
        assert_eq!(l["images"].as_array().unwrap().len(), total, "{q}");
    }
    let (st, _) = api.get("/api/v1/images?sort=bogus", &maint).await;
    assert_eq!(st, 400);
    let (st, l) = api.get("/api/v1/images", &ts).await;
    assert_eq!((st, &l["total"]), (200, &json!(1)));
    let (st, l) = api.get("/api/v1/images", &other_ts).await;
    assert_eq!((st, &l["total"]), (200, &json!(0)));
    let (st, _) = api.get("/api/v1/images?ticket=CASE-1", &other_ts).await;
    assert_eq!(st, 403);
    for path in ["", "/superblock", "/groups", "/raw", "/qcow2", "/dirs/2"] {
        let (st, _) = api
            .get(&format!("/api/v1/images/{id}{path}"), &other_ts)
            .await;
        assert_eq!(st, 404, "another ticket's image is invisible: {path}");
    }
    let (st, _) = api
        .get(&format!("/api/v1/images/{}", "0".repeat(32)), &maint)
        .await;
    assert_eq!(st, 404);
    let (st, _) = api.get("/api/v1/images/..%2F..%2Fetc", &maint).await;
    assert_eq!(st, 404);

    // 401s.
    let (st, _) = api.req("GET", "/api/v1/images", None, None).await;
    assert_eq!(st, 401);
    let (st, _) = api.get("/api/v1/images", "sst_0000").await;
    assert_eq!(st, 401);

    // Triage: maintainers yes, ticket systems no; DELETE admin only.
    let patch = json!({"status": "investigating", "assignee": "alice", "tags": ["journal", "csum"], "notes": "look at group 1"});
    let (st, _) = api
        .req(
            "PATCH",
            &format!("/api/v1/images/{id}"),
            Some(&ts),
            Some(patch.clone()),
        )
        .await;
    assert_eq!(st, 403);
    let (st, t) = api
        .req(
            "PATCH",
            &format!("/api/v1/images/{id}"),
            Some(&maint),
            Some(patch),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    let (_, t) = api.get(&format!("/api/v1/images/{id}"), &ts).await;
    assert_eq!(t["triage_status"], "investigating");
    assert_eq!(t["assignee"], "alice");
    assert_eq!(t["tags"], json!(["csum", "journal"]));
    assert_eq!(t["status"], "ready", "the pipeline status is untouched");
    let (_, l) = api
        .get("/api/v1/images?tag=journal&assignee=alice", &maint)
        .await;
    assert_eq!(l["total"], 1);
    let (st, _) = api
        .req(
            "PATCH",
            &format!("/api/v1/images/{id}"),
            Some(&maint),
            Some(json!({"status": "ready"})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = api
        .req(
            "DELETE",
            &format!("/api/v1/images/{id}"),
            Some(&maint),
            None,
        )
        .await;
    assert_eq!(st, 403);

    // Not QCOW2, and QCOW2 without an ext filesystem: failed with a reason.
    let junk: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let junk_id = api.upload(&up, "CASE-1", &junk, 65536).await;
    let j = api.wait_done(&maint, &junk_id).await;
    assert_eq!(j["status"], "failed");
    assert!(j["reason"].as_str().unwrap().contains("QCOW2"), "{j}");
    let empty_q = tmp.path().join("empty.qcow2");
    testkit::run(
        testkit::tool("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&empty_q)
            .arg("4M"),
    );
    let empty = std::fs::read(&empty_q).unwrap();
    let empty_id = api.upload(&up, "CASE-1", &empty, 65536).await;
    let e = api.wait_done(&maint, &empty_id).await;
    assert_eq!(e["status"], "failed");
    assert!(e["reason"].as_str().unwrap().contains("ext"), "{e}");
    let (st, v) = api
        .get(&format!("/api/v1/images/{empty_id}/superblock"), &maint)
        .await;
    assert_eq!(st, 409, "{v}");
    let (_, l) = api.get("/api/v1/images?status=failed", &maint).await;
    assert_eq!(l["total"], 2);

    // Path tricks and bad bodies.
    for t in ["../etc", "a/b", ".x", "", "x y", &"a".repeat(65)] {
        let (st, _) = api
            .req(
                "POST",
                "/api/v1/uploads",
                Some(&admin),
                Some(json!({"ticket": t, "size": 10})),
            )
            .await;
        assert_eq!(st, 400, "ticket {t:?}");
    }
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/uploads",
            Some(&admin),
            Some(json!({"ticket": "CASE-9", "size": 1u64 << 50})),
        )
        .await;
    assert_eq!(st, 413);
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/uploads",
            Some(&admin),
            Some(json!({"ticket": "CASE-9", "size": 10, "sha256": "zz"})),
        )
        .await;
    assert_eq!(st, 400);
    let big_id = api.create(&admin, "CASE-9", 20 << 20).await;
    let (st, _) = api.put(&admin, &big_id, 0, &vec![0u8; (8 << 20) + 1]).await;
    assert_eq!(st, 413, "chunk above max_chunk_size");
    let (st, v) = api.complete(&admin, &big_id, &whole).await;
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("incomplete")));
    let (st, _) = api
        .req(
            "DELETE",
            &format!("/api/v1/uploads/{big_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = api.get(&format!("/api/v1/uploads/{big_id}"), &admin).await;
    assert_eq!(st, 404);

    // Admin deletes an image: rows and bytes go.
    let (st, _) = api
        .req(
            "DELETE",
            &format!("/api/v1/images/{junk_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = api.get(&format!("/api/v1/images/{junk_id}"), &maint).await;
    assert_eq!(st, 404);
    assert!(!server.data.join(format!("images/{junk_id}.qcow2")).exists());
    // The first image is untouched by all of that.
    let (st, got) = api
        .bytes(&format!("/api/v1/images/{id}/qcow2"), &maint, None)
        .await;
    assert_eq!((st, sha(&got)), (200, whole.clone()));

    // Service endpoints.
    let (st, m) = api.req("GET", "/metrics", None, None).await;
    assert_eq!(st, 200);
    let m = m.as_str().unwrap().to_string();
    assert!(m.contains("support_uploads_completed_total 3"), "{m}");
    assert!(m.contains("support_jobs{state=\"done\"}"), "{m}");
    assert!(
        m.contains("support_http_request_duration_seconds_bucket"),
        "{m}"
    );
    let (st, doc) = api.req("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(st, 200);
    assert!(doc["paths"]["/api/v1/images/{id}/raw"].is_object());
    let (st, h) = api.req("GET", "/healthz", None, None).await;
    assert_eq!((st, &h["status"]), (200, &json!("ok")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_on_sqlite() {
    story(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_on_postgresql() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url("story");
    story(Some(&url)).await;
}

// ------------------------------------------------------- crash and load --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_upload_loses_no_acknowledged_chunk_on_sqlite() {
    sigkill_mid_upload(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_upload_loses_no_acknowledged_chunk_on_postgresql() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url("sigkill");
    sigkill_mid_upload(Some(&url)).await;
}

async fn sigkill_mid_upload(db_url: Option<&str>) {
    let tmp = testkit::tempdir();
    let data_dir = tmp.path().join("data");
    let mut server = Server::start(&data_dir, db_url, &[]);
    let admin = server.bootstrap_token();
    let (_, q) = e2image_fixture(tmp.path(), "crash", "16M", 5);
    let data = std::fs::read(&q).unwrap();
    let api = Api::new(&server.url);
    let id = api.create(&admin, "CASE-K", data.len()).await;
    let chunk = 32 * 1024;
    let n = data.chunks(chunk).count();
    let half: Vec<usize> = (0..n).filter(|i| i % 2 == 1).collect();
    for &i in &half {
        let s = i * chunk;
        let (st, _) = api
            .put(&admin, &id, s, &data[s..(s + chunk).min(data.len())])
            .await;
        assert_eq!(st, 201);
    }
    // SIGKILL (Child::kill) while more chunks are in flight.
    let mut inflight = tokio::task::JoinSet::new();
    for i in (0..n).filter(|i| i % 2 == 0).take(4) {
        let (c, url, admin, id) = (client(), server.url.clone(), admin.clone(), id.clone());
        let body = data[i * chunk..((i + 1) * chunk).min(data.len())].to_vec();
        inflight.spawn(async move {
            let _ = c
                .put(format!("{url}/api/v1/uploads/{id}/chunks/{}", i * chunk))
                .bearer_auth(&admin)
                .header("x-chunk-sha256", sha(&body))
                .body(body)
                .send()
                .await;
        });
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    while inflight.join_next().await.is_some() {}
    server.restart();
    let api = Api::new(&server.url);
    let (st, v) = api.get(&format!("/api/v1/uploads/{id}"), &admin).await;
    assert_eq!(st, 200, "{v}");
    // Every acknowledged chunk is still held.
    let ranges: Vec<(usize, usize)> = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let o = r["offset"].as_u64().unwrap() as usize;
            (o, o + r["length"].as_u64().unwrap() as usize)
        })
        .collect();
    for &i in &half {
        let (s, e) = (i * chunk, ((i + 1) * chunk).min(data.len()));
        assert!(
            ranges.iter().any(|&(a, b)| a <= s && e <= b),
            "chunk {i} lost: {ranges:?}"
        );
    }
    // Send what is missing, complete, the job finishes.
    for m in v["missing"].as_array().unwrap() {
        let o = m["offset"].as_u64().unwrap() as usize;
        let end = o + m["length"].as_u64().unwrap() as usize;
        let mut p = o;
        while p < end {
            let e = (p + chunk).min(end);
            let (st, v) = api.put(&admin, &id, p, &data[p..e]).await;
            assert!(st == 201 || st == 200, "{v}");
            p = e;
        }
    }
    let (st, v) = api.complete(&admin, &id, &sha(&data)).await;
    assert_eq!(st, 200, "{v}");
    let v = api.wait_done(&admin, &id).await;
    assert_eq!(v["status"], "ready", "{v}");
    let (_, got) = api
        .bytes(&format!("/api/v1/images/{id}/qcow2"), &admin, None)
        .await;
    assert_eq!(sha(&got), sha(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_uploads_all_complete_on_sqlite() {
    twenty_concurrent_uploads(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_uploads_all_complete_on_postgresql() {
    let Some(pg) = Pg::start() else { return };
    let url = pg.url("twenty");
    twenty_concurrent_uploads(Some(&url)).await;
}

async fn twenty_concurrent_uploads(db_url: Option<&str>) {
    let tmp = testkit::tempdir();
    let server = Server::start(&tmp.path().join("data"), db_url, &["--workers", "2"]);
    let admin = server.bootstrap_token();
    let api = Arc::new(Api::new(&server.url));
    // Different images: one mke2fs, twenty e2image -Q with different labels
    // would be slow; instead vary the filesystem contents.
    let mut images = Vec::new();
    for i in 0..20 {
        let (_, q) = e2image_fixture(tmp.path(), &format!("c{i}"), "4M", i % 5 + 1);
        images.push(std::fs::read(q).unwrap());
    }
    let mut set = tokio::task::JoinSet::new();
    for (i, img) in images.into_iter().enumerate() {
        let (api, admin) = (api.clone(), admin.clone());
        set.spawn(async move {
            let id = api.upload(&admin, &format!("LOAD-{i}"), &img, 20_000).await;
            (id, sha(&img))
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.push(r.unwrap());
    }
    for (id, want) in &ids {
        let v = api.wait_done(&admin, id).await;
        assert_eq!(v["status"], "ready", "{v}");
        assert_eq!(v["sha256"].as_str(), Some(want.as_str()));
        let (_, got) = api
            .bytes(&format!("/api/v1/images/{id}/qcow2"), &admin, None)
            .await;
        assert_eq!(&sha(&got), want);
    }
    let (_, l) = api
        .get("/api/v1/images?status=ready&limit=100", &admin)
        .await;
    assert_eq!(l["total"], 20);
}

// ------------------------------------------- sessions, webhooks, tokens --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_csrf_and_refuse_uploaders() {
    let tmp = testkit::tempdir();
    let server = Server::start(&tmp.path().join("data"), None, &[]);
    let admin = server.bootstrap_token();
    let api = Api::new(&server.url);
    let maint = api.token(&admin, "maintainer", None).await;
    let up = api.token(&admin, "uploader", Some("CASE-1")).await;
    let c = client();
    let (st, _) = api
        .req("POST", "/api/v1/session", None, Some(json!({"token": up})))
        .await;
    assert_eq!(st, 403, "uploaders cannot sign in");
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"token": "sst_bad"})),
        )
        .await;
    assert_eq!(st, 401);
    let r = c
        .post(format!("{}/api/v1/session", server.url))
        .json(&json!({"token": maint}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let sid = cookie.split(';').next().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    // The cookie reads; writes need the CSRF header.
    let r = c
        .get(format!("{}/api/v1/session", server.url))
        .header("cookie", &sid)
        .send()
        .await
        .unwrap();
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["role"], "maintainer");
    let r = c
        .get(format!("{}/api/v1/images", server.url))
        .header("cookie", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json!({"ticket": "CASE-3", "size": 10});
    let r = c
        .post(format!("{}/api/v1/uploads", server.url))
        .header("cookie", &sid)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF header");
    let r = c
        .post(format!("{}/api/v1/uploads", server.url))
        .header("cookie", &sid)
        .header("x-csrf-token", &csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Sign out; the cookie is dead.
    let r = c
        .delete(format!("{}/api/v1/session", server.url))
        .header("cookie", &sid)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/api/v1/images", server.url))
        .header("cookie", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The dashboard is served at /.
    let r = c.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let r = c
        .get(format!("{}/api/v1/nothing", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried() {
    use hmac::{Hmac, Mac};
    let tmp = testkit::tempdir();
    let server = Server::start(&tmp.path().join("data"), None, &[]);
    let admin = server.bootstrap_token();
    let api = Api::new(&server.url);
    let ts = api.token(&admin, "ticket-system", Some("HOOK-*")).await;
    // A receiver on loopback that fails the first delivery.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>> = Arc::default();
    let got2 = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let got = got2.clone();
                async move {
                    let mut g = got.lock().unwrap();
                    g.push((headers, body.to_vec()));
                    if g.len() == 1 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/webhooks",
            Some(&ts),
            Some(json!({"ticket": "OTHER-1", "url": format!("http://{addr}/hook")})),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = api
        .req(
            "POST",
            "/api/v1/webhooks",
            Some(&ts),
            Some(json!({"ticket": "HOOK-1", "url": "file:///etc/passwd"})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, h) = api
        .req(
            "POST",
            "/api/v1/webhooks",
            Some(&ts),
            Some(json!({"ticket": "HOOK-1", "url": format!("http://{addr}/hook")})),
        )
        .await;
    assert_eq!(st, 201, "{h}");
    let secret = h["secret"].as_str().unwrap().to_string();
    let (_, q) = e2image_fixture(tmp.path(), "hook", "4M", 2);
    let data = std::fs::read(q).unwrap();
    let id = api.upload(&ts, "HOOK-1", &data, 1 << 20).await;
    api.wait_done(&ts, &id).await;
    let t0 = Instant::now();
    while got.lock().unwrap().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "webhook not retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let g = got.lock().unwrap();
    for (headers, body) in g.iter() {
        let sig = headers["x-support-signature"].to_str().unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let ev: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(ev["event"], "image.ready");
        assert_eq!(ev["image"]["id"], id.as_str());
    }
    assert_eq!(g[0].0["x-support-delivery"], g[1].0["x-support-delivery"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_and_expired_uploads() {
    let tmp = testkit::tempdir();
    let data_dir = tmp.path().join("data");
    let mut server = Server::start(&data_dir, None, &["--upload-ttl", "1s"]);
    let out = server.cli(&[
        "token",
        "create",
        "--role",
        "uploader",
        "--ticket",
        "CASE-T",
        "--expires",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = server.cli(&["token", "create", "--role", "uploader"]);
    assert!(!out.status.success(), "an uploader needs a ticket");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ticket"));
    let out = server.cli(&["token", "list"]);
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains("CASE-T") && !list.contains(&up), "{list}");
    let api = Api::new(&server.url);
    let id = api.create(&up, "CASE-T", 100).await;
    let (st, _) = api.put(&up, &id, 0, &[1u8; 50]).await;
    assert_eq!(st, 201);
    assert!(data_dir.join(format!("uploads/{id}.part")).exists());
    // Revoke: 401 from now on.
    let token_id = list
        .lines()
        .find(|l| l.contains("CASE-T"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = server.cli(&["token", "revoke", &token_id]);
    assert!(out.status.success());
    let (st, _) = api.get(&format!("/api/v1/uploads/{id}"), &up).await;
    assert_eq!(st, 401);
    // The abandoned upload expires; the reaper (which also runs at start)
    // removes its rows and bytes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server.restart();
    let admin_out = server.cli(&["token", "create", "--role", "admin"]);
    let admin = String::from_utf8(admin_out.stdout)
        .unwrap()
        .trim()
        .to_string();
    let api = Api::new(&server.url);
    let t0 = Instant::now();
    loop {
        let (st, _) = api.get(&format!("/api/v1/uploads/{id}"), &admin).await;
        if st == 404 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "upload not reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!data_dir.join(format!("uploads/{id}.part")).exists());
}

// ------------------------------------------------------- hostile images --

/// Every corrupted filesystem of the shared corpus, made into a QCOW2 by
/// `qemu-img convert`, plus QCOW2s with broken tables: each ends `ready` or
/// `failed` with a reason, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_images_end_ready_or_failed() {
    let corpus = testkit::corpus_images();
    let tmp = testkit::tempdir();
    let server = Server::start(&tmp.path().join("data"), None, &["--workers", "2"]);
    let admin = server.bootstrap_token();
    let api = Arc::new(Api::new(&server.url));
    let mut uploads = Vec::new();
    for (name, path) in corpus.iter() {
        let raw = tmp.path().join(format!("{name}.raw"));
        testkit::decompress(path, &raw);
        let q = tmp.path().join(format!("{name}.qcow2"));
        testkit::run(
            testkit::tool("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw)
                .arg(&q),
        );
        let _ = std::fs::remove_file(&raw);
        uploads.push((name.clone(), std::fs::read(&q).unwrap()));
        let _ = std::fs::remove_file(&q);
    }
    // Hand-broken QCOW2s: L1 table offset past the end; refcount table
    // offset misaligned; a truncated image.
    let (_, good) = e2image_fixture(tmp.path(), "victim", "8M", 3);
    let good = std::fs::read(good).unwrap();
    let mut l1 = good.clone();
    l1[40..48].copy_from_slice(&(1u64 << 50).to_be_bytes());
    uploads.push(("l1-past-end".into(), l1));
    let mut rc = good.clone();
    rc[48..56].copy_from_slice(&12345u64.to_be_bytes());
    uploads.push(("refcount-misaligned".into(), rc));
    uploads.push(("truncated".into(), good[..good.len() / 3].to_vec()));
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    for (name, data) in uploads {
        let (api, admin, sem) = (api.clone(), admin.clone(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let id = api.upload(&admin, "HOSTILE-1", &data, 1 << 20).await;
            let v = api.wait_done(&admin, &id).await;
            (name, v)
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        let (name, v) = r.unwrap();
        match v["status"].as_str() {
            Some("ready") => {}
            Some("failed") => {
                failed += 1;
                assert!(
                    !v["reason"].as_str().unwrap_or("").is_empty(),
                    "{name}: {v}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(failed >= 3, "the broken QCOW2s must fail");
    let (st, _) = api.req("GET", "/healthz", None, None).await;
    assert_eq!(st, 200);
}
