//! The rebuild bench's synthetic log: generated inside PostgreSQL, read out
//! with COPY (the floor a rebuild is compared with), and the closed-form
//! checks of what a rebuild made of it.

use super::*;

/// Generates the events of accounts `$1..=$2`, `$3` events each, in one
/// statement. Within the chunk the log is ordered by version, then account,
/// so streams interleave the way a busy ledger's do (a batch of the rebuild
/// touches many accounts, each a few times) rather than lying end to end.
///
/// Event version `v` of account `a`:
/// - `v = 1`: `AccountOpened`
/// - `v = 2j`: `FundsDeposited` of `deposit_cents(a, j)`; balance after:
///   `(j - 1) * KEPT + deposit`
/// - `v = 2j + 1`: `BulkTransferBooked` spending `deposit - KEPT` over
///   `transfers_in_bulk(a, j)` transfers (the first takes the remainder of
///   the split); balance after: `j * KEPT`
///
/// `$4` is the chunk's first event number (for `recorded_at`, one second
/// apart, increasing with position) and `$5` is `KEPT_CENTS`.
///
/// The stream ids come from a MATERIALIZED CTE: `gen_random_uuid()` is
/// volatile, and each account's id must be drawn once, not once per event.
/// Hashes are 32 zero bytes: the hash chain (audit) is not benchmarked.
const GENERATE_SQL: &str = r#"
WITH acct AS MATERIALIZED (
    SELECT a::bigint AS a, gen_random_uuid() AS id
    FROM generate_series($1::bigint, $2::bigint) AS a
), ev AS (
    SELECT acct.a, acct.id, v.v,
           v.v / 2 AS j,
           100000 + ((acct.a * 31 + (v.v / 2) * 17) % 1000) * 100 AS deposit,
           1 + (acct.a + (v.v - 1) / 2) % 3 AS n
    FROM acct CROSS JOIN generate_series(1::bigint, $3::bigint) AS v(v)
)
INSERT INTO events (stream_id, version, event_type, schema_version, data, metadata, recorded_at, hash)
SELECT ev.id, ev.v,
       CASE WHEN ev.v = 1 THEN 'AccountOpened'
            WHEN ev.v % 2 = 0 THEN 'FundsDeposited'
            ELSE 'BulkTransferBooked' END,
       1,
       CASE
         WHEN ev.v = 1 THEN jsonb_build_object(
             'account_id', ev.id,
             'organization_name', 'Bench Org ' || ev.a,
             'iban', 'DE' || lpad((ev.a % 100)::text, 2, '0') || lpad(ev.a::text, 18, '0'),
             'bic', 'BENCDEFFXXX',
             'currency', 'EUR')
         WHEN ev.v % 2 = 0 THEN jsonb_build_object(
             'deposit_id', gen_random_uuid(),
             'amount_cents', ev.deposit,
             'currency', 'EUR',
             'reference', NULL::text,
             'balance_after_cents', (ev.j - 1) * $5::bigint + ev.deposit)
         ELSE jsonb_build_object(
             'bulk_id', gen_random_uuid(),
             'currency', 'EUR',
             'total_cents', ev.deposit - $5::bigint,
             'balance_after_cents', ev.j * $5::bigint,
             'transfers', (
                 SELECT jsonb_agg(jsonb_build_object(
                     'transfer_id', gen_random_uuid(),
                     'amount_cents', (ev.deposit - $5::bigint) / ev.n
                                     + CASE WHEN s = 1 THEN (ev.deposit - $5::bigint) % ev.n ELSE 0 END,
                     'currency', 'EUR',
                     'counterparty_name', 'Payee ' || c,
                     'counterparty_iban', 'NL' || lpad((c % 90 + 10)::text, 2, '0') || 'BANK'
                                          || lpad(c::text, 10, '0'),
                     'counterparty_bic', 'BANKNL2AXXX',
                     'description', 'Invoice ' || ev.a || '-' || ev.j || '-' || s) ORDER BY s)
                 FROM generate_series(1::bigint, ev.n) AS s,
                      LATERAL (SELECT (ev.a * 7 + ev.j * 3 + s) % 50 AS c) AS payee))
       END,
       '{}'::jsonb,
       timestamptz '2025-01-01 00:00:00+00'
         + ($4::bigint + (ev.v - 1) * ($2::bigint - $1::bigint + 1) + (ev.a - $1::bigint)) * interval '1 second',
       decode(repeat('00', 32), 'hex')
FROM ev
ORDER BY ev.v, ev.a
"#;

/// The log read out whole, in position order, as text COPY: every column a
/// rebuild could need, nothing done with it.
const COPY_SQL: &str = "COPY (SELECT position, stream_id, version, event_type, schema_version, data, metadata, \
                        recorded_at, hash FROM events ORDER BY position) TO STDOUT";

/// Inserts the log, a chunk of accounts per statement (and transaction).
pub(super) async fn generate(pool: &PgPool, shape: Shape) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut first = 1;
    while first <= shape.accounts {
        let last = (first + ACCOUNTS_PER_CHUNK - 1).min(shape.accounts);
        let inserted = sqlx::query(GENERATE_SQL)
            .bind(first)
            .bind(last)
            .bind(shape.events_per_account)
            .bind((first - 1) * shape.events_per_account)
            .bind(KEPT_CENTS)
            .execute(pool)
            .await
            .context("generating events")?
            .rows_affected();
        ensure!(
            inserted == ((last - first + 1) * shape.events_per_account) as u64,
            "generated {inserted} events for accounts {first}..={last}"
        );
        first = last + 1;
    }
    Ok(started.elapsed())
}

/// Reads the whole log to the client with COPY: (rows, bytes, time).
pub(super) async fn copy_out(pool: &PgPool) -> anyhow::Result<(u64, u64, Duration)> {
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut stream = connection.copy_out_raw(COPY_SQL).await?;
    let (mut rows, mut bytes) = (0_u64, 0_u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        // Text COPY escapes newlines inside values, so each row ends with
        // exactly one: counting them proves the whole log arrived.
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok((rows, bytes, started.elapsed()))
}

/// Flushes dirty buffers before a measurement, so that a checkpoint caused
/// by the previous step does not land inside the next one. Needs superuser
/// (or pg_checkpoint); without it the run just goes on.
pub(super) async fn checkpoint(pool: &PgPool) {
    let _ = sqlx::raw_sql("CHECKPOINT").execute(pool).await;
}

/// The rebuilt projections against what the generator wrote. Any mismatch
/// is a bug (in the rebuild, the projections or this generator).
pub(super) async fn sanity_check(pool: &PgPool, shape: Shape) -> anyhow::Result<()> {
    let (balances, balance_sum): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(balance_cents)::bigint FROM balances")
            .fetch_one(pool)
            .await?;
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(pool)
        .await?;
    let counterparties: i64 = sqlx::query_scalar("SELECT count(*) FROM counterparties")
        .fetch_one(pool)
        .await?;
    let expected_transactions = shape.expected_transactions();
    let expected_balance_sum = shape.expected_balance_sum();
    println!(
        "  sanity      balances rows {} (expected {})",
        thousands(balances),
        thousands(shape.accounts)
    );
    println!(
        "              transactions rows {} (expected {})",
        thousands(transactions),
        thousands(expected_transactions)
    );
    println!(
        "              sum of balances {} cents (expected {})",
        thousands(balance_sum.unwrap_or(0)),
        thousands(expected_balance_sum)
    );
    println!("              counterparties rows {}", thousands(counterparties));

    // A few streams folded by the domain and compared with the projections,
    // row by row: the generated events must be ones the domain accepts.
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT account_id FROM balances ORDER BY account_id LIMIT $1")
        .bind(AUDITED_ACCOUNTS as i64)
        .fetch_all(pool)
        .await?;
    let mut audit_problems = Vec::new();
    for id in &ids {
        let audit = ledger::audit::audit_stream(pool, *id).await?;
        // The generator writes placeholder hashes, so the chain is broken by
        // design; every other difference counts.
        audit_problems.extend(
            audit
                .differences
                .into_iter()
                .filter(|d| !d.what.starts_with("hash chain broken"))
                .map(|d| format!("account {id}: {}", d.what)),
        );
    }
    println!(
        "              domain fold vs projections on {} streams: {}",
        ids.len(),
        if audit_problems.is_empty() {
            "consistent"
        } else {
            "DIFFERENT"
        }
    );

    let mut wrong = Vec::new();
    if balances != shape.accounts {
        wrong.push(format!("balances has {balances} rows, expected {}", shape.accounts));
    }
    if transactions != expected_transactions {
        wrong.push(format!(
            "transactions has {transactions} rows, expected {expected_transactions}"
        ));
    }
    if balance_sum.unwrap_or(0) != expected_balance_sum {
        wrong.push(format!(
            "balances sum to {balance_sum:?} cents, expected {expected_balance_sum}"
        ));
    }
    wrong.extend(audit_problems.into_iter().take(10));
    if !wrong.is_empty() {
        bail!(
            "the rebuilt projections are wrong (a correctness bug):\n  {}",
            wrong.join("\n  ")
        );
    }
    Ok(())
}
