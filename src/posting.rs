//! The posting process (SPEC §9, DESIGN item 9): the credit side of every
//! on-us transfer. It follows the commit-safe feed from its checkpoint; for
//! each page it decides, on the payees' accounts, the credit of every
//! transfer the page's bulks booked to an IBAN of this ledger (or, when the
//! payee cannot take it, the return to the payer), and appends all of
//! those events and moves its checkpoint in one transaction.
//!
//! Exactly once, whatever crashes, restarts or concurrent servers:
//! - the checkpoint moves in the transaction that appends the page's
//!   events, so a page is either posted and passed, or neither;
//! - a page holds an advisory lock ([`PAGE_LOCK`], taken with
//!   `pg_try_advisory_xact_lock`), so two servers never post at the same
//!   time (the other one waits for its turn), and the transaction gets an
//!   id only with its appends at the end: the feed's horizon does not wait
//!   for the page's reads and decisions;
//! - every append carries each stream's expected version: a payee that a
//!   command changed meanwhile fails the transaction, and the page is read
//!   and decided again;
//! - last, a unique index allows one credit or return per `transfer_id` in
//!   the whole log (`migrations/0005_posting.sql`).
//!
//! A transfer to an IBAN that is no account here leaves the bank: nothing
//! is appended for it (its leg is the clearing account's, derived from the
//! log). The payer's command never waits for any of this.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::app::{AppError, account_id_for, queries};
use crate::domain::{self, Account, Posting};
use crate::event_store::{self, AppendError, FeedCursor, NewEvent, StreamAppend, StreamHead};

/// The advisory lock a posting page holds until it commits (a rebuild's
/// swap takes it too, to wait for a page in progress). Any constant works,
/// as long as every process uses the same one.
pub const PAGE_LOCK: i64 = 0x6c65_6467_6572_0003;

/// The checkpoint's name in `process_checkpoints`.
const NAME: &str = "posting";
/// Feed events read per page.
const PAGE_EVENTS: i64 = 500;
/// Transfers posted per page at most (a page stops at the bulk that
/// reaches it; one bulk is never split): bounds a transaction's size.
const PAGE_TRANSFERS: usize = 5_000;
/// How long the process rests once caught up after a page that posted
/// something (so that under load a page gathers what arrived meanwhile,
/// rather than one transaction per few events).
pub const IDLE_WAIT: Duration = Duration::from_millis(20);
/// The longest rest: it doubles from [`IDLE_WAIT`] while pages post
/// nothing (a log of deposits and transfers to other banks), which keeps
/// the process's cost, a transaction and a feed scan per page, off the
/// commands' CPU. A query waiting for `min_position` wakes it at once.
pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(200);

/// What one page came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Feed events read (a page cut before a bulk read a few more than it
    /// passed).
    pub events: u64,
    /// Credits and returns appended.
    pub postings: u64,
    /// The page was cut by a bound: more is waiting right now.
    pub more: bool,
}

/// Posts until the feed has nothing more to give (or another server holds
/// the checkpoint). Returns what was posted.
pub async fn catch_up(pool: &PgPool) -> Result<Page, AppError> {
    let mut total = Page::default();
    let mut conflicts = 0_u64;
    loop {
        match post_page(pool).await? {
            Some(page) => {
                total.events += page.events;
                total.postings += page.postings;
                if !page.more {
                    return Ok(total);
                }
            }
            None => {
                // A conflict: a command moved a stream of the page. Back
                // off a little (growing with repeats) before deciding the
                // page again, so a busy payee cannot keep it spinning.
                conflicts += 1;
                tokio::time::sleep(Duration::from_millis(conflicts.min(50))).await;
            }
        }
    }
}

/// Runs for as long as the server does: posts, rests once caught up (see
/// [`MAX_IDLE_WAIT`]) or until `wake` is notified, retries after a failure
/// (the checkpoint makes that safe).
pub async fn run(pool: PgPool, wake: Arc<Notify>) {
    let mut rest = IDLE_WAIT;
    loop {
        match catch_up(&pool).await {
            Ok(page) => {
                if page.events > 0 {
                    tracing::debug!(events = page.events, postings = page.postings, "posted");
                }
                rest = if page.postings > 0 {
                    IDLE_WAIT
                } else {
                    (rest * 2).min(MAX_IDLE_WAIT)
                };
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "posting process: retrying");
                rest = IDLE_WAIT * 50;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = wake.notified() => {}
        }
    }
}

/// How far behind the log the posting process is: its checkpoint's
/// position and the events after it.
pub async fn lag(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    Ok(checkpoint_lag(pool, NAME).await?.unwrap_or_default())
}

/// The checkpoint `name` in `process_checkpoints` (posting, the NATS relay).
pub(crate) async fn read_checkpoint<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    name: &str,
) -> Result<FeedCursor, sqlx::Error> {
    let (tx, position): (i64, i64) =
        sqlx::query_as("SELECT checkpoint_tx, checkpoint_position FROM process_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(executor)
            .await?;
    Ok(FeedCursor { tx, position })
}

/// Moves the checkpoint `name` to `cursor`.
pub(crate) async fn save_checkpoint<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    name: &str,
    cursor: FeedCursor,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE process_checkpoints SET checkpoint_tx = $2, checkpoint_position = $3, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(cursor.tx)
    .bind(cursor.position)
    .execute(executor)
    .await?;
    Ok(())
}

/// A follower of the feed with a checkpoint in `process_checkpoints`
/// (posting, the NATS relay): its checkpoint's position and the events
/// after it; `None` when it has no checkpoint row.
pub async fn checkpoint_lag(pool: &PgPool, name: &str) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.checkpoint_position, \
                (SELECT count(*) FROM events e \
                 WHERE (e.tx_id, e.position) > (c.checkpoint_tx::text::xid8, c.checkpoint_position)) \
         FROM process_checkpoints c WHERE c.name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// The type of the events posting reads.
const BOOKED: &str = "BulkTransferBooked";

/// One transfer to post, with where it came from.
struct Pending {
    payer_id: Uuid,
    bulk_id: Uuid,
    position: i64,
    transfer: domain::TransferBooked,
}

/// A row of [`PAGE_SQL`]: an on-us transfer still to post, or (with
/// `transfer` NULL) the page's last event, which says how far it reaches.
#[derive(sqlx::FromRow)]
struct PageRow {
    position: i64,
    stream_id: Uuid,
    tx: i64,
    bulk_id: Option<Uuid>,
    transfer: Option<sqlx::types::Json<domain::TransferBooked>>,
    /// On the last event's row: how many events the page has.
    events: Option<i64>,
}

/// A page of the commit-safe feed (`read_feed`'s order and horizon) as the
/// posting process needs it, filtered in the database: only the transfers
/// of booked bulks whose payee IBAN is an account here and that have no
/// credit or return yet, in feed order, followed by the page's last event.
/// A bulk paying other banks only, which is most of them, thus costs the
/// process nothing but its share of one index scan; and a transfer that
/// already has its leg (the checkpoint moved back by hand, say) is passed,
/// not appended again into the unique index for ever.
const PAGE_SQL: &str = "WITH page AS MATERIALIZED ( \
         SELECT position, stream_id, tx_id, event_type, data FROM events \
         WHERE (tx_id, position) > ($1::text::xid8, $2) AND tx_id < (SELECT events_horizon()) \
         ORDER BY tx_id, position LIMIT $3 \
     ) \
     SELECT position, stream_id, tx_id::text::bigint AS tx, bulk_id, transfer, events FROM ( \
         SELECT p.position, p.stream_id, p.tx_id, (p.data->>'bulk_id')::uuid AS bulk_id, \
                t.item AS transfer, t.n, NULL::bigint AS events \
         FROM page p CROSS JOIN LATERAL jsonb_array_elements(p.data->'transfers') WITH ORDINALITY AS t(item, n) \
         WHERE p.event_type = $4 \
           AND EXISTS (SELECT 1 FROM balances b WHERE b.iban = t.item->>'counterparty_iban') \
           AND NOT EXISTS (SELECT 1 FROM events l \
                           WHERE l.event_type IN ('TransferReceived', 'TransferReturned') \
                             AND l.data->>'transfer_id' = t.item->>'transfer_id') \
         UNION ALL \
         (SELECT position, stream_id, tx_id, NULL, NULL, NULL, (SELECT count(*) FROM page) FROM page ORDER BY tx_id DESC, position DESC LIMIT 1) \
     ) AS rows \
     ORDER BY tx_id, position, n NULLS LAST";

/// Posts one page in one transaction. `Some(page)` when done (an empty page
/// when caught up, or when another server holds the checkpoint); `None`
/// when a stream moved meanwhile and the page must be decided again.
async fn post_page(pool: &PgPool) -> Result<Option<Page>, AppError> {
    // Look before locking: an idle poll then reads one row and writes
    // nothing (taking the row lock would give every poll a transaction id,
    // and on a cluster with synchronous replication a commit to wait for).
    let peek = read_checkpoint(pool, NAME).await?;
    if event_store::read_feed_for(pool, peek, 1, BOOKED).await?.is_empty() {
        return Ok(Some(Page::default()));
    }
    let mut tx = pool.begin().await?;
    // A page is not a request: the requests' statement timeout must not
    // cancel it for ever (its size is bounded: events and bytes).
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *tx).await?;
    // One page at a time across processes: an advisory lock, not the
    // checkpoint row's lock, which would give the transaction an id for the
    // whole page (and the feed's horizon would wait for it). The id comes
    // with the page's first write, its appends at the end. Another
    // process's page (or a rebuild's swap) holding it: nothing to do here.
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PAGE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(Some(Page::default()));
    }
    let checkpoint = read_checkpoint(&mut *tx, NAME).await?;
    let rows: Vec<PageRow> = sqlx::query_as(PAGE_SQL)
        .bind(checkpoint.tx.to_string())
        .bind(checkpoint.position)
        .bind(PAGE_EVENTS)
        .bind(BOOKED)
        .fetch_all(&mut *tx)
        .await?;
    let Some(last) = rows.last() else {
        return Ok(Some(Page::default()));
    };
    let page_events = last.events.unwrap_or_default();
    let mut next = FeedCursor {
        tx: last.tx,
        position: last.position,
    };

    // The page's on-us transfers, in feed order, up to the transfer bound.
    // A bulk is never split: when the next one does not fit, the page ends
    // just before its event (nothing else sits between the two in the
    // feed's order, as `(tx, position - 1)` is no event).
    let mut cut = page_events == PAGE_EVENTS;
    let mut pending: Vec<Pending> = Vec::new();
    for bulk in rows.chunk_by(|a, b| a.position == b.position && b.transfer.is_some()) {
        let first = &bulk[0];
        let Some(bulk_id) = first.bulk_id else {
            continue; // the page's last event
        };
        if !pending.is_empty() && pending.len() + bulk.len() > PAGE_TRANSFERS {
            next = FeedCursor {
                tx: first.tx,
                position: first.position - 1,
            };
            cut = true;
            break;
        }
        pending.extend(bulk.iter().filter_map(|row| {
            Some(Pending {
                payer_id: row.stream_id,
                bulk_id,
                position: row.position,
                transfer: row.transfer.as_ref()?.0.clone(),
            })
        }));
    }

    let mut ids: Vec<Uuid> = pending
        .iter()
        .flat_map(|p| [p.payer_id, account_id_for(&p.transfer.counterparty_iban)])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states: HashMap<Uuid, (Account, StreamHead)> = if ids.is_empty() {
        HashMap::new()
    } else {
        queries::load_accounts(&mut *tx, &ids).await?
    };
    let loaded: HashMap<Uuid, StreamHead> = states.iter().map(|(id, (_, head))| (*id, *head)).collect();

    // Decide every posting against the states as they evolve.
    let mut appended: HashMap<Uuid, Vec<NewEvent>> = HashMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    for posting in &pending {
        let payee_id = account_id_for(&posting.transfer.counterparty_iban);
        let Some((payee, _)) = states.get(&payee_id) else {
            continue; // not an account here: the transfer leaves the bank
        };
        let Some((payer, _)) = states.get(&posting.payer_id) else {
            return Err(AppError::Internal(anyhow::anyhow!(
                "bulk at position {} comes from stream {} that has no balances row",
                posting.position,
                posting.payer_id
            )));
        };
        let view = Posting {
            bulk_id: posting.bulk_id,
            payer,
            transfer: &posting.transfer,
        };
        let (stream, event) = match domain::decide_credit(payee, &view) {
            Ok(credit) => (payee_id, credit),
            Err(reason) => match domain::decide_return(payer, payee, &view, reason) {
                Some(back) => (posting.payer_id, back),
                None => {
                    return Err(AppError::Internal(anyhow::anyhow!(
                        "transfer {} cannot be returned: the payer's balance would overflow",
                        posting.transfer.transfer_id
                    )));
                }
            },
        };
        let state = states.get_mut(&stream).expect("decided on a loaded account");
        state.0 = domain::evolve(Some(state.0.clone()), std::slice::from_ref(&event));
        if !appended.contains_key(&stream) {
            order.push(stream);
        }
        appended.entry(stream).or_default().push(NewEvent {
            metadata: json!({
                "command": "Posting",
                "actor": "posting",
                "causation": {"stream_id": posting.payer_id, "position": posting.position},
            }),
            event,
        });
    }

    let appends: Vec<StreamAppend<'_>> = order
        .iter()
        .map(|stream| StreamAppend {
            stream_id: *stream,
            head: loaded[stream],
            events: &appended[stream],
            records: &[],
        })
        .collect();
    let postings = appends.iter().map(|a| a.events.len() as u64).sum();
    let appended_types: Vec<&'static str> = appends
        .iter()
        .flat_map(|a| a.events.iter().map(|new| new.event.event_type()))
        .collect();
    match event_store::append_many(&mut *tx, &appends, Utc::now()).await {
        Ok(_) => {}
        Err(AppendError::VersionConflict(_)) => {
            // A command (or another process) moved a stream: decide again.
            tx.rollback().await?;
            return Ok(None);
        }
        Err(AppendError::IdempotencyKeyTaken) => unreachable!("postings carry no idempotency key"),
        Err(AppendError::Database(error)) => return Err(error.into()),
        Err(AppendError::OutcomeUnknown(error)) => {
            // Safe to read again: the checkpoint says whether it committed.
            return Err(AppError::Unavailable(anyhow::Error::new(error).context("posting")));
        }
    }
    if postings == 0 {
        // Nothing but the checkpoint: a crash that loses this commit only
        // makes the page read again, so it need not wait for its fsync
        // (which would compete with the commands' own).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
    }
    save_checkpoint(&mut *tx, NAME, next).await?;
    tx.commit().await?;
    for event_type in appended_types {
        metrics::counter!(crate::observability::EVENTS_APPENDED, "type" => event_type).increment(1);
    }
    Ok(Some(Page {
        events: page_events as u64,
        postings,
        more: cut,
    }))
}
