//! `/v1/ledger`: the books as a whole — the trial balance (SPEC §9).
//! [`routes`] registers it (router and OpenAPI path alike).

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, QueryMap, ok_json, query_map};
use crate::app::auth::{Action, Principal};
use crate::app::params::MinPosition;
use crate::app::views::TrialBalanceView;
use crate::problem::Problem;

/// This feature's endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(trial_balance))
}

/// Per currency: customer balances, the settlement and clearing accounts,
/// and transfers in flight; they sum to zero when the books are right.
#[utoipa::path(
    get, path = "/v1/ledger/trial-balance", tag = "queries",
    params(
        ("min_position" = Option<i64>, Query, description = "Answer only once this log position and its credits are reflected")
    ),
    responses(
        (status = 200, description = "The trial balance; `sum_cents` is 0 per currency", body = TrialBalanceView),
        (status = 400, description = "Bad min_position", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database is unavailable", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn trial_balance(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let query = query_map(query)?;
    let min = MinPosition::parse(query.get("min_position").map(String::as_str))
        .map_err(|error| ApiError::from(Problem::validation(vec![error])))?;
    // The key's scope first: an account key learns nothing by waiting.
    principal.authorize(Action::ReadLedger)?;
    let reader = ledger.reflect(min).await?;
    Ok(ok_json(&ledger.trial_balance(&reader, &principal).await?))
}
