//! `ledger relay`: the feed published to NATS JetStream ([`crate::relay`])
//! until SIGTERM or SIGINT; its settings are shared with `serve`, which
//! runs the same relay as a task when `LEDGER_NATS_URL` is set.

use std::process::ExitCode;

use clap::Args;
use sqlx::PgPool;

use crate::relay::RelaySettings;

#[derive(Debug, Args)]
pub(super) struct RelayArgs {
    /// NATS server URL (or a comma-separated list) of the JetStream the
    /// feed is published to, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "LEDGER_NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// JetStream stream the events go to (created, with subjects
    /// `<prefix>.>`, when missing).
    #[arg(long, env = "LEDGER_NATS_STREAM", default_value = "LEDGER")]
    nats_stream: String,
    /// Each event is published on `<prefix>.<type>.<stream_id>`.
    #[arg(long, env = "LEDGER_NATS_SUBJECT_PREFIX", default_value = "ledger.events")]
    nats_subject_prefix: String,
}

impl RelayArgs {
    /// The relay's settings, `None` without a NATS URL.
    pub(super) fn settings(&self) -> anyhow::Result<Option<RelaySettings>> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        let settings = RelaySettings {
            url: url.clone(),
            stream: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
        };
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(settings))
    }
}

/// `ledger relay`: relays until a signal; a failure (NATS or PostgreSQL
/// away) is retried, not fatal.
pub(super) async fn run(pool: PgPool, args: RelayArgs) -> anyhow::Result<ExitCode> {
    let settings = args
        .settings()?
        .ok_or_else(|| anyhow::anyhow!("ledger relay needs LEDGER_NATS_URL (or --nats-url)"))?;
    tokio::select! {
        () = crate::relay::run(pool, settings) => {}
        () = crate::server::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}
