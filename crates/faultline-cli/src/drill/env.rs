//! A drill's world: its own Postgres (a private cluster, or a fresh database on DATABASE_URL),
//! one `faultline serve` and N `faultline worker` child processes of this very binary, each
//! worker with its own `--metrics-listen` port. Every child is tied to the drill process (a
//! parent-death signal), and killed when the environment is dropped, so no exit path leaves a
//! process behind.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use faultline::{db, Job, JobId, Store};
use faultline_pg::{spawn_tied, Bouncer, Cluster, StopMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

use super::report::Report;

/// A child process of the drill.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// Its metrics port (0 for a Python worker, which has none).
    pub port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    /// What it runs: the binary, or the Python interpreter of a Python worker.
    program: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill_now(&mut self) {
        // A stopped process must be continued to die promptly of anything but SIGKILL.
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Settings of a drill's environment.
#[derive(Clone, Debug)]
pub struct EnvOptions {
    pub workers: usize,
    pub lease_ttl: Duration,
    pub retry_base: Duration,
    pub concurrency: u32,
    /// Journal every handler run in `faultline_drill.executions`.
    pub journal: bool,
    /// Let webhooks reach loopback (the drill's own hostile receiver).
    pub allow_private_webhooks: bool,
    /// The processes reach the database through this PgBouncer (the drill itself connects
    /// directly).
    pub bouncer: Option<Arc<Bouncer>>,
    /// Keep the journal in this database instead of the drill's (one that survives the fault).
    pub journal_url: Option<String>,
    /// The processes' `--leader-ttl`: short, so a killed leader's maintenance resumes soon.
    pub leader_ttl: Duration,
    /// The workers' `--poll-interval`.
    pub poll_interval: Duration,
    /// The workers' `--queues`.
    pub queues: Vec<String>,
    /// Python workers (`clients/python/drill/worker.py`, claiming over the API with the
    /// worker protocol), `py-worker-1` onwards, after the binary's workers.
    pub python_workers: usize,
    /// The Python workers' queues (default: the binary's workers' `queues`).
    pub python_queues: Option<Vec<String>>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            workers: 2,
            lease_ttl: Duration::from_secs(3),
            retry_base: Duration::from_millis(200),
            concurrency: 8,
            journal: false,
            allow_private_webhooks: false,
            bouncer: None,
            journal_url: None,
            leader_ttl: Duration::from_secs(2),
            poll_interval: Duration::from_millis(250),
            queues: vec!["default".to_owned()],
            python_workers: 0,
            python_queues: None,
        }
    }
}

pub struct Env {
    pub options: EnvOptions,
    pub cluster: Option<Arc<Cluster>>,
    /// The drill's own (direct) URL of the database.
    pub url: String,
    /// What the API and the workers are given as DATABASE_URL.
    pub process_url: String,
    pub pool: PgPool,
    pub store: Store,
    pub api: Proc,
    pub api_url: String,
    pub workers: Vec<Proc>,
    pub http: reqwest::Client,
    dir: PathBuf,
    external: Option<(String, String)>,
    exe: PathBuf,
}

/// A port that was free a moment ago and that this process has not handed out before. The
/// children bind their ports a little later; without the memory, the OS may offer a port just
/// released here (and not yet bound by the child it went to) a second time.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port on 127.0.0.1 after 100 tries")
}

impl Env {
    /// The environment, as its steps: a scratch directory, the database (migrated, with the
    /// journal's tables if asked for), the API, the workers, then every process answering.
    pub async fn start(
        report: &mut Report,
        options: EnvOptions,
        database_url: Option<&str>,
    ) -> anyhow::Result<Env> {
        let dir = scratch_dir()?;
        let database = Database::start(report, database_url).await?;
        let pool = prepare_database(&database.url, &options).await?;
        let process_url = database.process_url(&options);
        let store = Store::new(pool.clone());
        let exe = std::env::current_exe().context("find the faultline binary")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let (api, api_url) = start_api(report, &exe, &dir, &options, &process_url)?;
        let mut env = Env {
            options,
            cluster: database.cluster,
            url: database.url,
            process_url,
            pool,
            store,
            api,
            api_url,
            workers: Vec::new(),
            http,
            dir,
            external: database.external,
            exe,
        };
        env.start_workers(report)?;
        env.wait_answering(report).await?;
        env.fail_on_early_exit()?;
        Ok(env)
    }

    /// Start the configured number of workers, `worker-1` onwards, and report each.
    fn start_workers(&mut self, report: &mut Report) -> anyhow::Result<()> {
        for index in 1..=self.options.workers {
            let worker = self.spawn_worker(index)?;
            report.event(format!(
                "started {} (pid {}), metrics on :{}",
                worker.name,
                worker.pid(),
                worker.port
            ));
            self.workers.push(worker);
        }
        for index in 1..=self.options.python_workers {
            let worker = self.spawn_python_worker(index)?;
            report.event(format!(
                "started {} (pid {}), a Python worker claiming over {}",
                worker.name,
                worker.pid(),
                self.api_url
            ));
            self.workers.push(worker);
        }
        Ok(())
    }

    /// Start Python worker `index` (`py-worker-<index>`): `clients/python/drill/worker.py` in
    /// the package's venv (made by `clients/python/run-tests`), serving `noop`, `sleep` and
    /// `fail` over the worker protocol, with the binary's workers' lease TTL and concurrency.
    pub fn spawn_python_worker(&self, index: usize) -> anyhow::Result<Proc> {
        let (python, script) = python_worker()?;
        let name = format!("py-worker-{index}");
        let o = &self.options;
        let queues = o.python_queues.as_ref().unwrap_or(&o.queues).join(",");
        let args = vec![
            script.display().to_string(),
            "--url".to_owned(),
            self.api_url.clone(),
            "--queues".to_owned(),
            queues,
            "--worker-id".to_owned(),
            name.clone(),
            "--concurrency".to_owned(),
            o.concurrency.to_string(),
            "--lease-ttl-ms".to_owned(),
            o.lease_ttl.as_millis().to_string(),
            "--grace-ms".to_owned(),
            "2000".to_owned(),
            "--poll-wait-ms".to_owned(),
            "500".to_owned(),
        ];
        spawn(&python, &self.dir, &name, args, &self.process_url, 0)
    }

    /// Wait until the API's `/ready` and every worker's `/metrics` answer with a success.
    async fn wait_answering(&self, report: &mut Report) -> anyhow::Result<()> {
        report.waiting("waiting for every process to answer");
        let urls: Vec<String> = std::iter::once(format!("{}/ready", self.api_url))
            .chain(
                self.workers
                    .iter()
                    .filter(|w| w.port != 0)
                    .map(|w| format!("http://127.0.0.1:{}/metrics", w.port)),
            )
            .collect();
        for url in urls {
            self.wait_for(
                report,
                &format!("{url} to answer"),
                Duration::from_secs(60),
                || {
                    let http = self.http.clone();
                    let url = url.clone();
                    async move {
                        let r = http.get(&url).send().await.ok()?;
                        r.status().is_success().then_some(())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Fail with the log of the first child that has already exited, if any.
    fn fail_on_early_exit(&mut self) -> anyhow::Result<()> {
        // A child that could not start (a port taken after all, a bad flag) must fail the drill
        // here, with its own words, not as a timeout later.
        let dead: Vec<String> = std::iter::once(&mut self.api)
            .chain(self.workers.iter_mut())
            .filter_map(|p| (!p.is_alive()).then(|| p.name.clone()))
            .collect();
        if let Some(name) = dead.first() {
            let proc = std::iter::once(&self.api)
                .chain(self.workers.iter())
                .find(|p| &p.name == name)
                .expect("a named child");
            bail!(
                "{name} exited during start-up; its log:\n{}",
                self.log_tail(proc, 20)
            );
        }
        Ok(())
    }

    /// Start worker `index` (named `worker-<index>`).
    pub fn spawn_worker(&self, index: usize) -> anyhow::Result<Proc> {
        let name = format!("worker-{index}");
        let port = free_port()?;
        let o = &self.options;
        let mut args = vec![
            "worker".to_owned(),
            "--worker-id".to_owned(),
            name.clone(),
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--lease-ttl".to_owned(),
            format!("{}ms", o.lease_ttl.as_millis()),
            "--concurrency".to_owned(),
            o.concurrency.to_string(),
            "--reaper-interval".to_owned(),
            "250ms".to_owned(),
            "--poll-interval".to_owned(),
            format!("{}ms", o.poll_interval.as_millis()),
            "--leader-ttl".to_owned(),
            format!("{}ms", o.leader_ttl.as_millis()),
            "--retry-base".to_owned(),
            format!("{}ms", o.retry_base.as_millis()),
            "--retry-cap".to_owned(),
            "5s".to_owned(),
            "--shutdown-grace".to_owned(),
            "2s".to_owned(),
            "--queues".to_owned(),
            o.queues.join(","),
        ];
        if o.journal {
            args.push("--drill-journal".to_owned());
            if let Some(url) = &o.journal_url {
                args.push("--drill-journal-url".to_owned());
                args.push(url.clone());
            }
        }
        if o.allow_private_webhooks {
            args.push("--webhook-allow-private".to_owned());
        }
        spawn(&self.exe, &self.dir, &name, args, &self.process_url, port)
    }

    /// Replace a dead worker with a new process of the same name.
    pub fn restart_worker(&mut self, slot: usize) -> anyhow::Result<u32> {
        let old = &mut self.workers[slot];
        old.kill_now();
        let args = old.args.clone();
        let name = old.name.clone();
        let port = free_port()?;
        let mut args = args;
        if let Some(i) = args.iter().position(|a| a == "--metrics-listen") {
            args[i + 1] = format!("127.0.0.1:{port}");
        }
        let program = old.program.clone();
        let port = if old.port == 0 { 0 } else { port };
        let fresh = spawn(&program, &self.dir, &name, args, &self.process_url, port)?;
        let pid = fresh.pid();
        self.workers[slot] = fresh;
        Ok(pid)
    }

    /// Poll `check` until it yields `Some`; an error naming `what` after `timeout`.
    pub async fn wait_for<T, F, Fut>(
        &self,
        report: &Report,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        report.waiting(what);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST a job through the API: (status, body).
    pub async fn enqueue(&self, body: &Value, key: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}/v1/jobs", self.api_url))
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn enqueue_id(&self, body: &Value) -> anyhow::Result<JobId> {
        let (status, reply) = self.enqueue(body, None).await?;
        if status != 201 {
            bail!("enqueue answered {status}: {reply}");
        }
        Ok(reply["id"].as_str().context("job id")?.parse()?)
    }

    pub async fn job(&self, id: JobId) -> anyhow::Result<Job> {
        Ok(self.store.get(id).await?)
    }

    /// The sum of every sample of `metric` on a process's `/metrics`.
    pub async fn metric(&self, port: u16, metric: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(metric_sum(&text, metric))
    }

    /// The drill's database on its server (`postgres` on a private cluster).
    pub fn database_name(&self) -> &str {
        self.external
            .as_ref()
            .map_or("postgres", |(_, name)| name.as_str())
    }

    pub fn api_port(&self) -> u16 {
        self.api.port
    }

    /// Which worker slot holds `id` (by its lease owner).
    pub fn slot_of(&self, owner: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.name == owner)
    }

    pub async fn stop_postgres(&self) -> anyhow::Result<()> {
        let cluster = self.cluster.clone().context("no private cluster")?;
        tokio::task::spawn_blocking(move || cluster.stop(StopMode::Immediate)).await??;
        Ok(())
    }

    pub async fn start_postgres(&self) -> anyhow::Result<()> {
        let cluster = self.cluster.clone().context("no private cluster")?;
        tokio::task::spawn_blocking(move || cluster.start()).await??;
        Ok(())
    }

    /// The tail of a process's log, for a failed check.
    pub fn log_tail(&self, proc: &Proc, lines: usize) -> String {
        let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.kill_now();
        }
        self.api.kill_now();
        if let Some((admin, name)) = self.external.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        if let Ok(mut conn) = PgConnection::connect(&admin).await {
                            let _ = sqlx::query(&format!(
                                "drop database if exists {name} with (force)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for the children's logs, unique to this drill.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "faultline-drill-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Where the drill's jobs live: a private cluster, or a fresh database on DATABASE_URL.
struct Database {
    cluster: Option<Arc<Cluster>>,
    /// The drill's own (direct) URL of the database.
    url: String,
    /// On DATABASE_URL: the admin URL and the name of the database made for the drill.
    external: Option<(String, String)>,
}

impl Database {
    /// A private cluster without `database_url`, else a fresh database on that server.
    async fn start(report: &mut Report, database_url: Option<&str>) -> anyhow::Result<Database> {
        match database_url {
            None => Database::private(report).await,
            Some(admin) => Database::on_server(report, admin).await,
        }
    }

    /// Start a private Postgres and use its `postgres` database.
    async fn private(report: &mut Report) -> anyhow::Result<Database> {
        report.waiting("starting a private Postgres");
        let cluster = tokio::task::spawn_blocking(Cluster::temporary)
            .await?
            .context("cannot start a private Postgres (set DATABASE_URL to use a server)")?;
        report.event(format!(
            "private Postgres up on port {} (pid {})",
            cluster.port().unwrap_or_default(),
            cluster.server_pid().unwrap_or_default()
        ));
        let url = cluster.url("postgres");
        Ok(Database {
            cluster: Some(Arc::new(cluster)),
            url,
            external: None,
        })
    }

    /// Create a database of the drill's own on the server at `admin`.
    async fn on_server(report: &mut Report, admin: &str) -> anyhow::Result<Database> {
        let name = format!("faultline_drill_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .context("cannot connect to DATABASE_URL")?;
        sqlx::query(&format!("create database {name}"))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let url = faultline::db::with_database(admin, &name);
        report.event(format!("using database {name} on DATABASE_URL"));
        Ok(Database {
            cluster: None,
            url: url.clone(),
            external: Some((admin.to_owned(), name)),
        })
    }

    /// What the API and the workers are given as DATABASE_URL: the same database, through the
    /// PgBouncer if there is one.
    fn process_url(&self, options: &EnvOptions) -> String {
        match &options.bouncer {
            Some(bouncer) => bouncer.url(
                self.external
                    .as_ref()
                    .map_or("postgres", |(_, name): &(String, String)| name.as_str()),
            ),
            None => self.url.clone(),
        }
    }
}

/// Connect to the drill's database and migrate it; with `options.journal`, make the journal's
/// tables too.
async fn prepare_database(url: &str, options: &EnvOptions) -> anyhow::Result<PgPool> {
    let pool = db::connect(url, &db::PoolConfig::default())?;
    db::migrate(&pool)
        .await
        .context("migrate the drill database")?;
    if options.journal {
        create_journal(&pool, options).await?;
    }
    Ok(pool)
}

/// The drill journal's tables: `credits` beside the jobs, `executions` in the journal's
/// database (`options.journal_url`, else the drill's).
async fn create_journal(pool: &PgPool, options: &EnvOptions) -> anyhow::Result<()> {
    let journal = match &options.journal_url {
        Some(url) => db::connect(url, &db::PoolConfig::default())?,
        None => pool.clone(),
    };
    sqlx::query("create schema if not exists faultline_drill")
        .execute(&journal)
        .await?;
    // Beside the jobs (not in the journal's database): written in the same transaction
    // as a job's completion.
    sqlx::raw_sql(
        "create schema if not exists faultline_drill;
                 create table if not exists faultline_drill.credits (
                    job_id uuid not null, token bigint not null,
                    at timestamptz not null default now());
                 create table if not exists faultline_drill.step_rows (
                    job_id uuid not null, step int not null, token bigint not null,
                    at timestamptz not null default now())",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "create table if not exists faultline_drill.executions (
                    id bigserial primary key, job_id uuid not null, token bigint not null,
                    attempt int not null, worker text not null, event text not null,
                    detail text, at timestamptz not null default now())",
    )
    .execute(&journal)
    .await?;
    Ok(())
}

/// Start `faultline serve` on a fresh port and report it: the process and its base URL.
fn start_api(
    report: &mut Report,
    exe: &PathBuf,
    dir: &std::path::Path,
    options: &EnvOptions,
    process_url: &str,
) -> anyhow::Result<(Proc, String)> {
    let api_port = free_port()?;
    let api_args = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{api_port}"),
        "--depth-interval".to_owned(),
        "1s".to_owned(),
        "--leader-ttl".to_owned(),
        format!("{}ms", options.leader_ttl.as_millis()),
    ];
    let api = spawn(exe, dir, "api", api_args, process_url, api_port)?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    report.event(format!("started api (pid {}) on {api_url}", api.pid()));
    Ok((api, api_url))
}

fn spawn(
    exe: &PathBuf,
    dir: &std::path::Path,
    name: &str,
    args: Vec<String>,
    url: &str,
    port: u16,
) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let err = out.try_clone()?;
    let mut command = Command::new(exe);
    command
        .args(&args)
        .env("DATABASE_URL", url)
        .env("FAULTLINE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Our own process group stays ours: a Ctrl-C reaches the drill, which then cleans up.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = spawn_tied(command, Signal::SIGKILL).with_context(|| format!("start {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        port,
        log,
        args,
        program: exe.clone(),
    })
}

/// The Python interpreter of `clients/python`'s venv and the drill worker's script, or what is
/// missing.
fn python_worker() -> anyhow::Result<(PathBuf, PathBuf)> {
    let package = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/python");
    let python = package.join(".venv/bin/python");
    let script = package.join("drill/worker.py");
    anyhow::ensure!(
        script.is_file(),
        "no Python drill worker at {} (run the drills from the repository)",
        script.display()
    );
    anyhow::ensure!(
        python.is_file(),
        "no Python environment at {}: run clients/python/run-tests once (make test does), \
         which makes it from the package's lock file",
        python.display()
    );
    Ok((python, script))
}

/// The sum of every sample of `metric` in a text exposition (all label sets).
pub fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
