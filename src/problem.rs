//! RFC 9457 problem details: the body of every 4xx and 5xx response, and
//! [`ProblemType`], the one table of every problem the ledger answers.
//!
//! A problem's HTTP status and title come from its type, and so does its
//! gRPC code (in `grpc::convert`): no code matches a problem by its text.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every kind of problem, with its slug (`type` is `/problems/<slug>`),
/// HTTP status and title in [`ProblemType::entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemType {
    /// An input is invalid; `errors` names each one.
    Validation,
    /// The body is over the size limit.
    BodyTooLarge,
    /// The body is not in a media type the route accepts.
    UnsupportedMediaType,
    /// No API key, or not a valid one.
    Unauthorized,
    /// The API key may not do this.
    Forbidden,
    /// No such account or route.
    NotFound,
    /// The route does not take that method.
    MethodNotAllowed,
    /// An account with that IBAN exists.
    AccountExists,
    /// The idempotency key was used with another command.
    IdempotencyKeyReused,
    /// The balance does not cover the bulk (recorded: part of the audit trail).
    InsufficientFunds,
    /// The currency differs from the account's.
    CurrencyMismatch,
    /// The balance would leave the range the ledger represents.
    BalanceLimit,
    /// Something unexpected failed; logged with the request id.
    Internal,
    /// Nothing was written (no database connection in time, a statement
    /// cancelled before commit): retrying is safe.
    Unavailable,
    /// The command may have been applied: the connection broke while its
    /// commit was in flight. Retry with the same Idempotency-Key.
    OutcomeUnknown,
    /// The request outlived its time limit; a command may still be applied.
    Timeout,
    /// The database is unreachable or not migrated (`/readyz`).
    NotReady,
}

impl ProblemType {
    pub const ALL: [ProblemType; 17] = [
        ProblemType::Validation,
        ProblemType::BodyTooLarge,
        ProblemType::UnsupportedMediaType,
        ProblemType::Unauthorized,
        ProblemType::Forbidden,
        ProblemType::NotFound,
        ProblemType::MethodNotAllowed,
        ProblemType::AccountExists,
        ProblemType::IdempotencyKeyReused,
        ProblemType::InsufficientFunds,
        ProblemType::CurrencyMismatch,
        ProblemType::BalanceLimit,
        ProblemType::Internal,
        ProblemType::Unavailable,
        ProblemType::OutcomeUnknown,
        ProblemType::Timeout,
        ProblemType::NotReady,
    ];

    /// The table: slug, HTTP status, title.
    const fn entry(self) -> (&'static str, u16, &'static str) {
        match self {
            ProblemType::Validation => ("validation", 400, "Invalid request"),
            ProblemType::BodyTooLarge => ("body-too-large", 413, "Body too large"),
            ProblemType::UnsupportedMediaType => ("unsupported-media-type", 415, "Unsupported media type"),
            ProblemType::Unauthorized => ("unauthorized", 401, "Unauthorized"),
            ProblemType::Forbidden => ("forbidden", 403, "Forbidden"),
            ProblemType::NotFound => ("not-found", 404, "Not found"),
            ProblemType::MethodNotAllowed => ("method-not-allowed", 405, "Method not allowed"),
            ProblemType::AccountExists => ("account-exists", 409, "Account already exists"),
            ProblemType::IdempotencyKeyReused => ("idempotency-key-reused", 409, "Idempotency key reused"),
            ProblemType::InsufficientFunds => ("insufficient-funds", 422, "Insufficient funds"),
            ProblemType::CurrencyMismatch => ("currency-mismatch", 422, "Currency mismatch"),
            ProblemType::BalanceLimit => ("balance-limit", 422, "Balance limit"),
            ProblemType::Internal => ("internal", 500, "Internal error"),
            ProblemType::Unavailable => ("unavailable", 503, "Service unavailable"),
            ProblemType::OutcomeUnknown => ("outcome-unknown", 503, "Outcome unknown"),
            ProblemType::Timeout => ("timeout", 503, "Request timed out"),
            ProblemType::NotReady => ("not-ready", 503, "Not ready"),
        }
    }

    /// The short name: `insufficient-funds`.
    pub const fn slug(self) -> &'static str {
        self.entry().0
    }

    pub const fn status(self) -> u16 {
        self.entry().1
    }

    pub const fn title(self) -> &'static str {
        self.entry().2
    }

    /// The `type` member: `/problems/insufficient-funds`.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.slug())
    }

    /// Seconds a client should wait before retrying (`Retry-After`), for
    /// the problems that say "not now".
    pub const fn retry_after_seconds(self) -> Option<u32> {
        match self {
            ProblemType::Unavailable | ProblemType::OutcomeUnknown | ProblemType::Timeout | ProblemType::NotReady => {
                Some(1)
            }
            _ => None,
        }
    }

    /// The type a recorded problem's `type` member names (reading back an
    /// idempotent answer), through the table.
    pub fn from_uri(uri: &str) -> Option<ProblemType> {
        let slug = uri.strip_prefix("/problems/")?;
        ProblemType::ALL.into_iter().find(|kind| kind.slug() == slug)
    }
}

/// One invalid input, named by its JSON path (`credit_transfers[2].amount`),
/// query parameter or header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A client-visible failure of a [`ProblemType`]. Serialises as RFC 9457
/// (`type`, `title`, `status`, `detail`, `errors`, extension members);
/// deserialises too, since a recorded refusal is read back on a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ProblemDocument", try_from = "ProblemDocument")]
pub struct Problem {
    pub kind: ProblemType,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Extension members specific to the problem type (e.g. `requested_cents`).
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: Map::new(),
        }
    }

    /// 400 listing every invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Problem {
        let detail = match errors.as_slice() {
            [one] => format!("{} {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Problem {
            errors,
            ..Problem::new(ProblemType::Validation, detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(ProblemType::NotFound, detail)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and maps always serialises.
        serde_json::to_string(self).expect("problem serialises")
    }
}

/// The RFC 9457 document as it travels.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Problem)]
struct ProblemDocument {
    /// `/problems/<slug>`.
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// Extension members specific to the problem type (e.g. `requested_cents`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    extensions: Map<String, Value>,
}

impl From<Problem> for ProblemDocument {
    fn from(problem: Problem) -> ProblemDocument {
        ProblemDocument {
            kind: problem.kind.uri(),
            title: problem.kind.title().to_owned(),
            status: problem.kind.status(),
            detail: problem.detail,
            errors: problem.errors,
            extensions: problem.extensions,
        }
    }
}

impl TryFrom<ProblemDocument> for Problem {
    type Error = String;

    fn try_from(document: ProblemDocument) -> Result<Problem, String> {
        let kind = ProblemType::from_uri(&document.kind)
            .ok_or_else(|| format!("{:?} is not a problem type of this ledger", document.kind))?;
        Ok(Problem {
            kind,
            detail: document.detail,
            errors: document.errors,
            extensions: document.extensions,
        })
    }
}

impl utoipa::PartialSchema for Problem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <ProblemDocument as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Problem {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Problem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_distinct_slug_and_reads_back() {
        let mut slugs: Vec<_> = ProblemType::ALL.iter().map(|kind| kind.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemType::ALL.len());
        for kind in ProblemType::ALL {
            assert_eq!(ProblemType::from_uri(&kind.uri()), Some(kind));
            assert!((400..600).contains(&kind.status()), "{kind:?}");
        }
    }

    #[test]
    fn a_problem_round_trips_through_its_document() {
        let problem = Problem::new(ProblemType::InsufficientFunds, "no").with("requested_cents", 5);
        let json = problem.to_json();
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "/problems/insufficient-funds");
        assert_eq!(value["status"], 422);
        assert_eq!(value["title"], "Insufficient funds");
        assert_eq!(value["requested_cents"], 5);
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), problem);
    }
}
