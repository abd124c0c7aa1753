//! How fast does `ledger::projections::rebuild` replay the log, compared with
//! simply reading the log out of PostgreSQL?
//!
//! `cargo bench --bench rebuild` (events: `LEDGER_BENCH_EVENTS`, default
//! 1,000,000). The program prints figures; it never passes or fails on
//! timing. It exits non-zero only when the rebuilt projections are wrong,
//! which is a correctness bug, not a slow run.
//!
//! 1. A fresh database: `bench_rebuild_<random>` on the `DATABASE_URL`
//!    server (dropped at the end, unless `LEDGER_BENCH_KEEP` is set, to
//!    look into it), or a throw-away cluster (`fsync=off`).
//! 2. A log of valid domain events generated inside PostgreSQL with
//!    `INSERT ... SELECT ... FROM generate_series(...)`: going through the
//!    API would take hours. Balances are computed in closed form so every
//!    recorded `balance_after_cents` matches the domain fold.
//! 3. COPY of the whole log to the client (the floor: what reading the log
//!    costs) against `rebuild` of every projection and of `balances` alone,
//!    each run twice.
//! 4. Sanity checks on the rebuilt projections against closed-form
//!    expectations, plus an audit of a few streams with the domain fold.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use ledger::db::PoolSettings;
use ledger::pg::Cluster;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgPool};

#[path = "rebuild/log.rs"]
mod log;
use log::{checkpoint, copy_out, generate, sanity_check};

/// Events per stream (account), the version-1 `AccountOpened` included.
const EVENTS_PER_ACCOUNT: i64 = 100;
/// Accounts generated per INSERT statement: 100,000 rows, a few tens of MB
/// of work memory, whatever the total size.
const ACCOUNTS_PER_CHUNK: i64 = 1_000;
/// What each deposit-then-bulk cycle leaves on the account. A bulk spends
/// the deposit just made minus this, so balances only grow and never go
/// negative, and the balance after any event has a closed form.
const KEPT_CENTS: i64 = 1_000;
/// Issue #13's goals: a full rebuild at half the rate of reading the log
/// out with COPY, a balances-only rebuild at least as fast as that read.
const GOAL_FULL_VS_COPY: f64 = 0.5;
const GOAL_BALANCES_VS_COPY: f64 = 1.0;
/// Streams audited with the domain fold after the rebuild.
const AUDITED_ACCOUNTS: usize = 5;

// The amounts, as functions of the account number `a` (1-based) and the
// deposit/bulk cycle `j` (1-based). The SQL below spells out the very same
// formulas; the Rust ones give the expected totals independently of what
// PostgreSQL stored.

/// Cents deposited by the `j`-th deposit of account `a` (event version 2j).
fn deposit_cents(a: i64, j: i64) -> i64 {
    100_000 + ((a * 31 + j * 17) % 1_000) * 100
}

/// Transfers in the `j`-th bulk of account `a` (event version 2j + 1): 1 to 3.
fn transfers_in_bulk(a: i64, j: i64) -> i64 {
    1 + (a + j) % 3
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(error) = runtime.block_on(bench()) {
        eprintln!("bench rebuild: {error:#}");
        std::process::exit(1);
    }
}

/// What the log holds, decided before generating it.
#[derive(Debug, Clone, Copy)]
struct Shape {
    accounts: i64,
    events_per_account: i64,
}

impl Shape {
    fn for_events(requested: i64) -> Shape {
        let events_per_account = EVENTS_PER_ACCOUNT.min(requested).max(1);
        Shape {
            accounts: (requested / events_per_account).max(1),
            events_per_account,
        }
    }

    fn events(&self) -> i64 {
        self.accounts * self.events_per_account
    }

    /// Deposits per account: one per even version.
    fn deposits(&self) -> i64 {
        self.events_per_account / 2
    }

    /// Bulks per account: one per odd version from 3.
    fn bulks(&self) -> i64 {
        (self.events_per_account - 1) / 2
    }

    /// Rows the `transactions` projection must hold: one per deposit, one
    /// per transfer of a bulk.
    fn expected_transactions(&self) -> i64 {
        (1..=self.accounts)
            .map(|a| self.deposits() + (1..=self.bulks()).map(|j| transfers_in_bulk(a, j)).sum::<i64>())
            .sum()
    }

    /// Sum of every account's final balance, from the closed form.
    fn expected_balance_sum(&self) -> i64 {
        (1..=self.accounts)
            .map(|a| {
                let v = self.events_per_account;
                match v {
                    1 => 0,
                    _ if v % 2 == 0 => (v / 2 - 1) * KEPT_CENTS + deposit_cents(a, v / 2),
                    _ => (v - 1) / 2 * KEPT_CENTS,
                }
            })
            .sum()
    }
}

/// Where the benchmark's database lives, and how to get rid of it.
struct Server {
    /// Keeps a throw-away cluster alive until the end.
    cluster: Option<Cluster>,
    maintenance: PgConnectOptions,
    description: &'static str,
}

async fn bench() -> anyhow::Result<()> {
    let requested: i64 = match std::env::var("LEDGER_BENCH_EVENTS") {
        Ok(text) => text
            .replace(['_', ','], "")
            .parse()
            .with_context(|| format!("LEDGER_BENCH_EVENTS={text:?} is not a number"))?,
        Err(_) => 1_000_000,
    };
    ensure!(requested > 0, "LEDGER_BENCH_EVENTS must be positive");
    let shape = Shape::for_events(requested);

    let server = match std::env::var("DATABASE_URL") {
        Ok(url) => Server {
            cluster: None,
            maintenance: PgConnectOptions::from_str(&url).context("DATABASE_URL does not parse")?,
            description: "DATABASE_URL",
        },
        Err(_) => {
            // Blocking (initdb, pg_ctl): keep it off the runtime's workers.
            let cluster = tokio::task::spawn_blocking(Cluster::temporary)
                .await?
                .context("cannot start a throw-away PostgreSQL cluster (set DATABASE_URL to use a server)")?;
            Server {
                maintenance: cluster.connect_options("postgres"),
                cluster: Some(cluster),
                description: "throw-away cluster (ledger::pg::Cluster::temporary)",
            }
        }
    };

    let database = format!("bench_rebuild_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = server
        .maintenance
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot create the database {database}"))?;
    let pool = ledger::db::connect(server.maintenance.clone().database(&database), &PoolSettings::default()).await;
    // Whatever happens, the database is dropped again.
    let outcome = match pool {
        Ok(pool) => {
            let outcome = run(&pool, &server, &database, requested, shape).await;
            pool.close().await;
            outcome
        }
        Err(error) => Err(error.into()),
    };
    if std::env::var_os("LEDGER_BENCH_KEEP").is_some() && server.cluster.is_none() {
        println!("kept the database {database} (LEDGER_BENCH_KEEP)");
        return outcome;
    }
    let dropped = sqlx::query(&format!("DROP DATABASE {database}"))
        .execute(&mut admin)
        .await;
    if let Err(error) = dropped {
        eprintln!("warning: could not drop the database {database}: {error}");
    }
    outcome
}

async fn run(pool: &PgPool, server: &Server, database: &str, requested: i64, shape: Shape) -> anyhow::Result<()> {
    ledger::db::migrate(pool).await.context("migrations")?;

    println!("ledger rebuild benchmark");
    println!();
    print_environment(pool, server, database).await?;
    if shape.events() != requested {
        println!(
            "  note        {} events requested, rounded down to whole accounts",
            thousands(requested)
        );
    }
    println!(
        "  log         {} events: {} accounts x {} events (1 opened, {} deposits, {} bulks of 1-3 transfers)",
        thousands(shape.events()),
        thousands(shape.accounts),
        shape.events_per_account,
        shape.deposits(),
        shape.bulks()
    );
    println!(
        "              written {} accounts per statement, interleaved by version within each",
        thousands(ACCOUNTS_PER_CHUNK)
    );

    let generate = generate(pool, shape).await?;
    let vacuum_started = Instant::now();
    // Sets hint bits and the visibility map now, so that neither measured
    // read pays for the first scan after a bulk load; statistics for the
    // planner too.
    sqlx::raw_sql("VACUUM (ANALYZE) events").execute(pool).await?;
    let vacuum = vacuum_started.elapsed();
    let table_size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_total_relation_size('events'))")
        .fetch_one(pool)
        .await?;
    println!(
        "  generated   in {:.1} s ({} events/s); VACUUM ANALYZE {:.1} s; events table with indexes {table_size}",
        generate.as_secs_f64(),
        thousands(per_second(shape.events() as u64, generate)),
        vacuum.as_secs_f64(),
    );
    println!();

    println!(
        "  {:<12} {:>12} {:>10} {:>12} {:>12}",
        "run", "events", "seconds", "events/s", "bytes"
    );
    let mut copy_best = f64::MAX;
    for round in 1..=2 {
        checkpoint(pool).await;
        let (rows, bytes, took) = copy_out(pool).await?;
        ensure!(
            rows == shape.events() as u64,
            "COPY returned {rows} rows, the log holds {}",
            shape.events()
        );
        copy_best = copy_best.min(took.as_secs_f64());
        println!(
            "  {:<12} {:>12} {:>10.2} {:>12} {:>12}",
            format!("COPY #{round}"),
            thousands(rows as i64),
            took.as_secs_f64(),
            thousands(per_second(rows, took)),
            thousands(bytes as i64)
        );
    }
    let names: [&[String]; 2] = [&[], &["balances".to_owned()]];
    let mut best = [f64::MAX; 2];
    for (which, names) in names.into_iter().enumerate() {
        for round in 1..=2 {
            checkpoint(pool).await;
            let report = ledger::projections::rebuild(pool, names, |_| {}).await?;
            ensure!(
                report.events == shape.events() as u64,
                "rebuild #{round} applied {} events, the log holds {}",
                report.events,
                shape.events()
            );
            best[which] = best[which].min(report.seconds);
            let phases: Vec<String> = report
                .phases
                .iter()
                .map(|(name, seconds)| format!("{name} {seconds:.2}"))
                .collect();
            println!(
                "  {:<12} {:>12} {:>10.2} {:>12}   ({}; s: {})",
                format!("rebuild #{round}"),
                thousands(report.events as i64),
                report.seconds,
                thousands(per_second(report.events, Duration::from_secs_f64(report.seconds))),
                report.projections.join(", "),
                phases.join(", ")
            );
        }
    }
    let copy_rate = shape.events() as f64 / copy_best;
    let full_rate = shape.events() as f64 / best[0];
    let balances_rate = shape.events() as f64 / best[1];
    println!();
    println!(
        "  best        COPY {} events/s; rebuild of all projections {} events/s, of balances only {} events/s",
        thousands(copy_rate as i64),
        thousands(full_rate as i64),
        thousands(balances_rate as i64)
    );
    let verdict = |ratio: f64, goal: f64| if ratio >= goal { "met" } else { "NOT met" };
    println!(
        "  ratio       full rebuild / COPY = {:.2} (goal >= {GOAL_FULL_VS_COPY}: {})",
        full_rate / copy_rate,
        verdict(full_rate / copy_rate, GOAL_FULL_VS_COPY)
    );
    println!(
        "  ratio       balances-only rebuild / COPY = {:.2} (goal >= {GOAL_BALANCES_VS_COPY}: {})",
        balances_rate / copy_rate,
        verdict(balances_rate / copy_rate, GOAL_BALANCES_VS_COPY)
    );
    println!();

    sanity_check(pool, shape).await
}

async fn print_environment(pool: &PgPool, server: &Server, database: &str) -> anyhow::Result<()> {
    let version: String = sqlx::query_scalar("SELECT version()").fetch_one(pool).await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings \
         WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'work_mem', \
                        'max_wal_size', 'jit') ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let settings: Vec<String> = settings.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("  server      {version}");
    println!("              {} (database {database})", server.description);
    println!("              {}", settings.join(" "));
    if server.cluster.is_some() {
        println!("              note: the throw-away cluster runs with fsync=off (no durability), for tests only");
    }
    // Other builds may share the machine: the load average says whether
    // the figures were taken on a quiet one.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "  machine     {cpus} CPUs; load average {} at start (bench client and server share them)",
        load.join(" ")
    );
    Ok(())
}

fn per_second(events: u64, took: Duration) -> i64 {
    (events as f64 / took.as_secs_f64().max(1e-9)) as i64
}

/// 1234567 -> "1,234,567".
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
