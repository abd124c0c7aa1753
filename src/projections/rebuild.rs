//! Rebuilding projections from the log while the service keeps serving.
//!
//! 1. Create the projections' tables and apply functions afresh in a shadow
//!    schema (the same definition files, with the shadow schema first on the
//!    search path).
//! 2. Replay the log into them in batches, in commit-safe feed order, up to
//!    the horizon of finished transactions — no lock is held.
//! 3. Catch up with what was appended meanwhile, the same way.
//! 4. Swap: lock `events` against writers (readers go on), apply the last
//!    few events, replace the live tables with the shadow ones, commit.
//!    Writers wait only for this step.

use std::time::Instant;

use sqlx::{Connection, PgConnection, PgPool};

use super::{PROJECTIONS, Projection};
use crate::event_store::FeedCursor;

/// Events per batch: large enough that per-statement costs vanish, small
/// enough that one batch's rows fit comfortably in memory (measured flat
/// between 20,000 and 50,000 with a 64 MB work_mem; slower at 5k and 100k).
pub(crate) const BATCH_EVENTS: i64 = 50_000;
/// Only one rebuild at a time.
const REBUILD_LOCK: i64 = 0x6c65_6467_6572_0002;

#[derive(Debug, Clone, Copy)]
pub struct RebuildProgress {
    pub events_done: u64,
    pub events_total: u64,
}

#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub projections: Vec<&'static str>,
    pub events: u64,
    pub seconds: f64,
    /// Events applied while writers were held (the swap step).
    pub events_during_swap: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("unknown projection {0:?} (known: balances, transactions, counterparties)")]
    UnknownProjection(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Rebuilds the named projections (all when `names` is empty) and swaps
/// them in atomically. `progress` is called after every batch.
pub async fn rebuild(
    pool: &PgPool,
    names: &[String],
    mut progress: impl FnMut(RebuildProgress),
) -> Result<RebuildReport, RebuildError> {
    let selected: Vec<&'static Projection> = if names.is_empty() {
        PROJECTIONS.iter().collect()
    } else {
        names
            .iter()
            .map(|name| super::find(name).ok_or_else(|| RebuildError::UnknownProjection(name.clone())))
            .collect::<Result<_, _>>()?
    };
    let started = Instant::now();
    let mut connection = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .execute(&mut connection)
        .await?;
    let schema = format!("rebuild_{}", uuid::Uuid::new_v4().simple());
    let result = run(&mut connection, &schema, &selected, &mut progress, started).await;
    if result.is_err() {
        // A failed rebuild leaves the live tables as they were; remove its
        // shadow schema (a failed swap already rolled back).
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut connection)
            .await;
    }
    // The session lock goes with the connection, which is closed here
    // rather than returned to the pool with a shadow search path.
    let _ = connection.close().await;
    result
}

async fn run(
    connection: &mut PgConnection,
    schema: &str,
    selected: &[&'static Projection],
    progress: &mut impl FnMut(RebuildProgress),
    started: Instant,
) -> Result<RebuildReport, RebuildError> {
    // Batches of JSON events sort and aggregate in memory rather than in
    // temporary files; this connection is closed after the rebuild, so the
    // setting never reaches the pool.
    sqlx::raw_sql(&format!(
        "SET work_mem = '64MB'; CREATE SCHEMA {schema}; SET search_path = {schema}, public"
    ))
    .execute(&mut *connection)
    .await?;
    for projection in selected {
        sqlx::raw_sql(projection.definition).execute(&mut *connection).await?;
    }
    let events_total: i64 = sqlx::query_scalar("SELECT count(*) FROM public.events")
        .fetch_one(&mut *connection)
        .await?;
    let mut done = RebuildProgress {
        events_done: 0,
        events_total: events_total as u64,
    };
    progress(done);
    let apply_sql = batch_sql(schema, selected);

    // Replay and catch up, holding no lock.
    let mut cursor = FeedCursor::START;
    loop {
        let (applied, next) = apply_batch(&mut *connection, &apply_sql, cursor, true).await?;
        cursor = next;
        done.events_done += applied;
        done.events_total = done.events_total.max(done.events_done);
        progress(done);
        if applied < BATCH_EVENTS as u64 {
            break;
        }
    }

    // Swap, holding writers back: once the lock is granted every append that
    // started before it has finished, so the rest of the log can be read
    // without the horizon.
    let mut tx = connection.begin().await?;
    // The status rows first, before holding writers back, and before the
    // tables, in the order the asynchronous runner takes them (row, then
    // table): a runner batch in progress finishes first (writers still
    // write meanwhile), later ones skip the rows. Dropping the tables first
    // and updating the rows after deadlocks with a runner batch that took
    // the row and waits for the table.
    let names: Vec<&str> = selected.iter().map(|p| p.name).collect();
    sqlx::query("SELECT name FROM projection_status WHERE name = ANY($1) ORDER BY name FOR UPDATE")
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    // The posting process reads the read models and then appends, under
    // its checkpoint row: waiting for that row first (same order) lets a
    // posting page in flight finish instead of deadlocking with the swap.
    sqlx::query("SELECT name FROM process_checkpoints WHERE name = 'posting' FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE public.events IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let mut events_during_swap = 0;
    loop {
        let (applied, next) = apply_batch(&mut *tx, &apply_sql, cursor, false).await?;
        cursor = next;
        events_during_swap += applied;
        if applied < BATCH_EVENTS as u64 {
            break;
        }
    }
    done.events_done += events_during_swap;
    done.events_total = done.events_total.max(done.events_done);
    for projection in selected {
        for table in projection.tables {
            sqlx::raw_sql(&format!(
                "DROP TABLE public.{table}; ALTER TABLE {schema}.{table} SET SCHEMA public"
            ))
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    for projection in selected {
        sqlx::query(
            "UPDATE projection_status SET rebuilt_at = now(), rebuild_events = $2, rebuild_seconds = $3, \
                    checkpoint_tx = $4, checkpoint_position = $5, updated_at = now() \
             WHERE name = $1",
        )
        .bind(projection.name)
        .bind(done.events_done as i64)
        .bind(seconds)
        .bind(cursor.tx)
        .bind(cursor.position)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    sqlx::query("SET search_path = public")
        .execute(&mut *connection)
        .await?;
    progress(done);
    Ok(RebuildReport {
        projections: selected.iter().map(|p| p.name).collect(),
        events: done.events_done,
        seconds,
        events_during_swap,
    })
}

/// One statement: take the next batch of events in feed order, hand it to
/// every selected projection's apply function (in the shadow schema), and
/// return how many events it held and where it ended.
pub(crate) fn batch_sql(schema: &str, selected: &[&'static Projection]) -> String {
    let applies: Vec<String> = selected
        .iter()
        .map(|p| format!("{schema}.projection_{}_apply((SELECT b FROM agg))", p.name))
        .collect();
    format!(
        "WITH batch AS ( \
             SELECT e FROM public.events e \
             WHERE (e.tx_id, e.position) > ($1::text::xid8, $2) \
               AND (NOT $4 OR e.tx_id < (SELECT public.events_horizon())) \
             ORDER BY e.tx_id, e.position LIMIT $3 \
         ), agg AS (SELECT array_agg(batch.e) AS b FROM batch), \
         last AS ( \
             SELECT (batch.e).tx_id::text::bigint AS tx, (batch.e).position AS position \
             FROM batch ORDER BY (batch.e).tx_id DESC, (batch.e).position DESC LIMIT 1 \
         ) \
         SELECT (SELECT count(*) FROM batch), (SELECT tx FROM last), (SELECT position FROM last), \
                CASE WHEN (SELECT count(*) FROM batch) > 0 THEN {} ELSE 0 END",
        applies.join(" + ")
    )
}

pub(crate) async fn apply_batch<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    sql: &str,
    after: FeedCursor,
    below_horizon: bool,
) -> Result<(u64, FeedCursor), sqlx::Error> {
    let (count, tx, position): (i64, Option<i64>, Option<i64>) =
        sqlx::query_as(&format!("SELECT c, t, p FROM ({sql}) AS r(c, t, p, applied)"))
            .bind(after.tx.to_string())
            .bind(after.position)
            .bind(BATCH_EVENTS)
            .bind(below_horizon)
            .fetch_one(executor)
            .await?;
    let next = match (tx, position) {
        (Some(tx), Some(position)) => FeedCursor { tx, position },
        _ => after,
    };
    Ok((count as u64, next))
}
