//! Argument types and parsers shared by several subcommands (below every subcommand, so none
//! depends on another for them).

use std::time::Duration;

use clap::Args;
use faultline::maintenance::{DepthSamplerConfig, MaintainerConfig, PrunerConfig, ReaperConfig};

/// The database to use.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "URL")]
    pub url: String,

    /// Most database connections this process holds.
    #[arg(
        long = "db-pool-size",
        env = "FAULTLINE_DB_POOL_SIZE",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub pool_size: u32,
}

impl DatabaseArgs {
    /// Whether `--database-url` goes through a transaction-pooling PgBouncer (see
    /// [`faultline::db::pooled`]): statements are sent unnamed and `LISTEN` needs its own URL.
    pub fn pooled(&self) -> bool {
        faultline::db::pooled(&self.url)
    }

    /// A lazily connecting pool of `--db-pool-size` connections.
    pub fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        use anyhow::Context;
        faultline::db::connect(
            &self.url,
            &faultline::db::PoolConfig {
                max_connections: self.pool_size,
                ..faultline::db::PoolConfig::default()
            },
        )
        .context("--database-url (DATABASE_URL)")
    }
}

/// Parse a duration such as `30s`, `500ms`, `7d` or `1h 30m`, at most 100 years (a longer one
/// would overflow the times Postgres and the API can represent once added to now).
pub fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write a duration such as 500ms, 30s, 5m, 7d)"))?;
    match faultline::time_range::duration_problem(duration) {
        Some(problem) => Err(problem),
        None => Ok(duration),
    }
}

/// An `http://` or `https://` base URL.
pub fn http_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(text.to_owned())
        }
        Ok(url) => Err(format!(
            "expected an http:// or https:// URL, got scheme {:?}",
            url.scheme()
        )),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// A bearer token: visible ASCII only, since it travels in an HTTP header (a newline pasted
/// with it would otherwise surface as a confusing transport error).
pub fn token(text: &str) -> Result<String, String> {
    match text.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!(
            "a token is visible ASCII without spaces; this one contains {c:?}"
        )),
        None => Ok(text.to_owned()),
    }
}

/// The elected maintainer's settings, shared by `serve`, `worker` and `up` (each process is a
/// candidate; the leader's settings are the ones in force, so give every process the same).
#[derive(Debug, Args)]
pub struct MaintainerOptions {
    /// How long the elected maintainer's term lasts unrenewed; a dead leader is replaced
    /// within this plus a quarter of a second.
    #[arg(long, env = "FAULTLINE_LEADER_TTL", default_value = "10s", value_parser = duration)]
    pub leader_ttl: Duration,

    /// Never stand for election: this process runs no maintenance (reaper, pruner, depth
    /// sampler).
    #[arg(long, env = "FAULTLINE_NO_MAINTENANCE")]
    pub no_maintenance: bool,

    /// Delete finished jobs older than this.
    #[arg(long, env = "FAULTLINE_RETENTION", default_value = "7d", value_parser = duration)]
    pub retention: Duration,

    /// How often the reaper looks for expired leases.
    #[arg(long, env = "FAULTLINE_REAPER_INTERVAL", default_value = "1s", value_parser = duration)]
    pub reaper_interval: Duration,

    /// How often queue depth gauges are sampled from the database.
    #[arg(long, env = "FAULTLINE_DEPTH_INTERVAL", default_value = "5s", value_parser = duration)]
    pub depth_interval: Duration,

    /// Claims scan each lane (queue, priority) from the head of the claim index instead of
    /// from its low-water mark: how claims worked before marks (a diagnostic, and the
    /// "before" of the benchmark's pressure comparison).
    #[arg(long, env = "FAULTLINE_NO_LANE_MARKS")]
    pub no_lane_marks: bool,

    /// Declare the schedules of this TOML file (`[[schedule]]` tables) at start: each is created,
    /// or replaced keeping what it has fired; schedules not in the file are left alone.
    #[arg(long, env = "FAULTLINE_SCHEDULES", value_name = "FILE")]
    pub schedules: Option<std::path::PathBuf>,
}

impl MaintainerOptions {
    /// Read `--schedules` and check its cron and time zones (call first, so that a bad file
    /// stops the process before it starts anything).
    pub fn schedule_file(&self) -> anyhow::Result<Option<faultline::schedule::ScheduleFile>> {
        use anyhow::Context;
        self.schedules
            .as_deref()
            .map(faultline::schedule::ScheduleFile::load)
            .transpose()
            .context("--schedules")
    }

    /// Declare the schedules of `file` (from [`MaintainerOptions::schedule_file`], read before
    /// anything started) in the background, retrying while the database is away; first check
    /// each against the store's limits, so a bad one stops the process naming it and the field.
    pub fn declare_schedules(
        &self,
        file: Option<faultline::schedule::ScheduleFile>,
        store: &faultline::Store,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let (Some(file), Some(path)) = (file, &self.schedules) else {
            return Ok(());
        };
        for s in &file.schedule {
            store.check_schedule(&s.name, &s.spec).map_err(|e| {
                anyhow::anyhow!("--schedules {}: schedule {:?}: {e}", path.display(), s.name)
            })?;
        }
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            for s in &file.schedule {
                loop {
                    match store.put_schedule(&s.name, &s.spec).await {
                        Ok((_, created)) => {
                            tracing::info!(schedule = %s.name, created, "schedule declared");
                            break;
                        }
                        Err(e) if e.is_unavailable() => {
                            tracing::warn!(schedule = %s.name, error = %e,
                                "database away; declaring the schedule again in a second");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = shutdown.cancelled() => return,
                            }
                        }
                        Err(e) => {
                            tracing::error!(schedule = %s.name, error = %e,
                                "schedule refused by the database");
                            break;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// The maintainer's settings, or `None` with `--no-maintenance`.
    pub fn config(&self) -> anyhow::Result<Option<MaintainerConfig>> {
        anyhow::ensure!(
            self.leader_ttl >= Duration::from_millis(300),
            "--leader-ttl must be at least 300ms"
        );
        for (flag, interval) in [
            ("--reaper-interval", self.reaper_interval),
            ("--depth-interval", self.depth_interval),
        ] {
            anyhow::ensure!(
                interval >= Duration::from_millis(10),
                "{flag} must be at least 10ms"
            );
        }
        if self.no_maintenance {
            return Ok(None);
        }
        Ok(Some(MaintainerConfig {
            leader_ttl: self.leader_ttl,
            reaper: Some(ReaperConfig {
                interval: self.reaper_interval,
                ..ReaperConfig::default()
            }),
            pruner: Some(PrunerConfig {
                retention: self.retention,
                ..PrunerConfig::default()
            }),
            depth: Some(DepthSamplerConfig {
                interval: self.depth_interval,
            }),
            lanes: (!self.no_lane_marks).then(faultline::maintenance::LaneMarkerConfig::default),
            ..MaintainerConfig::default()
        }))
    }
}

/// How the client subcommands (`jobs`, `workers`) reach the API.
#[derive(Debug, Args)]
pub struct ApiClientArgs {
    /// The API's base URL.
    #[arg(
        long,
        env = "FAULTLINE_URL",
        default_value = "http://127.0.0.1:8000",
        global = true,
        value_parser = http_url
    )]
    pub url: String,

    /// Bearer token, when the API requires one.
    #[arg(
        long,
        env = "FAULTLINE_API_TOKEN",
        hide_env_values = true,
        global = true,
        value_parser = token
    )]
    pub token: Option<String>,

    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ApiClientArgs {
    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: self.url.trim_end_matches('/').to_owned(),
            token: self.token.clone(),
        }
    }
}

/// An API client: one request, its status and its JSON body (or the text, if not JSON).
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        let body = body.map(|b| b.to_string());
        let (status, body, _) = self.send_text(method, path, body).await?;
        Ok((status, body))
    }

    /// [`ApiClient::send`] with the body as JSON text, answering the response's text too (a
    /// job's payload and result are exact only there: a `Value` respells numbers and sorts
    /// keys).
    ///
    /// # Errors
    /// When the API cannot be reached or its answer cannot be read.
    pub async fn send_text(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value, String)> {
        use anyhow::Context;
        let mutating = method != reqwest::Method::GET;
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        } else if mutating {
            // Every mutating route asks for JSON, a body-less one included (docs/http-api.md).
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the Faultline API at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
        Ok((status, body, text))
    }
}

/// A worker setting the library refused, named by the flag that set it.
pub fn flag_error(error: faultline::worker::ConfigError) -> anyhow::Error {
    let flag = match error.setting {
        "listen" => "--listen-database-url".to_owned(),
        field => format!("--{}", field.replace('_', "-")),
    };
    anyhow::anyhow!("invalid {flag}: {}", error.message)
}

/// `/v1/{collection}/{name}{tail}`, the name escaped (a queue or schedule name may hold `/`,
/// `?` or spaces).
pub fn resource_path(collection: &str, name: &str, tail: &str) -> String {
    format!(
        "/v1/{collection}/{}{tail}",
        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    )
}
