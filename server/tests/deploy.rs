//! The deployment files at the repository root: `docker-compose.yml` must be
//! valid for Compose (checked by the real `docker-compose config`, or
//! `docker compose config`; no Docker engine is needed or used), and every
//! environment variable it or the `Dockerfile` sets for `support-server` must
//! be one the server reads, and every command it runs must exist.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent")
        .to_path_buf()
}

/// The Compose command line this machine has: `docker-compose` (v1.29,
/// Debian) or the `docker compose` plugin. `None` skips, except in CI.
fn compose() -> Option<Vec<String>> {
    let works = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if works(&["docker-compose"]) {
        return Some(vec!["docker-compose".into()]);
    }
    if works(&["docker", "compose"]) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("docker-compose is required in CI (apt-get install docker-compose)");
    }
    eprintln!("skipping: neither docker-compose nor `docker compose` is installed");
    None
}

/// `compose -f docker-compose.yml config [extra]` in the repository root,
/// with none of the file's variables set (its defaults apply).
fn compose_config(argv: &[String], extra: &[&str]) -> std::process::Output {
    let root = repo_root();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .arg("-f")
        .arg(root.join("docker-compose.yml"))
        .arg("--project-directory")
        .arg(&root)
        .arg("config")
        .args(extra)
        .current_dir(&root);
    for v in [
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "SUPPORT_BUCKET",
        "SUPPORT_PORT",
        "SUPPORT_PUBLIC_URL",
        "COMPOSE_FILE",
        "COMPOSE_PROJECT_NAME",
    ] {
        cmd.env_remove(v);
    }
    cmd.output().expect("run compose")
}

/// One service of the normalized `config` output.
#[derive(Debug, Default)]
struct Service {
    builds_here: bool,
    image: Option<String>,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    depends_on: BTreeMap<String, String>,
    ports: Vec<String>,
    has_healthcheck: bool,
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// Reads the services out of `config`'s normalized YAML (two-space
/// indentation, block style, one key per line; lists at their key's
/// indentation), which is all this test needs of YAML.
fn parse_services(yaml: &str) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    let mut section = String::new();
    let mut dep: Option<String> = None;
    for line in yaml.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 {
            in_services = text == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 {
            let name = text.trim_end_matches(':').to_string();
            services.insert(name.clone(), Service::default());
            current = Some(name);
            section.clear();
            continue;
        }
        let Some(svc) = current.as_ref().and_then(|c| services.get_mut(c)) else {
            continue;
        };
        if indent == 4 && !text.starts_with("- ") {
            let (key, value) = text.split_once(':').unwrap_or((text, ""));
            section = key.to_string();
            match key {
                "build" => svc.builds_here = true,
                "image" => svc.image = Some(unquote(value)),
                "healthcheck" => svc.has_healthcheck = true,
                _ => {}
            }
            continue;
        }
        match section.as_str() {
            "command" if indent == 4 => {
                svc.command.push(unquote(text.trim_start_matches("- ")));
            }
            "ports" if indent == 4 || indent == 6 => {
                if let Some(p) = text.strip_prefix("- ") {
                    svc.ports.push(unquote(p));
                } else if let Some(p) = text.strip_prefix("published: ") {
                    svc.ports.push(unquote(p));
                }
            }
            "environment" if indent == 6 => {
                let (k, v) = text.split_once(':').unwrap_or((text, ""));
                svc.environment.insert(k.to_string(), unquote(v));
            }
            "depends_on" if indent == 6 => {
                let name = text.trim_end_matches(':').to_string();
                svc.depends_on.insert(name.clone(), String::new());
                dep = Some(name);
            }
            "depends_on" if indent == 8 => {
                if let (Some(d), Some(c)) = (&dep, text.strip_prefix("condition: ")) {
                    svc.depends_on.insert(d.clone(), c.to_string());
                }
            }
            _ => {}
        }
    }
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_is_valid_and_speaks_the_servers_language() {
    let Some(argv) = compose() else {
        return;
    };
    let quiet = compose_config(&argv, &["-q"]);
    assert!(
        quiet.status.success(),
        "`{} config -q` rejects docker-compose.yml:\n{}",
        argv.join(" "),
        String::from_utf8_lossy(&quiet.stderr)
    );
    let out = compose_config(&argv, &[]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).expect("utf-8 config");
    let services = parse_services(&yaml);

    let known = support_server::config::env_names();
    let ours: Vec<(&String, &Service)> = services.iter().filter(|(_, s)| s.builds_here).collect();
    assert!(
        ours.len() >= 2,
        "expected the server and its migrate step built from the Dockerfile: {services:#?}"
    );
    let bin = env!("CARGO_BIN_EXE_support-server");
    for (name, svc) in &ours {
        for var in svc.environment.keys() {
            assert!(
                known.contains(var),
                "service {name} sets {var}, which support-server does not read; it reads {known:?}"
            );
        }
        // The command exists: `support-server <command...> --help` succeeds.
        assert!(!svc.command.is_empty(), "service {name} has no command");
        let help = Command::new(bin)
            .args(&svc.command)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "service {name} runs `support-server {}`, which the binary rejects:\n{}",
            svc.command.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );
    }

    // Migrations run once, before serving; serving waits for healthy
    // dependencies and the bucket; the dashboard is published.
    let migrate = &services["migrate"];
    assert_eq!(migrate.command, ["migrate"]);
    assert_eq!(migrate.depends_on["postgres"], "service_healthy");
    let serving: Vec<&Service> = ours
        .iter()
        .map(|(_, s)| *s)
        .filter(|s| s.command.first().map(String::as_str) == Some("serve"))
        .collect();
    assert!(!serving.is_empty(), "no service runs `serve`");
    for s in &serving {
        assert_eq!(s.depends_on["migrate"], "service_completed_successfully");
        assert_eq!(
            s.depends_on["createbucket"],
            "service_completed_successfully"
        );
        assert_eq!(s.depends_on["postgres"], "service_healthy");
        assert_eq!(
            s.environment.get("DATABASE_URL"),
            migrate.environment.get("DATABASE_URL"),
            "serve and migrate must use the same database"
        );
        assert!(s.environment["DATABASE_URL"].starts_with("postgres://"));
    }
    assert!(
        serving.iter().any(|s| !s.ports.is_empty()),
        "the dashboard port is not published"
    );
    for infra in ["postgres", "minio"] {
        assert!(
            services[infra].has_healthcheck,
            "{infra} needs a health check"
        );
    }
    assert_eq!(
        services["createbucket"].depends_on["minio"],
        "service_healthy"
    );
    // Somebody runs the jobs (analyses, reaper, retention).
    let role = |s: &Service| {
        s.command
            .iter()
            .position(|a| a == "--role")
            .and_then(|i| s.command.get(i + 1).cloned())
            .or_else(|| s.environment.get("SUPPORT_ROLE").cloned())
            .unwrap_or_else(|| "all".into())
    };
    assert!(
        serving.iter().any(|s| role(s) != "api"),
        "no service runs the jobs (--role worker or all)"
    );
    run_like_compose(migrate, &serving).await;
}

/// Replays the compose sequence with the real binary and each service's
/// own command and environment, only pointing the host names at local
/// stand-ins: a PostgreSQL of the test's own for `postgres`, moto for
/// `minio` (its bucket created like `createbucket` does), a loopback port
/// and a temporary data directory. `migrate` must succeed, then every
/// serving service must start on those settings, all at once on the same
/// database and bucket (every value parsed, the bucket reachable), and
/// answer its health check.
async fn run_like_compose(migrate: &Service, serving: &[&Service]) {
    let Some(pg) = common::Pg::start() else {
        return;
    };
    let Some(moto) = common::Moto::start() else {
        return;
    };
    let db = pg.url("support");
    let tmp = testkit::tempdir();
    let local = |env: &BTreeMap<String, String>| -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| {
                let v = match k.as_str() {
                    "DATABASE_URL" => db.clone(),
                    "SUPPORT_S3_ENDPOINT" => moto.endpoint.clone(),
                    "SUPPORT_LISTEN" => "127.0.0.1:0".into(),
                    "SUPPORT_DATA_DIR" => tmp.path().join("data").display().to_string(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    };
    for serve in serving {
        if let Some(bucket) = serve.environment.get("SUPPORT_S3_BUCKET") {
            moto.create_bucket(bucket).await;
        }
    }
    let bin = env!("CARGO_BIN_EXE_support-server");
    let out = Command::new(bin)
        .args(&migrate.command)
        .env_clear()
        .envs(local(&migrate.environment))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate with the compose environment failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for serve in serving {
        let mut child = Command::new(bin)
            .args(&serve.command)
            .env_clear()
            .envs(local(&serve.environment))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            for l in std::io::BufRead::lines(stderr).map_while(Result::ok) {
                if let Some(a) = l.strip_prefix("support-server: listening on http://") {
                    let _ = tx.send(Ok(a.to_string()));
                }
                log.push_str(&l);
                log.push('\n');
            }
            let _ = tx.send(Err(log));
        });
        children.push(child);
        addrs.push((serve.command.join(" "), rx));
    }
    let mut results = Vec::new();
    for (cmd, rx) in addrs {
        let addr = rx.recv_timeout(std::time::Duration::from_secs(60));
        let status = match &addr {
            Ok(Ok(a)) => Some(http_get_status(a, "/healthz")),
            _ => None,
        };
        results.push((cmd, status, addr));
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    for (cmd, status, addr) in results {
        assert_eq!(
            status,
            Some(200),
            "`support-server {cmd}` with the compose environment did not come up: {addr:?}"
        );
    }
}

#[test]
fn dockerfile_sets_only_variables_the_server_reads() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let known = support_server::config::env_names();
    // Join continuation lines, then read `ENV K=V K2=V2`.
    let joined = text.replace("\\\n", " ");
    let mut seen = 0;
    for line in joined.lines() {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        for pair in rest.split_whitespace() {
            let var = pair.split('=').next().unwrap_or(pair);
            assert!(
                known.iter().any(|k| k == var),
                "the Dockerfile sets {var}, which support-server does not read"
            );
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected ENV SUPPORT_DATA_DIR and SUPPORT_LISTEN"
    );
    // The health check's URL answers 200 on a real server.
    let check = joined
        .lines()
        .find(|l| l.trim().starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let path = check
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://127.0.0.1:8080"))
        .expect("the health check queries http://127.0.0.1:8080/...");
    let tmp = testkit::tempdir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_support-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps reading so the server never writes into a closed pipe.
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            if let Some(a) = l.strip_prefix("support-server: listening on http://") {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(60)).ok();
    let status = addr.map(|a| http_get_status(&a, path));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, Some(200), "GET {path} on a fresh server");
}

/// Status code of a plain HTTP/1.1 GET.
fn http_get_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
