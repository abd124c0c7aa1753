//! The queries, and the only SQL that reads the read models `balances` and
//! `transactions`: one row type per table ([`BalanceRow`], [`HistoryRow`]),
//! used by the queries, by the command handlers (the balances row is the
//! aggregate's snapshot) and by the audit.
//!
//! About 530 lines: every query reads through the same row types and the
//! same reader (primary or replica), so they stay together rather than
//! spread the SQL of the read models over several files.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::auth::{Action, Principal};
use super::params::{HistoryCursor, MinPosition, PageSize, PointInTime};
use super::problems::{AppError, account_not_found};
use super::views::{
    AccountView, CurrencyTrialBalance, FeedEventView, FeedPage, PointInTimeView, TransactionPage, TransactionView,
    TrialBalanceView, amount_text,
};
use super::{Ledger, Reader, account_id_for};
use crate::domain::{Account, Bic, Currency, Iban, IbanCheck, format_amount};
use crate::event_store::{self, FeedCursor, StreamHead};
use crate::problem::{Problem, ProblemType};

/// A `balances` row as stored: raw values, so that the audit can report a
/// corrupt row as a difference; [`BalanceRow::into_state`] parses it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BalanceRow {
    pub account_id: Uuid,
    pub organization_name: String,
    pub iban: String,
    pub bic: String,
    pub currency: String,
    pub balance_cents: i64,
    pub version: i64,
    pub last_position: i64,
}

/// A `transactions` row: one item of an account's history (also what the
/// audit's fold computes from the log, to compare).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryRow {
    pub position: i64,
    pub seq: i32,
    pub transaction_id: Uuid,
    pub kind: String,
    pub amount_cents: i64,
    pub currency: String,
    pub counterparty_name: Option<String>,
    pub counterparty_iban: Option<String>,
    pub counterparty_bic: Option<String>,
    pub description: Option<String>,
    pub bulk_id: Option<Uuid>,
    pub balance_after_cents: i64,
    pub recorded_at: DateTime<Utc>,
    /// A returned transfer's reason (`currency_mismatch`).
    pub reason: Option<String>,
    /// The payer's ISO 20022 end-to-end reference, when it gave one.
    pub end_to_end_id: Option<String>,
}

/// The columns of [`BalanceRow`], for `concat!`: statements stay
/// compile-time constants.
macro_rules! balance_columns {
    () => {
        "b.account_id, b.organization_name, b.iban, b.bic, b.currency, b.balance_cents, b.version, b.last_position"
    };
}

/// The columns of [`HistoryRow`].
macro_rules! history_columns {
    () => {
        "position, seq, transaction_id, kind, amount_cents, currency, counterparty_name, counterparty_iban, \
         counterparty_bic, description, bulk_id, balance_after_cents, recorded_at, reason, end_to_end_id"
    };
}

impl BalanceRow {
    /// The account as the domain knows it, and its stream head.
    /// `head`: the stream head event's hash and recorded time, when read
    /// with the row.
    pub fn into_state(self, head: Option<(&[u8], DateTime<Utc>)>) -> Result<(Account, StreamHead), AppError> {
        let corrupt = |what: &str| {
            AppError::Internal(anyhow::anyhow!(
                "balances row of {} has an invalid {what}",
                self.account_id
            ))
        };
        let account = Account {
            account_id: self.account_id,
            organization_name: self.organization_name.clone(),
            iban: Iban::parse(&self.iban, IbanCheck::Structure).map_err(|_| corrupt("IBAN"))?,
            bic: Bic::parse(&self.bic).map_err(|_| corrupt("BIC"))?,
            currency: Currency::parse(&self.currency).map_err(|_| corrupt("currency"))?,
            balance_cents: self.balance_cents,
            version: self.version,
        };
        let hash = match head {
            Some((bytes, _)) => bytes.try_into().map_err(|_| corrupt("head hash"))?,
            None => [0; 32],
        };
        Ok((
            account,
            StreamHead {
                version: self.version,
                hash,
                recorded_at: head.map(|(_, at)| at),
            },
        ))
    }
}

/// The balances row of an account, if it has one.
pub async fn balance_row<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    account_id: Uuid,
) -> Result<Option<BalanceRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        balance_columns!(),
        " FROM balances b WHERE b.account_id = $1"
    ))
    .bind(account_id)
    .fetch_optional(executor)
    .await
}

/// Whether an account is open (has a balances row).
pub async fn account_exists(pool: &PgPool, account_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM balances WHERE account_id = $1)")
        .bind(account_id)
        .fetch_one(pool)
        .await
}

/// The account's current state and stream head, from the balances
/// projection (kept in the append's statement, so it is the snapshot),
/// with the head event's hash joined in: one round trip.
pub async fn load_account(pool: &PgPool, iban: &Iban) -> Result<Option<(Account, StreamHead)>, AppError> {
    let account_id = account_id_for(iban);
    Ok(load_accounts(pool, &[account_id]).await?.remove(&account_id))
}

/// The state and stream head of each of these accounts that is open (for
/// the posting process), in one round trip.
pub async fn load_accounts<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    account_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, (Account, StreamHead)>, AppError> {
    #[derive(sqlx::FromRow)]
    struct Snapshot {
        #[sqlx(flatten)]
        row: BalanceRow,
        hash: Vec<u8>,
        recorded_at: DateTime<Utc>,
    }
    let snapshots: Vec<Snapshot> = sqlx::query_as(concat!(
        "SELECT ",
        balance_columns!(),
        ", e.hash, e.recorded_at FROM balances b JOIN events e ON e.stream_id = b.account_id AND e.version = b.version \
         WHERE b.account_id = ANY($1)"
    ))
    .bind(account_ids)
    .fetch_all(executor)
    .await?;
    snapshots
        .into_iter()
        .map(|s| {
            let id = s.row.account_id;
            s.row
                .into_state(Some((&s.hash, s.recorded_at)))
                .map(|state| (id, state))
        })
        .collect()
}

/// An account's whole history, oldest first (for the audit).
pub async fn history_of<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    account_id: Uuid,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        history_columns!(),
        " FROM transactions WHERE account_id = $1 ORDER BY position, seq"
    ))
    .bind(account_id)
    .fetch_all(executor)
    .await
}

/// Every account id the read models know (with the log's streams, the
/// audit's list: an orphan row is a difference too).
pub async fn projected_accounts(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT account_id FROM balances UNION SELECT DISTINCT account_id FROM transactions")
        .fetch_all(pool)
        .await
}

impl Ledger {
    pub async fn account(&self, reader: &Reader, principal: &Principal, iban: &Iban) -> Result<AccountView, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let row = self
            .read(reader, |pool| async move {
                Ok(balance_row(&pool, account_id_for(iban)).await?)
            })
            .await?
            .ok_or_else(|| account_not_found(iban))?;
        let position = row.last_position;
        let (account, _) = row.into_state(None)?;
        Ok(AccountView::of(&account, Some(position)))
    }

    /// A page of the account's history, newest first, older than `cursor`.
    pub async fn transactions(
        &self,
        reader: &Reader,
        principal: &Principal,
        iban: &Iban,
        limit: PageSize,
        cursor: Option<HistoryCursor>,
    ) -> Result<TransactionPage, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let account_id = account_id_for(iban);
        let before = cursor.unwrap_or(HistoryCursor {
            position: i64::MAX,
            seq: i32::MAX,
        });
        let limit = limit.get() as usize;
        let rows = self
            .read(reader, |pool| async move {
                if !account_exists(&pool, account_id).await? {
                    return Err(account_not_found(iban).into());
                }
                // One more row than asked tells whether another page exists.
                let rows: Vec<HistoryRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    history_columns!(),
                    " FROM transactions WHERE account_id = $1 AND (position, seq) < ($2, $3) \
                     ORDER BY position DESC, seq DESC LIMIT $4"
                ))
                .bind(account_id)
                .bind(before.position)
                .bind(before.seq)
                .bind(limit as i64 + 1)
                .fetch_all(&pool)
                .await?;
                Ok(rows)
            })
            .await?;
        let more = rows.len() > limit;
        let rows = &rows[..rows.len().min(limit)];
        let next_cursor = more
            .then(|| {
                rows.last().map(|r| {
                    HistoryCursor {
                        position: r.position,
                        seq: r.seq,
                    }
                    .token()
                })
            })
            .flatten();
        Ok(TransactionPage {
            items: rows.iter().map(transaction_view).collect(),
            next_cursor,
        })
    }

    /// The balance at a past point — a time or a global position —
    /// replayed from the account's events with the domain fold, not read
    /// from a projection.
    pub async fn balance_at(
        &self,
        reader: &Reader,
        principal: &Principal,
        iban: &Iban,
        at: PointInTime,
    ) -> Result<PointInTimeView, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let (as_of, until_position) = match at {
            PointInTime::AsOf(time) => (Some(time), None),
            PointInTime::Position(position) => (None, Some(position)),
        };
        let account_id = account_id_for(iban);
        let events = self
            .read(reader, |pool| async move {
                Ok(event_store::read_stream(&pool, account_id, until_position, as_of).await?)
            })
            .await?;
        let replayed = crate::audit::replay_stream(account_id, &events);
        if let Some(difference) = replayed.differences.first() {
            return Err(AppError::Internal(anyhow::anyhow!(
                "stream {account_id} does not replay: {}",
                difference.what
            )));
        }
        let (Some(account), Some(last)) = (replayed.account, events.last()) else {
            return Err(Problem::not_found(format!("no account with IBAN {iban} at that point")).into());
        };
        Ok(PointInTimeView {
            account_id,
            iban: account.iban.to_string(),
            currency: account.currency.code().to_owned(),
            balance: format_amount(account.balance_cents, account.currency),
            balance_cents: account.balance_cents,
            version: account.version,
            position: last.position,
            recorded_at: last.recorded_at,
            as_of,
            until_position,
            events: events.len(),
        })
    }

    /// Replays the account's stream, verifies its hash chain, compares the
    /// result with the projections, and checks its double entry.
    pub async fn audit(&self, principal: &Principal, iban: &Iban) -> Result<crate::audit::StreamAudit, AppError> {
        principal.authorize(Action::Audit)?;
        let account_id = account_id_for(iban);
        let mut audit = crate::audit::audit_stream(self.pool(), account_id).await?;
        if audit.events == 0 && audit.projected_balance_cents.is_none() {
            return Err(account_not_found(iban).into());
        }
        // Double entry, as far as this account's stream is concerned.
        let differences = crate::audit::double_entry::differences(self.pool(), Some(account_id)).await?;
        audit.consistent &= differences.is_empty();
        audit.differences.extend(differences);
        Ok(audit)
    }

    /// A page of the global log in commit-safe order, after `after`.
    pub async fn events(
        &self,
        reader: &Reader,
        principal: &Principal,
        after: FeedCursor,
        limit: PageSize,
    ) -> Result<FeedPage, AppError> {
        principal.authorize(Action::ReadFeed)?;
        let events = self
            .read(reader, |pool| async move {
                Ok(event_store::read_feed(&pool, after, i64::from(limit.get())).await?)
            })
            .await?;
        let next_after = events.last().map_or(after, |e| e.cursor()).token();
        Ok(FeedPage {
            events: events.into_iter().map(FeedEventView::from).collect(),
            next_after,
        })
    }
}

/// The trial balance, in one statement (one snapshot): customers from the
/// balances projection; settlement, clearing and in flight derived from
/// the log and the posting process's checkpoint. A transfer the posting
/// process has not passed yet is in flight. One it has passed is on-us
/// (it has its credit or return), or left the bank (clearing) — but only
/// when its payee was not already an account here when it was booked
/// (then the posting process saw that account and owed it a leg): a leg
/// gone missing is in no part, and the sum is no longer zero.
pub async fn trial_balance(pool: &PgPool) -> Result<TrialBalanceView, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH cp AS ( \
             SELECT checkpoint_tx::text::xid8 AS tx, checkpoint_position AS pos \
             FROM process_checkpoints WHERE name = 'posting' \
         ), customers AS ( \
             SELECT currency, sum(balance_cents)::bigint AS cents FROM balances GROUP BY currency \
         ), deposits AS ( \
             SELECT data->>'currency' AS currency, sum((data->>'amount_cents')::bigint)::bigint AS cents \
             FROM events WHERE event_type = 'FundsDeposited' GROUP BY 1 \
         ), opened AS ( \
             SELECT data->>'iban' AS iban, tx_id, position FROM events WHERE event_type = 'AccountOpened' \
         ), transfers AS ( \
             SELECT t.item->>'currency' AS currency, (t.item->>'amount_cents')::bigint AS cents, \
                    (e.tx_id, e.position) <= (cp.tx, cp.pos) AS passed, \
                    EXISTS (SELECT 1 FROM events l \
                            WHERE l.event_type IN ('TransferReceived', 'TransferReturned') \
                              AND l.data->>'transfer_id' = t.item->>'transfer_id') AS posted, \
                    coalesce((o.tx_id, o.position) < (e.tx_id, e.position), false) AS payee_known \
             FROM events e CROSS JOIN cp \
             CROSS JOIN LATERAL jsonb_array_elements(e.data->'transfers') AS t(item) \
             LEFT JOIN opened o ON o.iban = t.item->>'counterparty_iban' \
             WHERE e.event_type = 'BulkTransferBooked' \
         ), moving AS ( \
             SELECT currency, \
                    coalesce(sum(cents) FILTER (WHERE passed AND NOT posted AND NOT payee_known), 0)::bigint \
                        AS clearing, \
                    coalesce(sum(cents) FILTER (WHERE NOT passed), 0)::bigint AS in_flight \
             FROM transfers GROUP BY currency \
         ), currencies AS ( \
             SELECT currency FROM customers UNION SELECT currency FROM deposits UNION SELECT currency FROM moving \
         ) \
         SELECT c.currency, coalesce(cu.cents, 0)::bigint, (-coalesce(d.cents, 0))::bigint, \
                coalesce(m.clearing, 0)::bigint, coalesce(m.in_flight, 0)::bigint, \
                (SELECT coalesce(max(position), 0) FROM events)::bigint \
         FROM currencies c LEFT JOIN customers cu USING (currency) LEFT JOIN deposits d USING (currency) \
         LEFT JOIN moving m USING (currency) ORDER BY c.currency",
    )
    .fetch_all(pool)
    .await?;
    let position = rows.first().map_or(0, |r| r.5);
    Ok(TrialBalanceView {
        position,
        currencies: rows
            .into_iter()
            .map(
                |(currency, customers, settlement, clearing, in_flight, _)| CurrencyTrialBalance {
                    currency,
                    customers_cents: customers,
                    settlement_cents: settlement,
                    clearing_cents: clearing,
                    in_flight_cents: in_flight,
                    sum_cents: customers + settlement + clearing + in_flight,
                },
            )
            .collect(),
    })
}

/// How often a `min_position` wait looks again.
const POSITION_POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl Ledger {
    /// Read your writes (SPEC §9): returns once the log position `min` is
    /// reflected — its event committed, and every committed event at or
    /// below that position passed by the posting process (so the credits
    /// and returns of its bulk are in, and those of any command answered
    /// with a lower position, whichever transaction id each one had: the
    /// feed's order is by transaction, positions are not) — or a 503 after
    /// `min_position_wait`. The inline projections need nothing more: they
    /// commit with the events. Front ends call it before a query that was
    /// given `min_position`.
    ///
    /// With read replicas (`LEDGER_READ_DATABASE_URL`) it also chooses
    /// where the query reads: a healthy standby, taken in turn. Given
    /// `min_position`, it waits on that standby up to the replicas' `wait`
    /// (`LEDGER_READ_REPLICA_WAIT_MS`) for the same condition, then falls
    /// back to the primary for what is left of `min_position_wait`. A
    /// standby replays the primary's commits in order and never goes back,
    /// so once it reflects the position every later read from it does.
    pub async fn reflect(&self, min: Option<MinPosition>) -> Result<Reader, AppError> {
        let deadline = std::time::Instant::now() + self.settings().min_position_wait;
        if let Some(replica) = self.replicas().pick() {
            let Some(MinPosition(position)) = min else {
                return Ok(Reader { replica: Some(replica) });
            };
            let replica_deadline = deadline.min(std::time::Instant::now() + self.replicas().settings().wait);
            match self.wait_for(replica.pool(), position, replica_deadline).await {
                Ok(true) => return Ok(Reader { replica: Some(replica) }),
                Ok(false) => {
                    metrics::counter!(crate::observability::REPLICA_FALLBACKS, "reason" => "behind").increment(1);
                }
                Err(error) => {
                    let error = AppError::from(error);
                    if !crate::replicas::is_replica_failure(&error) {
                        return Err(error);
                    }
                    replica.mark_down(format!("{error:#}"));
                    metrics::counter!(crate::observability::REPLICA_FALLBACKS, "reason" => "error").increment(1);
                }
            }
        }
        if let Some(MinPosition(position)) = min
            && !self.wait_for(self.pool(), position, deadline).await?
        {
            return Err(Problem::new(
                ProblemType::Unavailable,
                format!(
                    "position {position} is not reflected yet after {} ms; nothing was changed, retry later",
                    self.settings().min_position_wait.as_millis()
                ),
            )
            .into());
        }
        Ok(Reader::primary())
    }

    /// Whether the server behind `pool` reflects `position` (see
    /// [`Ledger::reflect`]) by `deadline`, looking again every
    /// [`POSITION_POLL`].
    async fn wait_for(&self, pool: &PgPool, position: i64, deadline: std::time::Instant) -> Result<bool, sqlx::Error> {
        loop {
            // The events after the checkpoint are the posting process's
            // lag: a short range of the (tx_id, position) index.
            let reached: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE position = $1) \
                    AND NOT EXISTS (SELECT 1 FROM events e, process_checkpoints c \
                                    WHERE c.name = 'posting' AND e.position <= $1 \
                                      AND (e.tx_id, e.position) > (c.checkpoint_tx::text::xid8, c.checkpoint_position))",
            )
            .bind(position)
            .fetch_one(pool)
            .await?;
            if reached {
                return Ok(true);
            }
            // Someone is waiting: the posting process need not finish its rest.
            self.posting_wake.notify_one();
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POSITION_POLL).await;
        }
    }

    /// The trial balance (SPEC §9): admin only.
    pub async fn trial_balance(&self, reader: &Reader, principal: &Principal) -> Result<TrialBalanceView, AppError> {
        principal.authorize(Action::ReadLedger)?;
        self.read(reader, |pool| async move { Ok(trial_balance(&pool).await?) })
            .await
    }
}

/// A history row as the history shows it.
pub(crate) fn transaction_view(row: &HistoryRow) -> TransactionView {
    TransactionView {
        transaction_id: row.transaction_id,
        kind: row.kind.clone(),
        amount: amount_text(row.amount_cents, &row.currency),
        amount_cents: row.amount_cents,
        currency: row.currency.clone(),
        counterparty_name: row.counterparty_name.clone(),
        counterparty_iban: row.counterparty_iban.clone(),
        counterparty_bic: row.counterparty_bic.clone(),
        description: row.description.clone(),
        bulk_id: row.bulk_id,
        balance_after: amount_text(row.balance_after_cents, &row.currency),
        balance_after_cents: row.balance_after_cents,
        recorded_at: row.recorded_at,
        position: row.position,
        reason: row.reason.clone(),
        end_to_end_id: row.end_to_end_id.clone(),
    }
}
