//! A drill's report: one timestamped line per event as it happens, then a table of checks and
//! figures; or all of it as JSON.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Event {
    pub at_seconds: f64,
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub drill: String,
    pub passed: bool,
    pub skipped: Option<String>,
    pub seconds: f64,
    pub events: Vec<Event>,
    pub checks: Vec<Check>,
    pub figures: Vec<Figure>,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    quiet: bool,
    #[serde(skip)]
    spinner: ProgressBar,
}

impl Report {
    pub fn new(drill: &str, quiet: bool) -> Self {
        let spinner = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        };
        let report = Report {
            drill: drill.to_owned(),
            passed: false,
            skipped: None,
            seconds: 0.0,
            events: Vec::new(),
            checks: Vec::new(),
            figures: Vec::new(),
            started: Instant::now(),
            quiet,
            spinner,
        };
        report.say(&format!("== drill {drill}"));
        report
    }

    fn say(&self, line: &str) {
        if self.quiet {
            eprintln!("{line}");
        } else if self.spinner.is_hidden() {
            // Not a terminal (CI, a log file): the spinner draws nothing, and neither would its
            // println, so print the line ourselves.
            println!("{line}");
        } else {
            self.spinner.println(line);
        }
    }

    /// Record and print an event.
    pub fn event(&mut self, text: impl Into<String>) {
        let text = text.into();
        let at = self.started.elapsed().as_secs_f64();
        self.say(&format!("[{at:>7.3}s] {text}"));
        self.events.push(Event {
            at_seconds: at,
            text,
        });
    }

    /// Show what is being waited for.
    pub fn waiting(&self, what: &str) {
        self.spinner.set_message(what.to_owned());
    }

    pub fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Into<String>) {
        let (name, detail) = (name.into(), detail.into());
        self.event(format!(
            "check {}: {name} ({detail})",
            if passed { "ok" } else { "FAILED" }
        ));
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
    }

    pub fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.figures.push(Figure {
            name: name.into(),
            value: value.into(),
        });
    }

    pub fn skip(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.event(format!("skipped: {why}"));
        self.skipped = Some(why);
    }

    /// Close the report: passed when every check passed (and there was at least one, or the
    /// drill was skipped).
    pub fn finish(&mut self, error: Option<anyhow::Error>) {
        if let Some(error) = error {
            self.check("the drill ran to the end", false, format!("{error:#}"));
        }
        self.passed = (self.skipped.is_some() || !self.checks.is_empty())
            && self.checks.iter().all(|c| c.passed);
        self.seconds = self.started.elapsed().as_secs_f64();
        self.spinner.finish_and_clear();
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\ndrill {}: {} in {:.1}s\n",
            self.drill,
            if self.skipped.is_some() {
                "SKIPPED"
            } else if self.passed {
                "PASSED"
            } else {
                "FAILED"
            },
            self.seconds
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<4}  {:<58}  {}\n",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        for f in &self.figures {
            out.push_str(&format!("  {:<4}  {:<58}  {}\n", "", f.name, f.value));
        }
        out
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}
