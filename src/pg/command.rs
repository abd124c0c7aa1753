//! Running the server programs and describing their failures: exit status,
//! output, and the last lines of the server log.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, ExitStatus, Output};

use super::error::{PgError, io_err};

/// Runs `cmd`, turning a failure into an error with its output.
pub(super) fn run(mut cmd: Command, program: &str) -> Result<Output, PgError> {
    let out = cmd.output().map_err(io_err(format!("cannot run {program}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(PgError::Command {
            program: program.into(),
            status: describe_status(out.status),
            output: format_output(&out),
        })
    }
}

pub(super) fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// A command's stdout and stderr, each line indented, after a newline; empty
/// when both are.
pub(super) fn format_output(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("\n  {l}"))
        .collect()
}

/// The last `lines` lines of the log (reading at most its last 64 KiB).
pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            tail.iter().map(|l| format!("  {l}\n")).collect()
        }
        Err(e) => format!("  (cannot read it: {e})\n"),
    }
}
