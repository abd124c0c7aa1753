//! Streaming standbys of a cluster ([`Cluster::standby_of`]): a base backup
//! of the primary taken with `pg_basebackup -R`, started beside it, which
//! replays the primary's WAL as it is written. For the read-replica tests
//! (issue #16) and for trying `LEDGER_READ_DATABASE_URL` on one machine.

use std::fs;
use std::path::Path;

use super::cluster::Cluster;
use super::command::run;
use super::error::{PgError, io_err};
use super::server_user::{make_traversable, private_dir};

impl Cluster {
    /// A hot standby of `primary` under `root` (which must not hold a
    /// cluster yet): `pg_basebackup -R -X stream` over the primary's Unix
    /// socket, then started. It follows the primary by streaming
    /// replication and serves read-only queries. [`Cluster::ensure`] on the
    /// same root starts it again after [`Cluster::stop`].
    pub fn standby_of(primary: &Cluster, root: &Path) -> Result<Cluster, PgError> {
        fs::create_dir_all(root).map_err(io_err(format!("cannot create {}", root.display())))?;
        let root = fs::canonicalize(root).map_err(io_err(format!("cannot resolve {}", root.display())))?;
        let cluster = Cluster::new(root, primary.bin_dir.clone(), primary.user.clone(), false);
        if fs::symlink_metadata(&cluster.data).is_ok() {
            return Err(PgError::Unusable(format!(
                "{} already exists: a standby is made into an empty directory",
                cluster.data.display()
            )));
        }
        make_traversable(&cluster.root, &cluster.user)?;
        // Into a scratch directory renamed into place, as initdb is: an
        // interrupted backup never looks like a data directory.
        let scratch = cluster.root.join("data.init");
        if fs::symlink_metadata(&scratch).is_ok() {
            fs::remove_dir_all(&scratch).map_err(io_err(format!("cannot remove {}", scratch.display())))?;
        }
        private_dir(&scratch, &cluster.user)?;
        let mut cmd = cluster.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&scratch)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "ledger", "-w", "-h"])
            .arg(&primary.socket_dir)
            .arg("-p")
            .arg(primary.port.to_string());
        run(cmd, "pg_basebackup")?;
        fs::rename(&scratch, &cluster.data).map_err(io_err(format!(
            "cannot rename {} to {}",
            scratch.display(),
            cluster.data.display()
        )))?;
        // start() rewrites ledger.conf (copied from the primary) with this
        // cluster's own socket directory.
        cluster.start()?;
        Ok(cluster)
    }
}
