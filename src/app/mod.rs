//! Command handlers and queries: load → decide → append, with idempotency
//! and retries; reads from the projections.

pub mod auth;
mod group_commit;
pub mod idempotency;
pub mod requests;
pub mod views;

use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::HistoryRow;
use crate::domain::{
    self, Account, Bic, Command, Currency, DepositCommand, Event, Iban, IbanCheck, OpenAccountCommand, Refusal,
    TransferBulkCommand, TransferLine, format_amount,
};
use crate::event_store::{self, StreamHead};
use crate::problem::{FieldError, Problem};
use auth::{Action, AuthMode, Authenticator, Principal};
use group_commit::GroupCommit;
pub use group_commit::GroupCommitSettings;
use idempotency::IdempotencyKey;
use requests::{BulkTransferRequest, DepositRequest, OpenAccountRequest};
use views::{
    AccountView, BulkTransferView, DepositView, FeedEventView, FeedPage, PointInTimeView, TransactionPage,
    TransactionView, amount_text,
};

/// Named limits (SPEC §2.3, §3), each enforced where its input arrives.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 above).
    pub body_bytes_max: usize,
    /// Most transfers in one bulk (400 above).
    pub transfers_per_bulk_max: usize,
    pub page_size_default: u32,
    /// Largest `limit` a history page may ask for (400 above).
    pub page_size_max: u32,
    /// Longest a request may take before it is answered 503 (a command's
    /// outcome is then unknown to the client: retry it with its key).
    pub request_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes_max: 10 * 1024 * 1024,
            transfers_per_bulk_max: 10_000,
            page_size_default: 50,
            page_size_max: 1_000,
            request_timeout: std::time::Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub auth: AuthMode,
    pub iban_check: IbanCheck,
    pub limits: Limits,
    pub group_commit: GroupCommitSettings,
}

/// A 4xx the client can act on, or an operational failure (5xx) that is
/// logged and never shown. The two never share a variant.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}: {}", .0.title, .0.detail)]
    Client(Problem),
    /// The database is out of reach, overloaded or cancelled the statement:
    /// nothing was written, the client may retry (503).
    #[error("unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Whether a database error means "not now" (retry later) rather than a bug:
/// no connection, pool exhausted or closed, the server shutting down or not
/// yet accepting, a statement cancelled by its timeout.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57014: query cancelled (statement
            // timeout); 57P01..57P03: admin/crash shutdown, cannot connect now.
            code.starts_with("08") || code == "57014" || code.starts_with("57P")
        }),
        _ => false,
    }
}

impl From<Problem> for AppError {
    fn from(problem: Problem) -> AppError {
        AppError::Client(problem)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> AppError {
        if is_unavailable(&error) {
            AppError::Unavailable(anyhow::Error::new(error).context("database"))
        } else {
            AppError::Internal(anyhow::Error::new(error).context("database"))
        }
    }
}

/// A command's answer: what the HTTP layer sends, byte for byte. Recorded
/// outcomes (201, and the 422 of a refused bulk) are replayed for a repeated
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResponse {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
}

/// Who asked, for authorization and the event metadata, and the
/// idempotency key if any.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub principal: Principal,
    pub request_id: String,
    pub idempotency: Option<(IdempotencyKey, [u8; 32])>,
}

pub struct Ledger {
    pool: PgPool,
    settings: Settings,
    /// Commands on one account are decided one after the other in this
    /// process and appended in batches; across processes, optimistic
    /// concurrency decides.
    group_commit: Arc<GroupCommit>,
    authenticator: Authenticator,
}

/// Account ids are derived from the IBAN (UUID v5), so the event store's
/// unique (stream, version) constraint alone makes an IBAN open only once.
const ACCOUNT_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_4000_8000_6163_636f_756e);

pub fn account_id_for(iban: &Iban) -> Uuid {
    Uuid::new_v5(&ACCOUNT_NAMESPACE, iban.as_str().as_bytes())
}

impl Ledger {
    pub fn new(pool: PgPool, settings: Settings) -> Ledger {
        let group_commit = Arc::new(GroupCommit::new(pool.clone(), settings.group_commit.clone()));
        let authenticator = Authenticator::new(pool.clone(), settings.auth);
        Ledger {
            pool,
            settings,
            group_commit,
            authenticator,
        }
    }

    /// The caller behind an `Authorization` header (its raw value), or a
    /// 401; everyone is an admin while authentication is disabled.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AppError> {
        self.authenticator.authenticate(authorization).await
    }

    /// Forgets changed (revoked) keys as soon as the database says so; runs
    /// for as long as the server does.
    pub async fn watch_key_changes(&self) {
        self.authenticator.watch_changes().await
    }

    /// Batches committed, commands in them, and the largest batch so far.
    pub fn group_commit_stats(&self) -> (u64, u64, u64) {
        self.group_commit.stats.snapshot()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Parses an IBAN given in a path or flag, to look an account up: the
    /// shape is checked (garbage is a 400), not the check digits, so an
    /// account stays reachable whatever `LEDGER_IBAN_CHECK` says today.
    pub fn lookup_iban(&self, text: &str, field: &str) -> Result<Iban, Problem> {
        Iban::parse(text, IbanCheck::Structure)
            .map_err(|e| Problem::validation(vec![FieldError::new(field, e.to_string())]))
    }

    // ---- commands -------------------------------------------------------

    pub async fn open_account(
        &self,
        ctx: &CommandContext,
        request: OpenAccountRequest,
    ) -> Result<CommandResponse, AppError> {
        ctx.principal.authorize(Action::OpenAccount)?;
        let account_id = account_id_for(&request.iban);
        let command = Command::OpenAccount(OpenAccountCommand {
            account_id,
            organization_name: request.organization_name,
            iban: request.iban.clone(),
            bic: request.bic,
            currency: request.currency,
        });
        self.execute(ctx, &request.iban, command, move |state, events| {
            let account = domain::evolve(state.cloned(), events);
            Ok((201, to_json(&AccountView::of(&account, None))))
        })
        .await
    }

    pub async fn deposit(
        &self,
        ctx: &CommandContext,
        iban: &Iban,
        request: DepositRequest,
    ) -> Result<CommandResponse, AppError> {
        ctx.principal.authorize(Action::Deposit)?;
        let deposit_id = Uuid::now_v7();
        // The account's currency decides how many digits the amount may have,
        // so the command is built once the account is known.
        let account = self.load(iban).await?.map(|(account, _)| account);
        let currency = request
            .currency
            .or(account.as_ref().map(|a| a.currency))
            .unwrap_or(Currency::EUR);
        let amount_cents = request
            .amount
            .to_minor(currency)
            .map_err(|e| Problem::validation(vec![FieldError::new("amount", e.to_string())]))?;
        let command = Command::Deposit(DepositCommand {
            deposit_id,
            amount_cents,
            currency,
            reference: request.reference.clone(),
        });
        self.execute(ctx, iban, command, move |state, events| {
            let account = domain::evolve(state.cloned(), events);
            Ok((
                201,
                to_json(&DepositView {
                    transaction_id: deposit_id,
                    account_id: account.account_id,
                    iban: account.iban.to_string(),
                    amount: format_amount(amount_cents, currency),
                    amount_cents,
                    currency: currency.code().to_owned(),
                    reference: request.reference.clone(),
                    balance: format_amount(account.balance_cents, account.currency),
                    balance_cents: account.balance_cents,
                    version: account.version,
                }),
            ))
        })
        .await
    }

    pub async fn transfer_bulk(
        &self,
        ctx: &CommandContext,
        request: BulkTransferRequest,
    ) -> Result<CommandResponse, AppError> {
        ctx.principal.authorize(Action::Transfer {
            from: &request.organization_iban,
        })?;
        let bulk_id = Uuid::now_v7();
        let command = Command::TransferBulk(TransferBulkCommand {
            bulk_id,
            organization_name: request.organization_name,
            organization_bic: request.organization_bic,
            transfers: request
                .credit_transfers
                .into_iter()
                .map(|t| TransferLine {
                    transfer_id: Uuid::now_v7(),
                    amount_cents: t.amount_cents,
                    currency: t.currency,
                    counterparty_name: t.counterparty_name,
                    counterparty_iban: t.counterparty_iban,
                    counterparty_bic: t.counterparty_bic,
                    description: t.description,
                })
                .collect(),
        });
        self.execute(ctx, &request.organization_iban, command, move |state, events| {
            let account = domain::evolve(state.cloned(), events);
            match events {
                [Event::BulkTransferBooked {
                    bulk_id,
                    currency,
                    total_cents,
                    balance_after_cents,
                    transfers,
                }] => Ok((
                    201,
                    to_json(&BulkTransferView {
                        bulk_id: *bulk_id,
                        account_id: account.account_id,
                        iban: account.iban.to_string(),
                        transfer_count: transfers.len(),
                        transfer_ids: transfers.iter().map(|t| t.transfer_id).collect(),
                        currency: currency.code().to_owned(),
                        total: format_amount(*total_cents, *currency),
                        total_cents: *total_cents,
                        balance_after: format_amount(*balance_after_cents, *currency),
                        balance_after_cents: *balance_after_cents,
                        version: account.version,
                    }),
                )),
                [Event::BulkTransferRejected {
                    bulk_id,
                    currency,
                    requested_cents,
                    available_cents,
                    ..
                }] => {
                    let problem = Problem::new(
                        422,
                        "insufficient-funds",
                        "Insufficient funds",
                        format!(
                            "the balance of {} {currency} does not cover the bulk total of {} {currency}; nothing was booked",
                            format_amount(*available_cents, *currency),
                            format_amount(*requested_cents, *currency),
                        ),
                    )
                    .with("bulk_id", bulk_id.to_string())
                    .with("currency", currency.code())
                    .with("requested", format_amount(*requested_cents, *currency))
                    .with("requested_cents", *requested_cents)
                    .with("available", format_amount(*available_cents, *currency))
                    .with("available_cents", *available_cents);
                    Ok((422, problem.to_json()))
                }
                other => Err(AppError::Internal(anyhow::anyhow!("bulk decided unexpected events: {other:?}"))),
            }
        })
        .await
    }

    /// Decides and appends a command through the account's group commit;
    /// the response is rendered before the append so it can be recorded with
    /// the events under the idempotency key, in the same statement.
    async fn execute<F>(
        &self,
        ctx: &CommandContext,
        iban: &Iban,
        command: Command,
        render: F,
    ) -> Result<CommandResponse, AppError>
    where
        F: Fn(Option<&Account>, &[Event]) -> Result<(u16, String), AppError> + Send + Sync + 'static,
    {
        // Idempotency keys are looked up by the batch, all at once.
        self.group_commit
            .submit(ctx.clone(), iban.clone(), command, Box::new(render))
            .await
    }

    async fn load(&self, iban: &Iban) -> Result<Option<(Account, StreamHead)>, AppError> {
        load_account(&self.pool, iban).await
    }

    // ---- queries --------------------------------------------------------

    pub async fn account(&self, principal: &Principal, iban: &Iban) -> Result<AccountView, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let row: Option<AccountRow> = sqlx::query_as(
            "SELECT account_id, organization_name, iban, bic, currency, balance_cents, version, last_position, \
                    NULL::bytea AS hash \
             FROM balances WHERE account_id = $1",
        )
        .bind(account_id_for(iban))
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| account_not_found(iban))?;
        let position = row.last_position;
        let (account, _) = row.into_state()?;
        Ok(AccountView::of(&account, Some(position)))
    }

    pub async fn transactions(
        &self,
        principal: &Principal,
        iban: &Iban,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<TransactionPage, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let limits = &self.settings.limits;
        let mut errors = Vec::new();
        let limit = page_size(limit, limits, &mut errors);
        let cursor = match cursor {
            None => None,
            Some(text) => match parse_cursor(text) {
                Some(c) => Some(c),
                None => {
                    errors.push(FieldError::new("cursor", "is not a cursor returned by this endpoint"));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(Problem::validation(errors).into());
        }
        let account_id = account_id_for(iban);
        let exists: Option<(i64,)> = sqlx::query_as("SELECT version FROM balances WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(account_not_found(iban).into());
        }
        let (before_position, before_seq) = cursor.unwrap_or((i64::MAX, i32::MAX));
        // One more row than asked tells whether another page exists.
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT position, seq, transaction_id, kind, amount_cents, currency, counterparty_name, counterparty_iban, \
                    counterparty_bic, description, bulk_id, balance_after_cents, recorded_at \
             FROM transactions \
             WHERE account_id = $1 AND (position, seq) < ($2, $3) \
             ORDER BY position DESC, seq DESC LIMIT $4",
        )
        .bind(account_id)
        .bind(before_position)
        .bind(before_seq)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        let rows = &rows[..rows.len().min(limit as usize)];
        let next_cursor = more
            .then(|| rows.last().map(|r| format!("{}.{}", r.position, r.seq)))
            .flatten();
        Ok(TransactionPage {
            items: rows.iter().map(transaction_view).collect(),
            next_cursor,
        })
    }
}

impl Ledger {
    /// The balance at a past point — a time (`as_of`, RFC 3339) or a global
    /// position — replayed from the account's events with the domain fold,
    /// not read from a projection.
    pub async fn balance_at(
        &self,
        principal: &Principal,
        iban: &Iban,
        as_of: Option<&str>,
        position: Option<&str>,
    ) -> Result<PointInTimeView, AppError> {
        principal.authorize(Action::ReadAccount(iban))?;
        let mut errors = Vec::new();
        let as_of = as_of.and_then(|text| match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError::new(
                    "as_of",
                    "must be an RFC 3339 time such as 2026-11-24T12:00:00Z",
                ));
                None
            }
        });
        let until_position = position.and_then(|text| match text.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                errors.push(FieldError::new("position", "must be a non-negative integer"));
                None
            }
        });
        if errors.is_empty() && as_of.is_some() && until_position.is_some() {
            errors.push(FieldError::new("position", "give either as_of or position, not both"));
        }
        if errors.is_empty() && as_of.is_none() && until_position.is_none() {
            errors.push(FieldError::new("as_of", "give as_of (RFC 3339) or position"));
        }
        if !errors.is_empty() {
            return Err(Problem::validation(errors).into());
        }
        let account_id = account_id_for(iban);
        let events = event_store::read_stream(&self.pool, account_id, until_position, as_of).await?;
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

    /// Replays the account's stream, verifies its hash chain and compares
    /// the result with the projections.
    pub async fn audit(&self, principal: &Principal, iban: &Iban) -> Result<crate::audit::StreamAudit, AppError> {
        principal.authorize(Action::Audit)?;
        let audit = crate::audit::audit_stream(&self.pool, account_id_for(iban)).await?;
        if audit.events == 0 && audit.projected_balance_cents.is_none() {
            return Err(account_not_found(iban).into());
        }
        Ok(audit)
    }

    /// A page of the global log in commit-safe order.
    pub async fn events(
        &self,
        principal: &Principal,
        after: Option<&str>,
        limit: Option<&str>,
    ) -> Result<FeedPage, AppError> {
        principal.authorize(Action::ReadFeed)?;
        let limits = &self.settings.limits;
        let mut errors = Vec::new();
        let after = match after {
            None | Some("") => event_store::FeedCursor::START,
            Some(text) => event_store::FeedCursor::parse(text).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "after",
                    "must be 0 or a next_after returned by this endpoint",
                ));
                event_store::FeedCursor::START
            }),
        };
        let limit = page_size(limit, limits, &mut errors);
        if !errors.is_empty() {
            return Err(Problem::validation(errors).into());
        }
        let events = event_store::read_feed(&self.pool, after, i64::from(limit)).await?;
        let next_after = events.last().map_or(after, |e| e.cursor()).token();
        Ok(FeedPage {
            events: events
                .into_iter()
                .map(|e| FeedEventView {
                    after: e.cursor().token(),
                    position: e.event.position,
                    stream_id: e.event.stream_id,
                    version: e.event.version,
                    event_type: e.event.event_type,
                    schema_version: e.event.schema_version,
                    data: e.event.data,
                    metadata: e.event.metadata,
                    recorded_at: e.event.recorded_at,
                })
                .collect(),
            next_after,
        })
    }
}

/// The account's current state and stream head, from the balances
/// projection (kept in the append's statement, so it is the snapshot).
/// A page's `limit`: the default when absent, else 1 to the configured
/// maximum (an error naming `limit` otherwise).
fn page_size(limit: Option<&str>, limits: &Limits, errors: &mut Vec<FieldError>) -> u32 {
    match limit {
        None => limits.page_size_default,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=limits.page_size_max).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {}", limits.page_size_max),
                ));
                0
            }
        },
    }
}

pub(crate) async fn load_account(pool: &PgPool, iban: &Iban) -> Result<Option<(Account, StreamHead)>, AppError> {
    let row: Option<AccountRow> = sqlx::query_as(
        "SELECT b.account_id, b.organization_name, b.iban, b.bic, b.currency, b.balance_cents, b.version, \
                b.last_position, e.hash \
         FROM balances b JOIN events e ON e.stream_id = b.account_id AND e.version = b.version \
         WHERE b.account_id = $1",
    )
    .bind(account_id_for(iban))
    .fetch_optional(pool)
    .await?;
    row.map(AccountRow::into_state).transpose()
}

fn parse_cursor(text: &str) -> Option<(i64, i32)> {
    let (position, seq) = text.split_once('.')?;
    Some((position.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn command_name(command: &Command) -> &'static str {
    match command {
        Command::OpenAccount(_) => "OpenAccount",
        Command::Deposit(_) => "Deposit",
        Command::TransferBulk(_) => "TransferBulk",
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Views are plain structs of strings and numbers.
    serde_json::to_string(value).expect("view serialises")
}

fn account_not_found(iban: &Iban) -> Problem {
    Problem::not_found(format!("no account with IBAN {iban}"))
}

pub(crate) fn refusal_problem(refusal: &Refusal, iban: &Iban) -> Problem {
    match refusal {
        Refusal::AlreadyOpen => Problem::new(
            409,
            "account-exists",
            "Account already exists",
            format!("an account with IBAN {iban} already exists"),
        ),
        Refusal::AccountNotFound => account_not_found(iban),
        Refusal::OrganizationMismatch => Problem::not_found(format!(
            "no account with IBAN {iban} for this organization name and BIC"
        )),
        Refusal::CurrencyMismatch {
            requested,
            account,
            transfer_index,
        } => {
            let field = match transfer_index {
                Some(index) => format!("credit_transfers[{index}].currency"),
                None => "currency".to_owned(),
            };
            let mut problem = Problem::new(
                422,
                "currency-mismatch",
                "Currency mismatch",
                format!("{field} is {requested} but the account holds {account}"),
            );
            problem.errors.push(FieldError::new(
                field,
                format!("must be the account's currency, {account}"),
            ));
            problem
        }
        Refusal::EmptyBulk => Problem::validation(vec![FieldError::new(
            "credit_transfers",
            "must contain at least one transfer",
        )]),
        Refusal::BalanceLimit => Problem::new(
            422,
            "balance-limit",
            "Balance limit",
            "the resulting balance would exceed the largest amount the ledger represents",
        ),
    }
}

#[derive(sqlx::FromRow)]
struct AccountRow {
    account_id: Uuid,
    organization_name: String,
    iban: String,
    bic: String,
    currency: String,
    balance_cents: i64,
    version: i64,
    last_position: i64,
    hash: Option<Vec<u8>>,
}

impl AccountRow {
    fn into_state(self) -> Result<(Account, StreamHead), AppError> {
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
        let hash = match &self.hash {
            Some(bytes) => bytes.as_slice().try_into().map_err(|_| corrupt("head hash"))?,
            None => [0; 32],
        };
        Ok((
            account,
            StreamHead {
                version: self.version,
                hash,
            },
        ))
    }
}

/// A `transactions` row (the same row type the audit rebuilds from the
/// log) as the history shows it.
fn transaction_view(row: &HistoryRow) -> TransactionView {
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
    }
}
