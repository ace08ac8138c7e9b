//! Tickets' lifecycle: open until a maintainer, an admin or the ticket's
//! ticket system closes it. The retention policy deletes the images of
//! tickets closed long enough ago (see [`crate::retention`]); reopening
//! stops that.

use crate::auth::{Caller, Role};
use crate::db::TicketRow;
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A ticket as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TicketView {
    /// The ticket reference.
    pub ticket: String,
    /// `open` or `closed`.
    pub state: String,
    /// RFC 3339, when it was closed.
    pub closed_at: Option<String>,
    /// Images of the ticket (any status).
    pub images: i64,
    /// RFC 3339: when the retention policy deletes the images uploaded
    /// before the closing; absent when open or when retention is off.
    pub delete_images_after: Option<String>,
}

impl TicketView {
    fn new(t: &TicketRow, retention: Option<i64>) -> TicketView {
        TicketView {
            ticket: t.ticket.clone(),
            state: if t.closed_at.is_some() {
                "closed"
            } else {
                "open"
            }
            .into(),
            closed_at: t.closed_at.map(crate::rfc3339),
            images: t.images,
            delete_images_after: t
                .closed_at
                .zip(retention)
                .map(|(c, r)| crate::rfc3339(c.saturating_add(r))),
        }
    }
}

/// Admins and maintainers: any ticket; ticket systems: their scope.
fn authorize(caller: &Caller, ticket: &str) -> ApiResult<()> {
    caller.require(&[Role::Admin, Role::Maintainer, Role::TicketSystem])?;
    if !crate::auth::valid_ticket(ticket) {
        return Err(ApiError::bad_request(
            "bad_ticket",
            "a ticket is 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        ));
    }
    if !caller.can_read_ticket(ticket) {
        return Err(ApiError::forbidden(format!(
            "this token may not manage ticket {ticket}"
        )));
    }
    Ok(())
}

async fn view(st: &AppState, ticket: &str) -> ApiResult<Json<TicketView>> {
    let t = st.db.get_ticket(ticket).await?;
    Ok(Json(TicketView::new(&t, st.config.closed_ticket_retention)))
}

/// `GET /api/v1/tickets/{ticket}`
#[utoipa::path(get, path = "/api/v1/tickets/{ticket}", tag = "tickets",
    params(("ticket" = String, Path, description = "ticket reference")),
    responses((status = 200, body = TicketView), (status = 400), (status = 403)),
    security(("bearer" = [])))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(ticket): Path<String>,
) -> ApiResult<Json<TicketView>> {
    authorize(&caller, &ticket)?;
    view(&st, &ticket).await
}

/// `POST /api/v1/tickets/{ticket}/close`: closes the ticket (idempotent:
/// the first closing time is kept).
#[utoipa::path(post, path = "/api/v1/tickets/{ticket}/close", tag = "tickets",
    params(("ticket" = String, Path, description = "ticket reference")),
    responses((status = 200, body = TicketView), (status = 400), (status = 403)),
    security(("bearer" = [])))]
pub async fn close(
    State(st): State<AppState>,
    caller: Caller,
    Path(ticket): Path<String>,
) -> ApiResult<Json<TicketView>> {
    authorize(&caller, &ticket)?;
    let now = crate::now();
    st.db
        .set_ticket_closed(&ticket, Some(now), Some(caller.token_id), now)
        .await?;
    view(&st, &ticket).await
}

/// `POST /api/v1/tickets/{ticket}/reopen`: reopens the ticket; its images
/// are kept again.
#[utoipa::path(post, path = "/api/v1/tickets/{ticket}/reopen", tag = "tickets",
    params(("ticket" = String, Path, description = "ticket reference")),
    responses((status = 200, body = TicketView), (status = 400), (status = 403)),
    security(("bearer" = [])))]
pub async fn reopen(
    State(st): State<AppState>,
    caller: Caller,
    Path(ticket): Path<String>,
) -> ApiResult<Json<TicketView>> {
    authorize(&caller, &ticket)?;
    st.db
        .set_ticket_closed(&ticket, None, None, crate::now())
        .await?;
    view(&st, &ticket).await
}
