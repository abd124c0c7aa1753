//! The PostgreSQL under test, with durability on: the server of
//! `DATABASE_URL` (two fresh databases, dropped at the end), or a cluster of
//! our own made with `Cluster::ensure` in the benchmark's temp directory
//! (not `Cluster::temporary`, which turns fsync off), stopped and removed at
//! the end.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::pg::Cluster;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

pub struct Postgres {
    /// The maintenance connection (database `postgres`, or DATABASE_URL's).
    admin: PgConnectOptions,
    /// Our own cluster, when DATABASE_URL is not set.
    cluster: Option<Cluster>,
    /// Databases we created and drop at the end (DATABASE_URL only: our own
    /// cluster is removed whole).
    created: Vec<String>,
    /// The ledger's and the baselines' databases.
    ours: [String; 2],
    /// The ledger server's database, as a URL for its DATABASE_URL.
    pub ledger_url: String,
    /// The baselines' database.
    pub baseline: PgConnectOptions,
    /// Where the data lives, when known.
    pub data_dir: Option<PathBuf>,
    /// How the server was provided, for the report.
    pub origin: String,
}

impl Postgres {
    /// `scratch` is the benchmark's own fresh directory (our cluster goes in it).
    pub async fn provide(scratch: &Path) -> anyhow::Result<Postgres> {
        let suffix = format!(
            "{}_{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let admin = PgConnectOptions::from_str(&url).context("DATABASE_URL does not parse")?;
                let ledger_db = format!("ledger_bench_{suffix}");
                let baseline_db = format!("ledger_bench_seed_{suffix}");
                let mut postgres = Postgres {
                    admin: admin.clone(),
                    cluster: None,
                    created: Vec::new(),
                    ours: [ledger_db.clone(), baseline_db.clone()],
                    ledger_url: String::new(),
                    baseline: admin.clone().database(&baseline_db),
                    data_dir: None,
                    origin: "DATABASE_URL's server".into(),
                };
                for name in [&ledger_db, &baseline_db] {
                    if let Err(error) = postgres.create_database(name).await {
                        postgres.clean_up().await;
                        return Err(error);
                    }
                    postgres.created.push(name.clone());
                }
                let mut ledger_url = url::Url::parse(&url).context("DATABASE_URL is not a URL")?;
                ledger_url.set_path(&ledger_db);
                postgres.ledger_url = ledger_url.to_string();
                postgres.data_dir = postgres.show("data_directory").await.ok().map(PathBuf::from);
                Ok(postgres)
            }
            _ => {
                let root = scratch.join("pg");
                // initdb and pg_ctl block: keep them off the runtime's threads.
                let cluster = tokio::task::spawn_blocking(move || Cluster::ensure(&root))
                    .await?
                    .context(
                        "cannot create a PostgreSQL cluster (install the PostgreSQL server or set DATABASE_URL)",
                    )?;
                let postgres = Postgres {
                    admin: cluster.connect_options("postgres"),
                    ledger_url: cluster.url("ledger"), // `ensure` creates it
                    baseline: cluster.connect_options("baseline"),
                    data_dir: Some(cluster.data_dir().to_path_buf()),
                    origin: format!("a fresh cluster (Cluster::ensure) in {}", cluster.root().display()),
                    cluster: Some(cluster),
                    created: Vec::new(),
                    ours: ["ledger".into(), "baseline".into()],
                };
                postgres.create_database("baseline").await?;
                Ok(postgres)
            }
        }
    }

    async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut admin = self.admin.connect().await.context("cannot connect to PostgreSQL")?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        admin.close().await?;
        Ok(())
    }

    /// A server setting (`SHOW name`).
    pub async fn show(&self, name: &str) -> anyhow::Result<String> {
        let mut admin = self.admin.connect().await?;
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&mut admin)
            .await?;
        admin.close().await?;
        Ok(value)
    }

    /// `CHECKPOINT`, so a scenario does not pay for the dirty pages of the
    /// one before it. Needs superuser (or pg_checkpoint); skipped otherwise.
    pub async fn checkpoint(&self) {
        let done = async {
            let mut admin = self.admin.connect().await?;
            sqlx::raw_sql("CHECKPOINT").execute(&mut admin).await?;
            admin.close().await?;
            anyhow::Ok(())
        };
        if let Err(error) = done.await {
            eprintln!("load: CHECKPOINT skipped: {error:#}");
        }
    }

    /// Waits until no client statement runs in our databases (two samples
    /// in a row, 100 ms apart), at most `limit`: a scenario must not start
    /// while PostgreSQL still works on the one before (a client that gave up
    /// on a request does not stop the statement it started). Returns how
    /// long it waited, or `None` if it was still busy after `limit`.
    pub async fn wait_idle(&self, limit: Duration) -> anyhow::Result<Option<Duration>> {
        let started = Instant::now();
        let mut admin = self.admin.connect().await?;
        let mut quiet = 0;
        let waited = loop {
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = ANY($1) AND state = 'active' AND backend_type = 'client backend'
                   AND pid <> pg_backend_pid()",
            )
            .bind(&self.ours[..])
            .fetch_one(&mut admin)
            .await?;
            quiet = if active == 0 { quiet + 1 } else { 0 };
            if quiet >= 2 {
                break Some(started.elapsed());
            }
            if started.elapsed() >= limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        admin.close().await?;
        Ok(waited)
    }

    /// The postmaster's pid, from postmaster.pid in the data directory (when
    /// we can read it: always for our own cluster).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.as_ref()?.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub async fn version(&self) -> anyhow::Result<String> {
        let mut admin = self.admin.connect().await?;
        let value: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?;
        admin.close().await?;
        Ok(value)
    }

    /// Drops what we created, or stops our cluster (its directory is the
    /// caller's scratch directory, removed by the caller). Reports problems
    /// on stderr and carries on: clean-up must not hide the figures.
    pub async fn clean_up(self) {
        for name in &self.created {
            let dropped = async {
                let mut admin = self.admin.connect().await?;
                // FORCE (PostgreSQL 13+) ends sessions a killed server left behind.
                let result = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                if result.is_err() {
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\""))
                        .execute(&mut admin)
                        .await?;
                }
                anyhow::Ok(())
            };
            if let Err(error) = dropped.await {
                eprintln!("load: could not drop the database {name}: {error:#}");
            }
        }
        if let Some(cluster) = self.cluster {
            let socket_dir = cluster.socket_dir().to_path_buf();
            let outside_root = !socket_dir.starts_with(cluster.root());
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => eprintln!("load: could not stop the PostgreSQL cluster: {error}"),
                Err(error) => eprintln!("load: could not stop the PostgreSQL cluster: {error}"),
            }
            // A root path too long for a socket puts the socket in /tmp instead.
            if outside_root {
                let _ = std::fs::remove_dir_all(socket_dir);
            }
        }
    }
}

/// The type of the file system holding `path` (from /proc/self/mountinfo:
/// the longest mount point that is an ancestor of it), e.g. "ext4" or
/// "tmpfs" — on tmpfs an fsync costs nothing, and the figures would say so.
pub fn filesystem_of(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <options> ... - <fstype> <source> <super options>"
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let fstype = after.split(' ').next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fstype.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fstype)| fstype)
}
