//! `GET /v1/events`: the global log in commit-safe order, for downstream
//! consumers.

use axum::extract::State;
use axum::response::Response;

use super::{ApiError, AppState, QueryMap, ok_json, query_map};

pub async fn feed(State(ledger): State<AppState>, query: QueryMap) -> Result<Response, ApiError> {
    let query = query_map(query)?;
    let page = ledger
        .events(
            query.get("after").map(String::as_str),
            query.get("limit").map(String::as_str),
        )
        .await?;
    Ok(ok_json(&page))
}
