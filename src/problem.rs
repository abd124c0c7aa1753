//! RFC 9457 problem details: the body of every 4xx and 5xx response.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// A client-visible failure. Only 4xx and 503 problems are built from
/// domain outcomes; a 500 is built by the HTTP layer from an operational
/// error, which is logged and never echoed.
/// Deserializable too: a recorded refusal is read back for gRPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members specific to the problem type (e.g. `requested_cents`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status,
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
            ..Problem::new(400, "validation", "Invalid request", detail)
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(404, "not-found", "Not found", detail)
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
