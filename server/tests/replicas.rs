//! Several `support-server serve` processes (replicas) on one PostgreSQL
//! started by the test and one image store (a bucket in moto's S3 server,
//! each replica with its own data directory; one shared local directory
//! where moto is missing): an upload whose chunks (and
//! racing re-sends, conflicting overlaps, completions) reach different
//! replicas completes and reaches `ready`; a replica killed (SIGKILL) or
//! frozen (SIGSTOP) in the middle of an analysis job has the job taken
//! over after its lease expires and finished exactly once, with exactly one
//! webhook delivery; `--role api` and `--role worker` split the work.
//!
//! Evidence of "exactly once" is read from the database itself (`psql`):
//! the job's attempts and state, the number of webhook jobs; and from a
//! loopback webhook receiver that counts deliveries.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn health(url: &str) -> Value {
    let r = client().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn signal(s: &Server, sig: &str) {
    testkit::run(Command::new("kill").arg(sig).arg(s.child.id().to_string()));
}

/// A loopback webhook receiver: every delivery's (event, image id,
/// delivery id).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, String, String)>>>,
}

async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let got2 = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let got = got2.clone();
                async move {
                    let ev: Value = serde_json::from_slice(&body).unwrap_or_default();
                    got.lock().unwrap().push((
                        ev["event"].as_str().unwrap_or("").to_string(),
                        ev["image"]["id"].as_str().unwrap_or("").to_string(),
                        headers
                            .get("x-support-delivery")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string(),
                    ));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
    }
}

impl Receiver {
    /// Waits for the first delivery about `image`, then a few seconds more
    /// for any duplicate; returns all deliveries about it.
    async fn deliveries(&self, image: &str) -> Vec<(String, String, String)> {
        let of = |g: &Vec<(String, String, String)>| {
            g.iter()
                .filter(|d| d.1 == image)
                .cloned()
                .collect::<Vec<_>>()
        };
        let t0 = Instant::now();
        while of(&self.got.lock().unwrap()).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no webhook delivery for {image}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let g = self.got.lock().unwrap();
        of(&g)
    }
}

// ------------------------------------------------------ split upload --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_split_across_two_replicas_completes_and_reaches_ready() {
    let Some(pg) = testkit::Postgres::start() else {
        return;
    };
    let db = pg.url("split");
    let tmp = testkit::tempdir();
    let store = SharedStore::start("split").await;
    let (r1, r2) = two_replicas(&store, tmp.path(), &db, &["--workers", "1"]);
    // Both started on an empty database at once: one admin token, once.
    let mut tokens = printed_tokens(&r1);
    tokens.extend(printed_tokens(&r2));
    assert_eq!(tokens.len(), 1, "bootstrap tokens printed: {tokens:?}");
    let admin = tokens[0].clone();
    let (h1, h2) = (health(&r1.url).await, health(&r2.url).await);
    assert_ne!(h1["instance"], h2["instance"]);
    assert_eq!(h1["role"], "all");

    let apis = [Arc::new(Api::new(&r1.url)), Arc::new(Api::new(&r2.url))];
    let (_, q) = e2image_fixture(tmp.path(), "split", "16M", 20);
    let data_bytes = Arc::new(std::fs::read(&q).unwrap());
    let size = data_bytes.len();
    let id = apis[0].create(&admin, "CASE-R1", size).await;
    let chunk = 16 * 1024;
    let piece = |i: usize| (i * chunk, ((i + 1) * chunk).min(size));

    // The same chunk to both replicas at once: one stores it, the other
    // finds it held (never two rows, never double-counted bytes).
    for i in 0..6 {
        let (s, e) = piece(i);
        let body = data_bytes[s..e].to_vec();
        let (st, v) = race(&apis, &admin, &id, s, &body, &body).await;
        assert_eq!(st, [200, 201], "same chunk twice: {v:?}");
    }
    // Conflicting overlaps (different bytes over the same range) to both
    // replicas at once, on a scratch upload: exactly one wins, the other
    // gets 409 and nothing of it is stored.
    let scratch = apis[1].create(&admin, "CASE-R1", 1 << 20).await;
    for i in 0..6u8 {
        let a = vec![i; 8192];
        let b = vec![i ^ 0xff; 12288];
        let (st, v) = race(&apis, &admin, &scratch, usize::from(i) * 16384, &a, &b).await;
        assert_eq!(st, [201, 409], "conflicting overlap: {v:?}");
    }
    // Aborted through the other replica.
    let (st, v) = apis[0]
        .req(
            "DELETE",
            &format!("/api/v1/uploads/{scratch}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 204, "{v}");
    let (st, _) = apis[1]
        .get(&format!("/api/v1/uploads/{scratch}"), &admin)
        .await;
    assert_eq!(st, 404);
    finish_split(&apis, &admin, &id, &data_bytes, chunk, 6).await;
}

/// `a` to the first replica and `b` to the second at the same offset, at
/// once; the two statuses sorted, and both answers.
async fn race(
    apis: &[Arc<Api>; 2],
    admin: &str,
    id: &str,
    off: usize,
    a: &[u8],
    b: &[u8],
) -> ([u16; 2], [Value; 2]) {
    let (x, y) = tokio::join!(
        apis[0].put(admin, id, off, a),
        apis[1].put(admin, id, off, b)
    );
    let mut st = [x.0, y.0];
    st.sort();
    (st, [x.1, y.1])
}

/// Sends chunks `from..` alternately to the two replicas, eight in flight,
/// then completes on both replicas at once and checks the stored image.
async fn finish_split(
    apis: &[Arc<Api>; 2],
    admin: &str,
    id: &str,
    data: &Arc<Vec<u8>>,
    chunk: usize,
    from: usize,
) {
    let size = data.len();
    let n = size.div_ceil(chunk);
    let mut set = tokio::task::JoinSet::new();
    for i in from..n {
        if set.len() >= 8 {
            set.join_next().await.unwrap().unwrap();
        }
        let (api, admin, id, data) = (
            apis[i % 2].clone(),
            admin.to_string(),
            id.to_string(),
            data.clone(),
        );
        set.spawn(async move {
            let (s, e) = (i * chunk, ((i + 1) * chunk).min(data.len()));
            let (st, v) = api.put(&admin, &id, s, &data[s..e]).await;
            assert_eq!(st, 201, "chunk {i}: {v}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // Every replica sees the whole upload.
    for api in apis {
        let (st, v) = api.get(&format!("/api/v1/uploads/{id}"), admin).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["received"], size as u64, "{v}");
        assert_eq!(v["missing"], json!([]), "{v}");
    }
    // Completion on both replicas at once: both answer the image (one
    // completed it, the other's retry is idempotent) or one says another
    // completion is running.
    let whole = sha(data);
    let (x, y) = tokio::join!(
        apis[0].complete(admin, id, &whole),
        apis[1].complete(admin, id, &whole)
    );
    for (st, v) in [&x, &y] {
        assert!(
            *st == 200 || (*st == 409 && v["error"]["code"] == "completing"),
            "{st} {v}"
        );
    }
    assert!(x.0 == 200 || y.0 == 200, "{x:?} {y:?}");
    let v = apis[1].wait_done(admin, id).await;
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["sha256"].as_str(), Some(whole.as_str()));
    for api in apis {
        let (st, got) = api
            .bytes(&format!("/api/v1/images/{id}/qcow2"), admin, None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(sha(&got), whole);
    }
}

// --------------------------------------------------- takeover of jobs --

/// What the database says about the ingest job of `image`:
/// (state, attempts, lease_owner).
fn ingest_job(pg: &testkit::Postgres, db: &str, image: &str) -> (String, i64, String) {
    let out = pg.query(
        db,
        &format!(
            "SELECT state, attempts, COALESCE(lease_owner, '') FROM jobs \
             WHERE kind = 'ingest' AND image_id = '{image}'"
        ),
    );
    let rows: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 1, "ingest jobs of {image}: {out}");
    let f: Vec<&str> = rows[0].split('|').collect();
    (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
}

/// Kills (`SIGKILL`) or freezes (`SIGSTOP`, then `SIGCONT` once the job
/// was finished by the other) the replica that holds an analysis job.
async fn takeover(db_name: &str, freeze: bool) {
    let Some(pg) = testkit::Postgres::start() else {
        return;
    };
    let db = pg.url(db_name);
    let tmp = testkit::tempdir();
    let store = SharedStore::start("takeover").await;
    // Every ingest job first waits 4 s (test hook), so the holder can be
    // stopped in the middle; leases are 5 s (common::Server).
    let (r1, r2) = two_replicas(
        &store,
        tmp.path(),
        &db,
        &["--workers", "1", "--test-ingest-delay", "4s"],
    );
    let mut tokens = printed_tokens(&r1);
    tokens.extend(printed_tokens(&r2));
    let admin = tokens.pop().expect("a bootstrap token");
    let api1 = Api::new(&r1.url);
    let hook = receiver().await;
    let (st, v) = api1
        .req(
            "POST",
            "/api/v1/webhooks",
            Some(&admin),
            Some(json!({"ticket": "CASE-T*", "url": hook.url})),
        )
        .await;
    assert_eq!(st, 201, "{v}");

    let (_, q) = e2image_fixture(tmp.path(), "takeover", "8M", 5);
    let bytes = std::fs::read(&q).unwrap();
    let id = api1.upload(&admin, "CASE-T1", &bytes, 64 * 1024).await;

    // Which replica holds the job (lease owners are `<instance>-<n>`)?
    let t0 = Instant::now();
    let owner = loop {
        let (state, _, owner) = ingest_job(&pg, &db, &id);
        if state == "running" {
            break owner;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "job not claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let i1 = health(&r1.url).await["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut holder, survivor) = if owner.starts_with(&i1) {
        (r1, r2)
    } else {
        (r2, r1)
    };
    if freeze {
        signal(&holder, "-STOP");
    } else {
        holder.child.kill().unwrap();
        holder.child.wait().unwrap();
    }
    // Still mid-job: nothing finished yet.
    let api = Api::new(&survivor.url);
    let (_, v) = api.get(&format!("/api/v1/images/{id}"), &admin).await;
    assert!(v["status"] == "queued" || v["status"] == "analyzing", "{v}");
    // The survivor takes the job over once the lease expires, and ends it.
    let v = api.wait_done(&admin, &id).await;
    assert_eq!(v["status"], "ready", "{v}");
    let (state, attempts, _) = ingest_job(&pg, &db, &id);
    assert_eq!((state.as_str(), attempts), ("done", 2));
    if freeze {
        // The frozen replica wakes up with a lost lease, finishes its
        // analysis and must commit nothing.
        signal(&holder, "-CONT");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (state, attempts, _) = ingest_job(&pg, &db, &id);
        assert_eq!((state.as_str(), attempts), ("done", 2));
        let stale = Api::new(&holder.url);
        let (st, _) = stale.get(&format!("/api/v1/images/{id}"), &admin).await;
        assert_eq!(st, 200, "the frozen replica serves again");
    }
    // One event queued, one delivery received.
    let jobs = pg.query(
        &db,
        &format!("SELECT COUNT(*) FROM jobs WHERE kind = 'webhook' AND image_id = '{id}'"),
    );
    assert_eq!(jobs.trim(), "1", "webhook jobs");
    let got = hook.deliveries(&id).await;
    assert_eq!(got.len(), 1, "deliveries: {got:?}");
    assert_eq!(got[0].0, "image.ready");
    // The results are whole: the superblock of the image.
    let (st, sb) = api
        .get(&format!("/api/v1/images/{id}/superblock"), &admin)
        .await;
    assert_eq!(st, 200, "{sb}");
    assert_eq!(sb["filesystem_volume_name"], "takeover", "{sb}");
    holder.child.kill().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_killed_mid_job_has_it_finished_once_by_the_other() {
    takeover("killed", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_frozen_mid_job_commits_nothing_after_the_takeover() {
    takeover("frozen", true).await;
}

// ------------------------------------------------------------- roles --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_and_worker_roles_split_the_work() {
    let Some(pg) = testkit::Postgres::start() else {
        return;
    };
    let db = pg.url("roles");
    let tmp = testkit::tempdir();
    let store = SharedStore::start("roles").await;
    let api_srv = store.replica(tmp.path(), 0, &db, &["--role", "api"]);
    let admin = api_srv.bootstrap_token();
    assert_eq!(health(&api_srv.url).await["role"], "api");
    let api = Api::new(&api_srv.url);
    let (_, q) = e2image_fixture(tmp.path(), "roles", "4M", 3);
    let bytes = std::fs::read(&q).unwrap();
    let id = api.upload(&admin, "CASE-ROLE", &bytes, 256 * 1024).await;
    // No worker anywhere yet: the image waits in the queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, v) = api.get(&format!("/api/v1/images/{id}"), &admin).await;
    assert_eq!(v["status"], "queued", "{v}");

    let worker = store.replica(tmp.path(), 1, &db, &["--role", "worker"]);
    // The worker listens for jobs other replicas enqueue (NOTIFY), and the
    // API replica does not.
    let t0 = Instant::now();
    loop {
        let n = pg.query(
            &db,
            "SELECT COUNT(*) FROM pg_stat_activity WHERE query ILIKE 'listen%support_jobs%'",
        );
        if n.trim() == "1" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "listeners: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = health(&worker.url).await;
    assert_eq!(h["role"], "worker");
    assert_eq!(h["database"], "postgres");
    // A worker serves no API and no dashboard.
    let (st, _) = Api::new(&worker.url).get("/api/v1/images", &admin).await;
    assert_eq!(st, 404);
    let r = client()
        .get(format!("{}/metrics", worker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = api.wait_done(&admin, &id).await;
    assert_eq!(v["status"], "ready", "{v}");
    assert_eq!(v["sha256"].as_str(), Some(sha(&bytes).as_str()));
}
