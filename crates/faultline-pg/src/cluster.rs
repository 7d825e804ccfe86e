//! One private cluster: initdb, start, stop, restart, and clean-up on drop.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::keeper::spawn_tied;
use super::user::ServerUser;
use super::{PgBinaries, PgError};

/// How long start-up (including crash recovery) and shutdown may take.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);
/// The superuser's password, in the data directory.
const PASSWORD_FILE: &str = "faultline.password";
/// Start attempts when a randomly chosen free port is taken before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// How to stop the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: abort open transactions, checkpoint, exit cleanly.
    Fast,
    /// SIGQUIT: exit at once, as in a crash; the next start runs crash recovery.
    Immediate,
}

/// Settings of a private cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `true`: Postgres' defaults (fsync on). `false`: fsync and full-page writes off, for
    /// throwaway test clusters. `synchronous_commit` stays on either way, so a commit is in the
    /// WAL (at least in the OS page cache) before it is acknowledged, and an immediate stop,
    /// which is a process crash and not a machine crash, loses nothing that was committed.
    pub durable: bool,
    /// Delete the cluster directory when the handle is dropped.
    pub remove_on_drop: bool,
    /// The TCP port; a free one is picked when `None`.
    pub port: Option<u16>,
    /// `max_connections`.
    pub max_connections: u32,
    /// Further `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            durable: true,
            remove_on_drop: false,
            port: None,
            max_connections: 200,
            settings: Vec::new(),
        }
    }
}

impl ClusterOptions {
    /// Throwaway: not durable, removed on drop.
    pub fn ephemeral() -> Self {
        ClusterOptions {
            durable: false,
            remove_on_drop: true,
            max_connections: 400,
            ..ClusterOptions::default()
        }
    }
}

/// A private Postgres cluster in a directory: `data/` (the data directory, owned by the server
/// user), `run/` (the unix socket) and `postgres.log`.
///
/// The handle is `Sync`: one thread may stop the server while others use it (outage tests).
/// Dropping it stops the server (fast, or immediate for an ephemeral cluster) and removes the
/// directory if `remove_on_drop`.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    binaries: PgBinaries,
    user: Option<ServerUser>,
    options: ClusterOptions,
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    port: Option<u16>,
    child: Option<Child>,
}

impl Cluster {
    /// Prepare a cluster in `root`: run `initdb` there, or reuse the cluster already there. Does
    /// not start it.
    ///
    /// # Errors
    /// [`PgError::BinariesNotFound`], [`PgError::NoUnprivilegedUser`],
    /// [`PgError::DirectoryNotReachable`], [`PgError::CommandFailed`] (initdb's output
    /// included), [`PgError::Io`].
    pub fn create(root: impl AsRef<Path>, options: ClusterOptions) -> Result<Cluster, PgError> {
        let cluster = Cluster::unprepared(root.as_ref(), options)?;
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        // New clusters, and clusters made by an earlier release (which trusted every local
        // connection), get a password before they ever serve.
        if cluster.password().is_none() {
            cluster.set_password()?;
        }
        Ok(cluster)
    }

    /// The handle for a cluster in `root`, its directories made, nothing else done.
    fn unprepared(root: &Path, options: ClusterOptions) -> Result<Cluster, PgError> {
        let binaries = PgBinaries::find()?;
        let user = ServerUser::for_current_process()?;
        let root = absolute(root)?;
        let cluster = Cluster {
            data_dir: root.join("data"),
            socket_dir: root.join("run"),
            log_path: root.join("postgres.log"),
            root,
            binaries,
            user,
            options,
            running: Mutex::new(Running::default()),
        };
        cluster.prepare_dirs()?;
        Ok(cluster)
    }

    /// A streaming-replication standby of the running `primary`, in a fresh temporary
    /// directory, started: `pg_basebackup -R -X stream` (which writes `standby.signal` and the
    /// `primary_conninfo`, the primary's password included; the data directory brings the same
    /// password and `pg_hba.conf`), then `postgres`. Removed on drop.
    ///
    /// # Errors
    /// [`PgError::CommandFailed`] when `pg_basebackup` is missing or fails (its output
    /// included); as [`Cluster::start`].
    pub fn temporary_standby_of(
        primary: &Cluster,
        options: ClusterOptions,
    ) -> Result<Cluster, PgError> {
        let options = ClusterOptions {
            remove_on_drop: true,
            ..options
        };
        let standby = Cluster::unprepared(&temporary_root()?, options)?;
        let basebackup =
            standby
                .binaries
                .tool("pg_basebackup")
                .ok_or_else(|| PgError::CommandFailed {
                    command: "pg_basebackup".into(),
                    detail: "not found beside initdb (Debian: apt-get install postgresql-client)"
                        .into(),
                })?;
        let port = primary.port().ok_or_else(|| PgError::CommandFailed {
            command: "pg_basebackup".into(),
            detail: "the primary is not running".into(),
        })?;
        let mut command = standby.command(basebackup);
        command
            .env("PGPASSWORD", primary.password().unwrap_or_default())
            .arg("-D")
            .arg(&standby.data_dir)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
            .args(["--checkpoint=fast", "--no-sync"])
            .arg("-p")
            .arg(port.to_string());
        let output = command.output().map_err(PgError::io("run pg_basebackup"))?;
        if !output.status.success() {
            return Err(PgError::CommandFailed {
                command: "pg_basebackup".into(),
                detail: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        standby.start()?;
        Ok(standby)
    }

    /// Kill the server as a host crash would: SIGKILL to the postmaster and every process of
    /// its group (the backends, the WAL sender), with no chance to flush or tell a client.
    pub fn crash(&self) {
        let mut running = self.lock();
        if let Some(mut child) = running.child.take() {
            let group = Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Promote a standby to primary (`pg_ctl promote`, waiting until it accepts writes).
    ///
    /// # Errors
    /// [`PgError::CommandFailed`] with `pg_ctl`'s output.
    pub fn promote(&self) -> Result<(), PgError> {
        let pg_ctl = self
            .binaries
            .tool("pg_ctl")
            .ok_or_else(|| PgError::CommandFailed {
                command: "pg_ctl".into(),
                detail: "not found beside initdb".into(),
            })?;
        let mut command = self.command(pg_ctl);
        command
            .args(["promote", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        let output = command
            .output()
            .map_err(PgError::io("run pg_ctl promote"))?;
        if !output.status.success() {
            return Err(PgError::CommandFailed {
                command: "pg_ctl promote".into(),
                detail: format!(
                    "{}: {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout).trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// A throwaway cluster in a fresh directory under `$TMPDIR/faultline-clusters/`, started.
    /// Directories left by owners that are gone (killed before they could clean up) are
    /// removed first.
    ///
    /// # Errors
    /// As [`Cluster::create`] and [`Cluster::start`].
    pub fn temporary() -> Result<Cluster, PgError> {
        Self::temporary_with(ClusterOptions::ephemeral())
    }

    /// [`Cluster::temporary`] with other settings (the benchmark wants fsync on). The directory
    /// is removed on drop whatever `options.remove_on_drop` says.
    ///
    /// # Errors
    /// As [`Cluster::create`] and [`Cluster::start`].
    pub fn temporary_with(options: ClusterOptions) -> Result<Cluster, PgError> {
        let root = temporary_root()?;
        let options = ClusterOptions {
            remove_on_drop: true,
            ..options
        };
        let cluster = Cluster::create(&root, options)?;
        cluster.start()?;
        Ok(cluster)
    }

    /// Start the server and wait until it accepts connections. Does nothing if it is running.
    /// A restart keeps the port of the previous start.
    ///
    /// # Errors
    /// [`PgError::AlreadyRunning`] when another server holds the data directory,
    /// [`PgError::CommandFailed`] with the log tail when the server exits during start-up,
    /// [`PgError::Timeout`].
    pub fn start(&self) -> Result<(), PgError> {
        let mut running = self.lock();
        if let Some(child) = running.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                return Ok(());
            }
            running.child = None;
        }
        if let Some(pid) = self.live_postmaster_pid() {
            return Err(PgError::AlreadyRunning {
                data_dir: self.data_dir.clone(),
                pid,
            });
        }
        let fixed_port = self.options.port.or(running.port);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match fixed_port {
                Some(port) => port,
                None => free_port()?,
            };
            let log_start = fs::metadata(&self.log_path).map_or(0, |m| m.len());
            let child = self.spawn_postgres(port)?;
            match self.wait_ready(child, log_start) {
                Ok(child) => {
                    running.port = Some(port);
                    running.child = Some(child);
                    return Ok(());
                }
                Err(PgError::CommandFailed { detail, .. })
                    if fixed_port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && detail.contains("could not bind") =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stop the server and wait for it to exit. Does nothing if it is not running.
    ///
    /// # Errors
    /// [`PgError::Timeout`] if it does not exit in time (it is then killed), [`PgError::Io`].
    pub fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        let mut running = self.lock();
        let Some(mut child) = running.child.take() else {
            return Ok(());
        };
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child
                .try_wait()
                .map_err(PgError::io("wait for postgres"))?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PgError::Timeout {
                    what: "stop",
                    seconds: STOP_TIMEOUT.as_secs(),
                    log: self.log_tail(0),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stop (fast) and start again on the same port.
    ///
    /// # Errors
    /// As [`Cluster::stop`] and [`Cluster::start`].
    pub fn restart(&self) -> Result<(), PgError> {
        self.stop(StopMode::Fast)?;
        self.start()
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        let mut running = self.lock();
        match running.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The postmaster's pid while running.
    pub fn server_pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    /// The TCP port (known once started).
    pub fn port(&self) -> Option<u16> {
        self.lock().port
    }

    /// A connection URL for `database` as the superuser `postgres` (TCP on 127.0.0.1, with the
    /// cluster's password).
    ///
    /// # Panics
    /// If the cluster was never started (there is no port yet).
    pub fn url(&self, database: &str) -> String {
        let port = self.port().expect("cluster started");
        let password = self.password().unwrap_or_default();
        format!("postgres://postgres:{password}@127.0.0.1:{port}/{database}")
    }

    /// The superuser's password, kept in the data directory (mode 0600, readable only by the
    /// server's OS user and root).
    pub fn password(&self) -> Option<String> {
        let text = fs::read_to_string(self.password_path()).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    fn password_path(&self) -> PathBuf {
        self.data_dir.join(PASSWORD_FILE)
    }

    /// The cluster directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The OS user the server runs as, when it is not the current user.
    pub fn server_user(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn prepare_dirs(&self) -> Result<(), PgError> {
        for (dir, mode) in [
            (&self.root, 0o755),
            (&self.data_dir, 0o700),
            (&self.socket_dir, 0o755),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(PgError::io(format!("create {}", dir.display())))?;
            if let Some(user) = &self.user {
                user.give(dir)?;
            }
        }
        if let Some(user) = &self.user {
            user.check_reachable(&self.data_dir)?;
        }
        Ok(())
    }

    fn command(&self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        // A clean environment: PGDATA, PGPORT and friends from the caller must not steer the
        // server, and a fixed locale and time zone make every cluster alike.
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .current_dir(&self.root);
        if let Some(user) = &self.user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command
    }

    fn initdb(&self) -> Result<(), PgError> {
        let mut command = self.command(self.binaries.initdb());
        command.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if !self.options.durable {
            command.arg("--no-sync");
        }
        let output = command.output().map_err(PgError::io(format!(
            "run {}",
            self.binaries.initdb().display()
        )))?;
        if !output.status.success() {
            return Err(PgError::CommandFailed {
                command: format!("initdb -D {}", self.data_dir.display()),
                detail: format!(
                    "{}\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(())
    }

    /// Give the superuser a fresh random password and require it (scram-sha-256) of every
    /// connection, local socket and TCP alike: initdb's `trust` would let any user on the host
    /// connect as superuser. The password is set in single-user mode, before the server first
    /// listens, and kept in the data directory with mode 0600.
    fn set_password(&self) -> Result<(), PgError> {
        use rand::distributions::{Alphanumeric, DistString};
        let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
        let mut command = self.command(self.binaries.postgres());
        command
            .arg("--single")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-c")
            .arg("password_encryption=scram-sha-256")
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(PgError::io(format!(
            "run {} --single",
            self.binaries.postgres().display()
        )))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            // Alphanumeric: nothing to escape.
            writeln!(stdin, "alter role postgres password '{password}'")
                .map_err(PgError::io("write to postgres --single"))?;
        }
        let output = child
            .wait_with_output()
            .map_err(PgError::io("wait for postgres --single"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() || stderr.contains("ERROR") {
            return Err(PgError::CommandFailed {
                command: format!("postgres --single -D {}", self.data_dir.display()),
                detail: format!("{}\n{stderr}", output.status),
            });
        }
        let hba = "# Written by Faultline: every connection needs the superuser's password.\n\
                   local all all scram-sha-256\n\
                   host all all 127.0.0.1/32 scram-sha-256\n\
                   host all all ::1/128 scram-sha-256\n\
                   local replication all scram-sha-256\n\
                   host replication all 127.0.0.1/32 scram-sha-256\n";
        self.write_private(&self.data_dir.join("pg_hba.conf"), hba)?;
        self.write_private(&self.password_path(), &format!("{password}\n"))
    }

    /// Write `contents` to `path` with mode 0600, owned by the server's user.
    fn write_private(&self, path: &Path, contents: &str) -> Result<(), PgError> {
        let context = || format!("write {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| PgError::Io {
                context: context(),
                source: e,
            })?;
        use std::io::Write;
        file.write_all(contents.as_bytes())
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o600)))
            .map_err(|e| PgError::Io {
                context: context(),
                source: e,
            })?;
        if let Some(user) = &self.user {
            user.give(path)?;
        }
        Ok(())
    }

    fn spawn_postgres(&self, port: u16) -> Result<Child, PgError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(PgError::io(format!("open {}", self.log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(PgError::io("duplicate the log handle"))?;
        let mut command = self.command(self.binaries.postgres());
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir.display()
            ))
            .arg("-c")
            .arg(format!("max_connections={}", self.options.max_connections))
            // A job queue's live table churns: let autovacuum look every few seconds rather
            // than every minute (see migration 20261201000004 and README "Operating").
            .arg("-c")
            .arg("autovacuum_naptime=5s");
        if !self.options.durable {
            command.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        // Its own process group: a Ctrl-C in the terminal reaches us, and we shut the server down
        // after our workers, instead of the server dying first under their feet.
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        spawn_tied(command, Signal::SIGQUIT).map_err(PgError::io(format!(
            "start {}",
            self.binaries.postgres().display()
        )))
    }

    /// Wait until `postmaster.pid` names our child and says `ready` (what `pg_ctl -w` checks).
    fn wait_ready(&self, mut child: Child, log_start: u64) -> Result<Child, PgError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            if let Some(status) = child.try_wait().map_err(PgError::io("wait for postgres"))? {
                return Err(PgError::CommandFailed {
                    command: format!("postgres -D {}", self.data_dir.display()),
                    detail: format!(
                        "exited during start-up ({status}); log:\n{}",
                        self.log_tail(log_start)
                    ),
                });
            }
            if let Ok(contents) = fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = contents.lines().collect();
                let ours = lines.first().map(|l| l.trim()) == Some(&child.id().to_string());
                // A standby reports `standby` once it accepts (read-only) connections.
                let status = lines.get(7).map(|l| l.trim());
                if ours && matches!(status, Some("ready") | Some("standby")) {
                    return Ok(child);
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PgError::Timeout {
                    what: "start",
                    seconds: READY_TIMEOUT.as_secs(),
                    log: self.log_tail(log_start),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The pid in `postmaster.pid` if that process is alive (a server we do not own).
    fn live_postmaster_pid(&self) -> Option<i32> {
        let contents = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = contents.lines().next()?.trim().parse().ok()?;
        process_exists(pid).then_some(pid)
    }

    /// The server log from byte `from` on, at most its last 40 lines.
    fn log_tail(&self, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let _ = file.seek(SeekFrom::Start(from));
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mode = if self.options.remove_on_drop {
            StopMode::Immediate
        } else {
            StopMode::Fast
        };
        if let Err(e) = self.stop(mode) {
            tracing::warn!(error = %e, "stopping the private Postgres cluster failed");
        }
        if self.options.remove_on_drop {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, PgError> {
    std::path::absolute(path).map_err(PgError::io(format!("resolve {}", path.display())))
}

/// A port that was free a moment ago. The server may still lose a race for it; `start` then
/// tries another.
fn free_port() -> Result<u16, PgError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(PgError::io("find a free TCP port on 127.0.0.1"))
}

/// A fresh directory path (not yet created) under `$TMPDIR/faultline-clusters`, named
/// `pid-counter-nanos` so that [`sweep_orphans`] removes it once this process is gone. The base
/// is world-writable and sticky, so the unprivileged server user can reach what is under it.
pub(crate) fn temporary_root() -> Result<PathBuf, PgError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join("faultline-clusters");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o1777)
        .create(&base)
        .map_err(PgError::io(format!("create {}", base.display())))?;
    let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o1777));
    sweep_orphans(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Ok(base.join(format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Remove temporary cluster directories whose owning process is gone. Their servers are gone
/// too (the parent-death signal), so only files remain.
fn sweep_orphans(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let owner_alive = process_exists(pid);
        if !owner_alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a process with `pid` exists (EPERM means it does, but belongs to another user).
fn process_exists(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
}
