//! The unprivileged OS user that runs the server when we are root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::unistd::{chown, Gid, Uid, User};

use super::PgError;

/// The user the server runs as, when it is not us.
#[derive(Clone, Debug)]
pub(crate) struct ServerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl ServerUser {
    /// `None` when we are not root (the server runs as us); the `postgres` user, else `nobody`,
    /// when we are.
    pub fn for_current_process() -> Result<Option<ServerUser>, PgError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        ["postgres", "nobody"]
            .into_iter()
            .find_map(|name| User::from_name(name).ok().flatten())
            .map(|user| {
                Some(ServerUser {
                    name: user.name,
                    uid: user.uid,
                    gid: user.gid,
                })
            })
            .ok_or(PgError::NoUnprivilegedUser)
    }

    /// Give `path` to this user.
    pub fn give(&self, path: &Path) -> Result<(), PgError> {
        chown(path, Some(self.uid), Some(self.gid)).map_err(|errno| PgError::Io {
            context: format!("chown {} to {}", path.display(), self.name),
            source: errno.into(),
        })
    }

    /// Check that every ancestor of `dir` lets this user pass (search permission for "other",
    /// or owned by the user): otherwise Postgres would fail later with a less clear message.
    pub fn check_reachable(&self, dir: &Path) -> Result<(), PgError> {
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let owned = std::os::unix::fs::MetadataExt::uid(&meta) == self.uid.as_raw();
            if !(mode & 0o001 != 0 || (owned && mode & 0o100 != 0)) {
                return Err(PgError::DirectoryNotReachable {
                    dir: dir.to_path_buf(),
                    user: self.name.clone(),
                });
            }
        }
        Ok(())
    }
}
