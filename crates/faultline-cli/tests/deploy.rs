//! The operator files: the Grafana dashboard parses, and every metric it and the Prometheus
//! alert rules query is one the binary exports (every name of `faultline::metrics::ALL_NAMES`
//! appears on a live /metrics: see http_live::metrics_parse_as_prometheus_text_and_carry_every_spec_name).

use std::collections::BTreeSet;

use faultline::metrics::ALL_NAMES;

/// Every `faultline_…` identifier in `text`, with histogram suffixes folded to the family name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("faultline_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if ALL_NAMES.contains(&base) {
                    name = base;
                }
            }
        }
        names.insert(name.to_owned());
        i = end;
    }
    names
}

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../").to_owned() + path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn grafana_dashboard_parses_and_queries_only_exported_metrics() {
    let text = read("deploy/grafana/dashboards/faultline.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("every target has an expr"))
        .collect();
    let used = metric_names(&exprs.join("\n"));
    for name in &used {
        assert!(
            ALL_NAMES.contains(&name.as_str()),
            "the dashboard queries {name}, which the binary does not export"
        );
    }
    // Throughput, latency histograms, retries/failures, lease expirations/recoveries, depth and
    // backlog age are all on it.
    for needed in [
        "faultline_jobs_succeeded_total",
        "faultline_job_wait_seconds",
        "faultline_job_execution_seconds",
        "faultline_job_retries_total",
        "faultline_jobs_failed_total",
        "faultline_lease_expirations_total",
        "faultline_jobs_recovered_total",
        "faultline_queue_depth",
        "faultline_queue_oldest_age_seconds",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let text = read("deploy/prometheus/alerts.yml");
    let used = metric_names(&text);
    assert!(used.len() >= 5, "{used:?}");
    for name in &used {
        assert!(
            ALL_NAMES.contains(&name.as_str()),
            "an alert queries {name}, which the binary does not export"
        );
    }
}

/// README.md and every page of docs/, as one text.
fn documentation() -> String {
    let mut text = read("README.md");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
    let mut pages: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    for page in pages {
        text.push_str(&std::fs::read_to_string(page).unwrap());
    }
    text
}

/// Every flag of every subcommand (from clap's own `--help`) is documented in README.md or
/// docs/ (the CLI reference is docs/cli.md).
#[test]
fn readme_documents_every_flag_of_every_command() {
    let readme = documentation();
    let commands: [&[&str]; 11] = [
        &["migrate"],
        &["serve"],
        &["worker"],
        &["up"],
        &["jobs", "enqueue"],
        &["jobs", "get"],
        &["jobs", "list"],
        &["jobs", "retry"],
        &["jobs", "cancel"],
        &["drill"],
        &["bench"],
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    for command in commands {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(command)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            let Some(flag) = word.strip_prefix("--") else {
                continue;
            };
            let flag: String = flag
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            if flag.is_empty() || flag == "help" || flag == "version" {
                continue;
            }
            checked += 1;
            if !readme.contains(&format!("--{flag}")) {
                missing.push(format!("{} --{flag}", command.join(" ")));
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} flags found in the help texts: is the parsing broken?"
    );
    assert!(
        missing.is_empty(),
        "neither README.md nor docs/*.md documents: {missing:?}"
    );
}
