//! docs/http-api.md dashboard, in a real headless Chromium (Debian's `chromium` through `chromedriver`,
//! installed by `scripts/ensure-chromium`) against the real `faultline serve` and worker
//! binaries on a private Postgres: every page shows the right data; retry, cancel, pause and
//! resume work through the API (and show in `/metrics` under the API's routes); with a token the
//! page shows nothing until it is given; with the database stopped a banner says so, and the
//! page recovers without a reload. Screenshots go to `$FAULTLINE_UI_SCREENSHOTS` when set (the
//! README's copies: `make screenshots`), else to a temp dir.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use faultline::{db, JobId, JobState, NewJob, Store};
use faultline_pg::{Cluster, StopMode};
use serde_json::{json, Value};

use crate::harness::procs::{free_port, Proc};
use crate::harness::wait_for;

/// A binary from `$var`, else the first of `names` on PATH or in /usr/bin.
fn find_binary(var: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no {} found: run scripts/ensure-chromium (it installs Debian's chromium and \
         chromium-driver), or set {var}",
        names.join(" or ")
    );
}

/// chromedriver and a headless Chromium session, both ended on drop.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    profile: PathBuf,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = find_binary("FAULTLINE_CHROMIUM", &["chromium", "chromium-browser"]);
        let chromedriver = find_binary("FAULTLINE_CHROMEDRIVER", &["chromedriver"]);
        let port = free_port();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_for(
            "chromedriver to answer",
            Duration::from_secs(30),
            || async {
                let status = http.get(format!("{url}/status")).send().await.ok()?;
                status.status().is_success().then_some(())
            },
        )
        .await;
        let profile =
            std::env::temp_dir().join(format!("faultline-chromium-{}-{port}", std::process::id()));
        // The flags this machine needs (its network is closed: no background connections).
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        // Two crypto providers are linked (reqwest's and fantoccini's): name one. Plain HTTP
        // to chromedriver uses none, but the builder insists.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientBuilder::rustls()
            .expect("a TLS configuration for the WebDriver client")
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session through chromedriver");
        let shots = std::env::var_os("FAULTLINE_UI_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile.with_extension("shots"));
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: driver,
            profile,
            shots,
        }
    }

    /// Run `script` (a function body) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// The text of the first element matching `css`, once `ok` accepts it.
    async fn text_until(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            serde_json::to_string(css).unwrap()
        );
        wait_for(what, Duration::from_secs(30), || async {
            let text = self.js(&script).await;
            text.as_str().filter(|t| ok(t)).map(str::to_owned)
        })
        .await
    }

    /// Click the first element matching `css` once it shows. The page re-renders every 2 s,
    /// so an element found may be replaced before the click lands (a stale reference): then
    /// find it again.
    async fn click(&self, css: &str) {
        wait_for(
            &format!("{css} to show and take a click"),
            Duration::from_secs(30),
            || async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                element.click().await.ok()
            },
        )
        .await;
    }

    async fn open(&self, base: &str, route: &str) {
        self.client
            .goto(&format!("{base}/ui#{route}"))
            .await
            .unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A webhook receiver that answers 500 until `healthy` is set, then 204.
async fn receiver(healthy: Arc<AtomicBool>) -> String {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let healthy = healthy.clone();
            async move {
                if healthy.load(Ordering::SeqCst) {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

async fn state_of(store: &Store, id: JobId, want: JobState) {
    wait_for(
        &format!("job {id} to be {want:?}"),
        Duration::from_secs(30),
        || async { (store.get(id).await.ok()?.state == want).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_steers_the_queue_in_a_real_browser() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(Cluster::temporary)
            .await
            .unwrap()
            .expect("a private cluster of this test's own"),
    );
    crate::harness::create_database(&cluster.url("postgres"), "dashboard").await;
    let url = cluster.url("dashboard");
    let pool = db::connect(&url, &db::PoolConfig::default()).unwrap();
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone());

    // A known set of jobs: two that succeed, one that fails twice for good, one webhook whose
    // receiver is down (fails for good on its one attempt), one long sleep on `mail`.
    let healthy = Arc::new(AtomicBool::new(false));
    let hook = receiver(healthy.clone()).await;
    let ok: Vec<JobId> = futures::future::join_all((0..2).map(|i| {
        store.enqueue(NewJob::new(
            "noop",
            faultline::Payload::from_json(format!(r#"{{"i":{i},"n":12345678901234567890123}}"#))
                .unwrap(),
        ))
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().into_job().id)
    .collect();
    let failing = store
        .enqueue(
            NewJob::new("fail", json!({"times": 9, "message": "boom from the test"}))
                .with_max_attempts(2),
        )
        .await
        .unwrap()
        .into_job()
        .id;
    let webhook = store
        .enqueue(NewJob::new("webhook", json!({"url": hook})).with_max_attempts(1))
        .await
        .unwrap()
        .into_job()
        .id;
    let sleeping = store
        .enqueue(NewJob::new("sleep", json!({"ms": 600_000})).with_queue("mail"))
        .await
        .unwrap()
        .into_job()
        .id;
    store
        .put_schedule(
            "nightly",
            &serde_json::from_value(json!({"cron": "0 3 * * *", "kind": "noop"})).unwrap(),
        )
        .await
        .unwrap();

    let worker = Proc::worker(
        &url,
        "ui-worker",
        &[
            "--queues",
            "default,mail",
            "--webhook-allow-private",
            "--retry-base",
            "10ms",
            "--retry-cap",
            "10ms",
        ],
    );
    let api = Proc::api(&url, "ui-api", &[]);
    let base = format!("http://127.0.0.1:{}", api.port);
    for id in &ok {
        state_of(&store, *id, JobState::Succeeded).await;
    }
    state_of(&store, failing, JobState::Failed).await;
    state_of(&store, webhook, JobState::Failed).await;
    state_of(&store, sleeping, JobState::Running).await;
    wait_for("the API to be ready", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{base}/ready")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let browser = Browser::start().await;

    // Queues: the counts of the known set.
    browser.open(&base, "/queues").await;
    let count =
        |queue: &str, state: &str| format!("[data-queue=\"{queue}\"] [data-count=\"{state}\"]");
    for (queue, state, n) in [
        ("default", "succeeded", "2"),
        ("default", "failed", "2"),
        ("default", "queued", "0"),
        ("mail", "running", "1"),
    ] {
        browser
            .text_until(
                &format!("{queue} {state} = {n}"),
                &count(queue, state),
                |t| t == n,
            )
            .await;
    }
    let marker = browser
        .js("window.faultlineTest = 'same page'; return performance.getEntriesByType('navigation')[0].transferSize + performance.getEntriesByType('resource').reduce((a, r) => a + r.transferSize, 0);")
        .await;
    let render = browser
        .js("const m = performance.getEntriesByName('faultline-rendered')[0]; return m ? m.startTime : null;")
        .await;
    eprintln!(
        "dashboard: queues page {marker} bytes transferred, first data render at {render} ms"
    );
    browser.screenshot("queues").await;

    // Jobs: filtered to failed, newest first; open the failed job and read its history.
    browser.open(&base, "/jobs?state=failed").await;
    browser
        .text_until(
            "the failed filter to list the job",
            &format!("[data-row=\"{failing}\"] [data-state]"),
            |t| t == "failed",
        )
        .await;
    let rows = browser
        .js("return document.querySelectorAll('[data-table=jobs] tbody tr').length")
        .await;
    assert_eq!(rows, json!(2), "two failed jobs listed");
    browser.screenshot("jobs").await;
    browser
        .click(&format!("[data-row=\"{failing}\"] a[data-job]"))
        .await;
    let history = browser
        .text_until(
            "the job page's attempts",
            "[data-table=attempts] tbody",
            |t| t.matches("boom from the test").count() == 2,
        )
        .await;
    assert!(history.contains("ui-worker"), "{history}");
    let payload = browser
        .text_until("the payload", "[data-json=payload]", |t| {
            t.contains("times")
        })
        .await;
    assert!(
        payload.contains("\"message\": \"boom from the test\""),
        "{payload}"
    );
    browser.screenshot("job").await;

    // The payload is shown digit for digit.
    browser.open(&base, &format!("/job/{}", ok[0])).await;
    browser
        .text_until("the big number", "[data-json=payload]", |t| {
            t.contains("12345678901234567890123")
        })
        .await;

    // Retry: the webhook's receiver is back; press retry on its page and see it succeed.
    healthy.store(true, Ordering::SeqCst);
    browser.open(&base, &format!("/job/{webhook}")).await;
    browser
        .text_until("the webhook job", "[data-field=state]", |t| t == "failed")
        .await;
    browser.click("[data-action=retry]").await;
    browser
        .text_until("the retried job to succeed", "[data-field=state]", |t| {
            t == "succeeded"
        })
        .await;

    // Cancel the running sleep job.
    browser.open(&base, &format!("/job/{sleeping}")).await;
    browser
        .text_until("the sleep job", "[data-field=state]", |t| t == "running")
        .await;
    browser.click("[data-action=cancel]").await;
    browser
        .text_until("the cancelled job", "[data-field=state]", |t| {
            t == "cancelled"
        })
        .await;
    state_of(&store, sleeping, JobState::Cancelled).await;

    // Pause `default`: a new job stays queued while one on `mail` runs; resume, and it runs.
    browser.open(&base, "/queues").await;
    browser
        .click("[data-queue=\"default\"] [data-action=pause]")
        .await;
    browser
        .text_until(
            "default to show paused",
            "[data-queue=\"default\"] [data-paused]",
            |t| t == "paused",
        )
        .await;
    let held = store
        .enqueue(NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .into_job()
        .id;
    let other = store
        .enqueue(NewJob::new("noop", json!({})).with_queue("mail"))
        .await
        .unwrap()
        .into_job()
        .id;
    state_of(&store, other, JobState::Succeeded).await;
    assert_eq!(store.get(held).await.unwrap().state, JobState::Queued);
    browser
        .text_until("the held job to count", &count("default", "queued"), |t| {
            t == "1"
        })
        .await;
    browser
        .click("[data-queue=\"default\"] [data-action=resume]")
        .await;
    state_of(&store, held, JobState::Succeeded).await;

    // Schedules: listed with its next run; pause and resume it.
    browser.open(&base, "/schedules").await;
    browser
        .text_until(
            "the schedule",
            "[data-schedule=nightly] [data-paused]",
            |t| t == "active",
        )
        .await;
    browser.screenshot("schedules").await;
    browser
        .click("[data-schedule=nightly] [data-action=pause]")
        .await;
    browser
        .text_until(
            "the paused schedule",
            "[data-schedule=nightly] [data-paused]",
            |t| t == "paused",
        )
        .await;
    browser
        .click("[data-schedule=nightly] [data-action=resume]")
        .await;
    browser
        .text_until(
            "the resumed schedule",
            "[data-schedule=nightly] [data-paused]",
            |t| t == "active",
        )
        .await;

    // Workers: the live worker, and who leads.
    browser.open(&base, "/workers").await;
    browser
        .text_until("the worker", "[data-worker=ui-worker]", |t| {
            t.contains("ui-worker")
        })
        .await;
    browser
        .text_until("the leader", "[data-holder]", |t| !t.is_empty())
        .await;
    browser.screenshot("workers").await;

    // Every action went through the API's own routes, and shows in its metrics.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for route in [
        "/v1/jobs/{id}/retry",
        "/v1/jobs/{id}/cancel",
        "/v1/queues/{name}/pause",
        "/v1/queues/{name}/resume",
        "/v1/schedules/{name}/pause",
        "/v1/schedules/{name}/resume",
        "/v1/throughput",
        "/v1/jobs/{id}/dependents",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("faultline_http_requests_total")
                    && l.contains(&format!("route=\"{route}\""))),
            "no request to {route} in /metrics"
        );
    }

    // The database stops: a banner, the last data kept; it starts again: the banner goes and
    // the page refreshes, with no reload.
    browser.open(&base, "/queues").await;
    browser
        .text_until("the queues page", &count("default", "succeeded"), |t| {
            t == "4"
        })
        .await;
    browser
        .js("window.faultlineTest = 'same page'; return null;")
        .await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
    browser
        .text_until("the outage banner", "#banner:not([hidden])", |t| {
            t.contains("Cannot refresh")
        })
        .await;
    assert_eq!(
        browser
            .js("return document.querySelectorAll('[data-queue]').length")
            .await,
        json!(2),
        "the last data stays on the page"
    );
    browser.screenshot("outage").await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .unwrap();
    wait_for("the banner to go", Duration::from_secs(60), || async {
        let hidden = browser
            .js("return document.getElementById('banner').hidden")
            .await;
        (hidden == json!(true)).then_some(())
    })
    .await;
    assert_eq!(
        browser.js("return window.faultlineTest || null").await,
        json!("same page"),
        "the page was reloaded"
    );

    // A phone's width: the page still fits (tables scroll inside their box).
    browser.client.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert_eq!(overflow, json!(0), "the page is wider than a phone");
    browser.screenshot("queues-phone").await;
    browser.close().await;
    api.kill().await;
    worker.kill().await;
}

/// The operator's view: a search by idempotency key, by id and by creation time; a bulk cancel
/// and retry of a filtered set behind a count and a confirmation; a job's attempt timeline
/// (failures and the success); its parents and children; latency and throughput charts over
/// the last hour and day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_searches_acts_on_a_filtered_set_and_draws_each_jobs_history() {
    let db = crate::harness::TestDb::new().await;
    let store = db.store();
    let enqueue = |job: NewJob| {
        let store = store.clone();
        async move { store.enqueue(job).await.unwrap().into_job().id }
    };
    // Served by the worker: one that succeeds (with a key), one that fails twice for good.
    let keyed = enqueue(
        NewJob::new("noop", json!({}))
            .with_queue("t")
            .with_idempotency_key("ui-key-7"),
    )
    .await;
    let failing = enqueue(
        NewJob::new("fail", json!({"times": 9, "message": "boom twice"}))
            .with_queue("t")
            .with_max_attempts(2),
    )
    .await;
    // Not served: three held jobs, and a parent with a child waiting on it.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(enqueue(NewJob::new("noop", json!({ "i": i })).with_queue("held")).await);
    }
    let parent = enqueue(NewJob::new("dep", json!({})).with_queue("deps")).await;
    let child = enqueue(
        NewJob::new("dep", json!({}))
            .with_queue("deps")
            .with_dependency(parent),
    )
    .await;
    // A minute the maintainer counted, with latency, for the charts.
    sqlx::query(
        "insert into faultline.queue_throughput
             (minute, queue, succeeded, failed, cancelled, wait_p50_ms, wait_p95_ms, run_p50_ms, run_p95_ms)
         values (date_trunc('minute', now()) - interval '5 minutes', 't', 40, 2, 0, 3, 120, 8, 15)",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let worker = Proc::worker(
        &db.url,
        "ui-search-worker",
        &[
            "--queues",
            "t",
            "--retry-base",
            "10ms",
            "--retry-cap",
            "10ms",
        ],
    );
    let api = Proc::api(&db.url, "ui-search-api", &[]);
    let base = format!("http://127.0.0.1:{}", api.port);
    state_of(&store, keyed, JobState::Succeeded).await;
    state_of(&store, failing, JobState::Failed).await;
    wait_for("the API to be ready", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{base}/ready")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let browser = Browser::start().await;
    let search = |fields: Value| {
        format!(
            "const f = document.querySelector('[data-filters]');
             for (const [k, v] of Object.entries({fields})) f.elements[k].value = v;
             f.requestSubmit(); return null;"
        )
    };

    // By idempotency key: the one job.
    browser.open(&base, "/jobs").await;
    browser
        .text_until("the jobs page", "h1", |t| t == "Jobs")
        .await;
    browser.js(&search(json!({"key": "ui-key-7"}))).await;
    let rows = "return [...document.querySelectorAll('[data-table=jobs] tbody tr')].map(r => r.dataset.row)";
    wait_for("the search by key", Duration::from_secs(30), || async {
        (browser.js(rows).await == json!([keyed.to_string()])).then_some(())
    })
    .await;
    // By creation time: a range in the future holds nothing.
    browser
        .js(&search(
            json!({"key": "", "created_after": "2999-01-01T00:00"}),
        ))
        .await;
    browser
        .text_until("an empty result", "main p.muted", |t| {
            t == "No job matches."
        })
        .await;
    // By id: straight to the job page, with its timeline: created, started, succeeded.
    browser.open(&base, "/jobs").await;
    browser
        .text_until("the jobs page", "h1", |t| t == "Jobs")
        .await;
    browser.js(&search(json!({"id": keyed.to_string()}))).await;
    browser
        .text_until("the job page", "[data-field=state]", |t| t == "succeeded")
        .await;
    let events = browser
        .js("return [...document.querySelectorAll('[data-timeline] [data-event]')].map(e => e.dataset.event)")
        .await;
    assert_eq!(events, json!(["created", "started", "succeeded"]));

    // A job with a recorded step and parked for a signal: its timeline shows both.
    let durable = enqueue(NewJob::new("noop", json!({})).with_queue("parked")).await;
    let claimed = store
        .claim_batch(
            &["parked".to_owned()],
            "ui-durable",
            1,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
    let charged = faultline::Payload::from_json(r#"{"charge":"ch_9"}"#).unwrap();
    store
        .record_step(&claimed.lease, "charge", &charged)
        .await
        .unwrap();
    store
        .wait_for_signal(&claimed.lease, "refund", Duration::from_secs(3600))
        .await
        .unwrap();
    browser.open(&base, &format!("/job/{durable}")).await;
    let step = browser
        .text_until("the step", "[data-timeline] [data-event=step]", |t| {
            t.contains("step charge recorded by attempt 1")
        })
        .await;
    assert!(step.contains("ch_9"), "{step}");
    browser
        .text_until("the wait", "[data-field=\"waiting for\"]", |t| {
            t.contains("signal \"refund\"")
        })
        .await;

    // The failed job's timeline: both failures, with the worker and the error.
    browser.open(&base, &format!("/job/{failing}")).await;
    let timeline = browser
        .text_until("the failures", "[data-timeline]", |t| {
            t.matches("boom twice").count() == 2
        })
        .await;
    assert!(
        timeline.contains("attempt 1 failed on ui-search-worker"),
        "{timeline}"
    );
    assert!(timeline.contains("attempt 2 failed"), "{timeline}");
    browser.screenshot("job-timeline").await;

    // Dependencies: the child shows its parent and the parent its child, each with its state.
    browser.open(&base, &format!("/job/{child}")).await;
    browser
        .text_until(
            "the parent",
            &format!("[data-parents] [data-dep=\"{parent}\"]"),
            |t| t.contains("queued"),
        )
        .await;
    browser.open(&base, &format!("/job/{parent}")).await;
    browser
        .text_until(
            "the child",
            &format!("[data-children] [data-dep=\"{child}\"]"),
            |t| t.contains("waiting"),
        )
        .await;

    // Bulk: cancel every job of `held`, after a count and a confirmation.
    browser.open(&base, "/jobs?queue=held").await;
    browser.click("[data-bulk-all=cancel]").await;
    let asked = browser
        .text_until("the confirmation", "[data-confirm=cancel]", |t| {
            t.contains("Cancel 3 jobs matching")
        })
        .await;
    assert!(asked.contains("?"), "{asked}");
    // Nothing moved before the confirmation.
    for id in &held {
        assert_eq!(store.get(*id).await.unwrap().state, JobState::Queued);
    }
    browser.screenshot("bulk-confirm").await;
    browser
        .click("[data-confirm=cancel] [data-action=confirm]")
        .await;
    for id in &held {
        state_of(&store, *id, JobState::Cancelled).await;
    }
    browser
        .text_until("the outcome", "#banner", |t| {
            t.contains("3 of 3 job(s) cancelled")
        })
        .await;
    assert_eq!(
        store.get(parent).await.unwrap().state,
        JobState::Queued,
        "another queue untouched"
    );
    // And retry them: the cancelled jobs of `held`, back to queued.
    browser
        .open(&base, "/jobs?queue=held&state=cancelled")
        .await;
    browser.click("[data-bulk-all=retry]").await;
    browser
        .text_until("the retry confirmation", "[data-confirm=retry]", |t| {
            t.contains("Retry 3 jobs")
        })
        .await;
    browser
        .click("[data-confirm=retry] [data-action=confirm]")
        .await;
    for id in &held {
        state_of(&store, *id, JobState::Queued).await;
    }

    // Charts: throughput and latency per queue, over the last hour and the last day.
    for span in ["hour", "day"] {
        browser.open(&base, &format!("/queues?span={span}")).await;
        browser
            .text_until(
                "the span",
                &format!("[data-span={span}][aria-current]"),
                |t| !t.is_empty(),
            )
            .await;
        let drawn = browser
            .js(
                "const c = (k) => document.querySelector(`[data-queue=t] [data-chart=${k}] svg`); \
                 return [c('throughput').dataset.total, c('latency').dataset.worst, \
                         c('latency').querySelectorAll('rect').length > 0]",
            )
            .await;
        assert_eq!(drawn, json!(["42", "120", true]), "{span}");
    }
    browser.screenshot("queues-day").await;
    browser.close().await;
    api.kill().await;
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_dashboard_shows_nothing_until_it_is_given() {
    let db = crate::harness::TestDb::new().await;
    db.store()
        .enqueue(NewJob::new("noop", json!({})).with_queue("secret-queue"))
        .await
        .unwrap();
    let api = Proc::api(&db.url, "ui-token-api", &["--api-token", "ui-test-token"]);
    let base = format!("http://127.0.0.1:{}", api.port);
    wait_for("the API to be ready", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{base}/ready")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let browser = Browser::start().await;
    browser.open(&base, "/queues").await;
    wait_for("the token prompt", Duration::from_secs(30), || async {
        let shown = browser
            .js("return !document.getElementById('login').hidden")
            .await;
        (shown == json!(true)).then_some(())
    })
    .await;
    let leaked = browser
        .js("return document.body.innerText.includes('secret-queue') || document.querySelectorAll('[data-table]').length > 0")
        .await;
    assert_eq!(leaked, json!(false), "data shown without the token");
    browser.screenshot("token").await;
    // A wrong token: refused, still nothing.
    let field = browser.client.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("wrong").await.unwrap();
    browser.click("#login button[type=submit]").await;
    browser
        .text_until("the refusal", "#login-error", |t| t.contains("refused"))
        .await;
    let field = browser.client.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("ui-test-token").await.unwrap();
    browser.click("#login button[type=submit]").await;
    browser
        .text_until(
            "the queues after sign-in",
            "[data-queue=\"secret-queue\"] [data-count=queued]",
            |t| t == "1",
        )
        .await;
    let cookies = browser.client.get_all_cookies().await.unwrap();
    assert!(cookies.is_empty(), "the dashboard set cookies: {cookies:?}");
    browser.close().await;
    api.kill().await;
}
