//! A project-local PostgreSQL cluster run with the machine's own server binaries.
//!
//! Two uses:
//!
//! * [`Cluster::ensure`]: the `ledger` binary's embedded default database when no
//!   `DATABASE_URL` is set. The cluster lives under a directory of the project
//!   (`<cwd>/.ledger` by default, see [`default_root`]), is created on first use,
//!   started when it is not running, and left running when the process exits.
//! * [`Cluster::temporary`]: a throw-away cluster for the test suite, stopped and
//!   deleted by a detached watchdog once the process that created it has exited.
//!
//! Layout under the cluster's root directory:
//!
//! ```text
//! <root>/data          PGDATA; data/ledger.conf holds the settings we manage
//! <root>/run           the Unix socket directory (the server listens on nothing else)
//! <root>/postgres.log  the server log
//! <root>/lock          serialises concurrent `ensure` calls
//! ```
//!
//! `initdb` and `postgres` refuse to run as root, so when this process is root the
//! server programs run as the `postgres` OS user and the directories they write to
//! are handed to that user.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The superuser `initdb` creates; the application connects as this role.
const SUPERUSER: &str = "ledger";
/// The database [`Cluster::ensure`] creates for the application.
const APP_DATABASE: &str = "ledger";
/// The socket directory is private to the cluster, so the standard port never
/// clashes with another server; it only names the socket file `.s.PGSQL.5432`.
const PORT: u16 = 5432;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The log is rotated (once, to `postgres.log.1`) when it grows past this at start.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Lines of the server log quoted when the server fails to start.
const LOG_TAIL_LINES: usize = 20;

/// Why a cluster could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install the PostgreSQL server (e.g. apt-get install postgresql) or set DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "running as root, but there is no `postgres` OS user to run the PostgreSQL server as (initdb and postgres refuse to run as root): create one (e.g. useradd --system postgres) or set DATABASE_URL"
    )]
    NoServerUser,
    // The underlying error is part of the message (rather than a `#[source]`) so
    // that printing the error with `{}` alone says what went wrong.
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
    #[error("{program} failed ({status}){output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },
    #[error("the PostgreSQL server in {data} did not start ({status}){output}\n{log_tail}")]
    Start {
        data: PathBuf,
        status: String,
        output: String,
        log_tail: String,
    },
    #[error("{0}")]
    Unusable(String),
    #[error("could not create the database {database:?} in the PostgreSQL cluster: {error}")]
    Database { database: String, error: sqlx::Error },
}

/// Wraps an `io::Error` with what we were doing.
fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PgError {
    let context = context.into();
    move |error| PgError::Io { context, error }
}

/// Where the `ledger` binary keeps its embedded cluster: `$LEDGER_DATA_DIR` if
/// set, else `.ledger` in the current directory. Always absolute.
pub fn default_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    match std::env::var_os("LEDGER_DATA_DIR") {
        Some(dir) if !dir.is_empty() => cwd.join(dir),
        _ => cwd.join(".ledger"),
    }
}

/// A PostgreSQL cluster (one server, one data directory) managed by this module.
#[derive(Debug, Clone)]
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    user: ServerUser,
    temporary: bool,
}

impl Cluster {
    /// Persistent cluster under `root` (e.g. `<cwd>/.ledger`): `initdb` on first
    /// use, started when not running, data kept between runs, left running when
    /// the process exits. Also makes sure the `ledger` database exists.
    ///
    /// Safe to call from several processes (and threads) at once: the work is done
    /// under an exclusive lock on `<root>/lock`. Blocking; may be called from
    /// inside a tokio runtime (the database check runs on a thread of its own).
    pub fn ensure(root: &Path) -> Result<Cluster, PgError> {
        let bin_dir = find_bin_dir().ok_or(PgError::NoBinaries)?;
        let user = ServerUser::detect()?;

        let root =
            std::path::absolute(root).map_err(io_err(format!("cannot make {} an absolute path", root.display())))?;
        let created = !root.exists();
        fs::create_dir_all(&root).map_err(io_err(format!("cannot create {}", root.display())))?;
        if created {
            // Keep the cluster out of version control when it sits in a checkout.
            // Two racing processes may both write it; the content is the same.
            let _ = fs::write(
                root.join(".gitignore"),
                "# Created by ledger: a local PostgreSQL cluster.\n*\n",
            );
        }
        // Resolve symlinks: the ancestors checked below must be the real ones.
        let root = fs::canonicalize(&root).map_err(io_err(format!("cannot resolve {}", root.display())))?;

        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(format!("cannot open {}", lock_path.display())))?;
        // Blocks while another process or thread initialises or starts the cluster;
        // released when `lock` is dropped at the end of this function.
        lock.lock()
            .map_err(io_err(format!("cannot lock {}", lock_path.display())))?;

        let mut cluster = Cluster::new(root, bin_dir, user, false);
        make_traversable(&cluster.root, &cluster.user)?;
        cluster.init_if_missing()?;

        match cluster.status()? {
            Status::Running => cluster.adopt_running_settings()?,
            Status::Stopped => cluster.start()?,
        }
        cluster.create_database_if_missing(APP_DATABASE)?;
        drop(lock);
        Ok(cluster)
    }

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

    /// Connect options for `database` in this cluster: the Unix socket in the
    /// cluster's own socket directory, user `ledger`, no password (trust).
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        // Without the pgpass lookup: the password is never asked for.
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
            // TLS over a Unix socket is pointless; don't let PGSSLMODE ask for it.
            .ssl_mode(PgSslMode::Disable)
    }

    /// The URL equivalent of [`Cluster::connect_options`], e.g.
    /// `postgres://ledger@localhost:5432/ledger?host=/abs/run&sslmode=disable`,
    /// understood by sqlx and libpq (`psql`) alike; the `host` parameter names the
    /// socket directory and overrides `localhost`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{}?host={}&sslmode=disable",
            self.port,
            percent_encode(database.as_bytes(), false),
            percent_encode(self.socket_dir.as_os_str().as_bytes(), true),
        )
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port number (it names the socket file; nothing listens on TCP).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server (fast shutdown: open sessions are disconnected) and
    /// waits for it to exit. The data is kept; `ensure` starts it again.
    pub fn stop(&self) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-w", "-t", "60", "-s", "-m", "fast", "-D"])
            .arg(&self.data);
        run(cmd, "pg_ctl stop").map(drop)
    }

    fn new(root: PathBuf, bin_dir: PathBuf, user: ServerUser, temporary: bool) -> Cluster {
        let socket_dir = socket_dir_for(&root);
        Cluster {
            data: root.join("data"),
            log: root.join("postgres.log"),
            socket_dir,
            root,
            port: PORT,
            bin_dir,
            user,
            temporary,
        }
    }

    /// A command for one of the server programs, run as the server user, from
    /// `/` (the caller's working directory may not be accessible to that user).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.current_dir("/").stdin(Stdio::null());
        if self.user.switch {
            // std also drops root's supplementary groups (setgroups(0)) here.
            cmd.uid(self.user.uid.as_raw()).gid(self.user.gid.as_raw());
        }
        cmd
    }

    /// Initialises `<root>/data` unless it exists. initdb runs into a scratch
    /// directory that is renamed into place, so an interrupted initdb never
    /// leaves a half-made `data` behind.
    fn init_if_missing(&self) -> Result<(), PgError> {
        if fs::symlink_metadata(&self.data).is_ok() {
            if !self.data.join("PG_VERSION").exists() {
                return Err(PgError::Unusable(format!(
                    "{} exists but is not a PostgreSQL data directory; remove it to have a new cluster created",
                    self.data.display()
                )));
            }
            return Ok(());
        }
        let scratch = self.root.join("data.init");
        if fs::symlink_metadata(&scratch).is_ok() {
            // Left over from an interrupted initdb (we hold the lock: nobody else
            // is using it).
            fs::remove_dir_all(&scratch).map_err(io_err(format!("cannot remove {}", scratch.display())))?;
        }
        tracing::info!(data = %self.data.display(), "creating a PostgreSQL cluster");
        self.initdb(&scratch)?;
        fs::rename(&scratch, &self.data).map_err(io_err(format!(
            "cannot rename {} to {}",
            scratch.display(),
            self.data.display()
        )))
    }

    /// Runs initdb into `target` (missing or empty) and makes postgresql.conf
    /// include `ledger.conf`, which [`Cluster::start`] writes.
    fn initdb(&self, target: &Path) -> Result<(), PgError> {
        // initdb (as the server user) could not create it inside a root-owned
        // directory, so create it and hand it over.
        private_dir(target, &self.user)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(target)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"]);
        if self.temporary {
            cmd.arg("--no-sync");
        }
        run(cmd, "initdb")?;

        let conf = target.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("cannot open {}", conf.display())))?;
        // Last in the file, so these settings win over the defaults above; ALTER
        // SYSTEM (postgresql.auto.conf) still wins over them.
        file.write_all(
            b"\n# Added by ledger: the socket directory and port, rewritten before every start.\ninclude 'ledger.conf'\n",
        )
        .map_err(io_err(format!("cannot write {}", conf.display())))
    }

    /// Writes `data/ledger.conf` from the current paths (so a moved project
    /// directory keeps working), prepares the socket directory and log file,
    /// and starts the server.
    fn start(&self) -> Result<(), PgError> {
        private_dir(&self.socket_dir, &self.user)?;
        self.write_settings()?;
        self.prepare_log()?;

        let mut cmd = self.command("pg_ctl");
        cmd.args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log);
        // pg_ctl redirects the server's stdin/stdout/stderr, so `output()` returns
        // as soon as pg_ctl itself has exited.
        let out = cmd.output().map_err(io_err("cannot run pg_ctl start"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(PgError::Start {
            data: self.data.clone(),
            status: describe_status(out.status),
            output: format_output(&out),
            log_tail: format!(
                "last lines of {}:\n{}",
                self.log.display(),
                log_tail(&self.log, LOG_TAIL_LINES)
            ),
        })
    }

    fn write_settings(&self) -> Result<(), PgError> {
        let socket_dir = self.socket_dir.to_str().ok_or_else(|| {
            PgError::Unusable(format!(
                "the socket directory {} is not valid UTF-8",
                self.socket_dir.display()
            ))
        })?;
        // unix_socket_directories is a list: double quotes keep commas and spaces
        // in the path, and the whole value is a single-quoted config string.
        let dirs = format!("\"{}\"", socket_dir.replace('"', "\"\""));
        let mut settings = format!(
            "# Written by ledger before every start; other settings belong in postgresql.conf.\n\
             listen_addresses = ''\n\
             port = {}\n\
             unix_socket_directories = {}\n",
            self.port,
            conf_quote(&dirs),
        );
        if self.temporary {
            settings.push_str(
                "# A throw-away test cluster: durability is not needed.\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n",
            );
        }
        let path = self.data.join("ledger.conf");
        fs::write(&path, settings).map_err(io_err(format!("cannot write {}", path.display())))?;
        give_to_server(&path, &self.user)
    }

    /// Creates the log file for the server user (pg_ctl opens it as that user,
    /// and the root directory may not be writable by it), rotating a big one.
    fn prepare_log(&self) -> Result<(), PgError> {
        if let Ok(meta) = fs::symlink_metadata(&self.log)
            && meta.len() > MAX_LOG_BYTES
        {
            let _ = fs::rename(&self.log, self.root.join("postgres.log.1"));
        }
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(io_err(format!("cannot create {}", self.log.display())))?;
        give_to_server(&self.log, &self.user)
    }

    fn status(&self) -> Result<Status, PgError> {
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
    fn adopt_running_settings(&mut self) -> Result<(), PgError> {
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

    /// `CREATE DATABASE` unless it exists. sqlx is async: run it on a
    /// current-thread runtime of its own on a separate thread, since the caller
    /// may itself be inside a runtime (where building another one panics).
    fn create_database_if_missing(&self, database: &str) -> Result<(), PgError> {
        let options = self.connect_options("postgres");
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<(), sqlx::Error> {
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    runtime.block_on(async {
                        use sqlx::Connection;
                        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                        let exists: bool =
                            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                                .bind(database)
                                .fetch_one(&mut conn)
                                .await?;
                        if !exists {
                            // Not in a transaction: CREATE DATABASE refuses to run in one.
                            sqlx::raw_sql(&format!("CREATE DATABASE {}", quote_ident(database)))
                                .execute(&mut conn)
                                .await?;
                        }
                        conn.close().await
                    })
                })
                .join()
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(PgError::Database {
                database: database.into(),
                error,
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    Stopped,
}

/// What the PID recorded in postmaster.pid is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
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
fn inspect_process(pid: i32, data: &Path) -> Process {
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
        // We are root or the server user, so only another user's process is
        // closed to us.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Process::Other,
        // Its stat is there but its cwd is not: it is exiting (killed, not
        // yet a zombie). Still a PID the server's own check would take for
        // a running postmaster: wait for it as for a zombie.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Process::Zombie,
        Err(_) => Process::Postmaster,
    }
}

#[cfg(not(target_os = "linux"))]
fn inspect_process(_pid: i32, _data: &Path) -> Process {
    Process::Postmaster
}

/// The OS user the server programs run as.
#[derive(Debug, Clone)]
struct ServerUser {
    name: String,
    uid: Uid,
    gid: Gid,
    /// Whether commands must switch to this user (we are root) or already run
    /// as it.
    switch: bool,
}

impl ServerUser {
    fn detect() -> Result<ServerUser, PgError> {
        let euid = Uid::effective();
        if !euid.is_root() {
            let name = User::from_uid(euid)
                .ok()
                .flatten()
                .map_or_else(|| euid.to_string(), |u| u.name);
            return Ok(ServerUser {
                name,
                uid: euid,
                gid: Gid::effective(),
                switch: false,
            });
        }
        match User::from_name("postgres") {
            Ok(Some(user)) if !user.uid.is_root() => Ok(ServerUser {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
                switch: true,
            }),
            Ok(_) => Err(PgError::NoServerUser),
            Err(errno) => Err(PgError::Io {
                context: "cannot look up the `postgres` OS user".into(),
                error: errno.into(),
            }),
        }
    }
}

/// The directory with initdb, pg_ctl and postgres: that of `initdb` on PATH,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            // /usr/local/bin/initdb is often a symlink into the real directory,
            // which also holds the other programs.
            if let Some(real) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                && has_server_programs(&real)
            {
                return Some(real);
            }
            if dir.is_absolute() && has_server_programs(&dir) {
                return Some(dir);
            }
        }
    }

    let pg_config = Command::new("pg_config")
        .arg("--bindir")
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = pg_config
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.is_absolute() && has_server_programs(&dir) {
            return Some(dir);
        }
    }

    // Debian/Ubuntu keep each major version's programs off PATH.
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name
            .to_str()
            .and_then(|n| n.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_server_programs(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

fn has_server_programs(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `<root>/run`, unless the socket's path would be too long for a Unix socket
/// address: then a directory in /tmp named after a hash of the root, so it is
/// the same on every run.
fn socket_dir_for(root: &Path) -> PathBuf {
    let run = root.join("run");
    let socket_name_len = format!("/.s.PGSQL.{PORT}").len();
    if run.as_os_str().len() + socket_name_len <= MAX_SOCKET_PATH {
        return run;
    }
    let hash = Sha256::digest(root.as_os_str().as_bytes());
    PathBuf::from(format!("/tmp/ledger-{}", hex::encode(&hash[..8])))
}

/// Creates `dir` (mode 0700) if needed and hands it to the server user. An
/// existing entry must be a real directory (not a symlink, which `chown` would
/// follow) belonging to us or the server user: it may be in a shared /tmp.
fn private_dir(dir: &Path, user: &ServerUser) -> Result<(), PgError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir).map_err(io_err(format!("cannot inspect {}", dir.display())))?;
            let ours = meta.uid() == user.uid.as_raw() || meta.uid() == Uid::effective().as_raw();
            if !meta.is_dir() || !ours {
                return Err(PgError::Unusable(format!(
                    "{} is not a directory owned by {} or by us; remove it",
                    dir.display(),
                    user.name
                )));
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err(format!("cannot set the permissions of {}", dir.display())))?;
        }
        Err(e) => return Err(io_err(format!("cannot create {}", dir.display()))(e)),
    }
    give_to_server(dir, user)
}

/// When the server runs as another user, makes it the owner of `path`.
fn give_to_server(path: &Path, user: &ServerUser) -> Result<(), PgError> {
    if !user.switch {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(io_err(format!(
        "cannot give {} to the `{}` user",
        path.display(),
        user.name
    )))
}

/// Makes sure the server user can reach `dir` (the cluster root, itself
/// included): when it runs as another user, every ancestor needs search (x)
/// permission for it. A fresh `mktemp -d` (0700, root's) lacks that, and so
/// does /root. Adds only the search bit, never read, and says so on stderr.
fn make_traversable(dir: &Path, user: &ServerUser) -> Result<(), PgError> {
    if !user.switch {
        // We are the server user: we could not have got here without it.
        return Ok(());
    }
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor).map_err(io_err(format!("cannot inspect {}", ancestor.display())))?;
        let mode = meta.permissions().mode();
        // The kernel uses exactly one class of bits. The server user has no
        // supplementary groups (std drops them when switching user), so only its
        // primary group can match.
        let (bit, class) = if meta.uid() == user.uid.as_raw() {
            (0o100, "u+x")
        } else if meta.gid() == user.gid.as_raw() {
            (0o010, "g+x")
        } else {
            (0o001, "o+x")
        };
        if mode & bit != 0 {
            continue;
        }
        fs::set_permissions(ancestor, fs::Permissions::from_mode(mode | bit)).map_err(io_err(format!(
            "cannot add search permission to {}",
            ancestor.display()
        )))?;
        eprintln!(
            "ledger: added search permission ({class}, not read) to {} so the PostgreSQL server, running as user `{}`, can reach {}",
            ancestor.display(),
            user.name,
            dir.display()
        );
    }
    Ok(())
}

/// Runs `cmd`, turning a failure into an error with its output.
fn run(mut cmd: Command, program: &str) -> Result<Output, PgError> {
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

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// A command's stdout and stderr, each line indented, after a newline; empty
/// when both are.
fn format_output(out: &Output) -> String {
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
fn log_tail(path: &Path, lines: usize) -> String {
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

/// A single-quoted postgresql.conf string.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Percent-encodes all but unreserved URL characters (and `/` when
/// `keep_slash`, for readable paths in query values).
fn percent_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
