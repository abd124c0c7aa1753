//! The cluster's lifecycle: [`Cluster`], [`Cluster::ensure`] (create, start,
//! adopt), initdb, starting and stopping the server, and how to connect to it.
//!
//! Whether the server is running is worked out in `process.rs`; the throw-away
//! clusters of the test suite are made in `temporary.rs`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::binaries::find_bin_dir;
use super::command::{describe_status, format_output, log_tail, run};
use super::error::{PgError, io_err};
use super::process::Status;
use super::quote::{conf_quote, percent_encode, quote_ident};
use super::server_user::{ServerUser, give_to_server, make_traversable, private_dir};

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
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) port: u16,
    pub(super) bin_dir: PathBuf,
    pub(super) user: ServerUser,
    pub(super) temporary: bool,
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

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`:
    /// every process killed, no checkpoint); `ensure` starts it again and it
    /// recovers from its WAL. For failure tests.
    pub fn crash(&self) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["stop", "-w", "-t", "60", "-s", "-m", "immediate", "-D"])
            .arg(&self.data);
        run(cmd, "pg_ctl stop -m immediate").map(drop)
    }

    pub(super) fn new(root: PathBuf, bin_dir: PathBuf, user: ServerUser, temporary: bool) -> Cluster {
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
    pub(super) fn command(&self, program: &str) -> Command {
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
    pub(super) fn initdb(&self, target: &Path) -> Result<(), PgError> {
        // initdb (as the server user) could not create it inside a root-owned
        // directory, so create it and hand it over.
        private_dir(target, &self.user)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(target)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"]);
        if self.temporary {
            cmd.arg("--no-sync");
        } else {
            // A kept cluster holds the ledger's money: checksums let
            // PostgreSQL notice a page the disk corrupted instead of reading
            // it as data. (Throw-away test clusters skip the cost.)
            cmd.arg("--data-checksums");
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
    pub(super) fn start(&self) -> Result<(), PgError> {
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
