//! A job as tunehook knows it, and what one observation of its status does
//! to it. This is where the state rules meet the job's fields.

use super::{
    rules::{Decision, Source, decide},
    status::Status,
};
use std::collections::BTreeSet;

/// Job fields a webhook (or Segmind's API) may bring along with a status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFields {
    pub name: Option<String>,
    pub base_model: Option<String>,
    pub slug: Option<String>,
    pub trained_model_url: Option<String>,
    pub inference_api_url: Option<String>,
    pub cloud_storage_url: Option<String>,
    pub error_message: Option<String>,
    pub created_ts: Option<String>,
    pub updated_ts: Option<String>,
    pub theme: Option<String>,
    pub train_type: Option<String>,
    pub source_type: Option<String>,
    pub data_source_path: Option<String>,
    /// Whether the model is public on Segmind.
    pub public_model: Option<bool>,
}

impl JobFields {
    /// Each text field with its name, here and in `other`.
    fn pairs<'a>(
        &'a mut self,
        other: &'a JobFields,
    ) -> [(&'static str, &'a mut Option<String>, &'a Option<String>); 13] {
        [
            ("theme", &mut self.theme, &other.theme),
            ("train_type", &mut self.train_type, &other.train_type),
            ("source_type", &mut self.source_type, &other.source_type),
            (
                "data_source_path",
                &mut self.data_source_path,
                &other.data_source_path,
            ),
            ("name", &mut self.name, &other.name),
            ("base_model", &mut self.base_model, &other.base_model),
            ("slug", &mut self.slug, &other.slug),
            (
                "trained_model_url",
                &mut self.trained_model_url,
                &other.trained_model_url,
            ),
            (
                "inference_api_url",
                &mut self.inference_api_url,
                &other.inference_api_url,
            ),
            (
                "cloud_storage_url",
                &mut self.cloud_storage_url,
                &other.cloud_storage_url,
            ),
            (
                "error_message",
                &mut self.error_message,
                &other.error_message,
            ),
            ("created_ts", &mut self.created_ts, &other.created_ts),
            ("updated_ts", &mut self.updated_ts, &other.updated_ts),
        ]
    }

    /// Takes every field `newer` carries. Returns the names of the fields
    /// that changed.
    pub fn take_newer(&mut self, newer: &JobFields) -> Vec<&'static str> {
        self.merge(newer, |mine, theirs| theirs.is_some() && mine != theirs)
    }

    /// Fills only the fields that are empty here. Returns the names of the
    /// fields that changed.
    pub fn fill_empty(&mut self, other: &JobFields) -> Vec<&'static str> {
        self.merge(other, |mine, theirs| mine.is_none() && theirs.is_some())
    }

    /// These fields without any URL (every field whose name ends in `_url`):
    /// what may be taken from a webhook Segmind's API did not confirm. A
    /// URL is where users fetch a model or send their prompts, so only
    /// Segmind's API (or tunehook itself) may set one; an unconfirmed
    /// webhook may carry a status, never a place to go.
    pub fn without_urls(&self) -> JobFields {
        let mut kept = self.clone();
        let none = JobFields::default();
        for (name, mine, _) in kept.pairs(&none) {
            if name.ends_with("_url") {
                *mine = None;
            }
        }
        kept
    }

    /// Copies each field of `other` for which `take(mine, theirs)` holds.
    fn merge(
        &mut self,
        other: &JobFields,
        take: impl Fn(&Option<String>, &Option<String>) -> bool,
    ) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for (name, mine, theirs) in self.pairs(other) {
            if take(mine, theirs) {
                mine.clone_from(theirs);
                changed.push(name);
            }
        }
        let as_text = |flag: Option<bool>| flag.map(|b| b.to_string());
        if take(&as_text(self.public_model), &as_text(other.public_model)) {
            self.public_model = other.public_model;
            changed.push("public_model");
        }
        changed
    }
}

/// A job's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub finetune_id: String,
    pub status: Status,
    pub fields: JobFields,
    pub first_seen_at: String,
    pub updated_at: String,
    /// Every status ever recorded for the job: each is recorded once.
    pub recorded: BTreeSet<Status>,
    /// The last status a webhook reported that the job took (or already had).
    pub webhook_status: Option<Status>,
    /// The last status Segmind's own API reported (when it reported it is
    /// bookkeeping the store keeps apart, so asking Segmind again about an
    /// unchanged job changes nothing here).
    pub segmind_status: Option<Status>,
}

impl Job {
    /// A finished model whose URLs tunehook does not know yet.
    pub fn lacks_details(&self) -> bool {
        let f = &self.fields;
        self.status.as_str() == "AVAILABLE"
            && f.trained_model_url.is_none()
            && f.inference_api_url.is_none()
            && f.cloud_storage_url.is_none()
    }
}

/// One sighting of a job's status.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub finetune_id: &'a str,
    pub status: &'a Status,
    pub fields: &'a JobFields,
    pub source: Source,
    pub observed_at: &'a str,
}

/// What an observation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub decision: Decision,
    /// The job's status before the observation (`None` for a new job).
    pub previous: Option<Status>,
    /// Whether the job changed at all (its status, any field, or what tunehook
    /// keeps about who said what).
    pub changed: bool,
    /// The fields the observation changed (whatever the status did).
    pub fields_changed: Vec<&'static str>,
}

/// The fields a user acts on: a change to one of them, without a status
/// change, is forwarded as a `finetune.updated` event. The others (Segmind's
/// own timestamps, the dataset path...) are kept but not announced.
pub const NOTIFIED_FIELDS: [&str; 8] = [
    "name",
    "trained_model_url",
    "inference_api_url",
    "cloud_storage_url",
    "error_message",
    "base_model",
    "slug",
    "public_model",
];

impl Effect {
    /// The changed fields worth a `finetune.updated` event, when the status
    /// did not change (a status change carries its fields in its own event).
    pub fn notified_changes(&self) -> Vec<&'static str> {
        if self.decision == Decision::Apply {
            return Vec::new();
        }
        NOTIFIED_FIELDS
            .into_iter()
            .filter(|f| self.fields_changed.contains(f))
            .collect()
    }
}

/// Applies `obs` to `job` (`None`: a job not seen before, created here) under
/// the state rules: the job moves only when `rules::decide` says so and the
/// status was never recorded for it; otherwise the observation may still fill
/// the job's empty fields, such as a late TRAINING_COMPLETED bringing
/// `trained_model_url` to an AVAILABLE job. Segmind's own API (source
/// `reconcile`) is trusted for fields: its values replace stored ones
/// whatever the status does; so are the values tunehook sent (source `api`).
pub fn observe(job: &mut Option<Job>, obs: &Observation<'_>) -> Effect {
    let Some(current) = job else {
        let from_webhook = obs.source == Source::Webhook;
        let from_segmind = obs.source == Source::Reconcile;
        *job = Some(Job {
            finetune_id: obs.finetune_id.to_owned(),
            status: obs.status.clone(),
            fields: obs.fields.clone(),
            first_seen_at: obs.observed_at.to_owned(),
            updated_at: obs.observed_at.to_owned(),
            recorded: BTreeSet::from([obs.status.clone()]),
            webhook_status: from_webhook.then(|| obs.status.clone()),
            segmind_status: from_segmind.then(|| obs.status.clone()),
        });
        return Effect {
            decision: Decision::Apply,
            previous: None,
            changed: true,
            fields_changed: Vec::new(),
        };
    };
    let previous = Some(current.status.clone());
    let mut decision = decide(Some(&current.status), obs.status, obs.source);
    if decision == Decision::Apply && current.recorded.contains(obs.status) {
        decision = Decision::Stale;
    }
    let fields_changed = match (decision, obs.source) {
        (Decision::Apply, _) => {
            current.status = obs.status.clone();
            current.recorded.insert(obs.status.clone());
            current.fields.take_newer(obs.fields)
        }
        // What tunehook itself sent to Segmind (a submission, an access
        // change) is what Segmind now holds: it replaces stored values.
        (_, Source::Reconcile | Source::Api) => current.fields.take_newer(obs.fields),
        (_, Source::Webhook) => current.fields.fill_empty(obs.fields),
    };
    let mut changed = decision == Decision::Apply || !fields_changed.is_empty();
    if changed {
        current.updated_at = obs.observed_at.to_owned();
    }
    match obs.source {
        Source::Webhook if decision != Decision::Stale => {
            changed |= current.webhook_status.as_ref() != Some(obs.status);
            current.webhook_status = Some(obs.status.clone());
        }
        Source::Webhook | Source::Api => {}
        Source::Reconcile => {
            // Bookkeeping: asking Segmind does not make the job "updated".
            changed |= current.segmind_status.as_ref() != Some(obs.status);
            current.segmind_status = Some(obs.status.clone());
        }
    }
    Effect {
        decision,
        previous,
        changed,
        fields_changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> Status {
        Status::parse(name).expect("valid")
    }

    fn see(
        job: &mut Option<Job>,
        status: &str,
        fields: JobFields,
        source: Source,
        at: &str,
    ) -> Effect {
        let status = s(status);
        observe(
            job,
            &Observation {
                finetune_id: "ft",
                status: &status,
                fields: &fields,
                source,
                observed_at: at,
            },
        )
    }

    #[test]
    fn a_new_job_is_created_in_the_observed_status() {
        let mut job = None;
        let effect = see(
            &mut job,
            "QUEUED",
            JobFields::default(),
            Source::Webhook,
            "t1",
        );
        assert_eq!(
            effect,
            Effect {
                decision: Decision::Apply,
                previous: None,
                changed: true,
                fields_changed: Vec::new(),
            }
        );
        let job = job.expect("created");
        assert_eq!(job.status, s("QUEUED"));
        assert_eq!(
            (job.first_seen_at.as_str(), job.updated_at.as_str()),
            ("t1", "t1")
        );
    }

    #[test]
    fn an_applied_status_takes_newer_fields_and_a_stale_one_fills_only_empty_ones() {
        let mut job = None;
        let first = JobFields {
            name: Some("a".into()),
            inference_api_url: Some("i1".into()),
            ..Default::default()
        };
        see(&mut job, "TRAINING", first, Source::Webhook, "t1");
        let newer = JobFields {
            name: Some("b".into()),
            ..Default::default()
        };
        see(&mut job, "AVAILABLE", newer, Source::Webhook, "t2");
        let late = JobFields {
            name: Some("c".into()),
            trained_model_url: Some("w".into()),
            inference_api_url: Some("i2".into()),
            ..Default::default()
        };
        let effect = see(&mut job, "TRAINING_COMPLETED", late, Source::Webhook, "t3");
        assert_eq!(effect.decision, Decision::Stale);
        assert!(effect.changed);
        let job = job.expect("exists");
        assert_eq!(job.status, s("AVAILABLE"));
        assert_eq!(job.fields.name.as_deref(), Some("b"));
        assert_eq!(job.fields.trained_model_url.as_deref(), Some("w"));
        assert_eq!(job.fields.inference_api_url.as_deref(), Some("i1"));
        assert_eq!(job.updated_at, "t3");
    }

    #[test]
    fn without_urls_drops_every_url_and_keeps_everything_else() {
        let forged = JobFields {
            name: Some("portrait".into()),
            base_model: Some("FLUX_PRO".into()),
            slug: Some("me/portrait".into()),
            trained_model_url: Some("https://evil.example/model.safetensors".into()),
            inference_api_url: Some("https://evil.example/infer".into()),
            cloud_storage_url: Some("https://evil.example/bucket".into()),
            error_message: Some("none".into()),
            created_ts: Some("t0".into()),
            updated_ts: Some("t1".into()),
            theme: Some("style".into()),
            train_type: Some("lora".into()),
            source_type: Some("zip".into()),
            data_source_path: Some("s3://bucket/data.zip".into()),
            public_model: Some(true),
        };
        let kept = forged.without_urls();
        assert_eq!(
            kept,
            JobFields {
                trained_model_url: None,
                inference_api_url: None,
                cloud_storage_url: None,
                ..forged.clone()
            }
        );
        // Whatever fields come to exist, none named `*_url` survives.
        let mut probe = kept.clone();
        let none = JobFields::default();
        for (name, value, _) in probe.pairs(&none) {
            assert!(!name.ends_with("_url") || value.is_none(), "{name} kept");
        }
    }

    #[test]
    fn a_duplicate_with_nothing_new_changes_nothing() {
        let mut job = None;
        see(
            &mut job,
            "AVAILABLE",
            JobFields::default(),
            Source::Webhook,
            "t1",
        );
        let effect = see(
            &mut job,
            "AVAILABLE",
            JobFields::default(),
            Source::Webhook,
            "t2",
        );
        assert_eq!(effect.decision, Decision::Duplicate);
        assert!(!effect.changed);
        assert_eq!(job.expect("exists").updated_at, "t1");
    }

    #[test]
    fn a_submission_after_a_webhook_keeps_the_status_and_sets_what_was_sent() {
        let mut job = None;
        see(
            &mut job,
            "QUEUED",
            JobFields::default(),
            Source::Webhook,
            "t1",
        );
        let sent = JobFields {
            name: Some("mine".into()),
            public_model: Some(false),
            ..Default::default()
        };
        let effect = see(&mut job, "REQUESTED", sent, Source::Api, "t2");
        assert_eq!(effect.decision, Decision::Stale);
        assert_eq!(effect.fields_changed, ["name", "public_model"]);
        let job = job.expect("exists");
        assert_eq!(job.status, s("QUEUED"));
        assert_eq!(job.webhook_status, Some(s("QUEUED")));
        assert_eq!(job.segmind_status, None);
    }

    #[test]
    fn a_status_recorded_once_is_never_recorded_again() {
        let mut job = None;
        see(
            &mut job,
            "AVAILABLE",
            JobFields::default(),
            Source::Webhook,
            "t1",
        );
        assert_eq!(
            see(
                &mut job,
                "FAILED",
                JobFields::default(),
                Source::Reconcile,
                "t2"
            )
            .decision,
            Decision::Apply
        );
        let back = see(
            &mut job,
            "AVAILABLE",
            JobFields::default(),
            Source::Reconcile,
            "t3",
        );
        assert_eq!(back.decision, Decision::Stale);
        assert_eq!(job.expect("exists").status, s("FAILED"));
    }
}
