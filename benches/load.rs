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
//! | `seed-hot`    | baseline: the seed service's SQL, one transaction per transfer, one row, |
//! |               | sqlx pool of 64                                                          |
//! | `seed-spread` | the same on 1,000 rows                                                   |
//! | `raw-insert`  | baseline: one `INSERT … SELECT … generate_series(1, 1000000)`            |
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
#[path = "load/postgres.rs"]
mod postgres;
#[path = "load/server.rs"]
mod server;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use driver::{Load, Measured, Timing};
use grpc::GrpcWorker;
use http::{Account, BulkWorker, Pick};
use postgres::Postgres;
use server::{RssSampler, Server};

const WARMUP: Duration = Duration::from_secs(1);
const DEFAULT_SECONDS: u64 = 10;
/// Spread accounts, ledger and seed alike.
const SPREAD_ACCOUNTS: usize = 1_000;
/// Connections of the seed baseline's sqlx pool.
const SEED_CONNECTIONS: u32 = 64;
const RAW_INSERT_ROWS: i64 = 1_000_000;
/// Open loop: requests per second, and connections enough to keep the
/// schedule while the server is slower than usual (a backlog would show up
/// as send lag).
const OPEN_RATE: u32 = 1_000;
const OPEN_CONNECTIONS: usize = 128;
/// Longest wait for PostgreSQL to go quiet between scenarios.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// The goals the ratios are printed next to.
const GOAL_HOT_VS_SEED: f64 = 10.0;
const GOAL_BULK100_VS_RAW: f64 = 0.5;
const GOAL_OPEN_P99_MS: f64 = 10.0;
const GOAL_RSS_MIB: f64 = 150.0;

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

/// A scenario against the ledger server.
struct LedgerScenario {
    name: &'static str,
    label: &'static str,
    connections: usize,
    transfers_per_bulk: usize,
    /// Hot: the one account; spread: uniform over the 1,000.
    spread: bool,
    load: Load,
    /// Over gRPC (`TransferBulk`) instead of HTTP.
    grpc: bool,
}

const LEDGER_SCENARIOS: [LedgerScenario; 6] = [
    LedgerScenario {
        name: "hot",
        label: "hot account, bulks of 1",
        connections: 64,
        transfers_per_bulk: 1,
        spread: false,
        load: Load::Closed,
        grpc: false,
    },
    LedgerScenario {
        name: "grpc-hot",
        label: "hot account, bulks of 1, gRPC",
        connections: 64,
        transfers_per_bulk: 1,
        spread: false,
        load: Load::Closed,
        grpc: true,
    },
    LedgerScenario {
        name: "spread",
        label: "1,000 accounts, bulks of 1",
        connections: 64,
        transfers_per_bulk: 1,
        spread: true,
        load: Load::Closed,
        grpc: false,
    },
    LedgerScenario {
        name: "bulk100",
        label: "one account, bulks of 100",
        connections: 16,
        transfers_per_bulk: 100,
        spread: false,
        load: Load::Closed,
        grpc: false,
    },
    LedgerScenario {
        name: "bulk1000",
        label: "one account, bulks of 1,000",
        connections: 16,
        transfers_per_bulk: 1_000,
        spread: false,
        load: Load::Closed,
        grpc: false,
    },
    LedgerScenario {
        name: "open",
        label: "open loop 1,000 req/s, 1,000 acc.",
        connections: OPEN_CONNECTIONS,
        transfers_per_bulk: 1,
        spread: true,
        load: Load::Open { per_second: OPEN_RATE },
        grpc: false,
    },
];

const BASELINES: [&str; 3] = ["seed-hot", "seed-spread", "raw-insert"];

struct Config {
    timing: Timing,
    selected: Vec<String>,
    idempotency_keys: bool,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let seconds = match std::env::var("LEDGER_BENCH_SECONDS") {
            Ok(text) => match text.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 3600.0 => s,
                _ => bail!("LEDGER_BENCH_SECONDS must be a number of seconds in (0, 3600], not {text:?}"),
            },
            Err(_) => DEFAULT_SECONDS as f64,
        };
        let known: Vec<&str> = LEDGER_SCENARIOS.iter().map(|s| s.name).chain(BASELINES).collect();
        let selected: Vec<String> = match std::env::var("LEDGER_BENCH_SCENARIOS") {
            Ok(list) if !list.trim().is_empty() => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect();
                if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
                    bail!(
                        "LEDGER_BENCH_SCENARIOS: unknown scenario {unknown:?}; known: {}",
                        known.join(", ")
                    );
                }
                names
            }
            _ => known.iter().map(|n| (*n).to_owned()).collect(),
        };
        let idempotency_keys = std::env::var("LEDGER_BENCH_IDEMPOTENCY_KEYS").map_or(true, |v| v.trim() != "0");
        Ok(Config {
            timing: Timing {
                warmup: WARMUP,
                measure: Duration::from_secs_f64(seconds),
            },
            selected,
            idempotency_keys,
        })
    }

    fn runs(&self, name: &str) -> bool {
        self.selected.iter().any(|n| n == name)
    }
}

/// One line of the table.
struct Row {
    name: &'static str,
    label: String,
    connections: Option<usize>,
    measured: Option<Measured>,
    /// The raw insert's rows/s, in the transfers/s column.
    rows_per_second: Option<f64>,
    /// The server's largest sampled VmRSS during the scenario, and its VmHWM
    /// after it, in KiB.
    rss_max_kib: Option<u64>,
    hwm_kib: Option<u64>,
    /// Cores used by the load generator, the server and PostgreSQL over the
    /// scenario (warm-up included).
    cpu: Option<cpu::Use>,
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
    if !ledger_selected.is_empty() {
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
        if let (Some((sum_before, count_before, seconds_before)), Some((sum, count, seconds))) =
            (batches_before, batch_totals(server.address).await)
            && count > count_before
        {
            notes.push(format!(
                "group commit, {}: {} batches, {:.1} commands and {:.2} ms (decide + append) per batch on average, \
                 warm-up included",
                scenario.name,
                thousands(count - count_before),
                (sum - sum_before) / (count - count_before),
                (seconds - seconds_before) * 1000.0 / (count - count_before)
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
            rows_per_second: None,
            rss_max_kib,
            hwm_kib,
            cpu: Some(cpu),
        });
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

/// The server's group-commit batch histogram totals, `(sum, count)`, read
/// from `/metrics` (plain HTTP/1.0 keeps this independent of the workers).
async fn batch_totals(address: std::net::SocketAddr) -> Option<(f64, f64, f64)> {
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
            rows_per_second: None,
            rss_max_kib: None,
            hwm_kib: None,
            cpu: Some(cpu),
        });
    }
    if config.runs("raw-insert") {
        settle(postgres, "raw-insert", notes).await;
        eprintln!("load: raw-insert: one INSERT … SELECT of {RAW_INSERT_ROWS} rows");
        let cpu_before = cpu::Sample::take(None, postgres.postmaster_pid());
        let (inserted, took) = baseline::raw_insert(&pool, RAW_INSERT_ROWS)
            .await
            .context("the raw insert baseline")?;
        let cpu = cpu::Sample::take(None, postgres.postmaster_pid()).since(&cpu_before);
        rows.push(Row {
            name: "raw-insert",
            label: format!("raw insert, {} rows (rows/s)", thousands(inserted as f64)),
            connections: Some(1),
            measured: None,
            rows_per_second: Some(inserted as f64 / took.as_secs_f64()),
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

/// The header: machine, PostgreSQL, durability settings, method.
async fn machine_facts(out: &mut String, postgres: &Postgres) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let show = async |name: &str| postgres.show(name).await.unwrap_or_else(|e| format!("? ({e})"));
    let fsync = show("fsync").await;
    let synchronous_commit = show("synchronous_commit").await;
    let full_page_writes = show("full_page_writes").await;
    let shared_buffers = show("shared_buffers").await;
    let version = postgres.version().await?;
    let filesystem = postgres
        .data_dir
        .as_deref()
        .map(|dir| match postgres::filesystem_of(dir) {
            Some(fs) => format!("{} on {fs}", dir.display()),
            None => dir.display().to_string(),
        })
        .unwrap_or_else(|| "not visible from here".into());
    let _ = writeln!(out, "ledger load benchmark (cargo bench --bench load)");
    let _ = writeln!(out, "machine        nproc {cores}, {cpu}");
    let _ = writeln!(out, "PostgreSQL     {version}");
    let _ = writeln!(out, "               {}", postgres.origin);
    let _ = writeln!(
        out,
        "durability     fsync={fsync} synchronous_commit={synchronous_commit} full_page_writes={full_page_writes} \
         shared_buffers={shared_buffers}"
    );
    let _ = writeln!(out, "data directory {filesystem}");
    let _ = writeln!(
        out,
        "method         each scenario: CHECKPOINT, 1 s warm-up (not measured), then the measured window; \
         latency per request"
    );
    let _ = writeln!(
        out,
        "               the load generator (hyper, one connection per worker) shares the machine's {cores} cores \
         with the server and PostgreSQL"
    );
    Ok(())
}

fn table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "{:<36} {:>5} {:>12} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}  CPU gen/srv/pg",
        "scenario",
        "conns",
        "transfers/s",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "non-2xx",
        "RSS MiB",
        "HWM MiB",
    );
    let mut in_baselines = false;
    for row in rows {
        if BASELINES.contains(&row.name) && !in_baselines {
            in_baselines = true;
            let _ = writeln!(
                out,
                "-- baselines, same PostgreSQL (database of their own, no ledger server running)"
            );
        }
        let connections = row.connections.map_or("-".into(), |c| c.to_string());
        let (transfers, requests, p50, p99, p999, non_2xx) = match (&row.measured, row.rows_per_second) {
            (Some(m), _) => (
                thousands(m.transfers_per_second()),
                thousands(m.requests_per_second()),
                ms(m.latency_ms(0.5)),
                ms(m.latency_ms(0.99)),
                ms(m.latency_ms(0.999)),
                (m.non_2xx() + m.failed).to_string(),
            ),
            (None, Some(rows_per_second)) => (
                thousands(rows_per_second),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
            (None, None) => Default::default(),
        };
        let _ = writeln!(
            out,
            "{:<36} {:>5} {:>12} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}  {}",
            row.label,
            connections,
            transfers,
            requests,
            p50,
            p99,
            p999,
            non_2xx,
            mib(row.rss_max_kib),
            mib(row.hwm_kib),
            row.cpu.map_or("-".into(), |c| format!(
                "{}/{}/{}",
                cores(c.generator),
                cores(c.server),
                cores(c.postgres)
            ))
        );
    }
    let _ = writeln!(
        out,
        "non-2xx: answers that are not 2xx, plus requests with no answer. RSS: the server's largest VmRSS, sampled \
         every 100 ms during the scenario;\nHWM: its VmHWM after it (a high-water mark since it started). CPU: cores \
         busy on average over the scenario, warm-up included,\nin the load generator / the ledger server / \
         PostgreSQL (2.00 would be both cores of this machine)."
    );
}

/// The first error of each scenario that had any, and the status counts.
fn errors(out: &mut String, rows: &[Row]) {
    for row in rows {
        let Some(m) = &row.measured else { continue };
        if m.answered() == 0 && m.in_flight_at_end > 0 {
            let answered = m
                .in_flight_answered_max
                .map_or("none of them was answered".into(), |d| {
                    format!("the slowest of those answered took {:.1} s", d.as_secs_f64())
                });
            let _ = writeln!(
                out,
                "{}: no answer arrived inside the measured window; {} requests were still in flight when it \
                 closed ({answered})",
                row.name, m.in_flight_at_end
            );
        }
        if m.non_2xx() + m.failed == 0 {
            continue;
        }
        let statuses: Vec<String> = m.refused.iter().map(|(s, n)| format!("{n}× {s}")).collect();
        let _ = writeln!(
            out,
            "errors in {}: {} {}no answer; first: {}",
            row.name,
            if statuses.is_empty() {
                String::new()
            } else {
                statuses.join(", ") + ", "
            },
            m.failed,
            m.first_error.as_deref().unwrap_or("?")
        );
    }
}

fn ratios(out: &mut String, rows: &[Row]) {
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let transfers = |name: &str| {
        find(name)
            .and_then(|r| r.measured.as_ref())
            .map(|m| m.transfers_per_second())
    };
    let _ = writeln!(out, "\n{:<52} {:>10}   {:<10} verdict", "goal", "measured", "target");
    let verdict = |met: bool| if met { "met" } else { "NOT met" };

    match (transfers("hot"), transfers("seed-hot")) {
        (Some(hot), Some(seed)) if seed > 0.0 => {
            let ratio = hot / seed;
            let _ = writeln!(
                out,
                "{:<52} {:>9.2}×   ≥ {GOAL_HOT_VS_SEED}×      {}",
                "hot-account transfers/s ÷ seed-pattern hot",
                ratio,
                verdict(ratio >= GOAL_HOT_VS_SEED)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{:<52} {:>10}",
                "hot-account transfers/s ÷ seed-pattern hot", "n/a"
            );
        }
    }
    match (transfers("bulk100"), find("raw-insert").and_then(|r| r.rows_per_second)) {
        (Some(bulk), Some(raw)) if raw > 0.0 => {
            let ratio = bulk / raw;
            let _ = writeln!(
                out,
                "{:<52} {:>9.2}×   ≥ {GOAL_BULK100_VS_RAW}×     {}",
                "bulks-of-100 transfers/s ÷ raw insert rows/s",
                ratio,
                verdict(ratio >= GOAL_BULK100_VS_RAW)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{:<52} {:>10}",
                "bulks-of-100 transfers/s ÷ raw insert rows/s", "n/a"
            );
        }
    }
    match find("open")
        .and_then(|r| r.measured.as_ref())
        .and_then(|m| m.latency_ms(0.99))
    {
        Some(p99) => {
            let _ = writeln!(
                out,
                "{:<52} {:>7.2} ms   < {GOAL_OPEN_P99_MS} ms    {}",
                "open-loop p99 (1,000 req/s)",
                p99,
                verdict(p99 < GOAL_OPEN_P99_MS)
            );
        }
        None => {
            let _ = writeln!(out, "{:<52} {:>10}", "open-loop p99 (1,000 req/s)", "n/a");
        }
    }
    match rows.iter().filter_map(|r| r.hwm_kib.max(r.rss_max_kib)).max() {
        Some(kib) => {
            let peak = kib as f64 / 1024.0;
            let _ = writeln!(
                out,
                "{:<52} {:>6.1} MiB   < {GOAL_RSS_MIB} MiB  {}",
                "max server peak RSS",
                peak,
                verdict(peak < GOAL_RSS_MIB)
            );
        }
        None => {
            let _ = writeln!(out, "{:<52} {:>10}", "max server peak RSS", "n/a");
        }
    }
}

/// `/proc/loadavg`'s 1-minute figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn cores(used: Option<f64>) -> String {
    used.map_or("-".into(), |c| format!("{c:.2}"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// A rate with thousands separators, one decimal below 100.
fn thousands(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `text` without terminal colour sequences (ESC [ … m), as the server's
/// pretty log writes them even to a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the final letter of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `text`, or its first `head` and last `tail` characters when longer (a
/// log line's end holds the figures, e.g. a slow statement's `elapsed`).
fn shorten(text: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= head + tail {
        return text.to_owned();
    }
    let start: String = chars[..head].iter().collect();
    let end: String = chars[chars.len() - tail..].iter().collect();
    format!("{start} … {end}")
}
