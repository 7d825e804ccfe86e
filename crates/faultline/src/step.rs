//! A durable step as recorded, and what a parked job waits for (docs/durable.md): the model
//! types the store reads and the job carries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::payload::Payload;

/// A recorded step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Step {
    /// Its name, unique within the job.
    pub name: String,
    /// What it returned (JSON, exactly as recorded; `null` for nothing).
    #[cfg_attr(feature = "http", schema(value_type = Option<serde_json::Value>))]
    pub result: Option<Payload>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The attempt that ran it.
    pub attempt: i32,
    /// The lease token it was recorded under.
    pub lease_token: i64,
}

/// What a job parked in `waiting` waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WaitingFor {
    /// The signal's name.
    pub signal: String,
    /// When the wait times out (the job runs again, and the wait returns nothing).
    pub until: DateTime<Utc>,
}
