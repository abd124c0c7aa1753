//! The load benchmark's report: the header of machine facts, the table of
//! scenarios, their errors, and the ratios next to the goals, plus the
//! small formatters they share with the main.

use std::fmt::Write as _;

use super::BASELINES;
use super::cpu;
use super::driver::Measured;
use super::postgres::{self, Postgres};

/// The goals the ratios are printed next to.
const GOAL_HOT_VS_SEED: f64 = 10.0;
/// Issue #13: spread over 1,000 accounts against the seed pattern on 1,000 rows.
const GOAL_SPREAD_VS_SEED: f64 = 2.0;
/// Issue #13: bulks of 100 against the insert ceiling for transfer-shaped rows.
const GOAL_BULK100_VS_RAW: f64 = 0.6;
/// Issue #13: throughput should not depend on where the load falls.
const GOAL_HOT_SPREAD_GAP_PERCENT: f64 = 20.0;
const GOAL_OPEN_P99_MS: f64 = 10.0;
const GOAL_RSS_MIB: f64 = 150.0;

/// One line of the table.
pub(super) struct Row {
    pub(super) name: &'static str,
    pub(super) label: String,
    pub(super) connections: Option<usize>,
    pub(super) measured: Option<Measured>,
    /// The server's largest sampled VmRSS during the scenario, and its VmHWM
    /// after it, in KiB.
    pub(super) rss_max_kib: Option<u64>,
    pub(super) hwm_kib: Option<u64>,
    /// Cores used by the load generator, the server and PostgreSQL over the
    /// scenario (warm-up included).
    pub(super) cpu: Option<cpu::Use>,
}

/// The header: machine, PostgreSQL, durability settings, method.
pub(super) async fn machine_facts(out: &mut String, postgres: &Postgres) -> anyhow::Result<()> {
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

pub(super) fn table(out: &mut String, rows: &[Row]) {
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
        let (transfers, requests, p50, p99, p999, non_2xx) = match &row.measured {
            Some(m) => (
                thousands(m.transfers_per_second()),
                thousands(m.requests_per_second()),
                ms(m.latency_ms(0.5)),
                ms(m.latency_ms(0.99)),
                ms(m.latency_ms(0.999)),
                (m.non_2xx() + m.failed).to_string(),
            ),
            None => Default::default(),
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
pub(super) fn errors(out: &mut String, rows: &[Row]) {
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

pub(super) fn ratios(out: &mut String, rows: &[Row]) {
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
    match (transfers("spread"), transfers("seed-spread")) {
        (Some(spread), Some(seed)) if seed > 0.0 => {
            let ratio = spread / seed;
            let _ = writeln!(
                out,
                "{:<52} {:>9.2}×   ≥ {GOAL_SPREAD_VS_SEED}×     {}",
                "spread transfers/s ÷ seed-pattern spread",
                ratio,
                verdict(ratio >= GOAL_SPREAD_VS_SEED)
            );
        }
        _ => {
            let _ = writeln!(out, "{:<52} {:>10}", "spread transfers/s ÷ seed-pattern spread", "n/a");
        }
    }
    match (transfers("hot"), transfers("spread")) {
        (Some(hot), Some(spread)) if hot > 0.0 && spread > 0.0 => {
            let gap = (hot - spread).abs() / hot.max(spread);
            let _ = writeln!(
                out,
                "{:<52} {:>8.0} %   ≤ {GOAL_HOT_SPREAD_GAP_PERCENT} %     {}",
                "hot vs spread: gap ÷ the larger",
                gap * 100.0,
                verdict(gap * 100.0 <= GOAL_HOT_SPREAD_GAP_PERCENT)
            );
        }
        _ => {
            let _ = writeln!(out, "{:<52} {:>10}", "hot vs spread: gap ÷ the larger", "n/a");
        }
    }
    match (transfers("bulk100"), transfers("insert-ceiling")) {
        (Some(bulk), Some(raw)) if raw > 0.0 => {
            let ratio = bulk / raw;
            let _ = writeln!(
                out,
                "{:<52} {:>9.2}×   ≥ {GOAL_BULK100_VS_RAW}×     {}",
                "bulks-of-100 transfers/s ÷ insert ceiling rows/s",
                ratio,
                verdict(ratio >= GOAL_BULK100_VS_RAW)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "{:<52} {:>10}",
                "bulks-of-100 transfers/s ÷ insert ceiling rows/s", "n/a"
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
pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

pub(super) fn ms(value: Option<f64>) -> String {
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
pub(super) fn thousands(value: f64) -> String {
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
pub(super) fn strip_ansi(text: &str) -> String {
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
pub(super) fn shorten(text: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= head + tail {
        return text.to_owned();
    }
    let start: String = chars[..head].iter().collect();
    let end: String = chars[chars.len() - tail..].iter().collect();
    format!("{start} … {end}")
}
