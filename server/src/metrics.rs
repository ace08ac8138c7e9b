//! Prometheus metrics in the text exposition format, kept by hand: a few
//! counters, request latency histograms per route, and gauges read from the
//! database at scrape time (jobs by state, images by status).

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The process's counters.
#[derive(Default)]
pub struct Metrics {
    uploads_created: AtomicU64,
    uploads_completed: AtomicU64,
    uploads_expired: AtomicU64,
    upload_bytes: AtomicU64,
    chunk_bytes: AtomicU64,
    chunks_stored: AtomicU64,
    chunks_rejected: AtomicU64,
    images_ready: AtomicU64,
    images_failed: AtomicU64,
    webhooks_ok: AtomicU64,
    webhooks_failed: AtomicU64,
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    /// An upload was created.
    pub fn upload_created(&self) {
        self.uploads_created.fetch_add(1, Relaxed);
    }
    /// An upload was verified and completed.
    pub fn upload_completed(&self, bytes: u64) {
        self.uploads_completed.fetch_add(1, Relaxed);
        self.upload_bytes.fetch_add(bytes, Relaxed);
    }
    /// An abandoned upload was reaped.
    pub fn upload_expired(&self) {
        self.uploads_expired.fetch_add(1, Relaxed);
    }
    /// A chunk was stored.
    pub fn chunk_stored(&self, bytes: u64) {
        self.chunks_stored.fetch_add(1, Relaxed);
        self.chunk_bytes.fetch_add(bytes, Relaxed);
    }
    /// A chunk was refused (checksum, overlap).
    pub fn chunk_rejected(&self) {
        self.chunks_rejected.fetch_add(1, Relaxed);
    }
    /// An image finished its pipeline.
    pub fn image_finished(&self, ready: bool) {
        if ready {
            &self.images_ready
        } else {
            &self.images_failed
        }
        .fetch_add(1, Relaxed);
    }
    /// A webhook delivery attempt ended.
    pub fn webhook_sent(&self, ok: bool) {
        if ok {
            &self.webhooks_ok
        } else {
            &self.webhooks_failed
        }
        .fetch_add(1, Relaxed);
    }

    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let h = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Renders the counters and histograms.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "support_uploads_created_total",
                "Uploads created.",
                &self.uploads_created,
            ),
            (
                "support_uploads_completed_total",
                "Uploads verified and completed.",
                &self.uploads_completed,
            ),
            (
                "support_uploads_expired_total",
                "Abandoned uploads reaped.",
                &self.uploads_expired,
            ),
            (
                "support_upload_bytes_total",
                "Bytes of completed uploads.",
                &self.upload_bytes,
            ),
            (
                "support_chunk_bytes_total",
                "Bytes of chunks stored.",
                &self.chunk_bytes,
            ),
            (
                "support_chunks_stored_total",
                "Chunks stored.",
                &self.chunks_stored,
            ),
            (
                "support_chunks_rejected_total",
                "Chunks refused (checksum or overlap).",
                &self.chunks_rejected,
            ),
            (
                "support_images_ready_total",
                "Images that became ready.",
                &self.images_ready,
            ),
            (
                "support_images_failed_total",
                "Images that failed.",
                &self.images_failed,
            ),
            (
                "support_webhooks_delivered_total",
                "Webhook deliveries accepted.",
                &self.webhooks_ok,
            ),
            (
                "support_webhooks_failed_total",
                "Webhook delivery attempts that failed.",
                &self.webhooks_failed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "support_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to the response head, by route.\n# TYPE {name} histogram"
        );
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), h) in m.iter() {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Middleware: latency per matched route (never the raw path, so ids do
/// not explode the label set).
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    st.metrics.observe(
        &method,
        &route,
        resp.status().as_u16(),
        t.elapsed().as_secs_f64(),
    );
    resp
}

/// `GET /metrics`
pub async fn serve(State(st): State<AppState>) -> Response {
    let mut out = String::new();
    st.metrics.render(&mut out);
    st.store.render_metrics(&mut out);
    if let Ok(jobs) = st.db.job_counts().await {
        let name = "support_jobs";
        let _ = writeln!(
            out,
            "# HELP {name} Jobs in the queue by state.\n# TYPE {name} gauge"
        );
        for state in ["queued", "running", "done", "failed"] {
            let n = jobs
                .iter()
                .find(|(s, _)| s == state)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
        }
    }
    if let Ok(images) = st.db.image_counts().await {
        let name = "support_images";
        let _ = writeln!(out, "# HELP {name} Images by status.\n# TYPE {name} gauge");
        for status in crate::images::STATUSES {
            let n = images
                .iter()
                .find(|(s, _)| s == status)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {n}");
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}
