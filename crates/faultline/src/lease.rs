//! Leases and fencing tokens.
//!
//! A claim hands the worker a [`Lease`]: the job id, the attempt number and a fencing token drawn
//! from a database sequence (so tokens only grow). Every report the worker makes afterwards
//! (heartbeat, complete, fail, release) is an `UPDATE … WHERE id = $1 AND lease_token = $2 AND
//! state = 'running'`; once the job has been re-claimed, reaped, cancelled or finished, that
//! guard matches no row and the report changes nothing.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job::JobId;

/// A worker's right to act on one running job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The job.
    pub job_id: JobId,
    /// The fencing token: unique to this claim, larger than every earlier token.
    pub token: i64,
    /// The attempt number this claim started (1-based).
    pub attempt: i32,
    /// The worker holding it.
    pub owner: String,
    /// When it lapses unless extended (database clock).
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// The lease `token` names on job `id`, as a remote worker's report carries it: enough
    /// for the fenced transitions, which check only the id and the token (the attempt, owner
    /// and expiry are left blank; [`crate::Store::lease_of`] reads them).
    pub(crate) fn of(job_id: JobId, token: i64) -> Lease {
        Lease {
            job_id,
            token,
            attempt: 0,
            owner: String::new(),
            expires_at: Utc::now(),
        }
    }
}

/// Why a report under a lease was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseLostReason {
    /// The job was cancelled by request while this lease held it; the holder should stop.
    Cancelled,
    /// Another lease (or none) now governs the job: the reaper took it back after expiry, another
    /// worker re-claimed it, or it already finished under this lease.
    Superseded,
    /// The job no longer exists (pruned).
    Gone,
}

impl fmt::Display for LeaseLostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseLostReason::Cancelled => "the job was cancelled",
            LeaseLostReason::Superseded => "the lease expired or was superseded by another",
            LeaseLostReason::Gone => "the job no longer exists",
        })
    }
}
