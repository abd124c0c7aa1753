//! `/v1/ledger`: the books as a whole — the trial balance (SPEC §9).
//! [`routes`] registers it (router and OpenAPI path alike).

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ok_json};
use crate::app::auth::Principal;
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
    responses(
        (status = 200, description = "The trial balance; `sum_cents` is 0 per currency", body = TrialBalanceView),
        (status = 503, description = "The database is unavailable", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn trial_balance(
    State(ledger): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(ok_json(&ledger.trial_balance(&principal).await?))
}
