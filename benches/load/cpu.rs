//! Where the CPU went during a scenario: the load generator (this process),
//! the ledger server, and PostgreSQL (the postmaster and its children), from
//! /proc. On a 2-core machine that the three share, this says how much of
//! a figure is the client's own cost.

use std::time::Instant;

/// /proc reports CPU time in USER_HZ ticks, 100 per second on every
/// mainstream Linux configuration.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks used so far by each party.
pub struct Sample {
    at: Instant,
    generator: Option<u64>,
    server: Option<u64>,
    postgres: Option<u64>,
}

/// Cores busy on average between two samples (1.0 = one core all the time).
#[derive(Clone, Copy, Debug)]
pub struct Use {
    pub generator: Option<f64>,
    pub server: Option<f64>,
    pub postgres: Option<f64>,
}

impl Sample {
    pub fn take(server: Option<u32>, postmaster: Option<u32>) -> Sample {
        Sample {
            at: Instant::now(),
            generator: ticks("self", false),
            server: server.and_then(|pid| ticks(&pid.to_string(), false)),
            postgres: postmaster.and_then(postgres_ticks),
        }
    }

    pub fn since(&self, earlier: &Sample) -> Use {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let cores =
            |now: Option<u64>, then: Option<u64>| Some(now?.saturating_sub(then?) as f64 / TICKS_PER_SECOND / secs);
        Use {
            generator: cores(self.generator, earlier.generator),
            server: cores(self.server, earlier.server),
            postgres: cores(self.postgres, earlier.postgres),
        }
    }
}

/// The fields of /proc/<pid>/stat after the command name (which may itself
/// hold spaces and parentheses): index 0 is the state, 1 the parent's pid,
/// 11 and 12 utime and stime, 13 and 14 those of waited-for children.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // The state, a letter, parses as 0 and keeps its place in the numbering.
    Some(
        rest.split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of one process, plus those of its exited, reaped children
/// when `children`.
fn ticks(pid: &str, children: bool) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let own = fields.get(11)? + fields.get(12)?;
    Some(if children {
        own + fields.get(13)? + fields.get(14)?
    } else {
        own
    })
}

/// The postmaster's CPU (with that of backends that have exited) plus that
/// of its live children: the backends, the WAL writer, the checkpointer.
fn postgres_ticks(postmaster: u32) -> Option<u64> {
    let mut total = ticks(&postmaster.to_string(), true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        if let Some(fields) = stat_fields(pid)
            && fields.get(1) == Some(&u64::from(postmaster))
        {
            total += fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
        }
    }
    Some(total)
}
