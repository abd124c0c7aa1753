//! Throw-away clusters for the test suite ([`Cluster::temporary`]) and the
//! watchdog that stops and deletes each one once the process that made it has
//! exited.
//!
//! Nothing on the `ledger` binary's path uses this file. It cannot be
//! `#[cfg(test)]`: the integration tests (`tests/api`) and the benches are
//! crates of their own that call `ledger::pg::Cluster::temporary()`.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::binaries::find_bin_dir;
use super::cluster::Cluster;
use super::error::{PgError, io_err};
use super::server_user::{ServerUser, give_to_server, make_traversable};

impl Cluster {
    /// Throw-away cluster in a fresh directory under [`std::env::temp_dir`],
    /// initialised and started, with no database but the `postgres` maintenance
    /// database (and `template0`/`template1`).
    ///
    /// It is stopped and its directory removed once the current process has
    /// exited (however it exits) by a detached watchdog, since Rust runs no
    /// destructors for statics. Durability is switched off (`fsync=off` ...):
    /// for tests only.
    pub fn temporary() -> Result<Cluster, PgError> {
        let bin_dir = find_bin_dir().ok_or(PgError::NoBinaries)?;
        let user = ServerUser::detect()?;

        let tmp = std::env::temp_dir();
        let base = fs::canonicalize(&tmp).map_err(io_err(format!("cannot resolve {}", tmp.display())))?;
        let root = loop {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let candidate = base.join(format!("ledger-test-{}", &id[..12]));
            match DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(format!("cannot create {}", candidate.display()))(e)),
            }
        };

        let cluster = Cluster::new(root, bin_dir, user, true);
        // Before anything else, so that a failed initdb is cleaned up too.
        cluster.spawn_watchdog()?;
        give_to_server(&cluster.root, &cluster.user)?;
        make_traversable(&cluster.root, &cluster.user)?;
        cluster.initdb(&cluster.data)?;
        cluster.start()?;
        Ok(cluster)
    }

    /// Stops the cluster that [`Cluster::ensure`] or [`Cluster::standby_of`]
    /// is about to make under `root` (created here if missing) and removes
    /// its directory once the current process has exited, however it exits
    /// (the same watchdog as [`Cluster::temporary`]'s): for a test's own
    /// cluster, which a test run killed midway (Ctrl-C, a timeout, output
    /// piped into `head`) would otherwise leave running, since no destructor
    /// runs then. Asked for before `ensure` or `standby_of`, so a run killed
    /// during their initdb or base backup is cleaned up too.
    pub fn remove_at_exit(root: &Path) -> Result<(), PgError> {
        let bin_dir = find_bin_dir().ok_or(PgError::NoBinaries)?;
        let user = ServerUser::detect()?;
        fs::create_dir_all(root).map_err(io_err(format!("cannot create {}", root.display())))?;
        // The path `ensure` and `standby_of` will use: they canonicalize too.
        let root = fs::canonicalize(root).map_err(io_err(format!("cannot resolve {}", root.display())))?;
        Cluster::new(root, bin_dir, user, false).spawn_watchdog()
    }

    /// Starts a detached shell that waits for this process to exit, then stops
    /// the server and removes the cluster's directories.
    ///
    /// It learns of the exit through a pipe: it reads its stdin, whose write end
    /// only this process holds (std opens pipes close-on-exec, so no child
    /// inherits it), and gets end-of-file when the kernel closes it, however this
    /// process ends. Unlike polling `kill -0 <pid>`, this is immediate and
    /// immune to PID reuse. It runs in its own process group so that signals
    /// sent to ours (Ctrl-C, cargo killing a test run) do not reach it.
    fn spawn_watchdog(&self) -> Result<(), PgError> {
        // Write ends of the watchdogs' pipes, held until the process exits.
        static WATCHDOG_PIPES: Mutex<Vec<io::PipeWriter>> = Mutex::new(Vec::new());

        const SCRIPT: &str = r#"
trap '' HUP
cat >/dev/null
pidfile="$2/postmaster.pid"
# The process may have died while the server was still starting.
[ -f "$pidfile" ] || sleep 2
if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile")
    # Fast shutdown, then wait up to 10 s before killing it outright.
    kill -INT "$pid" 2>/dev/null
    i=0
    # It removes postmaster.pid last; kill -0 alone would also wait for it to be
    # reaped, which init may take its time over.
    while [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i+1))
    done
    # Only if it has not exited: after that the PID may belong to anyone.
    [ -f "$pidfile" ] && kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$1" "$3"
"#;
        let (reader, writer) = io::pipe().map_err(io_err("cannot create a pipe"))?;
        // The socket directory needs removing only if it is outside the root.
        let extra: &OsStr = if self.socket_dir.starts_with(&self.root) {
            OsStr::new("")
        } else {
            self.socket_dir.as_os_str()
        };
        Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("ledger-pg-watchdog")
            .arg(&self.root)
            .arg(&self.data)
            .arg(extra)
            .current_dir("/")
            .stdin(reader)
            // Not our stdout/stderr: a pipe held open by the watchdog would keep
            // e.g. `cargo test | tee` waiting after the tests are done.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("cannot start the clean-up watchdog (/bin/sh)"))?;
        // The `Child` is dropped without waiting: that neither kills nor reaps it.
        WATCHDOG_PIPES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(writer);
        Ok(())
    }
}
