//! Unit tests of the project-local cluster: creation, restarts, stale
//! lock files, permissions, against the machine's real PostgreSQL.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::Cluster;
use super::binaries::find_bin_dir;
use super::process::{Process, inspect_process};
use super::server_user::ServerUser;

/// A fresh parent directory for a persistent cluster at `<dir>/.ledger`, made
/// like `mktemp -d` (mode 0700, ours) so that `ensure` has to open it up to the
/// server user. On drop, stops any server in it and removes it.
struct TestRoot {
    dir: PathBuf,
}

impl TestRoot {
    fn new() -> TestRoot {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("ledger-pgtest-{}", &id[..12]));
        DirBuilder::new().mode(0o700).create(&dir).unwrap();
        TestRoot { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join(".ledger")
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let root = fs::canonicalize(&self.dir).unwrap_or(self.dir.clone()).join(".ledger");
        if root.join("data").exists()
            && let (Some(bin_dir), Ok(user)) = (find_bin_dir(), ServerUser::detect())
        {
            let cluster = Cluster::new(root, bin_dir, user, false);
            // Fails harmlessly when the server is not running.
            let _ = cluster
                .command("pg_ctl")
                .args(["stop", "-w", "-s", "-m", "immediate", "-D"])
                .arg(cluster.data_dir())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

async fn connect(options: &PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(options).await.unwrap()
}

fn postmaster_pid(cluster: &Cluster) -> i32 {
    let text = fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn temporary_cluster_accepts_connections() {
    let cluster = Cluster::temporary().unwrap();
    let mut conn = connect(&cluster.connect_options("postgres")).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&mut conn).await.unwrap();
    assert_eq!(fsync, "off");
    // Only the socket: nothing listens on TCP.
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(listen, "");

    // The URL form (as passed in DATABASE_URL) reaches the same server.
    let options = PgConnectOptions::from_str(&cluster.url("postgres")).unwrap();
    let mut conn = connect(&options).await;
    let (user, dir): (String, String) = sqlx::query_as("SELECT current_user::text, current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(user, "ledger");
    assert_eq!(Path::new(&dir), cluster.data_dir());
}

#[test]
fn url_encodes_unusual_socket_paths() {
    let cluster = Cluster {
        root: "/x".into(),
        data: "/x/data".into(),
        socket_dir: "/tmp/a b&c=d#e%f".into(),
        log: "/x/postgres.log".into(),
        port: 5433,
        bin_dir: "/usr/bin".into(),
        user: ServerUser::detect().unwrap(),
        temporary: false,
    };
    let url = cluster.url("my db");
    let options = PgConnectOptions::from_str(&url).unwrap();
    assert_eq!(
        options.get_socket().map(PathBuf::as_path),
        Some(Path::new("/tmp/a b&c=d#e%f"))
    );
    assert_eq!(options.get_port(), 5433);
    assert_eq!(options.get_database(), Some("my db"));
    assert_eq!(options.get_username(), "ledger");
}

#[tokio::test]
async fn ensure_creates_then_reuses_the_cluster() {
    let test_root = TestRoot::new();
    let cluster = Cluster::ensure(&test_root.root()).unwrap();
    assert!(test_root.root().join(".gitignore").exists());

    // The application database exists.
    let mut conn = connect(&cluster.connect_options("ledger")).await;
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // Running: `ensure` finds it as it is.
    let pid = postmaster_pid(&cluster);
    let again = Cluster::ensure(&test_root.root()).unwrap();
    assert_eq!(postmaster_pid(&again), pid);

    // Stopped: `ensure` starts it again, with the data kept.
    cluster.stop().unwrap();
    assert!(!cluster.data_dir().join("postmaster.pid").exists());
    let again = Cluster::ensure(&test_root.root()).unwrap();
    assert_eq!(again.data_dir(), cluster.data_dir());
    let mut conn = connect(&again.connect_options("ledger")).await;
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 42);
}

#[tokio::test]
async fn concurrent_ensure_calls_both_succeed() {
    let test_root = TestRoot::new();
    let root = test_root.root();
    let clusters: Vec<Cluster> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| Cluster::ensure(&root))).collect();
        handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert_eq!(clusters[0].url("ledger"), clusters[1].url("ledger"));
    for cluster in &clusters {
        let mut conn = connect(&cluster.connect_options("ledger")).await;
        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
        assert_eq!(one, 1);
    }
}

#[tokio::test]
async fn ensure_restarts_a_killed_server() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let test_root = TestRoot::new();
    let cluster = Cluster::ensure(&test_root.root()).unwrap();
    let pid = Pid::from_raw(postmaster_pid(&cluster));
    kill(pid, Signal::SIGKILL).unwrap();
    // Wait until it has died, but not for it to be reaped by init: a zombie
    // still counts as running for pg_ctl, which `ensure` must see through.
    let deadline = Instant::now() + Duration::from_secs(10);
    while inspect_process(pid.as_raw(), cluster.data_dir()) == Process::Postmaster {
        assert!(Instant::now() < deadline, "the killed postmaster lingers");
        std::thread::sleep(Duration::from_millis(5));
    }
    // It left its postmaster.pid behind.
    assert!(cluster.data_dir().join("postmaster.pid").exists());

    let again = Cluster::ensure(&test_root.root()).unwrap();
    assert_ne!(postmaster_pid(&again), pid.as_raw());
    let mut conn = connect(&again.connect_options("ledger")).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn ensure_ignores_a_pid_file_naming_another_process() {
    let test_root = TestRoot::new();
    let cluster = Cluster::ensure(&test_root.root()).unwrap();
    let pid_file = cluster.data_dir().join("postmaster.pid");
    let recorded = fs::read_to_string(&pid_file).unwrap();
    cluster.stop().unwrap();

    // As after a reboot: the recorded PID now belongs to some other process.
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let (_, rest) = recorded.split_once('\n').unwrap();
    fs::write(&pid_file, format!("{}\n{rest}", other.id())).unwrap();
    let socket_lock = cluster.socket_dir().join(".s.PGSQL.5432.lock");
    fs::write(&socket_lock, format!("{}\n", other.id())).unwrap();

    let result = Cluster::ensure(&test_root.root());
    other.kill().unwrap();
    other.wait().unwrap();
    let again = result.unwrap();
    assert_ne!(postmaster_pid(&again), other.id() as i32);
    let mut conn = connect(&again.connect_options("ledger")).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
}
