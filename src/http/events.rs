//! `GET /v1/events`: the global log in commit-safe order, for downstream
//! consumers.

use axum::Extension;
use axum::extract::State;

use crate::app::auth::Principal;
use axum::response::Response;

use crate::app::views::FeedPage;
use crate::problem::Problem;

use super::{ApiError, AppState, QueryMap, ok_json, query_map};

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
    let page = ledger
        .events(
            &principal,
            query.get("after").map(String::as_str),
            query.get("limit").map(String::as_str),
        )
        .await?;
    Ok(ok_json(&page))
}
