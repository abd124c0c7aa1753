//! The application layer: every front end's one way in (HTTP, gRPC and the
//! CLI alike). Commands (load → decide → append, with idempotency and
//! retries) answer a typed [`Outcome`]; queries read the projections or
//! replay the log; failures are [`AppError`]s. Nothing here knows HTTP:
//! each front end renders these values its own way.
//!
//! - `commands.rs`: the command handlers and their outcomes;
//! - `group_commit.rs`: deciding and appending commands in batches;
//! - `queries.rs`: the queries, and the only SQL on `balances` and
//!   `transactions`;
//! - `params.rs`: query parameters as types;
//! - `problems.rs`: [`AppError`] and the problems refusals become;
//! - `requests.rs`: request bodies parsed into commands, and their
//!   fingerprints;
//! - `statements.rs`: account statements for a period, replayed from the
//!   log;
//! - `payment_files.rs`: payment files (several bulks under one message
//!   id, SPEC §10) booked bulk by bulk;
//! - `views.rs`: what commands and queries answer;
//! - `idempotency.rs`, `auth/`: idempotency keys; API keys and who may do what.

pub mod auth;
mod commands;
mod group_commit;
pub mod idempotency;
pub mod params;
mod payment_files;
mod problems;
pub mod queries;
pub mod requests;
pub mod statements;
pub mod views;

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Iban, IbanCheck};
use crate::problem::{FieldError, Problem};
use auth::{AuthMode, Authenticator, Principal};
pub use commands::Outcome;
use group_commit::GroupCommit;
pub use group_commit::GroupCommitSettings;
use idempotency::IdempotencyKey;
pub use payment_files::{FileOutcome, FilePayment, PaymentFile, PaymentOutcome, PaymentRefusal};
pub use problems::{AppError, is_outcome_unknown, is_unavailable};

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
    /// Most API requests (HTTP and gRPC together) in flight at once; past
    /// it, a prompt 503 `/problems/unavailable` with `Retry-After`, nothing
    /// done (load shedding: memory stays bounded under a flood).
    pub in_flight_max: usize,
    /// Most open event subscriptions (gRPC `SubscribeEvents`).
    pub subscriptions_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes_max: 10 * 1024 * 1024,
            transfers_per_bulk_max: 10_000,
            page_size_default: 50,
            page_size_max: 1_000,
            request_timeout: std::time::Duration::from_secs(30),
            in_flight_max: 1_024,
            subscriptions_max: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub auth: AuthMode,
    pub iban_check: IbanCheck,
    pub limits: Limits,
    pub group_commit: GroupCommitSettings,
    /// How long an idempotency key is remembered (SPEC §2.4: at least 24 h).
    pub idempotency_ttl: std::time::Duration,
    /// How long a query with `min_position` waits for it to be reflected
    /// before answering 503 (`LEDGER_MIN_POSITION_WAIT_MS`).
    pub min_position_wait: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            auth: AuthMode::default(),
            iban_check: IbanCheck::default(),
            limits: Limits::default(),
            group_commit: GroupCommitSettings::default(),
            idempotency_ttl: std::time::Duration::from_secs(168 * 3600),
            min_position_wait: std::time::Duration::from_millis(5_000),
        }
    }
}

/// Who asked, for authorization and the event metadata, and the
/// idempotency key if any.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub principal: Principal,
    pub request_id: String,
    /// The command's fingerprint, to go with it, is computed by the
    /// application from the parsed command.
    pub idempotency_key: Option<IdempotencyKey>,
}

pub struct Ledger {
    pool: PgPool,
    /// The streaming standbys that serve queries (none unless
    /// `LEDGER_READ_DATABASE_URL` is set).
    replicas: Arc<crate::replicas::Replicas>,
    /// Where this server relays the feed, if it does.
    relay: Option<crate::relay::RelaySettings>,
    settings: Settings,
    /// Commands on one account are decided one after the other in this
    /// process and appended in batches; across processes, optimistic
    /// concurrency decides.
    group_commit: Arc<GroupCommit>,
    authenticator: Authenticator,
    /// Wakes this server's posting process (a query waits for it).
    posting_wake: Arc<tokio::sync::Notify>,
    /// When `/metrics` last read the lags from the database.
    metrics_refreshed: std::sync::Mutex<Option<std::time::Instant>>,
    /// Requests in flight (`Limits::in_flight_max`), subscriptions open.
    in_flight: Arc<tokio::sync::Semaphore>,
    subscriptions: Arc<tokio::sync::Semaphore>,
}

/// Where a query reads: the primary, or a standby that (for a query given
/// `min_position`) has been seen to reflect that position. Made by
/// [`Ledger::reflect`]; used with [`Ledger::read`].
#[derive(Debug, Clone, Default)]
pub struct Reader {
    replica: Option<Arc<crate::replicas::Replica>>,
}

impl Reader {
    /// The primary.
    pub fn primary() -> Reader {
        Reader { replica: None }
    }

    /// The standby it reads from, if any.
    pub fn replica(&self) -> Option<&str> {
        self.replica.as_deref().map(crate::replicas::Replica::name)
    }
}

/// A place among the requests in flight (or the open subscriptions), held
/// until the answer is sent.
pub type Admission = tokio::sync::OwnedSemaphorePermit;

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
        let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.limits.in_flight_max.max(1)));
        let subscriptions = Arc::new(tokio::sync::Semaphore::new(settings.limits.subscriptions_max.max(1)));
        Ledger {
            pool,
            replicas: Arc::new(crate::replicas::Replicas::none()),
            relay: None,
            settings,
            group_commit,
            authenticator,
            posting_wake: Arc::new(tokio::sync::Notify::new()),
            metrics_refreshed: std::sync::Mutex::new(None),
            in_flight,
            subscriptions,
        }
    }

    /// Admits one more request, or sheds it: past `in_flight_max` requests
    /// in flight the answer is a prompt 503 `/problems/unavailable` (with
    /// `Retry-After`) and nothing is done.
    pub fn admit(&self) -> Result<Admission, Problem> {
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            crate::observability::record_shed("in_flight");
            Problem::new(
                crate::problem::ProblemType::Unavailable,
                format!(
                    "the server is at its limit of {} requests in flight; nothing was done, retry shortly",
                    self.settings.limits.in_flight_max
                ),
            )
        })
    }

    /// Admits one more open subscription, or refuses it like [`Ledger::admit`].
    pub fn admit_subscription(&self) -> Result<Admission, Problem> {
        Arc::clone(&self.subscriptions).try_acquire_owned().map_err(|_| {
            crate::observability::record_shed("subscriptions");
            Problem::new(
                crate::problem::ProblemType::Unavailable,
                format!(
                    "the server is at its limit of {} open subscriptions; retry later",
                    self.settings.limits.subscriptions_max
                ),
            )
        })
    }

    /// Whether a `/metrics` scrape should read the lags from the database
    /// now: at most once per `interval`, however often it is scraped (the
    /// lag queries count events, which costs more as the log grows). A
    /// scrape in between renders the last values.
    pub fn metrics_refresh_due(&self, interval: std::time::Duration) -> bool {
        let mut last = self.metrics_refreshed.lock().expect("metrics refresh lock");
        let due = last.is_none_or(|at| at.elapsed() >= interval);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
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

    /// Commands waiting in the group-commit lanes' queues, not yet taken
    /// into a batch.
    pub fn group_commit_queued(&self) -> usize {
        self.group_commit.queued()
    }

    /// The most accounts one committed group-commit batch appended to.
    pub fn group_commit_accounts_max(&self) -> u64 {
        self.group_commit
            .stats
            .batch_streams_max_seen
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Group-commit appends that failed on a stream another writer had moved.
    pub fn group_commit_conflicts(&self) -> u64 {
        self.group_commit
            .stats
            .conflicts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serve the queries from these standbys too (see [`crate::replicas`]).
    /// The server relays the feed to NATS JetStream as well
    /// (`LEDGER_NATS_URL`).
    pub fn with_relay(mut self, relay: crate::relay::RelaySettings) -> Ledger {
        self.relay = Some(relay);
        self
    }

    pub fn relay(&self) -> Option<&crate::relay::RelaySettings> {
        self.relay.as_ref()
    }

    pub fn with_replicas(mut self, replicas: crate::replicas::Replicas) -> Ledger {
        self.replicas = Arc::new(replicas);
        self
    }

    pub fn replicas(&self) -> &Arc<crate::replicas::Replicas> {
        &self.replicas
    }

    /// Runs a query on `reader`'s server. When that is a standby and it
    /// fails as a broken connection does (or the standby cancelled it for
    /// a replay conflict), the standby leaves the rotation and the primary
    /// answers: the primary is always at least as far along.
    pub async fn read<T, F, Fut>(&self, reader: &Reader, query: F) -> Result<T, AppError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, AppError>>,
    {
        use crate::observability::{READS, REPLICA_FALLBACKS};
        let Some(replica) = &reader.replica else {
            metrics::counter!(READS, "source" => "primary").increment(1);
            return query(self.pool.clone()).await;
        };
        match query(replica.pool().clone()).await {
            Err(error) if crate::replicas::is_replica_failure(&error) => {
                replica.mark_down(format!("{error:#}"));
                metrics::counter!(REPLICA_FALLBACKS, "reason" => "error").increment(1);
                metrics::counter!(READS, "source" => "primary").increment(1);
                query(self.pool.clone()).await
            }
            answer => {
                metrics::counter!(READS, "source" => "replica").increment(1);
                answer
            }
        }
    }

    /// What wakes this server's posting process from its rest: the server
    /// hands it to [`crate::posting::run`]; a query waiting for
    /// `min_position` notifies it.
    pub fn posting_wake(&self) -> Arc<tokio::sync::Notify> {
        self.posting_wake.clone()
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
}
