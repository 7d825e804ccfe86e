//! `faultline bench --quick --json`: a smoke test of the benchmark harness (every figure is
//! there and positive), not a speed assertion; speed lives in BENCHMARKS.md.
//!
//! Its own test binary, so it never runs beside the timing-sensitive tests (cargo runs test
//! binaries one at a time).

use serde_json::Value;

#[tokio::test]
async fn quick_bench_reports_every_figure_positive() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline"));
    command.args(["bench", "--quick", "--json"]);
    if let Ok(url) = std::env::var("DATABASE_URL") {
        command.env("DATABASE_URL", url);
    } else {
        command.env_remove("DATABASE_URL");
    }
    let output = command.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "faultline bench failed: {stderr}");
    let results: Value = serde_json::from_slice(&output.stdout).expect("bench --json prints JSON");
    let figures = results["figures"].as_array().expect("figures");
    let names: Vec<&str> = figures
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for expected in [
        "ceiling: raw single-row INSERT",
        "ceiling: raw claim 100 + complete",
        "enqueue: Store::enqueue",
        "enqueue: POST /v1/jobs",
        "bulk: Store::enqueue_batch",
        "bulk: POST /v1/jobs/batch",
        "drain: 1 worker",
        "drain: 2 worker",
        "latency p50",
        "latency p99",
        "recovery: kill",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(expected)),
            "{expected} missing: {names:?}"
        );
    }
    for figure in figures {
        let name = figure["name"].as_str().unwrap();
        if name.starts_with("recovery: overhead") {
            continue; // may legitimately be a few ms either side of zero
        }
        let median = figure["median"].as_f64().unwrap();
        assert!(median > 0.0, "{name}: {median}");
    }
    for figure in figures
        .iter()
        .filter(|f| f["name"].as_str().unwrap().starts_with("drain:"))
    {
        assert!(figure["percent_of_ceiling"].as_f64().unwrap() > 0.0);
    }
}
