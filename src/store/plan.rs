//! Applying many observations of jobs at once: load the jobs they name, run
//! each observation through `domain::job::observe` in order, in memory, and
//! collect what to write — the changed jobs, the new transitions, the events
//! they make (a status change, or an update of fields users act on), and one
//! delivery per sink that takes each event. Webhooks and reconcile passes
//! both go through here, so a status seen on both paths is recorded once.
//!
//! The planner itself does no I/O: it starts from the jobs a backend loaded
//! and ends in a [`Plan`] of rows for the backend to write, so what a batch
//! writes is decided here once, whatever the database.

use super::sql::{Conn, DbResult};
use super::{
    events::{self, NewEvent},
    jobs::{self, NewTransition},
    outbox::{self, NewDelivery, SinkRoute},
};
use crate::domain::{Decision, Effect, Job, Observation, event, event::EventType, observe};
use std::collections::{BTreeSet, HashMap};

/// The rows a batch of observations writes.
pub(super) struct Plan {
    /// The jobs that changed, as they are now.
    pub jobs: Vec<Job>,
    pub transitions: Vec<NewTransition>,
    pub events: Vec<NewEvent>,
    pub deliveries: Vec<NewDelivery>,
}

impl Plan {
    /// Writes the plan on the writer's connection (deliveries due `now`).
    pub fn write(&self, conn: &dyn Conn, now: &str) -> DbResult<()> {
        let changed: Vec<&Job> = self.jobs.iter().collect();
        jobs::upsert(conn, &changed)?;
        jobs::insert_transitions(conn, &self.transitions)?;
        events::insert(conn, &self.events)?;
        outbox::insert_deliveries(conn, &self.deliveries, now)
    }
}

pub(super) struct Planner<'r> {
    known: HashMap<String, Option<Job>>,
    changed: BTreeSet<String>,
    transitions: Vec<NewTransition>,
    events: Vec<NewEvent>,
    deliveries: Vec<NewDelivery>,
    routes: &'r [SinkRoute],
}

/// What one observation did, with the transition it recorded.
pub(super) struct Planned {
    pub effect: Effect,
    pub transition_id: Option<String>,
    /// The `finetune.updated` event made, when fields changed without a
    /// status change.
    pub update_id: Option<String>,
    /// Deliveries enqueued, for the transition or the update.
    pub deliveries: usize,
}

impl<'r> Planner<'r> {
    /// A planner over these jobs as loaded (`None`: no such job yet).
    pub fn new(known: HashMap<String, Option<Job>>, routes: &'r [SinkRoute]) -> Planner<'r> {
        Planner {
            known,
            changed: BTreeSet::new(),
            transitions: Vec::new(),
            events: Vec::new(),
            deliveries: Vec::new(),
            routes,
        }
    }

    /// Loads the jobs with these ids from the writer's connection.
    pub fn load(
        conn: &dyn Conn,
        ids: &BTreeSet<&str>,
        routes: &'r [SinkRoute],
    ) -> DbResult<Planner<'r>> {
        Ok(Planner::new(jobs::load(conn, ids)?, routes))
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
            update_id: None,
            deliveries: 0,
        };
        let Some(job) = job.as_ref() else {
            return planned;
        };
        let source = obs.source.as_str();
        let event = if planned.effect.decision == Decision::Apply {
            let event_id = events::new_id(EventType::StatusChanged);
            let previous = planned
                .effect
                .previous
                .as_ref()
                .map(|s| s.as_str().to_owned());
            let body =
                event::status_changed(&event_id, obs.observed_at, previous.as_deref(), source, job);
            self.transitions.push(NewTransition {
                event_id: event_id.clone(),
                finetune_id: obs.finetune_id.to_owned(),
                from_status: previous.clone(),
                to_status: obs.status.as_str().to_owned(),
                source: obs.source,
                observed_at: obs.observed_at.to_owned(),
                receipt_id,
            });
            planned.transition_id = Some(event_id.clone());
            NewEvent {
                event_id,
                kind: EventType::StatusChanged,
                finetune_id: obs.finetune_id.to_owned(),
                status: obs.status.as_str().to_owned(),
                previous_status: previous,
                changed: Vec::new(),
                source,
                observed_at: obs.observed_at.to_owned(),
                body,
            }
        } else {
            let changed = planned.effect.notified_changes();
            if changed.is_empty() {
                return planned;
            }
            let event_id = events::new_id(EventType::Updated);
            let body = event::updated(&event_id, obs.observed_at, &changed, source, job);
            planned.update_id = Some(event_id.clone());
            NewEvent {
                event_id,
                kind: EventType::Updated,
                finetune_id: obs.finetune_id.to_owned(),
                status: job.status.as_str().to_owned(),
                previous_status: None,
                changed,
                source,
                observed_at: obs.observed_at.to_owned(),
                body,
            }
        };
        for route in self
            .routes
            .iter()
            .filter(|r| r.wants(event.kind, &job.status))
        {
            self.deliveries.push(NewDelivery {
                sink: route.name.clone(),
                event_id: event.event_id.clone(),
                finetune_id: obs.finetune_id.to_owned(),
            });
            planned.deliveries += 1;
        }
        self.events.push(event);
        planned
    }

    /// What to write: the changed jobs, the transitions, their events and
    /// their deliveries.
    pub fn finish(mut self) -> Plan {
        let jobs = self
            .changed
            .iter()
            .filter_map(|id| self.known.remove(id).flatten())
            .collect();
        Plan {
            jobs,
            transitions: self.transitions,
            events: self.events,
            deliveries: self.deliveries,
        }
    }

    /// Writes what [`Planner::finish`] gives (deliveries due `now`).
    pub fn write(self, conn: &dyn Conn, now: &str) -> DbResult<()> {
        self.finish().write(conn, now)
    }
}
