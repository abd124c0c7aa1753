//! The `ledger` binary: the clap command line, and each subcommand a thin
//! call into the library, in a file per group:
//!
//! - `serve.rs`: `serve`, its settings and the first admin key;
//! - `accounts.rs`: `accounts open|deposit`;
//! - `keys.rs`: `keys create|list|revoke`;
//! - `projections.rs`: `projections rebuild|status`;
//! - `audit.rs`: `audit` and `replay`;
//! - `files.rs`: `import` (pain.001) and `statement` (camt.053);
//! - `relay.rs`: `relay` (the feed to NATS JetStream).
//!
//! Every setting is a flag with an environment fallback. With no
//! `DATABASE_URL`, commands use the project-local PostgreSQL cluster under
//! `.ledger/` (or `LEDGER_DATA_DIR`), created and started on first use.

mod accounts;
mod audit;
mod files;
mod keys;
mod projections;
mod relay;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::app::{Ledger, Settings};
use crate::db::{self, PoolSettings};
use crate::domain::IbanCheck;
use crate::pg::{self, Cluster};

#[derive(Debug, Parser)]
#[command(name = "ledger", version, about = "An event-sourced transfer ledger on PostgreSQL")]
pub struct Cli {
    /// PostgreSQL URL. When absent, a project-local cluster under the data
    /// directory is created and started on first use.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(super) database_url: Option<String>,

    /// Where the project-local cluster lives when DATABASE_URL is absent
    /// [default: ./.ledger]
    #[arg(long, env = "LEDGER_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// How IBANs are checked: `full` (country format and mod-97 check
    /// digits) or `structure` (shape only).
    #[arg(long, env = "LEDGER_IBAN_CHECK", default_value = "full", global = true, value_parser = IbanCheck::from_str)]
    pub(super) iban_check: IbanCheck,

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
    Serve(serve::ServeArgs),
    /// Apply the event store's migrations and install the projections.
    Migrate,
    /// Open accounts and deposit money from the command line.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// Rebuild read models from the log, or show their position and lag.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Create, list and revoke API keys (README "Security").
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Replay every stream (or one), verify hash chains, recompute balances
    /// and histories, compare with the projections. Exit 0 when all agree,
    /// 1 on any difference, 2 on error.
    Audit {
        /// Audit only this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Book a pain.001 payment file (ISO 20022 .03 or .09) and print its
    /// pain.002 status report. Exit 0 when every payment booked, 1 when some
    /// or none did, 2 when the file is invalid (nothing booked) or on error.
    Import {
        /// The pain.001 document.
        file: PathBuf,
        /// The report as a pain.002 document or as JSON.
        #[arg(long, value_enum, default_value = "xml")]
        format: files::Format,
    },
    /// Print an account's statement for a period of whole days (UTC) as a
    /// camt.053.001.08 document (or JSON): opening and closing balances and
    /// every movement, replayed from the log.
    Statement {
        #[arg(long)]
        account: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (included).
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "xml")]
        format: files::Format,
    },
    /// Publish the event feed to NATS JetStream, exactly once, one message
    /// per event (`Nats-Msg-Id` = its position), until SIGTERM or SIGINT.
    /// One relay publishes at a time; more wait to take over.
    Relay(relay::RelayArgs),
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
    let connection = Connection::of(&cli);
    let settings = Settings {
        iban_check: cli.iban_check,
        ..Settings::default()
    };
    match cli.command {
        Commands::Migrate => {
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Commands::Serve(args) => serve::run(pool, settings, args, embedded, &connection).await,
        Commands::Accounts(command) => accounts::run(&Ledger::new(pool, settings), command).await,
        Commands::Keys(command) => keys::run(&pool, command).await,
        Commands::Projections(command) => projections::run(&pool, command).await,
        Commands::Import { file, format } => files::import(&Ledger::new(pool, settings), &file, format).await,
        Commands::Statement {
            account,
            from,
            to,
            format,
        } => files::statement(&Ledger::new(pool, settings), &account, &from, &to, format).await,
        Commands::Audit { account } => audit::audit(&pool, account.as_deref()).await,
        Commands::Relay(args) => relay::run(pool, args).await,
        Commands::Replay {
            account,
            until,
            position,
        } => audit::replay(&pool, &account, until.as_deref(), position).await,
    }
}

/// How every connection of this process is made: its pool's size and
/// wait, and the options set on each connection.
pub(super) struct Connection {
    pub(super) pool: PoolSettings,
    statement_timeout_ms: u64,
}

impl Connection {
    fn of(cli: &Cli) -> Connection {
        Connection {
            pool: PoolSettings {
                connections_max: cli.pool_size,
                acquire_timeout: Duration::from_millis(cli.pool_acquire_timeout_ms),
            },
            statement_timeout_ms: cli.statement_timeout_ms,
        }
    }

    /// The requests' statement timeout, on the primary and the replicas alike.
    pub(super) fn configure(&self, options: PgConnectOptions) -> PgConnectOptions {
        options.options([("statement_timeout", self.statement_timeout_ms.to_string())])
    }
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
    let connection = Connection::of(cli);
    db::connect(connection.configure(options), &connection.pool)
        .await
        .context("connecting to PostgreSQL")
}
