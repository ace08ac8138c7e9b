//! The application state, the router ([`app`]) and the serving loop with
//! workers and graceful shutdown.

use crate::config::Config;
use crate::db::Database;
use crate::storage::ImageStore;
use crate::{
    admin, images, jobs, metrics, openapi, retention, session, tickets, tokens, upload, web,
    webhooks,
};
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Everything handlers share: explicit, cloned per request (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Arc<dyn Database>,
    /// Image bytes.
    pub store: Arc<dyn ImageStore>,
    /// Resolved configuration.
    pub config: Arc<Config>,
    /// This process among the replicas (random per start): owner of its
    /// job leases and upload locks.
    pub instance: String,
    /// Prometheus counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Wakes the workers when a job is enqueued (they also poll).
    pub wake: Arc<Notify>,
    /// HTTP client for webhooks.
    pub http: reqwest::Client,
}

impl AppState {
    /// Opens the data directory, the database (migrating it) and the store.
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}; choose another with --data-dir",
                config.data_dir.display()
            )
        })?;
        let db = crate::db::connect(config.database_url.as_deref(), &config.data_dir).await?;
        let store = crate::storage::open(&config.storage, &config.data_dir).await?;
        Ok(AppState::from_parts(db, store, config))
    }

    /// Builds a state from already opened parts (tests).
    pub fn from_parts(db: Arc<dyn Database>, store: Arc<dyn ImageStore>, config: Config) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("support-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        AppState {
            db,
            store,
            config: Arc::new(config),
            instance: crate::new_id(),
            metrics: Arc::new(metrics::Metrics::default()),
            wake: Arc::new(Notify::new()),
            http,
        }
    }
}

async fn healthz(
    axum::extract::State(st): axum::extract::State<AppState>,
) -> (StatusCode, Json<serde_json::Value>) {
    match st.db.count_tokens().await {
        Ok(_) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "status": "ok",
                "database": st.db.backend(),
                "role": st.config.role.as_str(),
                "instance": st.instance,
            })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable", "database": st.db.backend()})),
            )
        }
    }
}

/// Small JSON bodies everywhere except chunk uploads.
const JSON_BODY_LIMIT: usize = 1 << 20;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let chunk_limit = state.config.max_chunk_size as usize;
    let request_timeout = Duration::from_secs(state.config.request_timeout.max(1) as u64);
    let api = Router::new()
        .route("/api/v1/uploads", post(upload::create))
        .route("/api/v1/uploads/limits", get(upload::limits_handler))
        .route(
            "/api/v1/uploads/{id}",
            get(upload::get).delete(upload::abort),
        )
        .route(
            "/api/v1/uploads/{id}/chunks/{offset}",
            put(upload::put_chunk).layer(DefaultBodyLimit::max(chunk_limit)),
        )
        .route("/api/v1/uploads/{id}/complete", post(upload::complete))
        .route("/api/v1/images", get(images::list))
        .route(
            "/api/v1/images/{id}",
            get(images::get).patch(images::patch).delete(images::delete),
        )
        .route("/api/v1/images/{id}/superblock", get(images::superblock))
        .route("/api/v1/images/{id}/groups", get(images::groups))
        .route("/api/v1/images/{id}/findings", get(images::findings))
        .route("/api/v1/images/{id}/check", get(images::check))
        .route("/api/v1/images/{id}/qcow2", get(images::qcow2))
        .route("/api/v1/images/{id}/raw", get(images::raw))
        .route("/api/v1/images/{id}/inodes/{ino}", get(images::inode))
        .route("/api/v1/images/{id}/dirs/{ino}", get(images::dir))
        .route("/api/v1/tickets/{ticket}", get(tickets::get))
        .route("/api/v1/tickets/{ticket}/close", post(tickets::close))
        .route("/api/v1/tickets/{ticket}/reopen", post(tickets::reopen))
        .route("/api/v1/admin/uploads", get(admin::uploads))
        .route("/api/v1/admin/reap", post(admin::reap))
        .route("/api/v1/admin/retention", post(admin::retention))
        .route("/api/v1/grants", post(tokens::create_grant))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route("/api/v1/webhooks/{id}", delete(webhooks::delete))
        .route(
            "/api/v1/session",
            get(session::get)
                .post(session::create)
                .delete(session::delete),
        )
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        .fallback(web::serve)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));

    let compress = CompressionLayer::new().compress_when(
        SizeAbove::new(1024)
            .and(NotForContentType::const_new("application/octet-stream"))
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES),
    );
    let request_id = HeaderName::from_static("x-request-id");
    let mut router = api
        .layer(compress)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Hard cap checked on Content-Length before any handler runs.
        .layer(RequestBodyLimitLayer::new(
            chunk_limit.max(JSON_BODY_LIMIT) + 4096,
        ));
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers(tower_http::cors::Any)
                .expose_headers([
                    HeaderName::from_static("x-total-count"),
                    HeaderName::from_static("content-range"),
                ]),
        );
    }
    router
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// What a `--role worker` process serves over HTTP: health and metrics.
pub fn worker_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        .with_state(state)
}

/// Creates the first admin token when the database has no token at all and
/// prints it once on stderr (once per database, however many replicas
/// start at the same time).
pub async fn bootstrap_admin(state: &AppState) -> anyhow::Result<()> {
    if state.db.count_tokens().await? == 0 {
        let (secret, hash) = crate::auth::new_secret();
        if !state.db.create_first_admin(&hash, crate::now()).await? {
            return Ok(());
        }
        eprintln!(
            "support-server: created the first admin token (shown only this once; \
             more with `support-server token create`):\n  {secret}"
        );
    }
    Ok(())
}

/// Serves (the API, the workers, or both, by `role`) until SIGINT/SIGTERM,
/// then stops accepting, lets in-flight requests (chunks) finish, and stops
/// the workers after their current job.
pub async fn run(state: AppState) -> anyhow::Result<()> {
    use anyhow::Context;
    bootstrap_admin(&state).await?;
    let listener = tokio::net::TcpListener::bind(&state.config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another server running there? choose another with --listen",
                state.config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port of `--listen 127.0.0.1:0`.
    eprintln!("support-server: listening on http://{addr}");
    let role = state.config.role;
    tracing::info!(%addr, role = role.as_str(), instance = %state.instance, database = state.db.backend(), storage = state.store.backend(), data_dir = %state.config.data_dir.display(), "serving");

    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    if role.runs_jobs() {
        let (db, wake, stop2) = (state.db.clone(), state.wake.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            db.listen_for_jobs(wake, stop2).await
        }));
        for n in 0..state.config.workers {
            tasks.push(tokio::spawn(jobs::worker(state.clone(), n, stop.clone())));
        }
        tasks.push(tokio::spawn(jobs::reaper(state.clone(), stop.clone())));
        tasks.push(tokio::spawn(retention::retention_worker(
            state.clone(),
            stop.clone(),
        )));
    }
    let router = if role.serves_api() {
        app(state.clone())
    } else {
        worker_app(state.clone())
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown_signal());
    let result = server.await;
    tracing::info!("shutting down: in-flight requests finished, stopping workers");
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    result.context("the HTTP server failed")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
