//! Wake-ups: a dedicated connection `LISTEN`s on the job channel and wakes the claim loop when
//! one of our queues gets an eligible job. The claim loop also polls, so a notification lost to
//! a dropped connection only delays a job by one poll interval.

use std::sync::Arc;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::Listen;
use super::shared::Shared;
use super::shared::DB_RETRY;
use crate::store::JOB_CHANNEL;

pub(crate) async fn run(shared: Arc<Shared>, wake: Arc<Notify>, stop: CancellationToken) {
    if shared.config.listen == Listen::Off {
        return;
    }
    let mut failures = 0u32;
    loop {
        let connected = tokio::select! {
            listener = connect(&shared) => listener,
            _ = stop.cancelled() => return,
        };
        match connected {
            Ok(mut listener) => {
                failures = 0;
                // Anything notified while we were not listening is unknown: claim once.
                wake.notify_one();
                loop {
                    let note = tokio::select! {
                        note = listener.recv() => note,
                        _ = stop.cancelled() => return,
                    };
                    match note {
                        Ok(note) => {
                            if shared.config.queues.iter().any(|q| q == note.payload()) {
                                wake.notify_one();
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(e) => shared.health.failed("listen", &e.into()),
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(DB_RETRY.delay(failures)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn connect(shared: &Shared) -> Result<PgListener, sqlx::Error> {
    let mut listener = match &shared.config.listen {
        Listen::Url(url) => PgListener::connect(url).await?,
        Listen::Pool | Listen::Off => PgListener::connect_with(shared.store.pool()).await?,
    };
    listener.listen(JOB_CHANNEL).await?;
    Ok(listener)
}
