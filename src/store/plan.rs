//! Applying many observations of jobs at once: load the jobs they name, run
//! each observation through `domain::job::observe` in order, in memory, and
//! collect what to write — the changed jobs, the new transitions with their
//! events, and one delivery per matching sink. Webhooks and reconcile passes
//! both go through here, so a status seen on both paths is recorded once.

use super::{
    jobs::{self, NewTransition},
    outbox::{self, NewDelivery, SinkRoute},
};
use crate::domain::{Decision, Effect, Job, Observation, event, observe};
use rusqlite::Connection;
use std::collections::{BTreeSet, HashMap};

pub(super) struct Planner<'r> {
    known: HashMap<String, Option<Job>>,
    changed: BTreeSet<String>,
    transitions: Vec<NewTransition>,
    deliveries: Vec<NewDelivery>,
    routes: &'r [SinkRoute],
}

/// What one observation did, with the transition it recorded.
pub(super) struct Planned {
    pub effect: Effect,
    pub transition_id: Option<String>,
    pub deliveries: usize,
}

impl<'r> Planner<'r> {
    /// Loads the jobs with these ids.
    pub fn load(
        conn: &Connection,
        ids: &BTreeSet<&str>,
        routes: &'r [SinkRoute],
    ) -> rusqlite::Result<Planner<'r>> {
        Ok(Planner {
            known: jobs::load(conn, ids)?,
            changed: BTreeSet::new(),
            transitions: Vec::new(),
            deliveries: Vec::new(),
            routes,
        })
    }

    pub fn job(&self, finetune_id: &str) -> Option<&Job> {
        self.known.get(finetune_id).and_then(Option::as_ref)
    }

    /// Applies one observation; `receipt_id` links the transition to the
    /// webhook that caused it.
    pub fn observe(&mut self, obs: &Observation<'_>, receipt_id: Option<i64>) -> Planned {
        let job = self.known.entry(obs.finetune_id.to_owned()).or_default();
        let effect = observe(job, obs);
        if effect.changed {
            self.changed.insert(obs.finetune_id.to_owned());
        }
        let mut planned = Planned {
            effect,
            transition_id: None,
            deliveries: 0,
        };
        let (Decision::Apply, Some(job)) = (planned.effect.decision, job.as_ref()) else {
            return planned;
        };
        let event_id = jobs::new_transition_id();
        let previous = planned
            .effect
            .previous
            .as_ref()
            .map(|s| s.as_str().to_owned());
        let event = event::status_changed(
            &event_id,
            obs.observed_at,
            previous.as_deref(),
            obs.source.as_str(),
            job,
        );
        for route in self.routes.iter().filter(|r| r.wants(obs.status)) {
            self.deliveries.push(NewDelivery {
                sink: route.name.clone(),
                event_id: event_id.clone(),
                finetune_id: obs.finetune_id.to_owned(),
            });
            planned.deliveries += 1;
        }
        planned.transition_id = Some(event_id.clone());
        self.transitions.push(NewTransition {
            event_id,
            finetune_id: obs.finetune_id.to_owned(),
            from_status: previous,
            to_status: obs.status.as_str().to_owned(),
            source: obs.source,
            observed_at: obs.observed_at.to_owned(),
            receipt_id,
            event,
        });
        planned
    }

    /// Writes the changed jobs, the transitions and the deliveries (due `now`).
    pub fn write(self, conn: &Connection, now: &str) -> rusqlite::Result<()> {
        let changed: Vec<&Job> = self
            .changed
            .iter()
            .filter_map(|id| self.known.get(id).and_then(Option::as_ref))
            .collect();
        jobs::upsert(conn, &changed)?;
        jobs::insert_transitions(conn, &self.transitions)?;
        outbox::insert_deliveries(conn, &self.deliveries, now)
    }
}
