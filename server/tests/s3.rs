//! Image bytes in S3-compatible object storage: real `support-server`
//! processes on loopback against an S3-protocol server the test starts
//! (moto's server mode), with a real PostgreSQL when several processes share
//! the state. The oracles: `qemu-img convert -O raw` for the raw view, the
//! same image served by a local-storage server, the uploaded file for
//! `/qcow2`, and the bucket's own listing for what is stored.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// An ext4 of `size` holding `data_mib` MiB of incompressible file data,
/// with files and directories, as a QCOW2 holding all of it (`qemu-img
/// convert`, so the image is mostly file data that analyses never read).
/// Returns (raw fs, qcow2).
fn full_image(dir: &Path, size: &str, data_mib: usize) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..data_mib {
        let sub = if i % 2 == 0 { "a" } else { "a/b" };
        std::fs::write(
            src.join(sub).join(format!("f{i}.bin")),
            testkit::noise(i as u64 + 1, 1 << 20),
        )
        .unwrap();
    }
    for i in 0..50 {
        std::fs::write(
            src.join(format!("small{i}.txt")),
            format!("{i}\n").repeat(i),
        )
        .unwrap();
    }
    let img = dir.join("fs.img");
    testkit::mkfs(&img, size, &["-t", "ext4", "-L", "s3test"], Some(&src));
    let q = dir.join("fs.qcow2");
    testkit::run(
        testkit::tool("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&img)
            .arg(&q),
    );
    (img, q)
}

fn range_of(spec: &str, size: usize) -> (usize, usize) {
    let spec = spec.strip_prefix("bytes=").unwrap();
    let (a, b) = spec.split_once('-').unwrap();
    if a.is_empty() {
        let n: usize = b.parse().unwrap();
        return (size - n.min(size), size);
    }
    let s: usize = a.parse().unwrap();
    let e = if b.is_empty() {
        size
    } else {
        (b.parse::<usize>().unwrap() + 1).min(size)
    };
    (s, e)
}

/// Compares ranges of `path` served by `api` with `want`.
async fn same_ranges(api: &Api, token: &str, path: &str, want: &[u8], specs: &[String]) {
    for spec in specs {
        let (st, got) = api.bytes(path, token, Some(spec)).await;
        assert_eq!(st, 206, "{path} {spec}");
        let (s, e) = range_of(spec, want.len());
        assert!(got == want[s..e], "{path} {spec}: bytes differ");
    }
}

/// Range specs: the first byte, unaligned ones, ones across the 1 MiB
/// cache blocks and the upload's chunk boundaries, the tail.
fn specs(size: usize, chunk: usize) -> Vec<String> {
    let mut v = vec![
        "bytes=0-0".to_string(),
        "bytes=0-4095".into(),
        "bytes=12345-1048577".into(),
        format!("bytes={}-{}", (1 << 20) - 7, (3 << 20) + 5),
        format!("bytes={}-{}", chunk - 100, chunk + 100),
        format!("bytes={}-{}", 2 * chunk - 1, 2 * chunk),
        format!("bytes={}-", size - 77_777),
        "bytes=-1000".into(),
    ];
    v.retain(|s| range_of(s, size).0 < size);
    v
}

/// Two `support-server` processes sharing one PostgreSQL and one bucket,
/// next to a local-storage server: one upload's chunks alternate between
/// the two (retries and overlaps land on the other process), completion
/// on one, analysis by whichever worker takes it, reads from both; every
/// range equals the local server's, `qemu-img convert` and the file; the
/// analysis fetched a small part of the image; deletion empties the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_bucket_serve_what_local_storage_serves() {
    let Some(moto) = Moto::start() else { return };
    let Some(pg) = Pg::start() else { return };
    moto.create_bucket("images").await;
    let tmp = testkit::tempdir();
    let db = pg.url("s3two");
    let env = moto.env("images", "prod/support");
    let a = Server::start_env(&tmp.path().join("a"), Some(&db), &[], &env);
    let admin = a.bootstrap_token();
    let b = Server::start_env(&tmp.path().join("b"), Some(&db), &[], &env);
    let local = Server::start(&tmp.path().join("local"), None, &[]);
    let (api_a, api_b, api_l) = (Api::new(&a.url), Api::new(&b.url), Api::new(&local.url));
    let admin_l = local.bootstrap_token();

    let (img, q) = full_image(tmp.path(), "256M", 40);
    let data = std::fs::read(&q).unwrap();
    let whole = sha(&data);
    assert!(data.len() > 30 << 20, "image of {} bytes", data.len());

    // Chunks of an odd size alternate between the processes, out of order.
    let cs = (3 << 20) + 1;
    let id = api_a.create(&admin, "CASE-S3", data.len()).await;
    let mut order: Vec<usize> = (0..data.len().div_ceil(cs)).collect();
    shuffle(&mut order, 7);
    for (n, &i) in order.iter().enumerate() {
        let api = if n % 2 == 0 { &api_a } else { &api_b };
        let part = &data[i * cs..((i + 1) * cs).min(data.len())];
        let (st, v) = api.put(&admin, &id, i * cs, part).await;
        assert_eq!(st, 201, "{v}");
        if n == 3 {
            // A retry of the same chunk on the other process is known.
            let other = if n % 2 == 0 { &api_b } else { &api_a };
            let (st, v) = other.put(&admin, &id, i * cs, part).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["stored"], false);
        }
    }
    // Overlapping re-sends across chunk boundaries, read back from objects
    // the other process wrote: equal bytes are accepted, others refused.
    let (s, e) = (cs - 1000, 2 * cs + 1000);
    let (st, v) = api_b.put(&admin, &id, s, &data[s..e]).await;
    assert!(st == 200 || st == 201, "{st} {v}");
    let mut evil = data[s..e].to_vec();
    evil[cs] ^= 1;
    let (st, v) = api_a.put(&admin, &id, s, &evil).await;
    assert_eq!(st, 409, "{v}");

    let image_reads = metric(&a.url, "support_s3_image_read_bytes_total").await
        + metric(&b.url, "support_s3_image_read_bytes_total").await;
    let (st, v) = api_b.complete(&admin, &id, &whole).await;
    assert_eq!(st, 200, "{v}");
    let done = api_a.wait_done(&admin, &id).await;
    assert_eq!(done["status"], "ready", "{done}");
    let analysis_reads = metric(&a.url, "support_s3_image_read_bytes_total").await
        + metric(&b.url, "support_s3_image_read_bytes_total").await
        - image_reads;
    eprintln!(
        "analysis of a {} byte image in S3 fetched {analysis_reads} bytes",
        data.len()
    );
    assert!(analysis_reads > 0);
    assert!(
        (analysis_reads as usize) < data.len() / 4,
        "the analysis fetched {analysis_reads} of {} bytes",
        data.len()
    );
    // Completion freed the chunk objects; the image is one object.
    assert!(moto
        .list("images", "prod/support/uploads/")
        .await
        .is_empty());
    assert_eq!(
        moto.list("images", "prod/support/images/").await,
        vec![format!("prod/support/images/{id}.qcow2")]
    );

    // The same image on local storage.
    let lid = api_l.upload(&admin_l, "CASE-S3", &data, 8 << 20).await;
    let ldone = api_l.wait_done(&admin_l, &lid).await;
    assert_eq!(ldone["status"], "ready", "{ldone}");
    for part in ["superblock", "check", "findings"] {
        let (_, s3v) = api_b
            .get(&format!("/api/v1/images/{id}/{part}"), &admin)
            .await;
        let (_, lv) = api_l
            .get(&format!("/api/v1/images/{lid}/{part}"), &admin_l)
            .await;
        assert_eq!(strip_ids(s3v), strip_ids(lv), "{part}");
    }

    let raw = qemu_raw(&q, &tmp.path().join("qemu.raw"));
    assert!(
        raw == std::fs::read(&img).unwrap(),
        "qemu-img convert differs from the fs"
    );
    let rspecs = specs(raw.len(), cs);
    for (api, tok, iid) in [
        (&api_a, &admin, &id),
        (&api_b, &admin, &id),
        (&api_l, &admin_l, &lid),
    ] {
        same_ranges(
            api,
            tok,
            &format!("/api/v1/images/{iid}/raw"),
            &raw,
            &rspecs,
        )
        .await;
        same_ranges(
            api,
            tok,
            &format!("/api/v1/images/{iid}/qcow2"),
            &data,
            &specs(data.len(), cs),
        )
        .await;
    }
    // Whole downloads from S3 equal the file and qemu-img's conversion.
    let (st, got) = api_a
        .bytes(&format!("/api/v1/images/{id}/qcow2"), &admin, None)
        .await;
    assert_eq!(st, 200);
    assert!(got == data, "whole /qcow2 differs");
    let (st, got) = api_b
        .bytes(&format!("/api/v1/images/{id}/raw"), &admin, None)
        .await;
    assert_eq!(st, 200);
    assert!(got == raw, "whole /raw differs from qemu-img convert");
    // Browsing reads through S3 too.
    let (st, root) = api_a
        .get(&format!("/api/v1/images/{id}/dirs/2"), &admin)
        .await;
    assert_eq!(st, 200, "{root}");
    assert!(root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "a"));

    // Deleting the image removes its object.
    let (st, v) = api_b
        .req(
            "DELETE",
            &format!("/api/v1/images/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 204, "{v}");
    assert!(moto.list("images", "prod/support/").await.is_empty());
    let (st, _) = api_a
        .bytes(&format!("/api/v1/images/{id}/raw"), &admin, None)
        .await;
    assert_eq!(st, 404);
}

/// Ids and times differ between two servers; the analyses must not.
fn strip_ids(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        for k in ["id", "image_id", "created_at", "updated_at"] {
            m.remove(k);
        }
    }
    v
}

/// A streaming client's upload on S3 (no size at creation, header last,
/// completion with size and manifest), a retried and an overlapping
/// chunk, an upload failing verification, and an aborted upload: the
/// bucket holds exactly the stored images afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_upload_retries_and_cleanup_on_s3() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("stream").await;
    let tmp = testkit::tempdir();
    let s = Server::start_env(&tmp.path().join("d"), None, &[], &moto.env("stream", ""));
    let api = Api::new(&s.url);
    let admin = s.bootstrap_token();
    let (_img, q) = e2image_fixture(tmp.path(), "stream", "64M", 30);
    let data = std::fs::read(&q).unwrap();

    let (st, v) = api
        .req(
            "POST",
            "/api/v1/uploads",
            Some(&admin),
            Some(json!({"ticket": "CASE-ST"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Header last: chunks from the end; one retried, one overlapping.
    let cs = 64 * 1024 + 3;
    let mut manifest = Vec::new();
    let mut offs: Vec<usize> = (0..data.len()).step_by(cs).collect();
    offs.reverse();
    for (n, &o) in offs.iter().enumerate() {
        let part = &data[o..(o + cs).min(data.len())];
        let (st, v) = api.put(&admin, &id, o, part).await;
        assert_eq!(st, 201, "{v}");
        if n == 1 {
            let (st, v) = api.put(&admin, &id, o, part).await;
            assert_eq!((st, &v["stored"]), (200, &json!(false)), "{v}");
        }
        manifest.push(json!({"offset": o, "length": part.len(), "sha256": sha(part)}));
    }
    manifest.reverse();
    let (st, v) = api
        .put(&admin, &id, cs / 2, &data[cs / 2..cs / 2 + cs])
        .await;
    assert_eq!(st, 200, "an overlap of held bytes adds nothing: {v}");
    let (st, v) = api
        .req(
            "POST",
            &format!("/api/v1/uploads/{id}/complete"),
            Some(&admin),
            Some(json!({"size": data.len(), "chunks": manifest})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sha256"], sha(&data));
    let done = api.wait_done(&admin, &id).await;
    assert_eq!(done["status"], "ready", "{done}");
    let (st, got) = api
        .bytes(&format!("/api/v1/images/{id}/qcow2"), &admin, None)
        .await;
    assert_eq!(st, 200);
    assert!(got == data, "stored image differs");
    let raw = qemu_raw(&q, &tmp.path().join("q.raw"));
    same_ranges(
        &api,
        &admin,
        &format!("/api/v1/images/{id}/raw"),
        &raw,
        &specs(raw.len(), cs),
    )
    .await;

    // A completion with the wrong SHA-256 stores nothing; the upload stays
    // and completes with the right one.
    let id2 = api.create(&admin, "CASE-ST", data.len()).await;
    for (i, part) in data.chunks(1 << 20).enumerate() {
        let (st, v) = api.put(&admin, &id2, i << 20, part).await;
        assert_eq!(st, 201, "{v}");
    }
    let (st, v) = api.complete(&admin, &id2, &"0".repeat(64)).await;
    assert_eq!(st, 422, "{v}");
    assert!(moto
        .list("stream", &format!("images/{id2}"))
        .await
        .is_empty());
    assert!(!moto
        .list("stream", &format!("uploads/{id2}/"))
        .await
        .is_empty());
    let (st, v) = api.complete(&admin, &id2, &sha(&data)).await;
    assert_eq!(st, 200, "{v}");

    // An aborted upload leaves no object.
    let id3 = api.create(&admin, "CASE-ST", 1000).await;
    let (st, _) = api.put(&admin, &id3, 0, &data[..500]).await;
    assert_eq!(st, 201);
    assert_eq!(
        moto.list("stream", &format!("uploads/{id3}/")).await.len(),
        1
    );
    let (st, _) = api
        .req(
            "DELETE",
            &format!("/api/v1/uploads/{id3}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(st, 204);

    let mut want = vec![format!("images/{id}.qcow2"), format!("images/{id2}.qcow2")];
    want.sort();
    let mut have = moto.list("stream", "").await;
    have.sort();
    assert_eq!(have, want);

    // The store going away is a temporary error (503), not a crash.
    let id4 = api.create(&admin, "CASE-ST", 1000).await;
    drop(moto);
    let (st, v) = api.put(&admin, &id4, 0, &data[..500]).await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (503, &json!("unavailable")),
        "{v}"
    );
    let (st, _) = api.get("/healthz", &admin).await;
    assert_eq!(st, 200);
}

/// A bucket that does not exist, or an unknown backend, stops the server
/// at start with a message that names the setting to fix.
#[test]
fn a_missing_bucket_stops_the_server_at_start() {
    let Some(moto) = Moto::start() else { return };
    let tmp = testkit::tempdir();
    let run = |env: &[(String, String)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_support-server"))
            .arg("--data-dir")
            .arg(tmp.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&moto.env("no-such-bucket", ""));
    assert!(err.contains("cannot reach bucket no-such-bucket"), "{err}");
    let mut env = moto.env("x", "");
    env.retain(|(k, _)| k != "SUPPORT_S3_BUCKET");
    let err = run(&env);
    assert!(err.contains("SUPPORT_S3_BUCKET"), "{err}");
    let err = run(&[("SUPPORT_STORAGE".to_string(), "ftp".to_string())]);
    assert!(err.contains("storage must be `local` or `s3`"), "{err}");
}
