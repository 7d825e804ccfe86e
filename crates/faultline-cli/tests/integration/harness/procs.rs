//! Real `faultline` processes for the cluster tests: start with flags, scrape `/metrics`,
//! signal, and read what they logged.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `faultline` process, killed when dropped.
pub struct Proc {
    pub name: String,
    pub port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Proc {
    /// `faultline worker` named `name` on `url`, metrics on a free port, plus `extra` flags.
    pub fn worker(url: &str, name: &str, extra: &[&str]) -> Proc {
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let mut args = vec!["worker", "--worker-id", name, "--metrics-listen", &metrics];
        args.extend_from_slice(extra);
        Proc::spawn(url, name, port, &args)
    }

    /// `faultline serve` on a free port, plus `extra` flags.
    pub fn api(url: &str, name: &str, extra: &[&str]) -> Proc {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--listen", &listen];
        args.extend_from_slice(extra);
        Proc::spawn(url, name, port, &args)
    }

    fn spawn(url: &str, name: &str, port: u16, args: &[&str]) -> Proc {
        let log = std::env::temp_dir().join(format!(
            "faultline-test-{}-{name}-{port}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args(args)
            .env("DATABASE_URL", url)
            .env("FAULTLINE_POLL_INTERVAL", "100ms")
            .env("FAULTLINE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Proc {
            name: name.to_owned(),
            port,
            child,
            log,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("still running") as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, and wait (at most 20 s) for a clean exit.
    pub async fn terminate(mut self) {
        self.signal(Signal::SIGTERM);
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap();
        assert!(
            status.success(),
            "{}: {status:?}\n{}",
            self.name,
            self.log()
        );
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `metric`'s value on its `/metrics` (summed over label sets), `None` while unreachable.
    pub async fn metric(&self, metric: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let body = client.get(url).send().await.ok()?.text().await.ok()?;
        Some(
            body.lines()
                .filter(|l| {
                    l.strip_prefix(metric)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}
