//! The dashboard's static files, embedded from `web/` at compile time and
//! served at `/` (the web dashboard owns the content; this module only
//! serves it). Paths without a file extension get `index.html`, so the
//! dashboard can use client-side routes.
//!
//! Pages are sent with a strict Content-Security-Policy: scripts and styles
//! from the server itself only (no inline scripts, no CDN), no framing.

use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "../web"]
struct Assets;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Fallback handler: static files, or a JSON 404 under `/api/`.
pub async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") || path == "api" {
        return crate::error::ApiError::not_found("endpoint").into_response();
    }
    let path = if path.is_empty() { "index.html" } else { path };
    let (name, file) = match Assets::get(path) {
        Some(f) => (path, f),
        None if !path.rsplit('/').next().unwrap_or("").contains('.') => {
            match Assets::get("index.html") {
                Some(f) => ("index.html", f),
                None => {
                    return (StatusCode::NOT_FOUND, "no dashboard in this build").into_response()
                }
            }
        }
        None => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut resp = file.data.into_owned().into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let cache = if name == "index.html" {
        "no-cache"
    } else {
        "public, max-age=300"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}
