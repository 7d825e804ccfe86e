//! A private PgBouncer in front of a Postgres server, run from the system's own binary (Debian's
//! `pgbouncer`): for the PgBouncer tests and the failover drill.
//!
//! It listens on a free TCP port on 127.0.0.1, accepts any client (`auth_type = any`) and logs
//! in to the server with the credentials given, in **transaction** pooling mode (or the mode
//! asked for). [`Bouncer::repoint`] rewrites the target and reloads (SIGHUP): new server
//! connections go to the new server, which is how the failover drill moves every process to a
//! promoted standby without restarting any of them. Like a [`super::Cluster`], it runs as the
//! unprivileged server user when we are root (PgBouncer refuses root too) and dies with us.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::user::ServerUser;
use super::{spawn_tied, PgError};

/// Where PgBouncer sends server connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BouncerTarget {
    /// Server host (an address or a socket directory).
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The role every server connection logs in as.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl BouncerTarget {
    /// The target of a `postgres://user:password@host:port/…` URL.
    ///
    /// # Errors
    /// [`PgError::CommandFailed`] naming what the URL lacks.
    pub fn from_url(url: &str) -> Result<BouncerTarget, PgError> {
        let bad = |detail: &str| PgError::CommandFailed {
            command: "pgbouncer target".into(),
            detail: detail.into(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
        Ok(BouncerTarget {
            host: parsed.host_str().ok_or_else(|| bad("no host"))?.to_owned(),
            port: parsed.port().unwrap_or(5432),
            user: match parsed.username() {
                "" => "postgres".to_owned(),
                user => user.to_owned(),
            },
            password: parsed.password().unwrap_or_default().to_owned(),
        })
    }
}

/// Settings of a [`Bouncer`].
#[derive(Clone, Debug)]
pub struct BouncerOptions {
    /// `transaction` (default), `session` or `statement`.
    pub pool_mode: String,
    /// Server connections per database/user pair.
    pub pool_size: u32,
}

impl Default for BouncerOptions {
    fn default() -> Self {
        BouncerOptions {
            pool_mode: "transaction".into(),
            pool_size: 40,
        }
    }
}

/// A running private PgBouncer; stopped on drop.
#[derive(Debug)]
pub struct Bouncer {
    dir: PathBuf,
    port: u16,
    options: BouncerOptions,
    target: Mutex<BouncerTarget>,
    child: Mutex<Child>,
    version: String,
}

/// The PgBouncer binary: `$FAULTLINE_PGBOUNCER`, then `pgbouncer` on `PATH`, then
/// `/usr/sbin/pgbouncer` (where Debian puts it, off a normal user's `PATH`).
pub fn pgbouncer_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAULTLINE_PGBOUNCER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbouncer"))
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|p| p.is_file())
}

impl Bouncer {
    /// Start a PgBouncer in a fresh temporary directory, in front of `target`.
    ///
    /// # Errors
    /// [`PgError::BouncerNotFound`] without a binary (run `scripts/ensure-pgbouncer`);
    /// [`PgError::CommandFailed`] or [`PgError::Timeout`] when it does not start, with its log.
    pub fn start(target: BouncerTarget, options: BouncerOptions) -> Result<Bouncer, PgError> {
        let binary = pgbouncer_binary().ok_or(PgError::BouncerNotFound)?;
        let user = ServerUser::for_current_process()?;
        let dir = super::cluster::temporary_root()?;
        fs::create_dir(&dir).map_err(PgError::io(format!("create {}", dir.display())))?;
        if let Some(user) = &user {
            user.give(&dir)?;
        }
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "PgBouncer (version unknown)".into());
        let port = free_port()?;
        let bouncer_config = |target: &BouncerTarget| config(&dir, port, &options, target);
        fs::write(dir.join("pgbouncer.ini"), bouncer_config(&target))
            .map_err(PgError::io("write pgbouncer.ini"))?;
        if let Some(user) = &user {
            user.give(&dir.join("pgbouncer.ini"))?;
        }
        let mut command = Command::new(&binary);
        command
            .arg(dir.join("pgbouncer.ini"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(user) = &user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = spawn_tied(command, Signal::SIGKILL)
            .map_err(PgError::io(format!("start {}", binary.display())))?;
        let bouncer = Bouncer {
            dir,
            port,
            options,
            target: Mutex::new(target),
            child: Mutex::new(child),
            version,
        };
        bouncer.wait_listening()?;
        Ok(bouncer)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What `pgbouncer --version` said (`PgBouncer 1.18.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// A URL for `database` through this PgBouncer, with the statement cache off
    /// (`statement-cache-capacity=0`, which is also how Faultline knows it is behind a pooler).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://faultline@127.0.0.1:{}/{database}?statement-cache-capacity=0",
            self.port
        )
    }

    /// Send new server connections to `target` from now on (rewrite the configuration and
    /// reload it with SIGHUP). Client connections stay open; server connections to the old
    /// target are closed when they come free, or fail if the old server is gone.
    ///
    /// # Errors
    /// [`PgError::Io`] when the configuration cannot be written or the process signalled.
    pub fn repoint(&self, target: BouncerTarget) -> Result<(), PgError> {
        let mut current = self.target.lock().unwrap_or_else(|p| p.into_inner());
        fs::write(
            self.dir.join("pgbouncer.ini"),
            config(&self.dir, self.port, &self.options, &target),
        )
        .map_err(PgError::io("rewrite pgbouncer.ini"))?;
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP)
            .map_err(|e| PgError::io("signal pgbouncer")(e.into()))?;
        *current = target;
        Ok(())
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_listening(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_wait()
                .map_err(PgError::io("wait for pgbouncer"))?
            {
                return Err(PgError::CommandFailed {
                    command: "pgbouncer".into(),
                    detail: format!(
                        "exited during start-up ({status}); log:\n{}",
                        self.log_tail()
                    ),
                });
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgError::Timeout {
                    what: "start pgbouncer",
                    seconds: 15,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, PgError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(PgError::io("find a free port for pgbouncer"))?;
    Ok(listener
        .local_addr()
        .map_err(PgError::io("find a free port for pgbouncer"))?
        .port())
}

fn config(dir: &Path, port: u16, options: &BouncerOptions, target: &BouncerTarget) -> String {
    // Values are ours (addresses, numbers, a generated password), never a user's free text.
    format!(
        "[databases]\n\
         * = host={host} port={tport} user={user} password={password}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir = {dir}\n\
         auth_type = any\n\
         pool_mode = {mode}\n\
         default_pool_size = {size}\n\
         max_client_conn = 2000\n\
         server_connect_timeout = 3\n\
         server_login_retry = 0.2\n\
         query_wait_timeout = 5\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n",
        host = target.host,
        tport = target.port,
        user = target.user,
        password = target.password,
        mode = options.pool_mode,
        size = options.pool_size,
        dir = dir.display(),
    )
}
