//! The real `ledger serve` (the release binary cargo builds for this bench),
//! and its memory as the kernel reports it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long `ledger serve` may take to migrate and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the resident set size is sampled during a scenario.
const RSS_INTERVAL: Duration = Duration::from_millis(100);

/// A running `ledger serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    /// Where the gRPC API listens.
    pub grpc_address: SocketAddr,
    /// The admin key every request carries.
    pub api_key: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `binary serve` on an ephemeral loopback port against
    /// `database_url`, its stderr (the log) going to `log`. Other `LEDGER_*`
    /// settings in our environment (e.g. `LEDGER_POOL_SIZE`) pass through.
    pub fn start(binary: &Path, database_url: &str, log: &Path) -> anyhow::Result<Server> {
        // An admin key for every request, made the way an operator would.
        let created = Command::new(binary)
            .args(["keys", "create", "--admin", "--name", "load benchmark"])
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("cannot run {} keys create", binary.display()))?;
        if !created.status.success() {
            bail!(
                "ledger keys create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let api_key = String::from_utf8_lossy(&created.stdout).trim().to_owned();
        super::http::use_api_key(&api_key)?;
        let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(binary)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("LEDGER_LISTEN", "127.0.0.1:0")
            .env("LEDGER_GRPC_LISTEN", "127.0.0.1:0")
            .env("LEDGER_IBAN_CHECK", "full")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {} serve", binary.display()))?;

        // Read stdout on a thread of its own until it closes, so the server
        // never blocks on a full pipe; pass on the address line.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The gRPC line comes first, the HTTP one when both are bound.
            let mut grpc = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("ledger gRPC listening on ") {
                    grpc = address.trim_start_matches("http://").to_owned();
                }
                if let Some(address) = line.strip_prefix("ledger listening on ") {
                    let _ = sender.send((address.trim_start_matches("http://").to_owned(), grpc.clone()));
                }
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Server {
            child,
            address: unbound,
            grpc_address: unbound,
            api_key,
            log: log.to_path_buf(),
        };
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok((address, grpc)) => {
                server.address = address
                    .parse()
                    .with_context(|| format!("ledger serve printed an odd address: {address}"))?;
                server.grpc_address = grpc
                    .parse()
                    .with_context(|| format!("ledger serve printed an odd gRPC address: {grpc:?}"))?;
                Ok(server)
            }
            Err(_) => {
                let exited = server.child.try_wait().ok().flatten();
                bail!(
                    "ledger serve did not print its address within {START_TIMEOUT:?} ({}); its log:\n{}",
                    exited.map_or("still running".into(), |status| format!("exited: {status}")),
                    log_tail(log, 30)
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|status| status.to_string())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `/proc/<pid>/status` field in KiB: `VmRSS` (resident now) or `VmHWM`
/// (the peak resident set over the process's life).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples `VmRSS` every [`RSS_INTERVAL`] until stopped; VmHWM alone cannot
/// tell one scenario's peak from an earlier one's.
pub struct RssSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max = None::<u64>;
            let mut ticks = tokio::time::interval(RSS_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Some(kib) = status_kib(pid, "VmRSS") {
                            max = Some(max.map_or(kib, |m| m.max(kib)));
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            max
        });
        RssSampler { stop, task }
    }

    /// The largest sample, in KiB.
    pub async fn finish(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

/// The last `lines` lines of a log file, indented.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..]
                .iter()
                .map(|l| format!("    {l}\n"))
                .collect()
        }
        Err(error) => format!("    (cannot read {}: {error})\n", path.display()),
    }
}
