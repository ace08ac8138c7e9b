//! Who is calling: bearer tokens and dashboard sessions, roles and ticket
//! scopes.
//!
//! Tokens are 256-bit random secrets, so one SHA-256 of the token is a
//! sufficient hash to store: a slow password KDF (argon2) only helps against
//! guessing low-entropy secrets, and nobody can enumerate 2^256 candidates.
//! The same holds for session ids.

use crate::db::{SessionRow, TokenRow};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every token, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "sst_";
/// Name of the dashboard session cookie.
pub const SESSION_COOKIE: &str = "support_session";
/// Header carrying the CSRF token on cookie-authenticated writes.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including tokens and deletion.
    Admin,
    /// Read everything, triage, download.
    Maintainer,
    /// Create upload grants for its tickets and read their images.
    TicketSystem,
    /// Upload into one ticket; read nothing.
    Uploader,
}

impl Role {
    /// The name stored and shown (`ticket-system`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Maintainer => "maintainer",
            Role::TicketSystem => "ticket-system",
            Role::Uploader => "uploader",
        }
    }
    /// Parses a stored or typed role name.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "maintainer" => Role::Maintainer,
            "ticket-system" => Role::TicketSystem,
            "uploader" => Role::Uploader,
            _ => return None,
        })
    }
}

/// A new random secret (`sst_` + 64 hex digits) and its stored hash.
pub fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    (secret, hash)
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Ticket references: 1-64 characters of `A-Z a-z 0-9 . _ -`, starting with
/// a letter or digit. Conservative so they are safe in URLs, logs, and file
/// names of downloads (they never become server paths).
pub fn valid_ticket(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A ticket scope: an exact ticket, `PREFIX*`, or `*` (all tickets).
pub fn valid_scope(s: &str) -> bool {
    s == "*" || valid_ticket(s) || s.strip_suffix('*').is_some_and(valid_ticket)
}

/// Whether `ticket` is inside `scope`.
pub fn scope_matches(scope: &str, ticket: &str) -> bool {
    match scope.strip_suffix('*') {
        Some(prefix) => ticket.starts_with(prefix),
        None => scope == ticket,
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token id.
    pub token_id: i64,
    /// Role.
    pub role: Role,
    /// Ticket scope (uploader: its ticket; ticket-system: its scope).
    pub ticket: Option<String>,
    /// Token name.
    pub name: String,
    /// Set when authenticated by the session cookie (then writes need CSRF).
    pub session_csrf: Option<String>,
}

impl Caller {
    /// 403 unless the role is one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} token may not do this",
                self.role.as_str()
            )))
        }
    }

    /// Whether the caller may see images of `ticket` (admins and
    /// maintainers see all; ticket systems their scope; uploaders nothing).
    pub fn can_read_ticket(&self, ticket: &str) -> bool {
        match self.role {
            Role::Admin | Role::Maintainer => true,
            Role::TicketSystem => self
                .ticket
                .as_deref()
                .is_some_and(|s| scope_matches(s, ticket)),
            Role::Uploader => false,
        }
    }

    /// Whether the caller may upload into (or create grants for) `ticket`.
    pub fn can_write_ticket(&self, ticket: &str) -> bool {
        match self.role {
            Role::Admin | Role::Maintainer => true,
            Role::TicketSystem | Role::Uploader => self
                .ticket
                .as_deref()
                .is_some_and(|s| scope_matches(s, ticket)),
        }
    }
}

fn token_usable(t: &TokenRow, now: i64) -> bool {
    t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now)
}

fn caller_from(t: &TokenRow, session: Option<&SessionRow>) -> Result<Caller, ApiError> {
    let role = Role::parse(&t.role).ok_or_else(|| ApiError::unauthorized("unknown token role"))?;
    Ok(Caller {
        token_id: t.id,
        role,
        ticket: t.ticket.clone(),
        name: t.name.clone(),
        session_csrf: session.map(|s| s.csrf.clone()),
    })
}

/// The session id in the request's cookie, if any.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Authenticates a request: `Authorization: Bearer` first, else the session
/// cookie. Cookie-authenticated state-changing requests must carry the
/// session's CSRF token in `X-CSRF-Token`.
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Caller, ApiError> {
    let now = crate::now();
    if let Some(v) = parts.headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let secret = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("use `Authorization: Bearer <token>`"))?
            .trim();
        let t = state
            .db
            .token_by_hash(&hash_secret(secret))
            .await?
            .filter(|t| token_usable(t, now))
            .ok_or_else(|| ApiError::unauthorized("the token is unknown, revoked or expired"))?;
        return caller_from(&t, None);
    }
    if let Some(sid) = session_cookie(&parts.headers) {
        let s = state
            .db
            .session_by_hash(&hash_secret(&sid), now)
            .await?
            .filter(|s| token_usable(&s.token, now))
            .ok_or_else(|| ApiError::unauthorized("the session expired; sign in again"))?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), s.csrf.as_bytes()) {
                return Err(ApiError::forbidden(
                    "missing or wrong X-CSRF-Token header for a cookie-authenticated request",
                ));
            }
        }
        return caller_from(&s.token, Some(&s));
    }
    Err(ApiError::unauthorized(
        "no credentials: send `Authorization: Bearer <token>`",
    ))
}

/// Compares secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, parts).await
    }
}

/// Parses `30d`, `12h`, `15m`, `90s`, `2w` (or bare seconds).
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_and_scopes() {
        assert!(valid_ticket("CASE-123"));
        assert!(valid_ticket("a.b_c-1"));
        for bad in ["", "../x", ".hidden", "a/b", "a b", "x%2e", &"a".repeat(65)] {
            assert!(!valid_ticket(bad), "{bad}");
        }
        assert!(valid_scope("*") && valid_scope("CASE-*") && valid_scope("CASE-1"));
        assert!(!valid_scope("**") && !valid_scope("*x"));
        assert!(scope_matches("CASE-*", "CASE-9"));
        assert!(!scope_matches("CASE-*", "OTHER-9"));
        assert!(scope_matches("*", "x"));
        assert!(!scope_matches("CASE-1", "CASE-10"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Some(30 * 86400));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn secrets_hash() {
        let (s, h) = new_secret();
        assert!(s.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_secret(&s), h);
        assert_eq!(h.len(), 64);
    }
}
