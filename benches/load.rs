//! Load benchmark of the real `ledger serve` over HTTP (and gRPC), against PostgreSQL
//! with durability on, side by side with baselines measured in the same run
//! on the same PostgreSQL. It prints figures; it never passes or fails on
//! them (it exits non-zero only when it cannot run).
//!
//! ```sh
//! cargo bench --bench load
//! ```
//!
//! Cargo builds the release `ledger` binary along with the bench and runs it
//! as `ledger serve` (`LEDGER_IBAN_CHECK=full`, `RUST_LOG=warn`, an
//! ephemeral port on 127.0.0.1).
//!
//! PostgreSQL: the server of `DATABASE_URL` when it is set (two fresh
//! databases, dropped at the end); otherwise a new cluster made with
//! `ledger::pg::Cluster::ensure` in a fresh temp directory (fsync on, unlike
//! the test suite's clusters), stopped and removed at the end. The header
//! prints `fsync` and `synchronous_commit` so readers know the figures are
//! durable.
//!
//! Scenarios (closed loop: each connection sends its next request when the
//! previous one answered; 1 s warm-up, not measured, then the measured
//! window):
//!
//! | name          | what                                                                     |
//! |---------------|--------------------------------------------------------------------------|
//! | `hot`         | one account, bulks of 1 transfer, 64 connections                         |
//! | `grpc-hot`    | the same over gRPC: `TransferBulk`, 64 HTTP/2 connections                |
//! | `spread`      | 1,000 accounts chosen uniformly at random, bulks of 1, 64 connections    |
//! | `bulk100`     | one account, bulks of 100 transfers, 16 connections                      |
//! | `bulk1000`    | one account, bulks of 1,000 transfers, 16 connections                    |
//! | `open`        | open loop: 1,000 requests/s of 1-transfer bulks on the 1,000 accounts;   |
//! |               | latency from each request's scheduled send time (no coordinated omission)|
//! | `payroll`     | on-us: bulks of 1,000 transfers from the hot account to the 1,000    |
//! |               | accounts, one at a time; time to the 201, then until every credit is |
//! |               | visible (a query with the 201's `min_position`)                      |
//! | `pain001`     | the same payroll of 10,000 transfers as a pain.001.001.09 document and |
//! |               | as a JSON bulk, alternately, one at a time; time per request of each   |
//! | `soak`        | only when named: an open loop of 500 req/s on the 1,000 accounts for   |
//! |               | `LEDGER_BENCH_SOAK_SECONDS` (600), one report row per minute: errors,  |
//! |               | latency and the server's RSS over time                                 |
//! | `seed-hot`    | baseline: the seed service's SQL, one transaction per transfer, one row, |
//! |               | sqlx pool of 64                                                          |
//! | `seed-spread` | the same on 1,000 rows                                                   |
//! | `insert-ceiling` | baseline: 16 connections, each inserting 100 transfer-shaped rows   |
//! |               | (uuid key, the transfer as jsonb) per statement and transaction          |
//!
//! Environment:
//!
//! * `LEDGER_BENCH_SECONDS` — measured seconds per scenario (default 10).
//! * `LEDGER_BENCH_SCENARIOS` — comma-separated names from the table above
//!   (default: all), e.g. `LEDGER_BENCH_SCENARIOS=hot,seed-hot`.
//! * `LEDGER_BENCH_IDEMPOTENCY_KEYS` — `0` to send no `Idempotency-Key`; by
//!   default every transfer request carries a unique one, as a retrying
//!   client's would.
//! * `DATABASE_URL` — use that PostgreSQL server instead of a new cluster.
//! * Other `LEDGER_*` settings (e.g. `LEDGER_POOL_SIZE`) pass through to
//!   `ledger serve`.
//!
//! The load generator runs on the same machine, sharing its cores with the
//! server and PostgreSQL; the figures are for this machine, as printed.
//!
//! This file is the bench's main: the run sequence and the measuring runs;
//! its parts live in `load/` (the scenarios and configuration in
//! `load/scenarios.rs`, the report's formatting in `load/report.rs`).

#[path = "load/baseline.rs"]
mod baseline;
#[path = "load/cpu.rs"]
mod cpu;
#[path = "load/driver.rs"]
mod driver;
#[path = "load/grpc.rs"]
mod grpc;
#[path = "load/http.rs"]
mod http;
#[path = "load/pain001.rs"]
mod pain001;
#[path = "load/payroll.rs"]
mod payroll;
#[path = "load/postgres.rs"]
mod postgres;
#[path = "load/report.rs"]
mod report;
#[path = "load/scenarios.rs"]
mod scenarios;
#[path = "load/server.rs"]
mod server;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use driver::{Load, Timing};
use grpc::GrpcWorker;
use http::{Account, BulkWorker, Pick};
use postgres::Postgres;
use report::{Row, errors, load_average, machine_facts, ms, ratios, shorten, strip_ansi, table, thousands};
use scenarios::{BASELINES, Config, LEDGER_SCENARIOS, LedgerScenario};
use server::{RssSampler, Server};

/// Spread accounts, ledger and seed alike.
const SPREAD_ACCOUNTS: usize = 1_000;
/// Connections of the seed baseline's sqlx pool.
const SEED_CONNECTIONS: u32 = 64;
/// The insert ceiling: as many connections as `bulk100`, each statement
/// as many rows as one of its bulks has transfers.
const CEILING_CONNECTIONS: u32 = 16;
const CEILING_ROWS: usize = 100;
/// Open loop: requests per second, and connections enough to keep the
/// schedule while the server is slower than usual (a backlog would show up
/// as send lag).
const OPEN_RATE: u32 = 1_000;
const OPEN_CONNECTIONS: usize = 128;
/// The soak: its rate, its default length, and its report's window.
const SOAK_RATE: u32 = 500;
const SOAK_SECONDS: u64 = 600;
const SOAK_WINDOW_SECONDS: u64 = 60;
/// Longest wait for PostgreSQL to go quiet between scenarios.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// A load worker of either API.
enum AnyWorker {
    Http(BulkWorker),
    Grpc(Box<GrpcWorker>),
}

impl driver::Worker for AnyWorker {
    async fn call(&mut self) -> driver::CallResult {
        match self {
            AnyWorker::Http(worker) => worker.call().await,
            AnyWorker::Grpc(worker) => worker.call().await,
        }
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes --bench; `cargo test --benches` (or --all-targets)
    // would otherwise run minutes of load in a debug build.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("load: skipped (run it with `cargo bench --bench load`)");
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("load: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(&config)) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Provides PostgreSQL, runs everything, and cleans up whatever happened
/// (an error, or Ctrl-C).
async fn run(config: &Config) -> anyhow::Result<String> {
    // Self-check of the IBAN generator against the well-known example.
    assert_eq!(http::german_iban(532_013_000), "DE89370400440532013000");

    let scratch = std::env::temp_dir().join(format!(
        "ledger-bench-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let result = match Postgres::provide(&scratch).await {
        Ok(postgres) => {
            let result = tokio::select! {
                result = bench(config, &postgres, &scratch) => result,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            };
            eprintln!("load: cleaning up");
            postgres.clean_up().await;
            result
        }
        Err(error) => Err(error),
    };
    if let Err(error) = std::fs::remove_dir_all(&scratch) {
        eprintln!("load: could not remove {}: {error}", scratch.display());
    }
    result
}

async fn bench(config: &Config, postgres: &Postgres, scratch: &Path) -> anyhow::Result<String> {
    let load_at_start = load_average();
    let mut header = String::new();
    machine_facts(&mut header, postgres).await?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let ledger_selected: Vec<&LedgerScenario> = LEDGER_SCENARIOS.iter().filter(|s| config.runs(s.name)).collect();
    if !ledger_selected.is_empty() || config.runs("payroll") || config.runs("pain001") || config.runs("soak") {
        run_ledger(config, postgres, scratch, &ledger_selected, &mut rows, &mut notes).await?;
    }
    // The baselines run after the ledger server has gone, so neither
    // competes with the other for the two cores.
    run_baselines(config, postgres, &mut rows, &mut notes).await?;

    let mut report = header;
    let _ = writeln!(
        report,
        "load average   {} at start, {} at the end (other work on the machine skews the figures)",
        load_at_start,
        load_average()
    );
    report.push('\n');
    table(&mut report, &rows);
    errors(&mut report, &rows);
    for note in notes {
        let _ = writeln!(report, "{note}");
    }
    ratios(&mut report, &rows);
    Ok(report)
}

/// Starts the server, opens and funds the accounts, runs the selected
/// ledger scenarios.
async fn run_ledger(
    config: &Config,
    postgres: &Postgres,
    scratch: &Path,
    scenarios: &[&LedgerScenario],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ledger"));
    let mut server = Server::start(&binary, &postgres.ledger_url, &scratch.join("ledger-serve.log"))?;
    eprintln!(
        "load: {} serve is up on {} (pid {})",
        binary.display(),
        server.address,
        server.pid()
    );

    let hot = Account::new(0, "Hot Account GmbH".into());
    let spread: Vec<Account> = (1..=SPREAD_ACCOUNTS as u64)
        .map(|i| Account::new(i, format!("Spread {i} GmbH")))
        .collect();
    let started = Instant::now();
    let everyone: Vec<Account> = std::iter::once(hot.clone()).chain(spread.iter().cloned()).collect();
    http::open_and_fund(server.address, &everyone)
        .await
        .context("opening and funding the accounts")?;
    notes.push(format!(
        "set-up: opened and funded {} accounts ({} EUR each) over the API in {:.1} s",
        thousands(everyone.len() as f64),
        http::FUNDING,
        started.elapsed().as_secs_f64()
    ));

    for scenario in scenarios {
        let bodies: Vec<_> = if scenario.spread {
            spread
                .iter()
                .map(|a| http::bulk_body(a, scenario.transfers_per_bulk))
                .collect()
        } else {
            vec![http::bulk_body(&hot, scenario.transfers_per_bulk)]
        };
        let bodies = Arc::new(bodies);
        let pick = if scenario.spread { Pick::Uniform } else { Pick::First };
        let message = ledger::grpc::bulk_request_from_json(&http::bulk_json(&hot, scenario.transfers_per_bulk));
        let workers: Vec<AnyWorker> = (0..scenario.connections)
            .map(|i| {
                let key_prefix = config
                    .idempotency_keys
                    .then(|| format!("bench-{}-{}-{i}", scenario.name, std::process::id()));
                if scenario.grpc {
                    AnyWorker::Grpc(Box::new(GrpcWorker::new(
                        server.grpc_address,
                        message.clone(),
                        &server.api_key,
                        key_prefix,
                    )))
                } else {
                    AnyWorker::Http(BulkWorker::new(
                        server.address,
                        bodies.clone(),
                        pick,
                        scenario.transfers_per_bulk,
                        key_prefix,
                        i as u64 + 1,
                    ))
                }
            })
            .collect();

        settle(postgres, scenario.name, notes).await;
        let batches_before = batch_totals(server.address).await;
        progress(scenario.name, config.timing);
        let sampler = RssSampler::start(server.pid());
        let cpu_before = cpu::Sample::take(Some(server.pid()), postgres.postmaster_pid());
        let measured = driver::run(workers, scenario.load, config.timing).await;
        let cpu = cpu::Sample::take(Some(server.pid()), postgres.postmaster_pid()).since(&cpu_before);
        let rss_max_kib = sampler.finish().await;
        let hwm_kib = server::status_kib(server.pid(), "VmHWM");
        if let Some(status) = server.exited() {
            bail!(
                "ledger serve exited during {} ({status}); its log:\n{}",
                scenario.name,
                server::log_tail(&server.log, 30)
            );
        }
        if let (Some((sum_before, count_before, seconds_before, append_before)), Some((sum, count, seconds, append))) =
            (batches_before, batch_totals(server.address).await)
            && count > count_before
        {
            notes.push(format!(
                "group commit, {}: {} batches, {:.1} commands and {:.2} ms (decide + append) per batch on average, \
                 of which {:.2} ms from sending the append to its commit; warm-up included",
                scenario.name,
                thousands(count - count_before),
                (sum - sum_before) / (count - count_before),
                (seconds - seconds_before) * 1000.0 / (count - count_before),
                (append - append_before) * 1000.0 / (count - count_before)
            ));
        }
        if let Load::Open { .. } = scenario.load {
            notes.push(format!(
                "open loop: {} connections; send lag behind schedule p50 {} ms, p99 {} ms, max {} ms \
                 (timer granularity plus any backlog; it is inside the latencies)",
                scenario.connections,
                ms(measured.send_lag_ms(0.5)),
                ms(measured.send_lag_ms(0.99)),
                ms(measured.send_lag_ms(1.0)),
            ));
        }
        rows.push(Row {
            name: scenario.name,
            label: scenario.label.into(),
            connections: Some(scenario.connections),
            measured: Some(measured),
            rss_max_kib,
            hwm_kib,
            cpu: Some(cpu),
        });
    }
    if config.runs("payroll") {
        settle(postgres, "payroll", notes).await;
        eprintln!("load: payroll: {} on-us bulks of {}", payroll::ROUNDS, spread.len());
        let figures = payroll::run(server.address, &hot, &spread)
            .await
            .context("the payroll scenario")?;
        let (booked_p50, booked_max) = payroll::Figures::summary(&figures.booked_ms);
        let (credited_p50, credited_max) = payroll::Figures::summary(&figures.credited_ms);
        notes.push(format!(
            "payroll (on-us, SPEC §9): {} bulks of {} transfers to {} accounts of the ledger, one at a time: \
             201 after {booked_p50:.0} ms p50 ({booked_max:.0} max); every credit visible (min_position) \
             {credited_p50:.0} ms after the 201, p50 ({credited_max:.0} max), {} credits/s",
            payroll::ROUNDS,
            thousands(figures.transfers as f64),
            thousands(spread.len() as f64),
            thousands(figures.transfers as f64 * 1000.0 / credited_p50)
        ));
    }
    if config.runs("pain001") {
        settle(postgres, "pain001", notes).await;
        eprintln!(
            "load: pain001: {} pain.001 documents and {} JSON bulks of {} transfers",
            pain001::ROUNDS,
            pain001::ROUNDS,
            thousands(pain001::TRANSACTIONS as f64)
        );
        let figures = pain001::run(server.address, &hot)
            .await
            .context("the pain001 scenario")?;
        let (json_p50, json_max) = payroll::Figures::summary(&figures.json_ms);
        let (xml_p50, xml_max) = payroll::Figures::summary(&figures.xml_ms);
        let per_second = |ms: f64| thousands(pain001::TRANSACTIONS as f64 * 1000.0 / ms);
        let ratio = xml_p50 / json_p50;
        notes.push(format!(
            "pain001 (ISO 20022, SPEC §10): {} transfers per request, one request at a time, alternating; \
             JSON bulk ({} KiB) {json_p50:.0} ms p50 ({json_max:.0} max), {} transfers/s; \
             pain.001.001.09 ({} KiB, XSD-validated) {xml_p50:.0} ms p50 ({xml_max:.0} max), {} transfers/s; \
             pain.001 ÷ JSON time {ratio:.2}× (goal ≤ 1.5×: {})",
            thousands(pain001::TRANSACTIONS as f64),
            figures.json_bytes / 1024,
            per_second(json_p50),
            figures.xml_bytes / 1024,
            per_second(xml_p50),
            if ratio <= 1.5 { "met" } else { "not met" }
        ));
    }
    if config.runs("soak") {
        soak(config, postgres, &mut server, &spread, rows, notes).await?;
    }
    server.stop();

    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    if !lines.is_empty() {
        let mut note = format!(
            "server log (RUST_LOG=warn): {} lines; the last ones, shortened:",
            lines.len()
        );
        for line in &lines[lines.len().saturating_sub(5)..] {
            let _ = write!(note, "\n    {}", shorten(&strip_ansi(line), 160, 120));
        }
        notes.push(note);
    }
    Ok(())
}

/// The soak (issue #15, item 10): an open loop of [`SOAK_RATE`] requests/s
/// (or `LEDGER_BENCH_SOAK_RATE`)
/// (bulks of one transfer, each with its idempotency key) on the 1,000
/// accounts for `LEDGER_BENCH_SOAK_SECONDS` (default 600), reported window
/// by window (a minute each): throughput, errors, latency and the server's
/// RSS over time. A leak or a slowdown shows as a trend down the rows.
async fn soak(
    config: &Config,
    postgres: &Postgres,
    server: &mut Server,
    spread: &[Account],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let total = match std::env::var("LEDGER_BENCH_SOAK_SECONDS") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(s) if (1..=86_400).contains(&s) => s,
            _ => bail!("LEDGER_BENCH_SOAK_SECONDS must be whole seconds in [1, 86400], not {text:?}"),
        },
        Err(_) => SOAK_SECONDS,
    };
    let rate = match std::env::var("LEDGER_BENCH_SOAK_RATE") {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(r) if (1..=100_000).contains(&r) => r,
            _ => bail!("LEDGER_BENCH_SOAK_RATE must be requests per second in [1, 100000], not {text:?}"),
        },
        Err(_) => SOAK_RATE,
    };
    let window = total.min(SOAK_WINDOW_SECONDS);
    let windows = total.div_ceil(window);
    settle(postgres, "soak", notes).await;
    let bodies = Arc::new(spread.iter().map(|a| http::bulk_body(a, 1)).collect::<Vec<_>>());
    eprintln!("load: soak: {total} s at {rate} requests/s, {windows} windows of {window} s");
    for index in 0..windows {
        let workers: Vec<AnyWorker> = (0..OPEN_CONNECTIONS)
            .map(|i| {
                let key_prefix = config
                    .idempotency_keys
                    .then(|| format!("bench-soak-{}-{index}-{i}", std::process::id()));
                AnyWorker::Http(BulkWorker::new(
                    server.address,
                    bodies.clone(),
                    Pick::Uniform,
                    1,
                    key_prefix,
                    (index << 16) | i as u64,
                ))
            })
            .collect();
        let sampler = RssSampler::start(server.pid());
        let cpu_before = cpu::Sample::take(Some(server.pid()), postgres.postmaster_pid());
        let timing = Timing {
            warmup: Duration::ZERO,
            measure: Duration::from_secs(window),
        };
        let measured = driver::run(workers, Load::Open { per_second: rate }, timing).await;
        let cpu = cpu::Sample::take(Some(server.pid()), postgres.postmaster_pid()).since(&cpu_before);
        let rss_max_kib = sampler.finish().await;
        if let Some(status) = server.exited() {
            bail!(
                "ledger serve exited during the soak ({status}); its log:\n{}",
                server::log_tail(&server.log, 30)
            );
        }
        rows.push(Row {
            name: "soak",
            label: format!("soak {}/{windows}, {} s at {rate}/s", index + 1, window),
            connections: Some(OPEN_CONNECTIONS),
            measured: Some(measured),
            rss_max_kib,
            hwm_kib: server::status_kib(server.pid(), "VmHWM"),
            cpu: Some(cpu),
        });
    }
    Ok(())
}

/// The server's group-commit batch histogram totals, `(sum, count)`, read
/// from `/metrics` (plain HTTP/1.0 keeps this independent of the workers).
async fn batch_totals(address: std::net::SocketAddr) -> Option<(f64, f64, f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("ledger_group_commit_batch_commands_sum").unwrap_or(0.0),
        value("ledger_group_commit_batch_commands_count").unwrap_or(0.0),
        value("ledger_group_commit_batch_duration_seconds_sum").unwrap_or(0.0),
        value("ledger_group_commit_append_duration_seconds_sum").unwrap_or(0.0),
    ))
}

async fn run_baselines(
    config: &Config,
    postgres: &Postgres,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let seed = [
        ("seed-hot", "seed SQL pattern, 1 row", 1),
        ("seed-spread", "seed SQL pattern, 1,000 rows", SPREAD_ACCOUNTS),
    ];
    if !BASELINES.iter().any(|b| config.runs(b)) {
        return Ok(());
    }
    let pool = baseline::prepare(&postgres.baseline, SPREAD_ACCOUNTS, SEED_CONNECTIONS)
        .await
        .context("preparing the baseline database")?;
    for (name, label, accounts) in seed {
        if !config.runs(name) {
            continue;
        }
        let workers: Vec<_> = (0..SEED_CONNECTIONS)
            .map(|i| baseline::SeedWorker::new(pool.clone(), accounts, u64::from(i) + 1))
            .collect();
        settle(postgres, name, notes).await;
        progress(name, config.timing);
        let cpu_before = cpu::Sample::take(None, postgres.postmaster_pid());
        let measured = driver::run(workers, Load::Closed, config.timing).await;
        let cpu = cpu::Sample::take(None, postgres.postmaster_pid()).since(&cpu_before);
        rows.push(Row {
            name,
            label: label.into(),
            connections: Some(SEED_CONNECTIONS as usize),
            measured: Some(measured),
            rss_max_kib: None,
            hwm_kib: None,
            cpu: Some(cpu),
        });
    }
    if config.runs("insert-ceiling") {
        let workers: Vec<_> = (0..CEILING_CONNECTIONS)
            .map(|i| baseline::CeilingWorker::new(pool.clone(), CEILING_ROWS, u64::from(i) + 1))
            .collect();
        settle(postgres, "insert-ceiling", notes).await;
        progress("insert-ceiling", config.timing);
        let cpu_before = cpu::Sample::take(None, postgres.postmaster_pid());
        let measured = driver::run(workers, Load::Closed, config.timing).await;
        let cpu = cpu::Sample::take(None, postgres.postmaster_pid()).since(&cpu_before);
        rows.push(Row {
            name: "insert-ceiling",
            label: format!("insert ceiling, {CEILING_ROWS} rows/stmt (rows/s)"),
            connections: Some(CEILING_CONNECTIONS as usize),
            measured: Some(measured),
            rss_max_kib: None,
            hwm_kib: None,
            cpu: Some(cpu),
        });
    }
    pool.close().await;
    Ok(())
}

/// Before a scenario: waits for PostgreSQL to finish the statements of the
/// one before, then CHECKPOINTs, so each starts from the same quiet state.
async fn settle(postgres: &Postgres, name: &str, notes: &mut Vec<String>) {
    match postgres.wait_idle(SETTLE_LIMIT).await {
        Ok(Some(waited)) if waited > Duration::from_secs(1) => notes.push(format!(
            "before {name}: waited {:.1} s for PostgreSQL to finish the previous scenario's statements",
            waited.as_secs_f64()
        )),
        Ok(Some(_)) => {}
        Ok(None) => notes.push(format!(
            "before {name}: PostgreSQL was still running the previous scenario's statements after {} s; \
             {name} started anyway and its figures are skewed",
            SETTLE_LIMIT.as_secs()
        )),
        Err(error) => eprintln!("load: cannot watch pg_stat_activity: {error:#}"),
    }
    postgres.checkpoint().await;
}

fn progress(name: &str, timing: Timing) {
    eprintln!(
        "load: {name}: {:.0} s warm-up + {:.0} s measured",
        timing.warmup.as_secs_f64(),
        timing.measure.as_secs_f64()
    );
}
