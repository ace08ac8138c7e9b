//! The OpenAPI document of API v1, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `support-server token create` or a grant; \
                         dashboard sessions use the `support_session` cookie plus `X-CSRF-Token`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// API v1.
#[derive(OpenApi)]
#[openapi(
    info(title = "support-server API", version = "1",
        description = "Uploads, analyses and triage of ext filesystem metadata images. \
            The upload protocol is described in docs/upload-protocol.md."),
    modifiers(&Bearer),
    paths(
        crate::upload::limits_handler, crate::upload::create, crate::upload::get,
        crate::upload::abort, crate::upload::put_chunk, crate::upload::complete,
        crate::images::list, crate::images::get, crate::images::patch, crate::images::delete,
        crate::images::superblock, crate::images::groups, crate::images::findings,
        crate::images::check, crate::images::qcow2, crate::images::raw,
        crate::images::inode, crate::images::dir,
        crate::tokens::create_grant, crate::tokens::list, crate::tokens::create, crate::tokens::revoke,
        crate::webhooks::create, crate::webhooks::list, crate::webhooks::delete,
        crate::session::create, crate::session::get, crate::session::delete,
        crate::tickets::get, crate::tickets::close, crate::tickets::reopen,
        crate::admin::uploads, crate::admin::reap, crate::admin::retention,
    ),
    components(schemas(
        crate::upload::Limits, crate::upload::ByteRange, crate::upload::CreateUpload,
        crate::upload::UploadView, crate::upload::ChunkAck, crate::upload::CompleteUpload,
        crate::images::ImageView, crate::images::ImageList, crate::images::TriagePatch,
        crate::tokens::TokenView, crate::tokens::NewToken, crate::tokens::CreateToken,
        crate::tokens::CreateGrant, crate::webhooks::CreateWebhook, crate::webhooks::WebhookView,
        crate::webhooks::WebhookEvent, crate::session::SignIn, crate::session::SessionView,
        crate::tickets::TicketView, crate::admin::AdminUpload, crate::admin::AdminUploadList,
        crate::admin::ReapReport, crate::admin::RetentionReport,
    ))
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
