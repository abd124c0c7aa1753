//! `ledger serve`: its flags, the first admin key of the embedded
//! default, and binding the listeners for [`crate::server::run`].

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::builder::TypedValueParser;
use sqlx::PgPool;

use crate::app::auth::{self, AuthMode};
use crate::app::{GroupCommitSettings, Ledger, Limits, Settings};
use crate::replicas::{ReplicaSettings, Replicas};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
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
    /// Most commands decided and appended together in one group-commit batch (across accounts).
    #[arg(long, env = "LEDGER_BATCH_COMMANDS_MAX", default_value_t = GroupCommitSettings::default().batch_commands_max,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    batch_commands_max: usize,
    /// Most transfers in one group-commit batch (bounds its memory; a larger bulk is a batch of its own).
    #[arg(long, env = "LEDGER_BATCH_TRANSFERS_MAX", default_value_t = GroupCommitSettings::default().batch_transfers_max,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    batch_transfers_max: usize,
    /// Most estimated bytes of event payload in one group-commit batch (a larger command is a batch of its own).
    #[arg(long, env = "LEDGER_BATCH_BYTES_MAX", default_value_t = GroupCommitSettings::default().batch_bytes_max,
          value_parser = clap::value_parser!(u32).range(1_024..=1_073_741_824).map(|n| n as usize))]
    batch_bytes_max: usize,
    /// Group-commit lanes committing at the same time; each account belongs to one.
    #[arg(long, env = "LEDGER_BATCH_LANES", default_value_t = GroupCommitSettings::default().lanes,
          value_parser = clap::value_parser!(u32).range(1..=1_024).map(|n| n as usize))]
    batch_lanes: usize,
    /// Hours an idempotency key is remembered (at least 24).
    #[arg(long, env = "LEDGER_IDEMPOTENCY_TTL_HOURS", default_value_t = 168,
          value_parser = clap::value_parser!(u64).range(crate::app::idempotency::TTL_HOURS_MIN..=87_600))]
    idempotency_ttl_hours: u64,
    /// Milliseconds a query with `min_position` waits for that position to be reflected before a 503.
    #[arg(long, env = "LEDGER_MIN_POSITION_WAIT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    min_position_wait_ms: u64,
    /// Most API requests (HTTP and gRPC together) in flight; past it, a 503 with Retry-After.
    #[arg(long, env = "LEDGER_IN_FLIGHT_MAX", default_value_t = Limits::default().in_flight_max,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    in_flight_max: usize,
    /// Most open event subscriptions (gRPC SubscribeEvents); past it, UNAVAILABLE.
    #[arg(long, env = "LEDGER_SUBSCRIPTIONS_MAX", default_value_t = Limits::default().subscriptions_max,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    subscriptions_max: usize,
    /// Most commands waiting to be committed in one group-commit lane; past it, a 503 with Retry-After.
    #[arg(long, env = "LEDGER_QUEUED_COMMANDS_MAX", default_value_t = GroupCommitSettings::default().queued_commands_max,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000).map(|n| n as usize))]
    queued_commands_max: usize,
    /// Microseconds a batch leader on a contended account waits for more commands (0: never wait).
    #[arg(long, env = "LEDGER_BATCH_WAIT_US", default_value_t = GroupCommitSettings::default().batch_wait.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    batch_wait_us: u64,
    /// Group-commit batches of one lane in flight at once: the next is decided while the one before commits (1: one at a time).
    #[arg(long, env = "LEDGER_BATCH_PIPELINE_DEPTH", default_value_t = GroupCommitSettings::default().pipeline_depth,
          value_parser = clap::value_parser!(u32).range(1..=16).map(|n| n as usize))]
    batch_pipeline_depth: usize,
    /// Streaming standbys that serve the queries (one URL or a comma-separated list); commands always go to DATABASE_URL.
    #[arg(long, env = "LEDGER_READ_DATABASE_URL", hide_env_values = true)]
    read_database_url: Option<String>,
    /// A read replica more than this many bytes of WAL behind the primary is taken out of rotation.
    #[arg(long, env = "LEDGER_READ_REPLICA_MAX_LAG_BYTES", default_value_t = ReplicaSettings::default().max_lag_bytes)]
    read_replica_max_lag_bytes: u64,
    /// Milliseconds a query with `min_position` waits on a read replica before the primary answers it.
    #[arg(long, env = "LEDGER_READ_REPLICA_WAIT_MS", default_value_t = ReplicaSettings::default().wait.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    read_replica_wait_ms: u64,
    /// Milliseconds between two health checks of each read replica.
    #[arg(long, env = "LEDGER_READ_REPLICA_CHECK_MS", default_value_t = ReplicaSettings::default().check_interval.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    read_replica_check_ms: u64,
    /// With LEDGER_NATS_URL, the server relays the feed to NATS JetStream
    /// too (as `ledger relay` does).
    #[command(flatten)]
    relay: super::relay::RelayArgs,
}

/// Where the gRPC API listens, if anywhere.
#[derive(Debug, Clone, Copy)]
pub(super) enum GrpcListen {
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

/// `ledger serve`: the settings from the flags, the first admin key of
/// the embedded default, then the server until SIGTERM or SIGINT.
pub(super) async fn run(
    pool: PgPool,
    base: Settings,
    args: ServeArgs,
    embedded: bool,
    connection: &super::Connection,
) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        body_bytes_max: args.body_bytes_max,
        transfers_per_bulk_max: args.transfers_per_bulk_max,
        page_size_max: args.page_size_max,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        in_flight_max: args.in_flight_max,
        subscriptions_max: args.subscriptions_max,
        ..Limits::default()
    };
    anyhow::ensure!(limits.page_size_max >= 1, "--page-size-max must be at least 1");
    let settings = Settings {
        auth: args.auth,
        limits,
        group_commit: GroupCommitSettings {
            batch_commands_max: args.batch_commands_max,
            batch_transfers_max: args.batch_transfers_max,
            batch_bytes_max: args.batch_bytes_max,
            lanes: args.batch_lanes,
            batch_wait: Duration::from_micros(args.batch_wait_us),
            queued_commands_max: args.queued_commands_max,
            pipeline_depth: args.batch_pipeline_depth,
        },
        idempotency_ttl: Duration::from_secs(args.idempotency_ttl_hours * 3600),
        min_position_wait: Duration::from_millis(args.min_position_wait_ms),
        ..base
    };
    let replicas = match &args.read_database_url {
        None => Replicas::none(),
        Some(urls) => Replicas::connect_lazy(
            urls,
            |options| connection.configure(options),
            &connection.pool,
            ReplicaSettings {
                max_lag_bytes: args.read_replica_max_lag_bytes,
                wait: Duration::from_millis(args.read_replica_wait_ms),
                check_interval: Duration::from_millis(args.read_replica_check_ms),
            },
        )?,
    };
    let mut ledger = Ledger::new(pool, settings).with_replicas(replicas);
    if let Some(relay) = args.relay.settings()? {
        ledger = ledger.with_relay(relay);
    }
    let ledger = Arc::new(ledger);
    announce_auth(&ledger, args.auth, embedded).await?;
    serve(ledger, args.listen, args.grpc_listen).await?;
    Ok(ExitCode::SUCCESS)
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

/// Binds the listeners, says where on stdout, and runs the server until
/// SIGTERM or SIGINT.
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
    crate::server::run(ledger, listener, grpc_listener, crate::server::shutdown_signal()).await
}
