//! Idempotency keys (SPEC §2.4): a repeat with the same key and the same
//! command (equal fingerprints, see `requests.rs`) gets the first answer
//! again; the same key with another command is a conflict.

use sqlx::PgPool;

use crate::problem::{FieldError, Problem, ProblemType};

pub const KEY_BYTES_MAX: usize = 255;

/// A validated `Idempotency-Key` header (1 to 255 printable ASCII
/// characters) in the scope of the API key that sent it: clients never see
/// each other's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    scope: String,
    key: String,
}

impl IdempotencyKey {
    /// `scope` is [`crate::app::auth::Principal::idempotency_scope`].
    pub fn parse(raw: &[u8], scope: String) -> Result<IdempotencyKey, Problem> {
        let printable = raw.iter().all(|b| (0x20..=0x7e).contains(b));
        if raw.is_empty() || raw.len() > KEY_BYTES_MAX || !printable {
            return Err(Problem::validation(vec![FieldError::new(
                "Idempotency-Key",
                format!("must be 1 to {KEY_BYTES_MAX} printable ASCII characters"),
            )]));
        }
        // Checked above: ASCII is UTF-8.
        Ok(IdempotencyKey {
            scope,
            key: String::from_utf8_lossy(raw).into_owned(),
        })
    }

    /// The key of bulk `index` (from 0) of a payment file whose message id
    /// is `msg_id` (SPEC §10): the message id itself for the first bulk, so
    /// a request that used it as its `Idempotency-Key` conflicts, and
    /// `<msg_id>#PmtInf[n]` (n from 1) for the others.
    pub fn for_file_part(scope: String, msg_id: &str, index: usize) -> IdempotencyKey {
        let key = match index {
            0 => msg_id.to_owned(),
            _ => format!("{msg_id}#PmtInf[{}]", index + 1),
        };
        IdempotencyKey { scope, key }
    }

    /// The key as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }
}

/// The response recorded for a key.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub request_hash: Vec<u8>,
    pub status: u16,
    pub body: String,
    /// The log position of the command's last event.
    pub position: Option<i64>,
}

pub async fn lookup(pool: &PgPool, key: &IdempotencyKey) -> Result<Option<Recorded>, sqlx::Error> {
    let row: Option<(Vec<u8>, i16, String, Option<i64>)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body, position FROM idempotency_keys \
         WHERE scope = $1 AND key = $2",
    )
    .bind(key.scope())
    .bind(key.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(request_hash, status, body, position)| Recorded {
        request_hash,
        status: status as u16,
        body,
        position,
    }))
}

/// The recorded responses for several keys at once, by key.
pub async fn lookup_many(
    pool: &PgPool,
    keys: &[&IdempotencyKey],
) -> Result<std::collections::HashMap<IdempotencyKey, Recorded>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        scope: String,
        key: String,
        request_hash: Vec<u8>,
        response_status: i16,
        response_body: String,
        position: Option<i64>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT k.scope, k.key, k.request_hash, k.response_status, k.response_body, k.position \
         FROM idempotency_keys k JOIN unnest($1::text[], $2::text[]) AS wanted(scope, key) USING (scope, key)",
    )
    .bind(keys.iter().map(|k| k.scope()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                IdempotencyKey {
                    scope: row.scope,
                    key: row.key,
                },
                Recorded {
                    request_hash: row.request_hash,
                    status: row.response_status as u16,
                    body: row.response_body,
                    position: row.position,
                },
            )
        })
        .collect())
}

pub fn key_reused() -> Problem {
    Problem::new(
        ProblemType::IdempotencyKeyReused,
        "this Idempotency-Key was already used with a different request",
    )
}

/// Shortest time a key is remembered (SPEC §2.4).
pub const TTL_HOURS_MIN: u64 = 24;
/// Keys deleted per statement, so a purge never holds long locks.
const PURGE_BATCH: i64 = 10_000;

/// Forgets keys recorded more than `ttl` ago. Returns how many went.
pub async fn purge(pool: &PgPool, ttl: std::time::Duration) -> Result<u64, sqlx::Error> {
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (scope, key) IN ( \
                 SELECT scope, key FROM idempotency_keys \
                 WHERE created_at < now() - make_interval(secs => $1) \
                 ORDER BY created_at LIMIT $2)",
        )
        .bind(ttl.as_secs_f64())
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged += deleted;
        if deleted < PURGE_BATCH as u64 {
            return Ok(purged);
        }
    }
}

/// Runs [`purge`] every ten minutes, for as long as the server runs.
pub async fn purge_periodically(pool: PgPool, ttl: std::time::Duration) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        interval.tick().await;
        match purge(&pool, ttl).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys forgotten"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "idempotency key purge failed; will retry"),
        }
    }
}
