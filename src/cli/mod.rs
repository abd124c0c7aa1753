//! The `ledger` binary: clap subcommands, each a thin call into the library.
//!
//! Every setting is a flag with an environment fallback. With no
//! `DATABASE_URL`, commands use the project-local PostgreSQL cluster under
//! `.ledger/` (or `LEDGER_DATA_DIR`), created and started on first use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::app::auth::{self, AuthMode, Principal, Revoked, Scope};
use crate::app::{CommandContext, CommandResponse, GroupCommitSettings, Ledger, Limits, Settings};
use crate::db::{self, PoolSettings};
use crate::domain::IbanCheck;
use crate::pg::{self, Cluster};

#[derive(Debug, Parser)]
#[command(name = "ledger", version, about = "An event-sourced transfer ledger on PostgreSQL")]
pub struct Cli {
    /// PostgreSQL URL. When absent, a project-local cluster under the data
    /// directory is created and started on first use.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Where the project-local cluster lives when DATABASE_URL is absent
    /// [default: ./.ledger]
    #[arg(long, env = "LEDGER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// How IBANs are checked: `full` (country format and mod-97 check
    /// digits) or `structure` (shape only).
    #[arg(long, env = "LEDGER_IBAN_CHECK", default_value = "full", global = true, value_parser = IbanCheck::from_str)]
    iban_check: IbanCheck,

    /// Database connections in the pool.
    #[arg(long, env = "LEDGER_POOL_SIZE", default_value_t = 16, global = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pool_size: u32,

    /// Milliseconds to wait for a free database connection before a request
    /// fails with 503.
    #[arg(long, env = "LEDGER_POOL_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000, global = true,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pool_acquire_timeout_ms: u64,

    /// Milliseconds any one SQL statement may run (PostgreSQL's
    /// statement_timeout) before it is cancelled.
    #[arg(long, env = "LEDGER_STATEMENT_TIMEOUT_MS", default_value_t = 30_000, global = true,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    statement_timeout_ms: u64,

    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, env = "LEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Serve the HTTP and gRPC APIs (applies migrations first).
    Serve(ServeArgs),
    /// Apply the event store's migrations and install the projections.
    Migrate,
    /// Open accounts and deposit money from the command line.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Rebuild read models from the log, or show their position and lag.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Create, list and revoke API keys (README "Security").
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Replay every stream (or one), verify hash chains, recompute balances
    /// and histories, compare with the projections. Exit 0 when all agree,
    /// 1 on any difference, 2 on error.
    Audit {
        /// Audit only this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Print an account's history with the running balance after each event.
    Replay {
        #[arg(long)]
        account: String,
        /// Stop at this time (RFC 3339).
        #[arg(long, conflicts_with = "position")]
        until: Option<String>,
        /// Stop at this global position.
        #[arg(long)]
        position: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Rebuild projections (all, or those named) from the log into fresh
    /// tables and swap them in atomically, while the service keeps serving.
    Rebuild {
        /// balances, transactions
        names: Vec<String>,
    },
    /// Each projection's position and lag.
    Status,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it, once, on stdout: only its hash is stored.
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["admin", "account"])))]
    Create {
        /// Everything: open accounts, deposits, every query, the event feed, audits.
        #[arg(long)]
        admin: bool,
        /// Bulk transfers from this account (IBAN) and queries on it, nothing else.
        #[arg(long, value_name = "IBAN")]
        account: Option<String>,
        /// A label to tell keys apart in `ledger keys list`.
        #[arg(long)]
        name: Option<String>,
    },
    /// Every key, active or revoked (never their secrets).
    List,
    /// Revoke a key: every server refuses it from the next request on.
    Revoke {
        /// The key's id (from `keys create` or `keys list`).
        id: uuid::Uuid,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the gRPC API (`proto/`), or `off`.
    #[arg(long, env = "LEDGER_GRPC_LISTEN", default_value = "127.0.0.1:8000", value_parser = parse_grpc_listen)]
    grpc_listen: GrpcListen,
    /// `enabled`: every API call needs `Authorization: Bearer <key>`;
    /// `disabled`: anyone may do anything (local experiments only).
    #[arg(long, env = "LEDGER_AUTH", value_enum, default_value_t = AuthMode::Enabled)]
    auth: AuthMode,
    /// Largest request body, in bytes (413 above).
    #[arg(long, env = "LEDGER_BODY_BYTES_MAX", default_value_t = Limits::default().body_bytes_max)]
    body_bytes_max: usize,
    /// Most transfers in one bulk (400 above).
    #[arg(long, env = "LEDGER_TRANSFERS_PER_BULK_MAX", default_value_t = Limits::default().transfers_per_bulk_max)]
    transfers_per_bulk_max: usize,
    /// Largest page of account history (`limit`).
    #[arg(long, env = "LEDGER_PAGE_SIZE_MAX", default_value_t = Limits::default().page_size_max)]
    page_size_max: u32,
    /// Milliseconds a request may take before it is answered 503.
    #[arg(long, env = "LEDGER_REQUEST_TIMEOUT_MS", default_value_t = Limits::default().request_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    request_timeout_ms: u64,
    /// Most commands on one account decided and appended together (group commit).
    #[arg(long, env = "LEDGER_BATCH_COMMANDS_MAX", default_value_t = GroupCommitSettings::default().batch_commands_max,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    batch_commands_max: usize,
    /// Most transfers in one group-commit batch (bounds its memory; a larger bulk is a batch of its own).
    #[arg(long, env = "LEDGER_BATCH_TRANSFERS_MAX", default_value_t = GroupCommitSettings::default().batch_transfers_max,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    batch_transfers_max: usize,
    /// Hours an idempotency key is remembered (at least 24).
    #[arg(long, env = "LEDGER_IDEMPOTENCY_TTL_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(crate::app::idempotency::TTL_HOURS_MIN..=87_600))]
    idempotency_ttl_hours: u64,
    /// Microseconds a batch leader on a contended account waits for more commands (0: never wait).
    #[arg(long, env = "LEDGER_BATCH_WAIT_US", default_value_t = GroupCommitSettings::default().batch_wait.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    batch_wait_us: u64,
}

/// Where the gRPC API listens, if anywhere.
#[derive(Debug, Clone, Copy)]
enum GrpcListen {
    Off,
    At(SocketAddr),
}

fn parse_grpc_listen(text: &str) -> Result<GrpcListen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(GrpcListen::Off);
    }
    text.parse()
        .map(GrpcListen::At)
        .map_err(|_| format!("{text:?} is neither an address (host:port) nor `off`"))
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Open an account; prints it as JSON.
    Open {
        #[arg(long)]
        organization_name: String,
        #[arg(long)]
        iban: String,
        #[arg(long)]
        bic: String,
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Credit an account; prints the new balance as JSON.
    Deposit {
        #[arg(long)]
        iban: String,
        /// Decimal amount, e.g. 100000.00
        #[arg(long)]
        amount: String,
        #[arg(long)]
        currency: Option<String>,
        #[arg(long)]
        reference: Option<String>,
        /// Makes a retried command apply once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// Exit codes: 0 done, 1 refused by the ledger (a 4xx outcome), 2 error.
pub fn main() -> ExitCode {
    // Settings from a `.env` file in the working directory, when present;
    // the real environment wins over it.
    if let Err(error) = dotenvy::dotenv()
        && !error.not_found()
    {
        eprintln!("ledger: cannot read .env: {error}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledger: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ledger: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let pool = connect(&cli).await?;
    db::migrate(&pool).await.context("applying migrations")?;
    let embedded = cli.database_url.is_none();
    let settings = |auth: AuthMode, limits: Limits, group_commit: GroupCommitSettings| Settings {
        auth,
        iban_check: cli.iban_check,
        limits,
        group_commit,
    };
    match cli.command {
        Commands::Migrate => {
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Serve(args) => {
            let limits = Limits {
                body_bytes_max: args.body_bytes_max,
                transfers_per_bulk_max: args.transfers_per_bulk_max,
                page_size_max: args.page_size_max,
                request_timeout: Duration::from_millis(args.request_timeout_ms),
                ..Limits::default()
            };
            anyhow::ensure!(limits.page_size_max >= 1, "--page-size-max must be at least 1");
            let group_commit = GroupCommitSettings {
                batch_commands_max: args.batch_commands_max,
                batch_transfers_max: args.batch_transfers_max,
                batch_wait: Duration::from_micros(args.batch_wait_us),
            };
            let ledger = Arc::new(Ledger::new(pool, settings(args.auth, limits, group_commit)));
            announce_auth(&ledger, args.auth, embedded).await?;
            let watcher = Arc::clone(&ledger);
            tokio::spawn(async move { watcher.watch_key_changes().await });
            tokio::spawn(crate::app::idempotency::purge_periodically(
                ledger.pool().clone(),
                Duration::from_secs(args.idempotency_ttl_hours * 3600),
            ));
            serve(ledger, args.listen, args.grpc_listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Accounts(command) => {
            let ledger = Ledger::new(
                pool,
                settings(AuthMode::Enabled, Limits::default(), GroupCommitSettings::default()),
            );
            accounts(&ledger, command).await
        }
        Commands::Keys(command) => keys(&pool, command).await,
        Commands::Projections(ProjectionsCommand::Rebuild { names }) => rebuild(&pool, &names).await,
        Commands::Projections(ProjectionsCommand::Status) => {
            println!(
                "{:<14} {:<7} {:>12} {:>12} {:>10}  last rebuild",
                "projection", "mode", "position", "log", "lag"
            );
            for status in crate::projections::status(&pool).await? {
                let rebuilt = match (status.rebuilt_at, status.rebuild_events, status.rebuild_seconds) {
                    (Some(at), Some(events), Some(seconds)) => {
                        format!(
                            "{} ({events} events in {seconds:.2} s)",
                            at.format("%Y-%m-%d %H:%M:%S UTC")
                        )
                    }
                    _ => "never".to_owned(),
                };
                println!(
                    "{:<14} {:<7} {:>12} {:>12} {:>10}  {rebuilt}",
                    status.name, status.mode, status.position, status.log_position, status.lag_events
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Commands::Audit { account } => audit(&pool, account.as_deref()).await,
        Commands::Replay {
            account,
            until,
            position,
        } => replay(&pool, &account, until.as_deref(), position).await,
    }
}

/// Says how callers authenticate. The embedded default's first start
/// creates an admin key and prints it, once, so the README's two commands
/// are enough to call the API.
async fn announce_auth(ledger: &Ledger, mode: AuthMode, embedded: bool) -> anyhow::Result<()> {
    if mode == AuthMode::Disabled {
        tracing::warn!(
            "authentication is disabled (LEDGER_AUTH=disabled): anyone who reaches this port may do anything"
        );
        return Ok(());
    }
    if embedded && let Some((info, secret)) = auth::create_first_admin_key(ledger.pool()).await? {
        println!(
            "created the first admin API key {} (shown once; `ledger keys create --admin` makes another):",
            info.id
        );
        println!("export LEDGER_API_KEY={}", secret.expose());
    } else {
        // Advice only: a failed check (a tight statement timeout...) does
        // not keep the server from starting.
        match auth::has_active_admin_key(ledger.pool()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("no active admin API key: create one with `ledger keys create --admin`"),
            Err(error) => tracing::warn!(%error, "cannot check for an active admin API key"),
        }
    }
    Ok(())
}

async fn keys(pool: &PgPool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { account, name, .. } => {
            let scope = match account {
                None => Scope::Admin,
                // Shape only, as for lookups: an account stays reachable
                // whatever LEDGER_IBAN_CHECK says today.
                Some(text) => match crate::domain::Iban::parse(&text, IbanCheck::Structure) {
                    Ok(iban) => Scope::Account(iban),
                    Err(error) => {
                        eprintln!("ledger: --account {error}");
                        return Ok(ExitCode::from(1));
                    }
                },
            };
            if let Scope::Account(iban) = &scope {
                let opened: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM balances WHERE account_id = $1)")
                    .bind(crate::app::account_id_for(iban))
                    .fetch_one(pool)
                    .await?;
                if !opened {
                    eprintln!("ledger: note: no account {iban} is open yet; the key works once it is");
                }
            }
            let (info, secret) = auth::create_key(pool, &scope, name.as_deref()).await?;
            eprintln!(
                "created API key {} ({scope}); the key is printed on stdout, this once (only a hash is stored)",
                info.id
            );
            println!("{}", secret.expose());
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List => {
            let keys = auth::list_keys(pool).await?;
            println!(
                "{:<36}  {:<7}  {:<27}  {:<20}  {:<20}  name",
                "id", "scope", "account", "created", "revoked"
            );
            let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
            for key in keys {
                println!(
                    "{:<36}  {:<7}  {:<27}  {:<20}  {:<20}  {}",
                    key.id,
                    key.scope,
                    key.account_iban.as_deref().unwrap_or("-"),
                    time(key.created_at),
                    key.revoked_at.map_or("-".to_owned(), time),
                    key.name.as_deref().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => match auth::revoke_key(pool, id).await? {
            Revoked::Now => {
                println!("revoked API key {id}");
                Ok(ExitCode::SUCCESS)
            }
            Revoked::Already => {
                println!("API key {id} was already revoked");
                Ok(ExitCode::SUCCESS)
            }
            Revoked::NoSuchKey => {
                eprintln!("ledger: no API key {id}");
                Ok(ExitCode::from(1))
            }
        },
    }
}

fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let template =
        format!("{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

async fn rebuild(pool: &PgPool, names: &[String]) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(0, "events");
    let report = crate::projections::rebuild(pool, names, |p| {
        bar.set_length(p.events_total);
        bar.set_position(p.events_done);
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    let rate = if report.seconds > 0.0 {
        report.events as f64 / report.seconds
    } else {
        0.0
    };
    println!(
        "rebuilt {} from {} events in {:.2} s ({:.0} events/s); {} applied during the swap",
        report.projections.join(", "),
        report.events,
        report.seconds,
        rate,
        report.events_during_swap
    );
    Ok(ExitCode::SUCCESS)
}

async fn audit(pool: &PgPool, account: Option<&str>) -> anyhow::Result<ExitCode> {
    use crate::domain::{Iban, IbanCheck};
    let accounts = match account {
        Some(text) => {
            let iban = Iban::parse(text, IbanCheck::Structure).map_err(|e| anyhow::anyhow!("--account {e}"))?;
            vec![crate::app::account_id_for(&iban)]
        }
        None => crate::audit::all_accounts(pool).await?,
    };
    let bar = progress_bar(accounts.len() as u64, "accounts");
    let (mut events, mut differences, mut broken_chains) = (0_usize, Vec::new(), 0_usize);
    for account_id in &accounts {
        let audit = crate::audit::audit_stream(pool, *account_id).await?;
        events += audit.events;
        broken_chains += usize::from(!audit.chain_valid);
        differences.extend(audit.differences);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if account.is_some() && events == 0 && differences.is_empty() {
        eprintln!("ledger: no account with IBAN {}", account.unwrap_or_default());
        return Ok(ExitCode::from(2));
    }
    for difference in &differences {
        println!(
            "DRIFT account {} iban {} position {}: {}",
            difference.account_id,
            difference.iban.as_deref().unwrap_or("?"),
            difference.position.map_or("-".to_owned(), |p| p.to_string()),
            difference.what
        );
    }
    println!(
        "audited {} accounts, {events} events: {} differences, {broken_chains} broken hash chains",
        accounts.len(),
        differences.len()
    );
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn replay(pool: &PgPool, account: &str, until: Option<&str>, position: Option<i64>) -> anyhow::Result<ExitCode> {
    use crate::domain::{Event, Iban, IbanCheck, format_amount};
    let iban = Iban::parse(account, IbanCheck::Structure).map_err(|e| anyhow::anyhow!("--account {e}"))?;
    let until = until
        .map(|text| chrono::DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&chrono::Utc)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--until must be an RFC 3339 time: {e}"))?;
    let account_id = crate::app::account_id_for(&iban);
    let events = crate::event_store::read_stream(pool, account_id, position, until).await?;
    if events.is_empty() {
        eprintln!("ledger: no events for IBAN {iban} up to that point");
        return Ok(ExitCode::from(1));
    }
    println!(
        "{:>10} {:>7}  {:<27} {:<21} {:>18} {:>18}  detail",
        "position", "version", "recorded_at", "event", "amount", "balance"
    );
    let mut state = None;
    for stored in &events {
        let event = stored.to_event()?;
        let next = crate::domain::apply(state.take(), &event)
            .map_err(|e| anyhow::anyhow!("the stream does not replay at position {}: {e}", stored.position))?;
        let currency = next.currency;
        let (amount, detail) = match &event {
            Event::AccountOpened {
                organization_name, bic, ..
            } => (String::new(), format!("{organization_name}, {bic}")),
            Event::FundsDeposited {
                amount_cents,
                reference,
                ..
            } => (
                format_amount(*amount_cents, currency),
                reference.clone().unwrap_or_default(),
            ),
            Event::BulkTransferBooked {
                bulk_id,
                total_cents,
                transfers,
                ..
            } => (
                format_amount(-total_cents, currency),
                format!("bulk {bulk_id}, {} transfers", transfers.len()),
            ),
            Event::BulkTransferRejected {
                bulk_id,
                requested_cents,
                reason,
                ..
            } => (
                String::new(),
                format!(
                    "bulk {bulk_id} refused ({reason}): {} requested",
                    format_amount(*requested_cents, currency)
                ),
            ),
        };
        println!(
            "{:>10} {:>7}  {:<27} {:<21} {:>18} {:>18}  {detail}",
            stored.position,
            stored.version,
            stored.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            stored.event_type,
            amount,
            format_amount(next.balance_cents, currency)
        );
        state = Some(next);
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(cli: &Cli) -> anyhow::Result<PgPool> {
    let options = match &cli.database_url {
        Some(url) => PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?,
        None => {
            let root = cli.data_dir.clone().unwrap_or_else(pg::default_root);
            let cluster = tokio::task::spawn_blocking(move || Cluster::ensure(&root)).await??;
            cluster.connect_options("ledger")
        }
    };
    let options = options.options([("statement_timeout", cli.statement_timeout_ms.to_string())]);
    let settings = PoolSettings {
        connections_max: cli.pool_size,
        acquire_timeout: Duration::from_millis(cli.pool_acquire_timeout_ms),
    };
    db::connect(options, &settings)
        .await
        .context("connecting to PostgreSQL")
}

async fn serve(ledger: Arc<Ledger>, listen: SocketAddr, grpc_listen: GrpcListen) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let grpc_listener = match grpc_listen {
        GrpcListen::Off => None,
        GrpcListen::At(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for gRPC on {at} (LEDGER_GRPC_LISTEN=off turns gRPC off)"))?,
        ),
    };
    tracing::info!(%address, "serving");
    // Machine-readable lines on stdout, for scripts and tests that start the
    // server on port 0; the HTTP line comes last, when both are bound.
    if let Some(grpc) = &grpc_listener {
        let grpc_address = grpc.local_addr()?;
        tracing::info!(%grpc_address, "serving gRPC");
        println!("ledger gRPC listening on http://{grpc_address}");
    }
    println!("ledger listening on http://{address}");
    // Asynchronous projections follow the log in the background; the task
    // ends with the process (each batch is its own transaction).
    tokio::spawn(crate::projections::runner::run(ledger.pool().clone()));

    // A signal, or either server failing, stops both.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut grace_stopped = stopped.clone();
    let ledger_grace = ledger.settings().limits.request_timeout;
    let stop = Arc::new(stop);
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.send_replace(true);
        });
    }
    // A server's failure is kept, so the process exits with it even when
    // the other one is cut off at the end of the grace period.
    let failure = std::sync::Mutex::new(None::<anyhow::Error>);
    let fail = |error: anyhow::Error| {
        failure.lock().expect("failure lock").get_or_insert(error);
    };
    let http = {
        let mut stopped = stopped.clone();
        let app = crate::http::router(Arc::clone(&ledger));
        let stop = Arc::clone(&stop);
        async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            stop.send_replace(true);
            if let Err(error) = served {
                fail(anyhow::Error::new(error).context("HTTP server"));
            }
        }
    };
    let grpc = async move {
        let Some(listener) = grpc_listener else {
            return; // off: nothing to stop the HTTP server for
        };
        let served = crate::grpc::serve(ledger, listener, stopped).await;
        stop.send_replace(true);
        if let Err(error) = served {
            fail(error.context("gRPC server"));
        }
    };
    // Once stopping, in-flight calls get the request time limit and a little
    // more; a client that holds on longer (a stalled stream) is cut off.
    let grace = ledger_grace + Duration::from_secs(5);
    let cut_off = async move {
        let _ = grace_stopped.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        _ = async { tokio::join!(http, grpc) } => tracing::info!("stopped"),
        _ = cut_off => tracing::warn!(?grace, "stopped with requests still open after the grace period"),
    }
    match failure.into_inner().expect("failure lock") {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn accounts(ledger: &Ledger, command: AccountsCommand) -> anyhow::Result<ExitCode> {
    use crate::app::AppError;
    use crate::app::idempotency::{IdempotencyKey, request_hash};
    use crate::app::requests::{parse_deposit, parse_open_account};
    use crate::problem::Problem;

    let mut context = CommandContext {
        principal: Principal::operator(),
        request_id: format!("cli-{}", uuid::Uuid::now_v7()),
        idempotency: None,
    };
    let result: Result<CommandResponse, AppError> = match command {
        AccountsCommand::Open {
            organization_name,
            iban,
            bic,
            currency,
        } => {
            let body = json!({"organization_name": organization_name, "iban": iban, "bic": bic, "currency": currency});
            match parse_open_account(&body, ledger.settings().iban_check) {
                Ok(request) => ledger.open_account(&context, request).await,
                Err(errors) => Err(Problem::validation(errors).into()),
            }
        }
        AccountsCommand::Deposit {
            iban,
            amount,
            currency,
            reference,
            idempotency_key,
        } => {
            let body = json!({"amount": amount, "currency": currency, "reference": reference});
            let path = format!("/v1/accounts/{iban}/deposits");
            async {
                let iban = ledger.lookup_iban(&iban, "iban")?;
                if let Some(key) = idempotency_key {
                    let key = IdempotencyKey::parse(key.as_bytes(), context.principal.idempotency_scope())?;
                    context.idempotency = Some((key, request_hash("POST", &path, body.to_string().as_bytes())));
                }
                let request = parse_deposit(&body).map_err(Problem::validation)?;
                ledger.deposit(&context, &iban, request).await
            }
            .await
        }
    };
    match result {
        Ok(response) => {
            println!("{}", response.body);
            Ok(if response.status < 400 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(AppError::Client(problem)) => {
            println!("{}", problem.to_json());
            let fields: Vec<String> = problem
                .errors
                .iter()
                .map(|e| format!("{} {}", e.field, e.message))
                .collect();
            eprintln!(
                "ledger: {}{}",
                problem.detail,
                if fields.len() > 1 {
                    format!(": {}", fields.join("; "))
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::from(1))
        }
        Err(AppError::Internal(error) | AppError::Unavailable(error)) => Err(error),
    }
}
