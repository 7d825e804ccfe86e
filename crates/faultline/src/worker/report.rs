//! What a job task hands the reporter: the outcome to record under a lease.

use super::handler::JobError;
use crate::lease::Lease;

#[derive(Debug)]
pub(crate) enum ReportKind {
    /// With the handler's result as JSON text, if it returned one.
    Complete(Option<String>),
    Fail(JobError),
    Release,
}

impl ReportKind {
    /// The operation's name in `faultline_db_errors_total{op}`.
    pub fn op(&self) -> &'static str {
        match self {
            ReportKind::Complete(_) => "complete",
            ReportKind::Fail(_) => "fail",
            ReportKind::Release => "release",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Report {
    pub lease: Lease,
    pub queue: String,
    pub kind: String,
    pub what: ReportKind,
    /// This report replaces one the database refused for good (see `reporter::refused`): if
    /// it is refused too, it is not replaced again.
    pub replaced: bool,
}
