//! Baselines on the same PostgreSQL, in a database of their own: the seed
//! service's SQL write pattern (one transaction per transfer, row lock on
//! the account), and the insert ceiling for transfer-shaped rows: a uuid
//! key and a JSON payload per row, as the ledger's events carry them, sent
//! by clients in statements of 100 rows (the shape of `bulk100`).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

use super::driver::{CallResult, Worker};
use super::http::XorShift;

/// The seed's schema, as its Go service created it.
const SCHEMA: &str = "
CREATE TABLE bank_accounts (
    id serial PRIMARY KEY,
    organization_name text NOT NULL,
    balance_cents bigint NOT NULL,
    iban text NOT NULL,
    bic text NOT NULL
);
CREATE TABLE transactions (
    id serial PRIMARY KEY,
    counterparty_name text NOT NULL,
    counterparty_iban text NOT NULL,
    counterparty_bic text NOT NULL,
    amount_cents bigint NOT NULL,
    amount_currency text NOT NULL,
    bank_account_id int NOT NULL,
    description text NOT NULL
);
-- The insert ceiling's target: one row per transfer, a uuid key and the
-- transfer as JSON (what an event's payload holds per transfer).
CREATE TABLE ceiling_transfers (
    transfer_id uuid PRIMARY KEY,
    account_id int NOT NULL,
    data jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
";

/// Creates the seed's tables in the (fresh) baseline database with
/// `accounts` funded rows (ids 1..=accounts; id 1 is the hot one), and
/// returns a pool of `connections`, all of them already open.
pub async fn prepare(options: &PgConnectOptions, accounts: usize, connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await?;
    pool.execute(SCHEMA).await?;
    sqlx::query(
        "INSERT INTO bank_accounts (organization_name, balance_cents, iban, bic)
         SELECT 'Seed ' || i, 100000000000, 'DE00' || lpad(i::text, 18, '0'), 'COBADEFFXXX'
         FROM generate_series(1, $1) AS i",
    )
    .bind(accounts as i32)
    .execute(&pool)
    .await?;
    // Open every connection now, not during the measurement.
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(pool)
}

/// A [`Worker`] booking one transfer per call the way the seed did.
pub struct SeedWorker {
    pool: PgPool,
    /// `1`: always the hot row; else uniform over `1..=accounts`.
    accounts: usize,
    rng: XorShift,
}

impl SeedWorker {
    pub fn new(pool: PgPool, accounts: usize, seed: u64) -> SeedWorker {
        SeedWorker {
            pool,
            accounts,
            rng: XorShift::new(seed),
        }
    }

    async fn transfer(&mut self, account_id: i32, amount_cents: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let balance: i64 = sqlx::query_scalar("SELECT balance_cents FROM bank_accounts WHERE id = $1 FOR UPDATE")
            .bind(account_id)
            .fetch_one(&mut *tx)
            .await?;
        if balance < amount_cents {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO transactions (counterparty_name, counterparty_iban, counterparty_bic, amount_cents,
                                       amount_currency, bank_account_id, description)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind("Hank Scorpio")
        .bind("GB82WEST12345698765432")
        .bind("NWBKGB2L")
        .bind(amount_cents)
        .bind("EUR")
        .bind(account_id)
        .bind("load benchmark")
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE bank_accounts SET balance_cents = balance_cents - $2 WHERE id = $1")
            .bind(account_id)
            .bind(amount_cents)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

impl Worker for SeedWorker {
    async fn call(&mut self) -> CallResult {
        let account_id = 1 + self.rng.below(self.accounts) as i32;
        match self.transfer(account_id, 100).await {
            Ok(true) => CallResult::Accepted { transfers: 1 },
            // Funded for far more than a run books; reported, should it happen.
            Ok(false) => CallResult::Refused {
                status: 422,
                body: format!("seed account {account_id}: insufficient funds"),
            },
            Err(error) => CallResult::Failed(format!("seed pattern: {error}")),
        }
    }
}

/// The insert ceiling: each call inserts `rows` transfer-shaped rows (a
/// fresh uuid v4 and the transfer's JSON each, made here as the ledger
/// server makes its payloads) in one statement of bound arrays, one
/// transaction, committed durably.
pub struct CeilingWorker {
    pool: PgPool,
    rows: usize,
    rng: XorShift,
}

impl CeilingWorker {
    pub fn new(pool: PgPool, rows: usize, seed: u64) -> CeilingWorker {
        CeilingWorker {
            pool,
            rows,
            rng: XorShift::new(seed),
        }
    }

    async fn insert(&mut self) -> Result<u64, sqlx::Error> {
        let mut ids = Vec::with_capacity(self.rows);
        let mut accounts = Vec::with_capacity(self.rows);
        let mut payloads = Vec::with_capacity(self.rows);
        for _ in 0..self.rows {
            let id = uuid::Uuid::new_v4();
            let payload = serde_json::json!({
                "transfer_id": id,
                "amount_cents": 100 + self.rng.below(1_000) as i64,
                "currency": "EUR",
                "counterparty_name": "Hank Scorpio",
                "counterparty_iban": "GB82WEST12345698765432",
                "counterparty_bic": "NWBKGB2L",
                "description": "load benchmark",
            });
            ids.push(id);
            accounts.push(1 + self.rng.below(1_000) as i32);
            payloads.push(payload);
        }
        let done = sqlx::query(
            "INSERT INTO ceiling_transfers (transfer_id, account_id, data) \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::jsonb[])",
        )
        .bind(&ids)
        .bind(&accounts)
        .bind(&payloads)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

impl Worker for CeilingWorker {
    async fn call(&mut self) -> CallResult {
        match self.insert().await {
            Ok(rows) => CallResult::Accepted { transfers: rows },
            Err(error) => CallResult::Failed(format!("insert ceiling: {error}")),
        }
    }
}
