//! Keeps asynchronous projections up to date by following the commit-safe
//! feed from each one's checkpoint.
//!
//! Each batch is one transaction: lock the projection's status row (so two
//! `ledger serve` processes never apply the same batch), apply the events
//! after the checkpoint, move the checkpoint, commit. A crash between
//! batches loses nothing and applies nothing twice.

use std::time::Duration;

use sqlx::PgPool;

use super::rebuild::{apply_batch, batch_sql};
use super::{Mode, PROJECTIONS, Projection};
use crate::event_store::FeedCursor;

/// How long the runner rests when every projection has caught up.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Applies everything committed so far to every asynchronous projection.
/// Returns the number of events applied.
pub async fn catch_up(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut applied = 0;
    for projection in PROJECTIONS.iter().filter(|p| p.mode == Mode::Async) {
        applied += catch_up_one(pool, projection).await?;
    }
    Ok(applied)
}

async fn catch_up_one(pool: &PgPool, projection: &'static Projection) -> Result<u64, sqlx::Error> {
    let sql = batch_sql(None, &[projection]);
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        // A batch is not a request: the requests' statement timeout must
        // not cancel it (a cancelled batch would be retried, and cancelled,
        // for ever). Its size is bounded instead (events and bytes).
        sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
        // SKIP LOCKED: when another process holds the row, it is applying
        // this projection right now; nothing to do here.
        let checkpoint: Option<(i64, i64)> = sqlx::query_as(
            "SELECT checkpoint_tx, checkpoint_position FROM projection_status WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(projection.name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((checkpoint_tx, checkpoint_position)) = checkpoint else {
            return Ok(applied);
        };
        let after = FeedCursor {
            tx: checkpoint_tx,
            position: checkpoint_position,
        };
        let (count, next) = apply_batch(&mut *tx, &sql, after, true).await?;
        if count > 0 {
            sqlx::query(
                "UPDATE projection_status SET checkpoint_tx = $2, checkpoint_position = $3, updated_at = now() \
                 WHERE name = $1",
            )
            .bind(projection.name)
            .bind(next.tx)
            .bind(next.position)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        applied += count;
        // A batch cut short by its byte bound is not the end: only an
        // empty one is.
        if count == 0 {
            return Ok(applied);
        }
    }
}

/// Runs forever: catch up, rest, repeat. Errors (the database restarting,
/// say) are logged and retried; the checkpoint makes that safe.
pub async fn run(pool: PgPool) {
    loop {
        match catch_up(&pool).await {
            Ok(0) => tokio::time::sleep(IDLE_WAIT).await,
            Ok(applied) => tracing::debug!(applied, "asynchronous projections advanced"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "asynchronous projections: retrying");
                tokio::time::sleep(IDLE_WAIT * 10).await;
            }
        }
    }
}
