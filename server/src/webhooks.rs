//! Webhooks: a ticket system registers a URL for its ticket(s); when an image
//! of such a ticket becomes `ready` or `failed`, the server POSTs a JSON
//! event signed with HMAC-SHA256, as a job retried with backoff. The
//! delivery jobs are enqueued in the transaction that finishes the ingest
//! job, so each event is queued once even when a replica dies mid-job and
//! another takes the job over. A delivery is repeated (same
//! `X-Support-Delivery`) only if a worker dies after the receiver accepted
//! it and before recording that: receivers deduplicate on that header.
//!
//! Receivers verify `X-Support-Signature: sha256=<hex>`, the HMAC-SHA256 of
//! the raw request body keyed with the secret returned at registration.

use crate::auth::{Caller, Role};
use crate::db::{Job, NewJob};
use crate::error::{ApiError, ApiResult};
use crate::jobs::Outcome;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// Attempts per delivery (backoff 2 s, 4 s, ... between them).
const MAX_ATTEMPTS: i64 = 10;

/// Request to register a webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Ticket, `PREFIX*` or `*` (admins only, or ticket systems with that scope).
    pub ticket: String,
    /// `http://` or `https://` URL receiving the events.
    pub url: String,
}

/// A registered webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// Id.
    pub id: i64,
    /// Ticket scope.
    pub ticket: String,
    /// Target URL.
    pub url: String,
    /// HMAC key; returned only when the webhook is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// The body POSTed to a webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent {
    /// `image.ready` or `image.failed`.
    pub event: String,
    /// Unique per event (the same across retries of one event).
    pub delivery: String,
    /// RFC 3339 time of this attempt.
    pub sent_at: String,
    /// Link to the image in the API.
    pub url: String,
    /// The image.
    pub image: crate::images::ImageView,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    webhook_id: i64,
    event: String,
    delivery: String,
}

fn may_register(caller: &Caller, ticket: &str) -> bool {
    match caller.role {
        Role::Admin => true,
        Role::TicketSystem => caller.ticket.as_deref().is_some_and(|own| {
            own == ticket
                || (crate::auth::valid_ticket(ticket) && crate::auth::scope_matches(own, ticket))
        }),
        _ => false,
    }
}

/// `POST /api/v1/webhooks` (admin, ticket-system)
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookView), (status = 400), (status = 403)),
    security(("bearer" = [])))]
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    caller.require(&[Role::Admin, Role::TicketSystem])?;
    if !crate::auth::valid_scope(&req.ticket) {
        return Err(ApiError::bad_request(
            "bad_ticket",
            "ticket must be a ticket reference, PREFIX* or *",
        ));
    }
    if !may_register(&caller, &req.ticket) {
        return Err(ApiError::forbidden(format!(
            "this token may not register webhooks for {}",
            req.ticket
        )));
    }
    let ok = req.url.len() <= 2048
        && reqwest::Url::parse(&req.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        return Err(ApiError::bad_request(
            "bad_url",
            "url must be an absolute http:// or https:// URL",
        ));
    }
    let (secret, _) = crate::auth::new_secret();
    let secret = secret.replacen(crate::auth::TOKEN_PREFIX, "whsec_", 1);
    let now = crate::now();
    let id = st
        .db
        .create_webhook(&req.ticket, &req.url, &secret, caller.token_id, now)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(WebhookView {
            id,
            ticket: req.ticket,
            url: req.url,
            secret: Some(secret),
            created_at: crate::rfc3339(now),
        }),
    ))
}

/// `GET /api/v1/webhooks`: the webhooks the caller may manage.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = Vec<WebhookView>), (status = 403)), security(("bearer" = [])))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<WebhookView>>> {
    caller.require(&[Role::Admin, Role::TicketSystem])?;
    let hooks = st.db.list_webhooks().await?;
    Ok(Json(
        hooks
            .into_iter()
            .filter(|h| may_register(&caller, &h.ticket))
            .map(|h| WebhookView {
                id: h.id,
                ticket: h.ticket,
                url: h.url,
                secret: None,
                created_at: crate::rfc3339(h.created_at),
            })
            .collect(),
    ))
}

/// `DELETE /api/v1/webhooks/{id}`
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = i64, Path, description = "webhook id")),
    responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin, Role::TicketSystem])?;
    let hooks = st.db.list_webhooks().await?;
    let visible = hooks
        .iter()
        .any(|h| h.id == id && may_register(&caller, &h.ticket));
    if !visible || !st.db.delete_webhook(id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The deliveries of `event` for an image of `ticket`: one job per
/// webhook whose scope matches, for the caller to enqueue in the same
/// transaction that changes the image (so an event is queued exactly once,
/// whichever replica's worker ends the job).
pub async fn deliveries(
    state: &AppState,
    image_id: &str,
    ticket: &str,
    event: &str,
) -> crate::db::DbResult<Vec<NewJob>> {
    let hooks = state.db.list_webhooks().await?;
    let now = crate::now();
    Ok(hooks
        .iter()
        .filter(|h| crate::auth::scope_matches(&h.ticket, ticket))
        .map(|h| {
            let payload = Payload {
                webhook_id: h.id,
                event: event.to_string(),
                delivery: crate::new_id(),
            };
            NewJob {
                kind: "webhook",
                image_id: Some(image_id.to_string()),
                payload: serde_json::to_string(&payload).unwrap_or_default(),
                run_at: now,
                max_attempts: MAX_ATTEMPTS,
            }
        })
        .collect())
}

/// HMAC-SHA256 of `body` with `secret`, as hex.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC accepts keys of any length
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Runs one delivery attempt (a `webhook` job).
pub async fn deliver(state: &AppState, job: &Job) -> Outcome {
    let Ok(p) = serde_json::from_str::<Payload>(&job.payload) else {
        return Outcome::Fail("malformed webhook job".into());
    };
    let hooks = match state.db.list_webhooks().await {
        Ok(h) => h,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let Some(hook) = hooks.into_iter().find(|h| h.id == p.webhook_id) else {
        return Outcome::Done; // unregistered meanwhile
    };
    let Some(image_id) = &job.image_id else {
        return Outcome::Fail("webhook job without an image".into());
    };
    let img = match state.db.get_image(image_id).await {
        Ok(Some(i)) => i,
        Ok(None) => return Outcome::Done,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let event = WebhookEvent {
        event: p.event.clone(),
        delivery: p.delivery.clone(),
        sent_at: crate::rfc3339(crate::now()),
        url: format!(
            "{}/api/v1/images/{}",
            state.config.public_url.trim_end_matches('/'),
            img.id
        ),
        image: crate::images::ImageView::from_row(&img),
    };
    let body = match serde_json::to_vec(&event) {
        Ok(b) => b,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let sig = sign(&hook.secret, &body);
    let r = state
        .http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-support-event", &p.event)
        .header("x-support-delivery", &p.delivery)
        .header("x-support-signature", format!("sha256={sig}"))
        .body(body)
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => {
            state.metrics.webhook_sent(true);
            Outcome::Done
        }
        Ok(resp) => {
            state.metrics.webhook_sent(false);
            Outcome::Retry(format!("{} answered {}", hook.url, resp.status()))
        }
        Err(e) => {
            state.metrics.webhook_sent(false);
            Outcome::Retry(format!("cannot reach {}: {e}", hook.url))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
