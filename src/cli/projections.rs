//! `ledger projections rebuild|status`, and the progress bar long
//! commands show.

use std::process::ExitCode;

use clap::Subcommand;
use sqlx::PgPool;

#[derive(Debug, Subcommand)]
pub(super) enum ProjectionsCommand {
    /// Rebuild projections (all, or those named) from the log into fresh
    /// tables and swap them in atomically, while the service keeps serving.
    Rebuild {
        /// balances, transactions
        names: Vec<String>,
    },
    /// Each projection's position and lag.
    Status,
}

/// `ledger projections rebuild|status`.
pub(super) async fn run(pool: &PgPool, command: ProjectionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProjectionsCommand::Rebuild { names } => rebuild(pool, &names).await,
        ProjectionsCommand::Status => status(pool).await,
    }
}

/// Each projection's position, lag and last rebuild, as a table.
async fn status(pool: &PgPool) -> anyhow::Result<ExitCode> {
    println!(
        "{:<14} {:<7} {:>12} {:>12} {:>10}  last rebuild",
        "projection", "mode", "position", "log", "lag"
    );
    let statuses = crate::projections::status(pool).await?;
    let log_position = statuses.first().map_or(0, |s| s.log_position);
    for status in statuses {
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
    // Not a read model, but it follows the log the same way.
    let (position, lag) = crate::posting::lag(pool).await?;
    println!(
        "{:<14} {:<7} {:>12} {:>12} {:>10}  -",
        "posting", "process", position, log_position, lag
    );
    if let Some((position, lag)) = crate::relay::lag(pool).await? {
        println!(
            "{:<14} {:<7} {:>12} {:>12} {:>10}  -",
            "relay:nats", "process", position, log_position, lag
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
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
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|(name, seconds)| format!("{name} {seconds:.2} s"))
        .collect();
    println!(
        "rebuilt {} from {} events in {:.2} s ({:.0} events/s); {} applied during the swap ({})",
        report.projections.join(", "),
        report.events,
        report.seconds,
        rate,
        report.events_during_swap,
        phases.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
