//! The load benchmark's scenarios (the table in `load.rs`'s opening
//! comment) and its configuration from the environment.

use std::time::Duration;

use anyhow::bail;

use super::driver::{Load, Timing};
use super::{OPEN_CONNECTIONS, OPEN_RATE};

pub(super) const WARMUP: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_SECONDS: u64 = 10;

/// A scenario against the ledger server.
pub(super) struct LedgerScenario {
    pub(super) name: &'static str,
    pub(super) label: &'static str,
    pub(super) connections: usize,
    pub(super) transfers_per_bulk: usize,
    /// Hot: the one account; spread: uniform over the 1,000.
    pub(super) spread: bool,
    pub(super) load: Load,
    /// Over gRPC (`TransferBulk`) instead of HTTP.
    pub(super) grpc: bool,
}

pub(super) const LEDGER_SCENARIOS: [LedgerScenario; 6] = [
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

/// Scenarios of their own shape (not a closed or open loop of one body).
pub(super) const OTHERS: [&str; 2] = ["payroll", "pain001"];

/// Run only when named in `LEDGER_BENCH_SCENARIOS` (it takes ten minutes):
/// the soak, an open loop on the 1,000 accounts reported minute by minute.
pub(super) const ON_REQUEST: [&str; 1] = ["soak"];

pub(super) const BASELINES: [&str; 3] = ["seed-hot", "seed-spread", "insert-ceiling"];

pub(super) struct Config {
    pub(super) timing: Timing,
    pub(super) selected: Vec<String>,
    pub(super) idempotency_keys: bool,
}

impl Config {
    pub(super) fn from_env() -> anyhow::Result<Config> {
        let seconds = match std::env::var("LEDGER_BENCH_SECONDS") {
            Ok(text) => match text.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 3600.0 => s,
                _ => bail!("LEDGER_BENCH_SECONDS must be a number of seconds in (0, 3600], not {text:?}"),
            },
            Err(_) => DEFAULT_SECONDS as f64,
        };
        let known: Vec<&str> = LEDGER_SCENARIOS
            .iter()
            .map(|s| s.name)
            .chain(OTHERS)
            .chain(BASELINES)
            .chain(ON_REQUEST)
            .collect();
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
            _ => known
                .iter()
                .filter(|n| !ON_REQUEST.contains(n))
                .map(|n| (*n).to_owned())
                .collect(),
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

    pub(super) fn runs(&self, name: &str) -> bool {
        self.selected.iter().any(|n| n == name)
    }
}
