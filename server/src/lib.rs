//! `support-server`: stores, indexes, checks, converts and analyses uploaded
//! ext filesystem metadata images behind a REST API and a web dashboard.
//!
//! The crate is a library so tests can build the router with [`app`] and
//! drive it directly; `main.rs` is a thin CLI over it.
//!
//! - [`db`]: one [`db::Database`] trait, SQLite and PostgreSQL behind it;
//! - [`storage`]: image bytes (local directory now, object storage later);
//! - [`upload`]: the chunked, resumable, verified upload protocol;
//! - [`jobs`]: the database-backed job queue and its workers (ingest,
//!   webhooks) and the reaper of abandoned uploads;
//! - [`ingest`]: the QCOW2 check and the filesystem analyses;
//! - [`images`]: the images API (list, results, downloads, triage);
//! - [`auth`]: tokens, roles, sessions;
//! - [`tickets`], [`retention`], [`admin`]: tickets' lifecycle, the
//!   retention policy and the reaping of expired uploads, and their admin API;
//! - [`web`]: the dashboard's static files.

pub mod admin;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod images;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod retention;
pub mod server;
pub mod session;
pub mod storage;
pub mod tickets;
pub mod tokens;
pub mod upload;
pub mod web;
pub mod webhooks;

pub use server::{app, AppState};

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC) text of Unix seconds.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Parses RFC 3339 text or Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|d| d.unix_timestamp())
}

/// A fresh random id: 32 lowercase hex digits (128 bits).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
