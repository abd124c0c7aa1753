//! `GET /v1/events`: the global log in commit-safe order, for downstream
//! consumers. [`routes`] registers it (router and OpenAPI path alike).

use axum::Extension;
use axum::extract::State;

use crate::app::auth::Principal;
use crate::app::params::{PageSize, parse_feed_cursor};
use axum::response::Response;

use crate::app::views::FeedPage;
use crate::problem::Problem;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, QueryMap, ok_json, query_map};

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(feed))
}

/// The global log in commit-safe order: page with `after` = the previous `next_after`.
#[utoipa::path(
    get, path = "/v1/events", tag = "queries",
    params(
        ("after" = Option<String>, Query, description = "`0` or absent for the beginning, else the previous page's `next_after`"),
        ("limit" = Option<u32>, Query, description = "1 to 1,000 (default 50)")
    ),
    responses(
        (status = 200, description = "A page of events; never misses or repeats one", body = FeedPage),
        (status = 400, description = "Bad after or limit", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn feed(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let query = query_map(query)?;
    // Both parameters are checked before either is reported.
    let after = parse_feed_cursor(query.get("after").map(String::as_str));
    let limit = PageSize::parse(query.get("limit").map(String::as_str), &ledger.settings().limits);
    let (after, limit) = match (after, limit) {
        (Ok(after), Ok(limit)) => (after, limit),
        (after, limit) => {
            let errors = [after.err(), limit.err()].into_iter().flatten().collect();
            return Err(Problem::validation(errors).into());
        }
    };
    let reader = ledger.reflect(None).await?;
    Ok(ok_json(&ledger.events(&reader, &principal, after, limit).await?))
}
