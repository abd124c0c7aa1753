//! Process inspection: whether the cluster's server is running, from `pg_ctl
//! status` checked against postmaster.pid and the process that file names.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::command::{describe_status, format_output};
use super::error::{PgError, io_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Running,
    Stopped,
}

/// What the PID recorded in postmaster.pid is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Process {
    /// Our running postmaster (or, where we cannot tell, presumed to be).
    Postmaster,
    /// Exiting, or exited but not yet reaped by its parent.
    Zombie,
    /// No such process.
    Gone,
    /// Someone else's process that got the same PID.
    Other,
}

/// Looks `pid` up in /proc: its state, and its working directory, which for a
/// postmaster is its data directory.
#[cfg(target_os = "linux")]
pub(super) fn inspect_process(pid: i32, data: &Path) -> Process {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Process::Gone;
    };
    // "pid (comm) S ...": comm may itself contain ") ", so split at the last one.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X')) {
        return Process::Zombie;
    }
    match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) if fs::canonicalize(data).is_ok_and(|data| data == cwd) => Process::Postmaster,
        Ok(_) => Process::Other,
        // Closed to us: another user's process, or the server user's own
        // when we are root without CAP_SYS_PTRACE (a default container).
        // Never take a live server for gone: what /proc still shows (its
        // owner and name) decides.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::MetadataExt;
            let owner = fs::metadata(format!("/proc/{pid}")).map(|m| m.uid()).ok();
            let data_owner = fs::metadata(data).map(|m| m.uid()).ok();
            let name = stat
                .split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map(|(name, _)| name);
            unreadable_cwd(owner, data_owner, name)
        }
        // Its stat is there but its cwd is not: it is exiting (killed, not
        // yet a zombie). Still a PID the server's own check would take for
        // a running postmaster: wait for it as for a zombie.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Process::Zombie,
        Err(_) => Process::Postmaster,
    }
}

/// A process whose working directory we may not read: presumed to be the
/// postmaster when it runs as the data directory's owner under the name
/// `postgres` (or when we cannot tell), someone else's otherwise.
fn unreadable_cwd(owner: Option<u32>, data_owner: Option<u32>, name: Option<&str>) -> Process {
    match (owner, data_owner, name) {
        (Some(owner), Some(data_owner), Some(name)) if owner != data_owner || name != "postgres" => Process::Other,
        _ => Process::Postmaster,
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn inspect_process(_pid: i32, _data: &Path) -> Process {
    Process::Postmaster
}

impl Cluster {
    pub(super) fn status(&self) -> Result<Status, PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["status", "-D"]).arg(&self.data);
        let out = cmd.output().map_err(io_err("cannot run pg_ctl status"))?;
        match out.status.code() {
            Some(0) => self.check_running(),
            // 3: not running (a stale postmaster.pid counts as not running; the
            // server removes it when it starts).
            Some(3) => Ok(Status::Stopped),
            _ => Err(PgError::Command {
                program: "pg_ctl status".into(),
                status: describe_status(out.status),
                output: format_output(&out),
            }),
        }
    }

    /// pg_ctl (like the server's own check of an existing postmaster.pid) takes
    /// any process with the recorded PID for the running postmaster. Two cases
    /// fool it: a killed postmaster that its parent (init, since pg_ctl has
    /// exited) has not reaped yet -- seconds on some systems, forever under a
    /// PID 1 that never reaps -- and a PID reused by another process, e.g.
    /// after a reboot or container restart. In both, the server would refuse
    /// to start ("lock file already exists").
    fn check_running(&self) -> Result<Status, PgError> {
        let Some(pid) = self.recorded_pid() else {
            return Ok(Status::Running);
        };
        match inspect_process(pid, &self.data) {
            Process::Postmaster => Ok(Status::Running),
            Process::Gone => Ok(Status::Stopped),
            Process::Zombie => {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    if matches!(inspect_process(pid, &self.data), Process::Gone) {
                        return Ok(Status::Stopped);
                    }
                }
                self.remove_stale_lock_files(pid)?;
                Ok(Status::Stopped)
            }
            Process::Other => {
                self.remove_stale_lock_files(pid)?;
                Ok(Status::Stopped)
            }
        }
    }

    /// The postmaster's PID from the first line of postmaster.pid.
    fn recorded_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Removes postmaster.pid and the socket's lock file, both naming `pid`,
    /// once we know that `pid` is not the postmaster.
    fn remove_stale_lock_files(&self, pid: i32) -> Result<(), PgError> {
        let pid_file = self.data.join("postmaster.pid");
        let text = fs::read_to_string(&pid_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        if let (Some(port), Some(dir)) = (lines.get(3), lines.get(4))
            && !dir.is_empty()
        {
            let socket_lock = Path::new(dir).join(format!(".s.PGSQL.{port}.lock"));
            let names_pid = fs::read_to_string(&socket_lock)
                .is_ok_and(|t| t.lines().next().map(str::trim) == Some(&pid.to_string()));
            if names_pid {
                let _ = fs::remove_file(&socket_lock);
            }
        }
        tracing::warn!(pid, file = %pid_file.display(), "removing a stale postmaster.pid");
        match fs::remove_file(&pid_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("cannot remove {}", pid_file.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// For a server that is already running, use the port and socket directory
    /// it actually has (postmaster.pid lines 4 and 5), which differ from ours if
    /// it was started by hand or before the directory was moved.
    pub(super) fn adopt_running_settings(&mut self) -> Result<(), PgError> {
        let path = self.data.join("postmaster.pid");
        let text = fs::read_to_string(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        let lines: Vec<&str> = text.lines().collect();
        let port = lines.get(3).and_then(|l| l.trim().parse().ok());
        let socket_dir = lines.get(4).map(|l| l.trim()).filter(|l| !l.is_empty());
        match (port, socket_dir) {
            (Some(port), Some(dir)) => {
                self.port = port;
                self.socket_dir = PathBuf::from(dir);
                Ok(())
            }
            _ => Err(PgError::Unusable(format!(
                "the PostgreSQL server running in {} has no Unix socket (see {}); stop it and try again",
                self.data.display(),
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_postgres_of_the_data_directorys_owner_is_presumed_running() {
        // Root without CAP_SYS_PTRACE, the server user's live postmaster.
        assert_eq!(
            unreadable_cwd(Some(105), Some(105), Some("postgres")),
            Process::Postmaster
        );
        // Nothing to go by: never remove a lock file on a guess.
        assert_eq!(unreadable_cwd(None, Some(105), Some("postgres")), Process::Postmaster);
        assert_eq!(unreadable_cwd(Some(105), None, None), Process::Postmaster);
        // Another user's process, or another program, that got the PID.
        assert_eq!(unreadable_cwd(Some(1000), Some(105), Some("postgres")), Process::Other);
        assert_eq!(unreadable_cwd(Some(105), Some(105), Some("sshd")), Process::Other);
    }

    #[test]
    fn our_own_live_process_is_no_postmaster_of_another_directory() {
        let me = std::process::id() as i32;
        let elsewhere = std::env::temp_dir();
        assert_eq!(inspect_process(me, &elsewhere), Process::Other);
        assert_eq!(inspect_process(i32::MAX, &elsewhere), Process::Gone);
    }
}
