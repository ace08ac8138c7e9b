//! A small WebDriver client for the browser tests: it starts Debian's
//! `chromedriver`, opens a headless Chromium session and speaks the W3C
//! WebDriver protocol over plain HTTP/1.1 on loopback. Also a tiny HTTP
//! client the tests use for the server's REST API (no extra dependencies).
//!
//! Helpers panic with context: they are for tests only.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP response: status, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers with lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
/// `url` is `http://host:port/path`.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?} from {url}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .expect("chunk size hex");
            if n == 0 {
                break;
            }
            let mut buf = vec![0; n];
            r.read_exact(&mut buf).expect("chunk");
            body.extend_from_slice(&buf);
            line.clear();
            r.read_line(&mut line).expect("chunk end");
        }
    } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).expect("body");
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Response {
        status,
        headers,
        body,
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Decodes standard base64 (screenshots).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Whether Chromium and chromedriver are installed.
pub fn have_browser() -> bool {
    chromium().is_some() && testkit::have_tool("chromedriver")
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| testkit::find_tool(n))
}

/// A running chromedriver with one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// A found element's WebDriver reference.
#[derive(Clone, Debug)]
pub struct Element(String);

const ELEMENT_KEY: &str = "element-6066-11e4-a52f-4a5b5c2d8f66";

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile,
    /// a `width`x`height` window and, if `dark`, the dark colour scheme.
    pub fn start(width: u32, height: u32, dark: bool) -> Browser {
        let port = free_port();
        let driver = Command::new(testkit::find_tool("chromedriver").expect("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http("GET", &format!("{base}/status"), &[], b"").json()["value"]["ready"]
                    == json!(true)
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        if dark {
            args.push("--force-dark-mode".into());
            args.push("--blink-settings=preferredColorScheme=0".into());
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium().expect("chromium").to_string_lossy(),
                "args": args,
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = http(
            method,
            &format!("{}{path}", self.base),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        let v = r.json();
        if r.status >= 400 {
            panic!("WebDriver {method} {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    /// Navigates to a URL.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs synchronous JavaScript (`arguments[i]` are `args`); returns its value.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs an async JavaScript body (may `await`); returns what it returns.
    /// A thrown error panics with its message.
    pub fn js_async(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];\
             (async () => {{ {body} }})().then(v => done({{ok: v === undefined ? null : v}}), e => done({{err: String(e && e.stack || e)}}));"
        );
        let v = self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        );
        if let Some(e) = v.get("err") {
            panic!("script failed: {e}\n{body}");
        }
        v["ok"].clone()
    }

    /// Waits until a JavaScript expression is truthy; returns its value.
    pub fn wait_for(&self, expr: &str, what: &str) -> Value {
        self.wait_for_in(expr, what, Duration::from_secs(30))
    }

    /// [`Browser::wait_for`] with a timeout.
    pub fn wait_for_in(&self, expr: &str, what: &str, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(&format!("return ({expr});"), vec![]);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            if t0.elapsed() > timeout {
                let text = self.js(
                    "return document.body ? document.body.innerText.slice(0, 3000) : ''",
                    vec![],
                );
                panic!(
                    "timed out waiting for {what} ({expr}); page says:\n{}\nconsole:\n{}",
                    text.as_str().unwrap_or(""),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Finds one element by CSS selector (panics if absent).
    pub fn find(&self, css: &str) -> Element {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        // The W3C web element reference is the object's single value.
        let id = v
            .get(ELEMENT_KEY)
            .or_else(|| v.as_object().and_then(|o| o.values().next()))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element for {css}: {v}"));
        Element(id.to_string())
    }

    /// Clicks an element the way a person would (scrolls it into view).
    pub fn click(&self, el: &Element) {
        self.call("POST", &format!("/element/{}/click", el.0), Some(json!({})));
    }

    /// Types text into an element (WebDriver key codes allowed, e.g. "\u{E007}" = Enter).
    pub fn type_into(&self, el: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        );
    }

    /// Clears an input.
    pub fn clear(&self, el: &Element) {
        self.call("POST", &format!("/element/{}/clear", el.0), Some(json!({})));
    }

    /// An element's visible text.
    pub fn text(&self, el: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", el.0), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Sends keys to whatever has focus (W3C actions).
    pub fn keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "kbd", "actions": actions}]})),
        );
        self.call("DELETE", "/actions", None);
    }

    /// Reloads the page.
    pub fn refresh(&self) {
        self.call("POST", "/refresh", Some(json!({})));
    }

    /// Writes a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().expect("base64 screenshot"));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Resizes the window.
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// The browser console so far, one message a line.
    pub fn console(&self) -> String {
        let v = http(
            "POST",
            &format!("{}/session/{}/se/log", self.base, self.session),
            &[("Content-Type", "application/json")],
            br#"{"type":"browser"}"#,
        );
        let v = v.json();
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| format!("{} {}", m["level"], m["message"]))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(
                    "DELETE",
                    &format!("{}/session/{}", self.base, self.session),
                    &[],
                    b"",
                )
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
