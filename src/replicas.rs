//! Read replicas (SPEC §8, issue #16): PostgreSQL streaming standbys that
//! serve the queries while every command goes to the primary.
//!
//! - [`Replicas`] holds one lazily connected pool per standby named in
//!   `LEDGER_READ_DATABASE_URL`, and each one's health.
//! - [`Replicas::check_periodically`] measures every standby against the
//!   primary once per `check_interval`: reachable, in recovery (a standby,
//!   not a promoted or unrelated server), and how many bytes of WAL it has
//!   still to replay. One that is down, not a standby or lagging past
//!   `max_lag_bytes` is out of rotation until a later check finds it healthy.
//!   A standby starts out of rotation: nothing is read from it before its
//!   first check.
//! - [`Replicas::pick`] takes the healthy standbys in turn.
//!
//! Read your writes: a standby replays the primary's commits in order, so
//! its state is always one the primary had. The application (see
//! `Ledger::reflect`) waits on the chosen standby for the same condition
//! it waits for on the primary, up to `wait`, then falls back to the
//! primary; a standby that answers an error meanwhile is taken out of
//! rotation and the query goes to the primary.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::observability::{REPLICA_LAG_BYTES, REPLICA_UP};

/// How standbys are used.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// A standby more than this many bytes of WAL behind the primary is out
    /// of rotation.
    pub max_lag_bytes: u64,
    /// How long a query with `min_position` waits on a standby before it
    /// asks the primary instead.
    pub wait: Duration,
    /// How often each standby's health is measured.
    pub check_interval: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> ReplicaSettings {
        ReplicaSettings {
            max_lag_bytes: 16 * 1024 * 1024,
            wait: Duration::from_millis(1_000),
            check_interval: Duration::from_millis(1_000),
        }
    }
}

/// One standby: its pool and its last measured health.
#[derive(Debug)]
pub struct Replica {
    /// `host:port/database`, never the password: for logs, `/readyz` and
    /// the metrics' `replica` label.
    name: String,
    pool: PgPool,
    health: Mutex<Health>,
}

/// What the last check found.
#[derive(Debug, Clone, Default)]
struct Health {
    up: bool,
    lag_bytes: Option<i64>,
    /// Why it is out of rotation, when it is.
    reason: Option<String>,
}

/// A standby's health as `/readyz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaStatus {
    pub name: String,
    pub up: bool,
    /// WAL bytes the standby has still to replay (at the last check).
    pub lag_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Replica {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Takes it out of rotation until the next check finds it healthy: a
    /// query on it failed as a broken connection does.
    pub fn mark_down(&self, reason: String) {
        let mut health = self.health.lock().expect("replica health lock");
        if health.up {
            tracing::warn!(replica = %self.name, %reason, "read replica out of rotation");
        }
        health.up = false;
        health.reason = Some(reason);
        metrics::gauge!(REPLICA_UP, "replica" => self.name.clone()).set(0.0);
    }

    fn set(&self, next: Health) {
        let mut health = self.health.lock().expect("replica health lock");
        if health.up != next.up {
            match &next.reason {
                None => tracing::info!(replica = %self.name, lag_bytes = ?next.lag_bytes, "read replica in rotation"),
                Some(reason) => tracing::warn!(replica = %self.name, %reason, "read replica out of rotation"),
            }
        }
        metrics::gauge!(REPLICA_UP, "replica" => self.name.clone()).set(if next.up { 1.0 } else { 0.0 });
        if let Some(lag) = next.lag_bytes {
            metrics::gauge!(REPLICA_LAG_BYTES, "replica" => self.name.clone()).set(lag as f64);
        }
        *health = next;
    }

    fn status(&self) -> ReplicaStatus {
        let health = self.health.lock().expect("replica health lock").clone();
        ReplicaStatus {
            name: self.name.clone(),
            up: health.up,
            lag_bytes: health.lag_bytes,
            reason: health.reason,
        }
    }
}

/// The standbys of `LEDGER_READ_DATABASE_URL`; empty when it is unset.
#[derive(Debug, Default)]
pub struct Replicas {
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
    settings: ReplicaSettings,
}

impl Replicas {
    /// No standby: every query goes to the primary.
    pub fn none() -> Replicas {
        Replicas::default()
    }

    /// Pools for the comma-separated `urls`, connected lazily (a standby
    /// that is down when the server starts comes into rotation when it is
    /// up). `configure` sets what the primary's options set (the statement
    /// timeout); `pool` sizes each pool like the primary's.
    pub fn connect_lazy(
        urls: &str,
        configure: impl Fn(PgConnectOptions) -> PgConnectOptions,
        pool: &crate::db::PoolSettings,
        settings: ReplicaSettings,
    ) -> anyhow::Result<Replicas> {
        let mut replicas = Vec::new();
        for (index, url) in urls.split(',').map(str::trim).filter(|url| !url.is_empty()).enumerate() {
            let options = PgConnectOptions::from_str(url)
                .with_context(|| format!("LEDGER_READ_DATABASE_URL: entry {} is not a PostgreSQL URL", index + 1))?;
            let name = describe(&options);
            let pool = PgPoolOptions::new()
                .max_connections(pool.connections_max)
                // A standby that has gone away must not hold a query long:
                // the primary answers instead.
                .acquire_timeout(pool.acquire_timeout.min(Duration::from_secs(2)))
                .connect_lazy_with(configure(options));
            replicas.push(Arc::new(Replica {
                name,
                pool,
                health: Mutex::new(Health {
                    up: false,
                    lag_bytes: None,
                    reason: Some("not checked yet".into()),
                }),
            }));
        }
        anyhow::ensure!(
            !replicas.is_empty() || urls.trim().is_empty(),
            "LEDGER_READ_DATABASE_URL names no URL"
        );
        Ok(Replicas {
            replicas,
            next: AtomicUsize::new(0),
            settings,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }

    /// The next healthy standby, in turn; `None` when none is.
    pub fn pick(&self) -> Option<Arc<Replica>> {
        let count = self.replicas.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| &self.replicas[(start + offset) % count])
            .find(|replica| replica.health.lock().expect("replica health lock").up)
            .cloned()
    }

    /// Every standby's health, for `/readyz`.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(|replica| replica.status()).collect()
    }

    /// Measures every standby against `primary` every `check_interval`,
    /// for as long as the server runs.
    pub async fn check_periodically(self: Arc<Self>, primary: PgPool) {
        if self.replicas.is_empty() {
            return;
        }
        let mut ticks = tokio::time::interval(self.settings.check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check_once(&primary).await;
        }
    }

    /// One round of checks: the primary's WAL position first, then each
    /// standby's distance from it.
    pub async fn check_once(&self, primary: &PgPool) {
        let timeout = self.settings.check_interval.max(Duration::from_secs(1)) * 2;
        let primary_lsn = tokio::time::timeout(
            timeout,
            sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text").fetch_one(primary),
        )
        .await;
        let primary_lsn = match primary_lsn {
            Ok(Ok(lsn)) => lsn,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the primary's WAL position: read replicas keep their last health");
                return;
            }
            Err(_) => {
                tracing::warn!("the primary's WAL position took too long: read replicas keep their last health");
                return;
            }
        };
        let checks = self.replicas.iter().map(|replica| {
            let primary_lsn = primary_lsn.clone();
            async move {
                let measured = tokio::time::timeout(timeout, measure(replica.pool(), &primary_lsn)).await;
                let health = match measured {
                    Err(_) => down(format!("no answer within {} ms", timeout.as_millis())),
                    Ok(Err(error)) => down(format!("unreachable: {error}")),
                    Ok(Ok((false, _))) => down("not in recovery: not a streaming standby (or promoted)".into()),
                    Ok(Ok((true, lag))) if lag > i64::try_from(self.settings.max_lag_bytes).unwrap_or(i64::MAX) => {
                        Health {
                            up: false,
                            lag_bytes: Some(lag),
                            reason: Some(format!(
                                "{lag} bytes of WAL behind the primary, past LEDGER_READ_REPLICA_MAX_LAG_BYTES={}",
                                self.settings.max_lag_bytes
                            )),
                        }
                    }
                    Ok(Ok((true, lag))) => Health {
                        up: true,
                        lag_bytes: Some(lag),
                        reason: None,
                    },
                };
                replica.set(health);
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

/// Whether the server is a standby, and how many bytes of WAL it has still
/// to replay to reach `primary_lsn` (0 once past it).
async fn measure(pool: &PgPool, primary_lsn: &str) -> Result<(bool, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT pg_is_in_recovery(), \
                coalesce(greatest(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()), 0), 0)::bigint",
    )
    .bind(primary_lsn)
    .fetch_one(pool)
    .await
}

fn down(reason: String) -> Health {
    Health {
        up: false,
        lag_bytes: None,
        reason: Some(reason),
    }
}

/// `host:port/database` (or the socket directory for a Unix socket).
fn describe(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!("{host}:{}/{}", options.get_port(), options.get_database().unwrap_or(""))
}

/// Whether an error from a query on a standby means the standby, not the
/// query, is at fault, so the primary should answer instead: the
/// connection is gone or refused, or the standby cancelled the query
/// because replaying the primary's WAL conflicted with it (SQLSTATE
/// 40001, which only a hot standby raises for a read).
pub fn is_replica_failure(error: &crate::app::AppError) -> bool {
    match error {
        crate::app::AppError::Unavailable(_) => true,
        crate::app::AppError::Internal(error) => error.chain().any(|cause| {
            cause.downcast_ref::<sqlx::Error>().is_some_and(|error| match error {
                sqlx::Error::Database(db) => db.code().is_some_and(|code| code == "40001"),
                sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
                _ => false,
            })
        }),
        _ => false,
    }
}
