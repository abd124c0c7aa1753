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
//! - the checkpoint row is taken `FOR UPDATE SKIP LOCKED`, so two servers
//!   never post at the same time (the other one waits for its turn);
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
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::{AppError, account_id_for, queries};
use crate::domain::{self, Account, Posting};
use crate::event_store::{self, AppendError, FeedCursor, NewEvent, StreamAppend, StreamHead};

/// The checkpoint's name in `process_checkpoints`.
const NAME: &str = "posting";
/// Feed events read per page.
const PAGE_EVENTS: i64 = 500;
/// Transfers posted per page at most (a page stops at the bulk that
/// reaches it; one bulk is never split): bounds a transaction's size.
const PAGE_TRANSFERS: usize = 5_000;
/// How long the process rests once caught up.
pub const IDLE_WAIT: Duration = Duration::from_millis(20);

/// What one page came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Feed events passed.
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

/// Runs for as long as the server does: posts, rests [`IDLE_WAIT`] once
/// caught up (so that under load a page gathers what arrived meanwhile,
/// rather than one transaction per few events), retries after a failure
/// (the checkpoint makes that safe).
pub async fn run(pool: PgPool) {
    loop {
        match catch_up(&pool).await {
            Ok(page) => {
                if page.events > 0 {
                    tracing::debug!(events = page.events, postings = page.postings, "posted");
                }
                tokio::time::sleep(IDLE_WAIT).await;
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "posting process: retrying");
                tokio::time::sleep(IDLE_WAIT * 50).await;
            }
        }
    }
}

/// How far behind the log the posting process is: its checkpoint's
/// position and the events after it.
pub async fn lag(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT c.checkpoint_position, \
                (SELECT count(*) FROM events e \
                 WHERE (e.tx_id, e.position) > (c.checkpoint_tx::text::xid8, c.checkpoint_position)) \
         FROM process_checkpoints c WHERE c.name = $1",
    )
    .bind(NAME)
    .fetch_one(pool)
    .await
}

/// The type of the events posting reads.
const BOOKED: &str = "BulkTransferBooked";

/// The part of a [`domain::Event::BulkTransferBooked`] payload posting needs.
#[derive(Deserialize)]
struct Booked {
    bulk_id: Uuid,
    transfers: Vec<domain::TransferBooked>,
}

/// One transfer to post, with where it came from.
struct Pending {
    payer_id: Uuid,
    bulk_id: Uuid,
    position: i64,
    transfer: domain::TransferBooked,
}

/// Posts one page in one transaction. `Some(page)` when done (an empty page
/// when caught up, or when another server holds the checkpoint); `None`
/// when a stream moved meanwhile and the page must be decided again.
async fn post_page(pool: &PgPool) -> Result<Option<Page>, AppError> {
    // Look before locking: an idle poll then reads one row and writes
    // nothing (taking the row lock would give every poll a transaction id,
    // and on a cluster with synchronous replication a commit to wait for).
    let unlocked: (i64, i64) =
        sqlx::query_as("SELECT checkpoint_tx, checkpoint_position FROM process_checkpoints WHERE name = $1")
            .bind(NAME)
            .fetch_one(pool)
            .await?;
    let peek = FeedCursor {
        tx: unlocked.0,
        position: unlocked.1,
    };
    if event_store::read_feed_for(pool, peek, 1, BOOKED).await?.is_empty() {
        return Ok(Some(Page::default()));
    }
    let mut tx = pool.begin().await?;
    let checkpoint: Option<(i64, i64)> = sqlx::query_as(
        "SELECT checkpoint_tx, checkpoint_position FROM process_checkpoints WHERE name = $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(NAME)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((checkpoint_tx, checkpoint_position)) = checkpoint else {
        return Ok(Some(Page::default()));
    };
    let after = FeedCursor {
        tx: checkpoint_tx,
        position: checkpoint_position,
    };
    let feed = event_store::read_feed_for(&mut *tx, after, PAGE_EVENTS, BOOKED).await?;
    let Some(last_read) = feed.last().map(|e| e.cursor()) else {
        return Ok(Some(Page::default()));
    };

    // The page's transfers, in feed order, up to the transfer bound.
    let mut pending = Vec::new();
    let mut cut = feed.len() as i64 == PAGE_EVENTS;
    let mut passed = (0_u64, last_read);
    for entry in &feed {
        if let Some(data) = &entry.data {
            // Only what posting needs, read from the payload in place.
            let booked = Booked::deserialize(data).map_err(|e| {
                AppError::Internal(anyhow::anyhow!(
                    "event at position {} does not decode: {e}",
                    entry.position
                ))
            })?;
            if !pending.is_empty() && pending.len() + booked.transfers.len() > PAGE_TRANSFERS {
                cut = true;
                break;
            }
            pending.extend(booked.transfers.into_iter().map(|transfer| Pending {
                payer_id: entry.stream_id,
                bulk_id: booked.bulk_id,
                position: entry.position,
                transfer,
            }));
        }
        passed = (passed.0 + 1, entry.cursor());
    }
    let (events_passed, next) = passed;

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
        })
        .collect();
    let postings = appends.iter().map(|a| a.events.len() as u64).sum();
    let appended_types: Vec<&'static str> = appends
        .iter()
        .flat_map(|a| a.events.iter().map(|new| new.event.event_type()))
        .collect();
    match event_store::append_many(&mut *tx, &appends, Utc::now()).await {
        Ok(_) => {}
        Err(AppendError::VersionConflict) => {
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
    sqlx::query(
        "UPDATE process_checkpoints SET checkpoint_tx = $2, checkpoint_position = $3, updated_at = now() \
         WHERE name = $1",
    )
    .bind(NAME)
    .bind(next.tx)
    .bind(next.position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    for event_type in appended_types {
        metrics::counter!(crate::observability::EVENTS_APPENDED, "type" => event_type).increment(1);
    }
    Ok(Some(Page {
        events: events_passed,
        postings,
        more: cut,
    }))
}
