//! Finding the Postgres server binaries.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::PgError;

/// The directory holding `initdb` and `postgres`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    /// The `bin` directory.
    pub dir: PathBuf,
}

impl PgBinaries {
    /// Find the server binaries: `$FAULTLINE_PG_BIN` if set, else the directory of `initdb` on
    /// `PATH` (symlinks resolved, so Debian's wrappers lead to the real directory), else the
    /// newest `/usr/lib/postgresql/<version>/bin`. A directory counts only if it has both
    /// `initdb` and `postgres`.
    ///
    /// # Errors
    /// [`PgError::BinariesNotFound`], whose message names the package to install.
    pub fn find() -> Result<Self, PgError> {
        if let Some(dir) = env::var_os("FAULTLINE_PG_BIN") {
            let dir = PathBuf::from(dir);
            return if is_complete(&dir) {
                Ok(PgBinaries { dir })
            } else {
                Err(PgError::BinariesNotFound)
            };
        }
        let on_path = env::var_os("PATH")
            .map(|path| env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|dir| dir.join("initdb").canonicalize().ok())
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf));
        let packaged = debian_dirs(Path::new("/usr/lib/postgresql"));
        on_path
            .chain(packaged)
            .find(|dir| is_complete(dir))
            .map(|dir| PgBinaries { dir })
            .ok_or(PgError::BinariesNotFound)
    }

    /// Path of the `initdb` binary.
    pub fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    /// Path of the `postgres` binary.
    pub fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }

    /// Path of another binary of the same installation (`pg_basebackup`, `pg_ctl`), if there.
    pub fn tool(&self, name: &str) -> Option<PathBuf> {
        Some(self.dir.join(name)).filter(|p| p.is_file())
    }

    /// The server's version line (`postgres (PostgreSQL) 15.19 …`), if it runs.
    pub fn version(&self) -> Option<String> {
        let out = Command::new(self.postgres())
            .arg("--version")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// `<root>/<version>/bin`, newest version first (versions compared numerically, so 9.6 < 15).
fn debian_dirs(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_dirs_are_newest_first_numerically() {
        let root = std::env::temp_dir().join(format!("faultline-bins-{}", std::process::id()));
        for v in ["9.6", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.join(v).join("bin")).unwrap();
        }
        let dirs = debian_dirs(&root);
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["15", "13", "9.6"]);
        std::fs::remove_dir_all(root).unwrap();
    }
}
