//! Keeps asynchronous projections up to date by following the commit-safe
//! feed from each one's checkpoint.
//!
//! Each batch is one transaction: lock the projection's status row (so two
//! `ledger serve` processes never apply the same batch), apply the events
//! after the checkpoint, move the checkpoint, commit. A crash between
//! batches loses nothing and applies nothing twice. An idle runner asks
//! first, without a transaction, and holds nothing; a batch's transaction
//! is exempt from the feed's horizon (it cannot append events), so the
//! feed never waits for a batch.

use std::time::Duration;

use sqlx::PgPool;

use super::rebuild::{apply_batch, batch_sql};
use super::{Mode, PROJECTIONS, Projection};
use crate::event_store::{self, FeedCursor};

/// How long the runner rests when every projection has caught up.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it rests after a round of small batches, so that under a
/// steady load the next batch gathers more events. Every batch pays a
/// fixed cost: the peek and page queries, the status row's lock, the
/// horizon exemption, three commits (fsyncs). Chasing the head without
/// rest, the runner made a batch of ~120 events every ~15 ms under the
/// load benchmark and took ~0.3 of the machine's two cores from the write
/// path (pg_stat_statements); resting, it takes a batch every ~50 ms.
pub const BUSY_WAIT: Duration = Duration::from_millis(50);
/// A batch at least this large means a backlog: the runner goes on
/// without resting.
const BACKLOG_EVENTS: u64 = 2_000;

/// Applies everything committed so far to every asynchronous projection.
/// Returns the number of events applied.
pub async fn catch_up(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(catch_up_counted(pool).await?.0)
}

/// [`catch_up`], saying also how many batches it took (each one
/// transaction): the events applied and the batches.
pub async fn catch_up_counted(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    let (mut applied, mut batches) = (0, 0);
    for projection in PROJECTIONS.iter().filter(|p| p.mode == Mode::Async) {
        let (events, taken) = catch_up_one(pool, projection, None).await?;
        applied += events;
        batches += taken;
    }
    Ok((applied, batches))
}

/// One round of the runner: for each asynchronous projection, batches
/// until one comes out smaller than [`BACKLOG_EVENTS`] (the projection is
/// then close behind the head). Returns the events applied.
async fn run_round(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut applied = 0;
    for projection in PROJECTIONS.iter().filter(|p| p.mode == Mode::Async) {
        applied += catch_up_one(pool, projection, Some(BACKLOG_EVENTS)).await?.0;
    }
    Ok(applied)
}

/// Why a runner batch's transaction is in `horizon_exemptions`.
const EXEMPTION_REASON: &str = "projection runner batch";

/// One projection's catch-up: the events applied, and the batches (each a
/// transaction) that applied them. With `backlog`, it stops after a batch
/// of fewer events than that, instead of after an empty one.
async fn catch_up_one(
    pool: &PgPool,
    projection: &'static Projection,
    backlog: Option<u64>,
) -> Result<(u64, u64), sqlx::Error> {
    let sql = batch_sql(None, &[projection]);
    let (mut applied, mut batches) = (0, 0);
    loop {
        // Anything to apply? Asked without a transaction (so without a
        // transaction id): an idle runner takes no lock and holds nothing.
        let (tx_id, position): (i64, i64) =
            sqlx::query_as("SELECT checkpoint_tx, checkpoint_position FROM projection_status WHERE name = $1")
                .bind(projection.name)
                .fetch_one(pool)
                .await?;
        let peek = FeedCursor { tx: tx_id, position };
        if event_store::read_feed_for(pool, peek, 1, "").await?.is_empty() {
            return Ok((applied, batches));
        }
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
            return Ok((applied, batches));
        };
        // The row lock gave this transaction an id, held for the whole
        // batch. It never appends events (the table refuses an exempt
        // transaction's inserts): exempt it from the feed's horizon, so the
        // feed, the posting process and the other projections do not wait
        // for the batch.
        let exempt = exempt(pool, &mut tx).await;
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
        if let Some(id) = exempt {
            // Best effort: a row outliving its transaction is harmless
            // (ids never repeat), and old ones go with the next batch.
            let _ = sqlx::query(
                "DELETE FROM horizon_exemptions WHERE tx_id = $1::xid8 \
                    OR (reason = $2 AND created_at < now() - interval '1 hour')",
            )
            .bind(&id)
            .bind(EXEMPTION_REASON)
            .execute(pool)
            .await;
        }
        applied += count;
        batches += u64::from(count > 0);
        // A batch cut short by its byte or transfer bound is not the end:
        // only an empty one is.
        if count == 0 || backlog.is_some_and(|backlog| count < backlog) {
            return Ok((applied, batches));
        }
    }
}

/// Registers the transaction in `horizon_exemptions`, committed at once on
/// another connection (an idle one: with none to spare, the batch runs
/// unexempted and the feed waits for it, as it always may). Returns its id.
async fn exempt(pool: &PgPool, tx: &mut sqlx::PgConnection) -> Option<String> {
    let id: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await
        .ok()?;
    let mut other = pool.try_acquire()?;
    sqlx::query("INSERT INTO horizon_exemptions (tx_id, reason) VALUES ($1::xid8, $2) ON CONFLICT DO NOTHING")
        .bind(&id)
        .bind(EXEMPTION_REASON)
        .execute(&mut *other)
        .await
        .ok()?;
    Some(id)
}

/// Runs forever: a round, a rest (long when idle, short after small
/// batches, none behind a backlog), repeat. Errors (the database restarting,
/// say) are logged and retried; the checkpoint makes that safe.
pub async fn run(pool: PgPool) {
    loop {
        match run_round(&pool).await {
            Ok(0) => tokio::time::sleep(IDLE_WAIT).await,
            Ok(applied) => {
                tracing::debug!(applied, "asynchronous projections advanced");
                tokio::time::sleep(BUSY_WAIT).await;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "asynchronous projections: retrying");
                tokio::time::sleep(IDLE_WAIT * 10).await;
            }
        }
    }
}
