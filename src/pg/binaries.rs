//! Finding the PostgreSQL server programs (initdb, pg_ctl, postgres) installed on
//! this machine.
//!
//! We run the machine's own installation rather than bundling one, so the
//! programs have to be found wherever its packaging put them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory with initdb, pg_ctl and postgres: that of `initdb` on PATH,
/// else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub(super) fn find_bin_dir() -> Option<PathBuf> {
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
