//! The OS user the server programs run as, and the ownership and permissions of
//! the directories that user writes to or passes through.
//!
//! `initdb` and `postgres` refuse to run as root, so when we are root they run as
//! the `postgres` OS user, and what they need on disk has to be made theirs (or
//! reachable by them) first.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use super::error::{PgError, io_err};

/// The OS user the server programs run as.
#[derive(Debug, Clone)]
pub(super) struct ServerUser {
    pub(super) name: String,
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    /// Whether commands must switch to this user (we are root) or already run
    /// as it.
    pub(super) switch: bool,
}

impl ServerUser {
    pub(super) fn detect() -> Result<ServerUser, PgError> {
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

/// Creates `dir` (mode 0700) if needed and hands it to the server user. An
/// existing entry must be a real directory (not a symlink, which `chown` would
/// follow) belonging to us or the server user: it may be in a shared /tmp.
pub(super) fn private_dir(dir: &Path, user: &ServerUser) -> Result<(), PgError> {
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
pub(super) fn give_to_server(path: &Path, user: &ServerUser) -> Result<(), PgError> {
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
pub(super) fn make_traversable(dir: &Path, user: &ServerUser) -> Result<(), PgError> {
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
