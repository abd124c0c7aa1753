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
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::app::{CommandContext, CommandResponse, Ledger, Limits, Settings};
use crate::db::{self, PoolSettings};
use crate::domain::IbanCheck;
use crate::pg::{self, Cluster};

#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    version,
    about = "An event-sourced transfer ledger on PostgreSQL"
)]
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
    /// Serve the HTTP API (applies migrations first).
    Serve(ServeArgs),
    /// Apply the event store's migrations and install the projections.
    Migrate,
    /// Open accounts and deposit money from the command line.
    #[command(subcommand)]
    Accounts(AccountsCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Largest request body, in bytes (413 above).
    #[arg(long, env = "LEDGER_BODY_BYTES_MAX", default_value_t = Limits::default().body_bytes_max)]
    body_bytes_max: usize,
    /// Most transfers in one bulk (400 above).
    #[arg(long, env = "LEDGER_TRANSFERS_PER_BULK_MAX", default_value_t = Limits::default().transfers_per_bulk_max)]
    transfers_per_bulk_max: usize,
    /// Largest page of account history (`limit`).
    #[arg(long, env = "LEDGER_PAGE_SIZE_MAX", default_value_t = Limits::default().page_size_max)]
    page_size_max: u32,
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
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
    let settings = |limits: Limits| Settings {
        iban_check: cli.iban_check,
        limits,
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
                ..Limits::default()
            };
            anyhow::ensure!(
                limits.page_size_max >= 1,
                "--page-size-max must be at least 1"
            );
            let ledger = Arc::new(Ledger::new(pool, settings(limits)));
            serve(ledger, args.listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Accounts(command) => {
            let ledger = Ledger::new(pool, settings(Limits::default()));
            accounts(&ledger, command).await
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<PgPool> {
    let options = match &cli.database_url {
        Some(url) => {
            PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?
        }
        None => {
            let root = cli.data_dir.clone().unwrap_or_else(pg::default_root);
            let cluster = tokio::task::spawn_blocking(move || Cluster::ensure(&root)).await??;
            cluster.connect_options("ledger")
        }
    };
    let settings = PoolSettings {
        connections_max: cli.pool_size,
        acquire_timeout: Duration::from_secs(5),
    };
    db::connect(options, &settings)
        .await
        .context("connecting to PostgreSQL")
}

async fn serve(ledger: Arc<Ledger>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "serving");
    // A machine-readable line on stdout, for scripts and tests that start
    // the server on port 0.
    println!("ledger listening on http://{address}");
    let app = crate::http::router(ledger);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
                    let key = IdempotencyKey::parse(key.as_bytes())?;
                    context.idempotency = Some((
                        key,
                        request_hash("POST", &path, body.to_string().as_bytes()),
                    ));
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
        Err(AppError::Internal(error)) => Err(error),
    }
}
