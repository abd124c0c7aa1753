//! The operations endpoints — `/healthz`, `/readyz`, `/metrics` — open to
//! anyone (no API key). [`routes`] registers them.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, json_response};
use crate::problem::{Problem, ProblemType};

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// `/metrics` reads the lags from the database at most this often.
const METRICS_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Prometheus text format. Pool gauges are sampled here, at scrape time;
/// projection, posting and relay lags at most once a second (they are counted in
/// the database), however often it is scraped.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(State(ledger): State<AppState>) -> Response {
    use crate::observability::{DB_POOL_CONNECTIONS, PROJECTION_LAG, PROJECTION_POSITION, prometheus};
    let handle = prometheus();
    let pool = ledger.pool();
    let (size, idle) = (pool.size() as usize, pool.num_idle());
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(size.saturating_sub(idle) as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "max").set(f64::from(pool.options().get_max_connections()));
    if ledger.metrics_refresh_due(METRICS_REFRESH_INTERVAL) {
        metrics::counter!(crate::observability::METRICS_REFRESHES).increment(1);
        match crate::projections::status(pool).await {
            Ok(statuses) => {
                for status in statuses {
                    metrics::gauge!(PROJECTION_POSITION, "projection" => status.name.clone())
                        .set(status.position as f64);
                    metrics::gauge!(PROJECTION_LAG, "projection" => status.name).set(status.lag_events as f64);
                }
            }
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "projection status unavailable for /metrics"
            ),
        }
        match crate::posting::lag(pool).await {
            Ok((_, lag)) => metrics::gauge!(crate::observability::POSTING_LAG).set(lag as f64),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "posting lag unavailable for /metrics"),
        }
        match crate::relay::lag(pool).await {
            Ok(Some((_, lag))) => metrics::gauge!(crate::observability::RELAY_LAG).set(lag as f64),
            Ok(None) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "relay lag unavailable for /metrics"),
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")))]
pub(super) async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

/// The database answers and every migration is applied. With read
/// replicas, the answer lists each one's health (`up`, `lag_bytes`, and
/// why it is out of rotation); a replica that is down does not make the
/// server unready, since the primary answers its queries.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "Database unreachable or not migrated", content_type = "application/problem+json", body = Problem),
    )
)]
pub(super) async fn readyz(State(ledger): State<AppState>) -> Response {
    match crate::db::ready(ledger.pool()).await {
        Ok(()) if ledger.replicas().is_empty() => json_response(StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        Ok(()) => json_response(
            StatusCode::OK,
            serde_json::json!({"status": "ready", "replicas": ledger.replicas().statuses()}).to_string(),
        ),
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "not ready");
            super::errors::problem_response(&Problem::new(
                ProblemType::NotReady,
                "the database is unreachable or not migrated",
            ))
        }
    }
}
