//! Dashboard sessions. A maintainer or admin signs in by posting a token
//! (JSON, so a cross-site form cannot do it); the server sets an HttpOnly,
//! SameSite=Strict cookie holding a random session id (stored hashed, with an
//! expiry) and returns a per-session CSRF token that every cookie-
//! authenticated state-changing request must echo in `X-CSRF-Token`.
//! Uploader and ticket-system tokens cannot sign in.

use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Sign-in request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// A maintainer or admin token.
    pub token: String,
}

/// Who is signed in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Role of the token.
    pub role: String,
    /// Name of the token.
    pub name: String,
    /// Echo this in `X-CSRF-Token` on POST/PUT/PATCH/DELETE made with the
    /// cookie. Absent when authenticated by a bearer token.
    pub csrf_token: Option<String>,
    /// RFC 3339; absent for bearer tokens.
    pub expires_at: Option<String>,
}

fn cookie(st: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if st.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}",
        auth::SESSION_COOKIE
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /api/v1/session`: signs in.
#[utoipa::path(post, path = "/api/v1/session", tag = "session", request_body = SignIn,
    responses((status = 200, body = SessionView, description = "signed in; the cookie is set"),
        (status = 401), (status = 403, description = "this role cannot sign in")))]
pub async fn create(State(st): State<AppState>, Json(req): Json<SignIn>) -> ApiResult<Response> {
    let now = crate::now();
    let t = st
        .db
        .token_by_hash(&auth::hash_secret(req.token.trim()))
        .await?
        .filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
        .ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))?;
    let role = Role::parse(&t.role).unwrap_or(Role::Uploader);
    if !matches!(role, Role::Admin | Role::Maintainer) {
        return Err(ApiError::forbidden(
            "only maintainer and admin tokens can sign in to the dashboard",
        ));
    }
    let (sid, sid_hash) = auth::new_secret();
    let (csrf, _) = auth::new_secret();
    let mut expires = now + st.config.session_ttl;
    if let Some(e) = t.expires_at {
        expires = expires.min(e);
    }
    st.db
        .create_session(&sid_hash, t.id, &csrf, now, expires)
        .await?;
    let view = SessionView {
        role: role.as_str().into(),
        name: t.name,
        csrf_token: Some(csrf),
        expires_at: Some(crate::rfc3339(expires)),
    };
    let mut resp = Json(view).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&st, &sid, expires - now));
    Ok(resp)
}

/// `GET /api/v1/session`: who is signed in.
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = SessionView), (status = 401)))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Json<SessionView>> {
    let mut expires_at = None;
    if caller.session_csrf.is_some() {
        if let Some(sid) = auth::session_cookie(&headers) {
            if let Some(s) = st
                .db
                .session_by_hash(&auth::hash_secret(&sid), crate::now())
                .await?
            {
                expires_at = Some(crate::rfc3339(s.expires_at));
            }
        }
    }
    Ok(Json(SessionView {
        role: caller.role.as_str().into(),
        name: caller.name,
        csrf_token: caller.session_csrf,
        expires_at,
    }))
}

/// `DELETE /api/v1/session`: signs out (needs `X-CSRF-Token` while the
/// session is live) and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    responses((status = 204), (status = 403)))]
pub async fn delete(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(sid) = auth::session_cookie(&headers) {
        let hash = auth::hash_secret(&sid);
        if let Some(s) = st.db.session_by_hash(&hash, crate::now()).await? {
            let sent = headers
                .get(auth::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth::constant_time_eq(sent.as_bytes(), s.csrf.as_bytes()) {
                return Err(ApiError::forbidden("missing or wrong X-CSRF-Token header"));
            }
        }
        st.db.delete_session(&hash).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&st, "", 0));
    Ok(resp)
}
