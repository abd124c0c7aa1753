//! Mapping every failure to an RFC 9457 problem response.

use std::any::Any;

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppError;
use crate::problem::{FieldError, Problem, ProblemType};

/// An error leaving a handler: a problem for the client, or an operational
/// failure that is logged with its cause chain and answered with a bare 500
/// (or 503 when the database is out of reach).
#[derive(Debug)]
pub struct ApiError(AppError);

impl From<AppError> for ApiError {
    fn from(error: AppError) -> ApiError {
        ApiError(error)
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> ApiError {
        ApiError(AppError::Client(problem))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self.0 {
            AppError::Client(_) => {}
            AppError::Unavailable(error) => {
                tracing::warn!(error = format!("{error:#}"), "request refused: database unavailable")
            }
            AppError::OutcomeUnknown(error) => tracing::error!(
                error = format!("{error:#}"),
                "connection lost while a command was committing: its outcome is unknown"
            ),
            // The span carries the request id; the client gets none of this.
            AppError::Internal(error) => tracing::error!(error = format!("{error:#}"), "request failed"),
        }
        problem_response(&self.0.problem())
    }
}

/// A problem as a response: its status, `application/problem+json`, and
/// the headers its type calls for (`WWW-Authenticate` on a 401,
/// `Retry-After` on a 503).
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        problem.to_json(),
    )
        .into_response();
    if problem.kind == ProblemType::Unauthorized {
        // RFC 6750 §3: how to authenticate.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="ledger""#),
        );
    }
    if let Some(seconds) = problem.kind.retry_after_seconds() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            ProblemType::BodyTooLarge,
            "the request body exceeds the configured limit",
        )
        .into()
    } else {
        Problem::validation(vec![FieldError::new(
            "body",
            format!("could not be read: {}", rejection.body_text()),
        )])
        .into()
    }
}

pub async fn not_found() -> Response {
    problem_response(&Problem::not_found("no such route"))
}

pub async fn method_not_allowed() -> Response {
    problem_response(&Problem::new(
        ProblemType::MethodNotAllowed,
        "this route does not accept that method",
    ))
}

pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handler panicked");
    problem_response(&AppError::Internal(anyhow::anyhow!("handler panicked")).problem())
}
