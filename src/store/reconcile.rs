//! Applying what Segmind's list and details endpoints report: each job's
//! fields, and its status through the same rules as webhooks (source
//! `reconcile`), in one transaction.

use super::{outbox::SinkRoute, plan::Planner};
use crate::{
    domain::{Decision, JobFields, Observation, Source, Status},
    time::now_rfc3339,
};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeSet;

/// One job as Segmind's API described it.
#[derive(Debug, Clone)]
pub struct RemoteObservation {
    pub finetune_id: String,
    pub status: Status,
    pub fields: JobFields,
}

/// What applying a pass's observations did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReconcileSummary {
    pub jobs_seen: usize,
    pub jobs_created: usize,
    pub transitions: usize,
    pub deliveries: usize,
    /// The status of each transition recorded.
    #[serde(skip)]
    #[schema(ignore)]
    pub applied: Vec<String>,
}

pub(super) fn apply(
    conn: &Connection,
    observations: &[RemoteObservation],
    routes: &[SinkRoute],
) -> rusqlite::Result<ReconcileSummary> {
    let ids: BTreeSet<&str> = observations
        .iter()
        .map(|o| o.finetune_id.as_str())
        .collect();
    let mut planner = Planner::load(conn, &ids, routes)?;
    let now = now_rfc3339();
    let mut summary = ReconcileSummary {
        jobs_seen: ids.len(),
        ..ReconcileSummary::default()
    };
    for remote in observations {
        let observation = Observation {
            finetune_id: &remote.finetune_id,
            status: &remote.status,
            fields: &remote.fields,
            source: Source::Reconcile,
            observed_at: &now,
        };
        let planned = planner.observe(&observation, None);
        if planned.effect.decision == Decision::Apply {
            summary.transitions += 1;
            summary.applied.push(remote.status.as_str().to_owned());
            if planned.effect.previous.is_none() {
                summary.jobs_created += 1;
            }
        }
        summary.deliveries += planned.deliveries;
    }
    planner.write(conn, &now)?;
    Ok(summary)
}
