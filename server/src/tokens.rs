//! Token management: shared by the CLI (`support-server token ...`) and the
//! API (`/api/v1/tokens` for admins, `/api/v1/grants` for ticket systems).

use crate::auth::{Caller, Role};
use crate::db::{Database, TokenRow};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default lifetime of an upload grant.
const GRANT_DEFAULT_TTL: i64 = 7 * 86400;
/// Longest lifetime of an upload grant.
const GRANT_MAX_TTL: i64 = 90 * 86400;

/// Checks a role/scope combination; the error says what to change.
pub fn check_scope(role: Role, ticket: Option<&str>) -> Result<(), String> {
    match (role, ticket) {
        (Role::Uploader, Some(t)) if crate::auth::valid_ticket(t) => Ok(()),
        (Role::Uploader, _) => Err(
            "an uploader token needs --ticket with one ticket reference (A-Z a-z 0-9 . _ -)".into(),
        ),
        (Role::TicketSystem, Some(t)) if crate::auth::valid_scope(t) => Ok(()),
        (Role::TicketSystem, _) => Err(
            "a ticket-system token needs --ticket: a ticket, PREFIX* or * for all tickets".into(),
        ),
        (Role::Admin | Role::Maintainer, None) => Ok(()),
        (Role::Admin | Role::Maintainer, Some(_)) => {
            Err("admin and maintainer tokens are not scoped to tickets; drop --ticket".into())
        }
    }
}

/// Creates a token; returns its id and the secret (shown once).
pub async fn create_token(
    db: &dyn Database,
    role: Role,
    ticket: Option<&str>,
    name: &str,
    ttl: Option<i64>,
) -> Result<(i64, String, Option<i64>), String> {
    check_scope(role, ticket)?;
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err("the name is at most 100 characters without control characters".into());
    }
    let (secret, hash) = crate::auth::new_secret();
    let now = crate::now();
    let expires = ttl.map(|t| now.saturating_add(t));
    let id = db
        .create_token(&hash, role.as_str(), ticket, name, now, expires)
        .await
        .map_err(|e| format!("cannot store the token: {e}"))?;
    Ok((id, secret, expires))
}

/// A token as listed (never the secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Id.
    pub id: i64,
    /// Role.
    pub role: String,
    /// Ticket scope.
    pub ticket: Option<String>,
    /// Name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// RFC 3339.
    pub revoked_at: Option<String>,
}

impl From<&TokenRow> for TokenView {
    fn from(t: &TokenRow) -> Self {
        TokenView {
            id: t.id,
            role: t.role.clone(),
            ticket: t.ticket.clone(),
            name: t.name.clone(),
            created_at: crate::rfc3339(t.created_at),
            expires_at: t.expires_at.map(crate::rfc3339),
            revoked_at: t.revoked_at.map(crate::rfc3339),
        }
    }
}

/// A newly created token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// Id.
    pub id: i64,
    /// The secret: shown only now.
    pub token: String,
    /// Role.
    pub role: String,
    /// Ticket scope.
    pub ticket: Option<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// Where an uploader creates uploads.
    pub upload_url: String,
}

/// Request to create a token (admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// admin, maintainer, ticket-system or uploader.
    pub role: String,
    /// Scope (see `token create --help`).
    pub ticket: Option<String>,
    /// Holder.
    #[serde(default)]
    pub name: String,
    /// Lifetime (`30d`, `12h`...); never expires when absent.
    pub expires: Option<String>,
}

/// Request for an upload grant (an uploader token for one ticket).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// The ticket the customer uploads into.
    pub ticket: String,
    /// Holder (e.g. the customer's name).
    #[serde(default)]
    pub name: String,
    /// Lifetime (`7d` by default, at most `90d`).
    pub expires: Option<String>,
}

fn new_token_view(
    st: &AppState,
    id: i64,
    token: String,
    role: Role,
    ticket: Option<String>,
    exp: Option<i64>,
) -> NewToken {
    NewToken {
        id,
        token,
        role: role.as_str().into(),
        ticket,
        expires_at: exp.map(crate::rfc3339),
        upload_url: format!(
            "{}/api/v1/uploads",
            st.config.public_url.trim_end_matches('/')
        ),
    }
}

fn ttl(s: &Option<String>) -> ApiResult<Option<i64>> {
    s.as_deref()
        .map(|s| {
            crate::auth::parse_duration(s).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_duration",
                    "expires is a duration like 90s, 15m, 12h, 7d, 2w",
                )
            })
        })
        .transpose()
}

/// `POST /api/v1/grants` (ticket-system for its tickets, admin,
/// maintainer): an uploader token for one ticket, to hand to a customer.
#[utoipa::path(post, path = "/api/v1/grants", tag = "tokens", request_body = CreateGrant,
    responses((status = 201, body = NewToken), (status = 400), (status = 403)), security(("bearer" = [])))]
pub async fn create_grant(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateGrant>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    caller.require(&[Role::Admin, Role::Maintainer, Role::TicketSystem])?;
    if !crate::auth::valid_ticket(&req.ticket) {
        return Err(ApiError::bad_request(
            "bad_ticket",
            "a ticket reference is 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        ));
    }
    if !caller.can_write_ticket(&req.ticket) {
        return Err(ApiError::forbidden(format!(
            "this token may not create grants for ticket {}",
            req.ticket
        )));
    }
    let t = ttl(&req.expires)?
        .unwrap_or(GRANT_DEFAULT_TTL)
        .min(GRANT_MAX_TTL);
    let (id, secret, exp) = create_token(
        st.db.as_ref(),
        Role::Uploader,
        Some(&req.ticket),
        &req.name,
        Some(t),
    )
    .await
    .map_err(|e| ApiError::bad_request("bad_grant", e))?;
    tracing::info!(token = id, ticket = %req.ticket, by = caller.token_id, "upload grant created");
    Ok((
        StatusCode::CREATED,
        Json(new_token_view(
            &st,
            id,
            secret,
            Role::Uploader,
            Some(req.ticket),
            exp,
        )),
    ))
}

/// `GET /api/v1/tokens` (admin)
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenView>), (status = 403)), security(("bearer" = [])))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<TokenView>>> {
    caller.require(&[Role::Admin])?;
    Ok(Json(
        st.db
            .list_tokens()
            .await?
            .iter()
            .map(TokenView::from)
            .collect(),
    ))
}

/// `POST /api/v1/tokens` (admin)
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = NewToken), (status = 400), (status = 403)), security(("bearer" = [])))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateToken>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    caller.require(&[Role::Admin])?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(
            "bad_role",
            "role is admin, maintainer, ticket-system or uploader",
        )
    })?;
    let t = ttl(&req.expires)?;
    let (id, secret, exp) = create_token(st.db.as_ref(), role, req.ticket.as_deref(), &req.name, t)
        .await
        .map_err(|e| ApiError::bad_request("bad_token", e))?;
    Ok((
        StatusCode::CREATED,
        Json(new_token_view(&st, id, secret, role, req.ticket, exp)),
    ))
}

/// `DELETE /api/v1/tokens/{id}` (admin): revokes.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    if st.db.revoke_token(id, crate::now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
