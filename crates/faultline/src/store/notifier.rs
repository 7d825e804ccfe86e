//! Wake-ups for enqueues made on the store's own pool.
//!
//! A transaction that runs `NOTIFY` takes a database-wide lock at commit, so notifying inside
//! every enqueue serialises all enqueue commits and defeats group commit (measured here: 16
//! clients, ~9,000 single-row inserts/s without, ~3,000 with). So an enqueue on the store's pool
//! commits without notifying, and this notifier then sends one `pg_notify` per queue per burst,
//! from one task, right after the commit. A notification lost on the way (the process dies
//! between commit and notify, the database blips) only delays the job until the next poll;
//! workers poll for exactly that reason.
//!
//! An enqueue inside the caller's own transaction still notifies inside it: only that fires
//! exactly when (and if) the caller commits.

use std::collections::BTreeSet;
use std::sync::Mutex;

use sqlx::PgPool;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::JOB_CHANNEL;

/// Coalesces "queue X has a new eligible job" into few `NOTIFY`s.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    /// The running task's inbox; started on first use (it needs a tokio runtime), and started
    /// again if the runtime that ran it went away.
    inbox: Mutex<Option<UnboundedSender<String>>>,
}

impl Notifier {
    /// Ask for `queues` to be notified soon.
    pub fn notify<'a>(
        &self,
        pool: &PgPool,
        persistent: bool,
        queues: impl IntoIterator<Item = &'a str>,
    ) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        for queue in queues {
            let sent = inbox
                .as_ref()
                .is_some_and(|tx| tx.send(queue.to_owned()).is_ok());
            if !sent {
                let (tx, rx) = unbounded_channel();
                tokio::spawn(run(pool.clone(), persistent, rx));
                let _ = tx.send(queue.to_owned());
                *inbox = Some(tx);
            }
        }
    }
}

async fn run(pool: PgPool, persistent: bool, mut inbox: UnboundedReceiver<String>) {
    while let Some(first) = inbox.recv().await {
        let mut queues = BTreeSet::from([first]);
        while let Ok(queue) = inbox.try_recv() {
            queues.insert(queue);
        }
        let queues: Vec<String> = queues.into_iter().collect();
        if let Err(error) = send(&pool, persistent, &queues).await {
            tracing::debug!(%error, "notify failed; workers will find the jobs at their next poll");
        }
    }
}

/// One `pg_notify` per queue; behind PgBouncer inside a transaction of its own (`exec.rs`).
async fn send(pool: &PgPool, persistent: bool, queues: &[String]) -> Result<(), sqlx::Error> {
    let notify = sqlx::query("select pg_notify($1, q) from unnest($2::text[]) as q")
        .bind(JOB_CHANNEL)
        .bind(queues)
        .persistent(persistent);
    if persistent {
        notify.execute(pool).await?;
    } else {
        let mut tx = pool.begin().await?;
        notify.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    Ok(())
}
