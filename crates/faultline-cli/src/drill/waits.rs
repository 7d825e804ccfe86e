//! What the drills wait for and read, on their environment: who holds a job, when it finishes,
//! when every acknowledged job has, the workers' summed metrics, and whether any process was
//! restarted.

use std::time::{Duration, Instant};

use faultline::{Job, JobId, JobState};

use super::env::{Env, EnvOptions};
use super::report::Report;

impl Env {
    /// An environment of the default shape with lease TTL `ttl`.
    pub async fn start_with_ttl(
        report: &mut Report,
        ttl: Duration,
        db: Option<&str>,
    ) -> anyhow::Result<Env> {
        let options = EnvOptions {
            lease_ttl: ttl,
            ..EnvOptions::default()
        };
        Env::start(report, options, db).await
    }

    /// The job's state and lease owner.
    pub async fn state_of(&self, id: JobId) -> Option<(JobState, Option<String>)> {
        let job = self.job(id).await.ok()?;
        Some((job.state, job.lease_owner))
    }

    /// Wait until `id` runs on a worker other than `not`, and return that worker.
    pub async fn holder(
        &self,
        report: &Report,
        id: JobId,
        not: Option<&str>,
    ) -> anyhow::Result<String> {
        self.wait_for(
            report,
            "a worker to run the job",
            Duration::from_secs(60),
            || async {
                match self.state_of(id).await? {
                    (JobState::Running, Some(owner)) if Some(owner.as_str()) != not => Some(owner),
                    _ => None,
                }
            },
        )
        .await
    }

    /// Wait until `id` is finished, and return it.
    pub async fn terminal(
        &self,
        report: &Report,
        id: JobId,
        timeout: Duration,
    ) -> anyhow::Result<Job> {
        self.wait_for(report, &format!("job {id} to finish"), timeout, || async {
            let job = self.job(id).await.ok()?;
            job.state.is_terminal().then_some(job)
        })
        .await
    }

    /// Wait until every job of `acked` is finished; how long it took.
    pub async fn all_finished(
        &self,
        report: &Report,
        acked: &[JobId],
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.wait_for(
            report,
            "every acknowledged job to finish",
            timeout,
            || async {
                let open: i64 = sqlx::query_scalar(
                    "select count(*) from unnest($1::uuid[]) a(id)
                     where not exists (select 1 from faultline.all_jobs j
                                       where j.id = a.id
                                         and j.state in ('succeeded', 'failed', 'cancelled'))",
                )
                .bind(acked)
                .fetch_one(&self.pool)
                .await
                .ok()?;
                (open == 0).then_some(())
            },
        )
        .await?;
        Ok(started.elapsed())
    }

    /// How many of `acked` are in `state` now.
    pub async fn count_in(&self, acked: &[JobId], state: JobState) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from faultline.all_jobs where id = any($1) and state = $2",
        )
        .bind(acked)
        .bind(state)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Sum of `metric` over the API and every worker that is alive (maintenance counters, such
    /// as lease expirations, are on whichever process leads).
    pub async fn metric_everywhere(&mut self, metric: &str) -> f64 {
        let mut total = 0.0;
        let ports: Vec<u16> = std::iter::once(&mut self.api)
            .chain(self.workers.iter_mut())
            .filter_map(|w| w.is_alive().then_some(w.port))
            .collect();
        for port in ports {
            total += self.metric(port, metric).await.unwrap_or(0.0);
        }
        total
    }

    /// The API's and every worker's process id, in order.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.api.pid())
            .chain(self.workers.iter().map(|w| w.pid()))
            .collect()
    }

    /// Whether the API and every worker are alive and the very processes of `pids`.
    pub fn same_processes(&mut self, pids: &[u32]) -> bool {
        let alive = self.api.is_alive() && self.workers.iter_mut().all(|w| w.is_alive());
        alive && self.pids() == pids
    }
}
