//! The events sent to sinks: one for each applied transition
//! (`finetune.status_changed`) and one for each change to a field a user acts
//! on without a status change (`finetune.updated`). Their shape is public
//! (see the README) and versioned by `type`.

use super::job::Job;
use serde::Serialize;

pub const STATUS_CHANGED: &str = "finetune.status_changed";
pub const UPDATED: &str = "finetune.updated";

/// The kinds of event a sink can choose to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    StatusChanged,
    Updated,
}

impl EventType {
    pub const ALL: [EventType; 2] = [EventType::StatusChanged, EventType::Updated];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::StatusChanged => STATUS_CHANGED,
            EventType::Updated => UPDATED,
        }
    }

    pub fn parse(raw: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// A job as `GET /v1/jobs/{id}` shows it, without transitions and updates.
#[derive(Debug, Clone, Serialize)]
pub struct JobView<'a> {
    pub finetune_id: &'a str,
    pub name: Option<&'a str>,
    pub status: &'a str,
    pub base_model: Option<&'a str>,
    pub slug: Option<&'a str>,
    pub trained_model_url: Option<&'a str>,
    pub inference_api_url: Option<&'a str>,
    pub cloud_storage_url: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub created_ts: Option<&'a str>,
    pub updated_ts: Option<&'a str>,
    pub theme: Option<&'a str>,
    pub train_type: Option<&'a str>,
    pub source_type: Option<&'a str>,
    pub data_source_path: Option<&'a str>,
    pub public_model: Option<bool>,
    pub first_seen_at: &'a str,
    pub updated_at: &'a str,
}

impl<'a> From<&'a Job> for JobView<'a> {
    fn from(job: &'a Job) -> JobView<'a> {
        let f = &job.fields;
        JobView {
            finetune_id: &job.finetune_id,
            name: f.name.as_deref(),
            status: job.status.as_str(),
            base_model: f.base_model.as_deref(),
            slug: f.slug.as_deref(),
            trained_model_url: f.trained_model_url.as_deref(),
            inference_api_url: f.inference_api_url.as_deref(),
            cloud_storage_url: f.cloud_storage_url.as_deref(),
            error_message: f.error_message.as_deref(),
            created_ts: f.created_ts.as_deref(),
            updated_ts: f.updated_ts.as_deref(),
            theme: f.theme.as_deref(),
            train_type: f.train_type.as_deref(),
            source_type: f.source_type.as_deref(),
            data_source_path: f.data_source_path.as_deref(),
            public_model: f.public_model,
            first_seen_at: &job.first_seen_at,
            updated_at: &job.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    timestamp: &'a str,
    data: Data<'a>,
}

#[derive(Debug, Serialize)]
struct Data<'a> {
    finetune_id: &'a str,
    name: Option<&'a str>,
    status: &'a str,
    previous_status: Option<&'a str>,
    source: &'a str,
    job: JobView<'a>,
}

/// The `finetune.status_changed` event for a transition to `job`'s current
/// status, as JSON text.
pub fn status_changed(
    event_id: &str,
    timestamp: &str,
    previous_status: Option<&str>,
    source: &str,
    job: &Job,
) -> String {
    let event = Event {
        kind: STATUS_CHANGED,
        id: event_id,
        timestamp,
        data: Data {
            finetune_id: &job.finetune_id,
            name: job.fields.name.as_deref(),
            status: job.status.as_str(),
            previous_status,
            source,
            job: JobView::from(job),
        },
    };
    serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"))
}

#[derive(Debug, Serialize)]
struct Update<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    timestamp: &'a str,
    data: UpdateData<'a>,
}

#[derive(Debug, Serialize)]
struct UpdateData<'a> {
    finetune_id: &'a str,
    name: Option<&'a str>,
    status: &'a str,
    changed: &'a [&'a str],
    source: &'a str,
    job: JobView<'a>,
}

/// The `finetune.updated` event for `changed` fields of `job` (in its
/// current status), as JSON text.
pub fn updated(
    event_id: &str,
    timestamp: &str,
    changed: &[&str],
    source: &str,
    job: &Job,
) -> String {
    let event = Update {
        kind: UPDATED,
        id: event_id,
        timestamp,
        data: UpdateData {
            finetune_id: &job.finetune_id,
            name: job.fields.name.as_deref(),
            status: job.status.as_str(),
            changed,
            source,
            job: JobView::from(job),
        },
    };
    serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobFields, Status};
    use serde_json::Value;

    /// An AVAILABLE job with these fields.
    fn available(fields: JobFields) -> Job {
        Job {
            finetune_id: "ft".into(),
            status: Status::parse("AVAILABLE").expect("valid"),
            fields,
            first_seen_at: "t0".into(),
            updated_at: "t1".into(),
            recorded: Default::default(),
            webhook_status: None,
            segmind_status: None,
        }
    }

    #[test]
    fn the_event_has_the_documented_shape() {
        let job = available(JobFields {
            name: Some("n".into()),
            ..Default::default()
        });
        let event: Value = serde_json::from_str(&status_changed(
            "tr_1",
            "t1",
            Some("INFERENCE_QUEUED"),
            "webhook",
            &job,
        ))
        .expect("json");
        assert_eq!(event["type"], "finetune.status_changed");
        assert_eq!(event["id"], "tr_1");
        assert_eq!(event["timestamp"], "t1");
        assert_eq!(event["data"]["status"], "AVAILABLE");
        assert_eq!(event["data"]["previous_status"], "INFERENCE_QUEUED");
        assert_eq!(event["data"]["source"], "webhook");
        assert_eq!(event["data"]["name"], "n");
        assert_eq!(event["data"]["job"]["finetune_id"], "ft");
        assert!(event["data"]["job"].get("transitions").is_none());
    }

    #[test]
    fn the_update_event_names_the_changed_fields() {
        let job = available(JobFields {
            inference_api_url: Some("https://i".into()),
            ..Default::default()
        });
        let event: Value = serde_json::from_str(&updated(
            "ev_1",
            "t1",
            &["inference_api_url"],
            "reconcile",
            &job,
        ))
        .expect("json");
        assert_eq!(event["type"], "finetune.updated");
        assert_eq!(event["id"], "ev_1");
        assert_eq!(event["data"]["status"], "AVAILABLE");
        assert_eq!(
            event["data"]["changed"],
            serde_json::json!(["inference_api_url"])
        );
        assert_eq!(event["data"]["source"], "reconcile");
        assert_eq!(event["data"]["job"]["inference_api_url"], "https://i");
        assert!(event["data"].get("previous_status").is_none());
    }

    #[test]
    fn event_types_read_back_from_their_names() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("finetune.other"), None);
    }
}
