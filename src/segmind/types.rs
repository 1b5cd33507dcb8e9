//! Segmind's request and response bodies, decoded leniently: unknown fields
//! are ignored, nulls and missing values tolerated, and values that arrive
//! as numbers or booleans where text was expected are kept as text.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A fine-tune job as `list` and `details` describe it (and as
/// `tunehook segmind list --json` prints it).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RemoteJob {
    #[serde(deserialize_with = "text")]
    pub id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub finetune_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub request_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub name: Option<String>,
    #[serde(deserialize_with = "text")]
    pub status: Option<String>,
    #[serde(deserialize_with = "text")]
    pub base_model: Option<String>,
    #[serde(deserialize_with = "text")]
    pub theme: Option<String>,
    #[serde(deserialize_with = "text")]
    pub train_type: Option<String>,
    #[serde(deserialize_with = "text")]
    pub source_type: Option<String>,
    #[serde(deserialize_with = "text")]
    pub slug: Option<String>,
    #[serde(deserialize_with = "text")]
    pub data_source_path: Option<String>,
    #[serde(deserialize_with = "text")]
    pub cloud_storage_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub trained_model_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub inference_api_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub error_message: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub segmind_public_model: Option<bool>,
    #[serde(deserialize_with = "flag")]
    pub public_model: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub created_ts: Option<String>,
    #[serde(deserialize_with = "text")]
    pub updated_ts: Option<String>,
}

impl RemoteJob {
    /// The job's id: `finetune_id`, else `request_id`, else `id`.
    pub fn job_id(&self) -> Option<&str> {
        [&self.finetune_id, &self.request_id, &self.id]
            .into_iter()
            .find_map(|v| v.as_deref().filter(|s| !s.trim().is_empty()))
    }

    pub fn public(&self) -> Option<bool> {
        self.segmind_public_model.or(self.public_model)
    }
}

/// `GET /finetune/request/details` answers `{"finetune": {...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DetailsResponse {
    pub finetune: Option<RemoteJob>,
}

/// `POST /finetune/request/submit` takes the request the domain's rules
/// checked and completed (`domain::finetune_request`).
pub use crate::domain::finetune_request::{AdvanceParameters, SubmitRequest};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SubmitResponse {
    #[serde(deserialize_with = "text")]
    pub status: Option<String>,
    #[serde(deserialize_with = "text")]
    pub finetune_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub request_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub name: Option<String>,
}

impl SubmitResponse {
    /// The new job's id: `finetune_id`, else `request_id`.
    pub fn job_id(&self) -> Option<&str> {
        self.finetune_id.as_deref().or(self.request_id.as_deref())
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PresignedUrl {
    #[serde(deserialize_with = "text")]
    pub presigned_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub s3_url: Option<String>,
}

/// Text from a string, number or boolean; `None` from null or anything else.
fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) if !s.trim().is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// A boolean from `true`, `"True"`, `1` and the like.
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Bool(b) => Some(b),
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_list_item_decodes() {
        let job: RemoteJob = serde_json::from_value(json!({
            "id": "uuid", "data_source_path": "https://b/d.zip", "name": "n", "status": "AVAILABLE",
            "error_message": null, "segmind_model_path": null,
            "advance_parameters": {"steps": 10}, "segmind_public_model": false, "train_type": "LORA",
            "source_type": "AWS_S3", "base_model": "FLUX", "theme": "GENERAL", "cloud_storage_url": null,
            "finetune_id": "ft", "model_information": {}
        }))
        .expect("decodes");
        assert_eq!(job.job_id(), Some("ft"));
        assert_eq!(job.public(), Some(false));
        assert_eq!(job.train_type.as_deref(), Some("LORA"));
        assert_eq!(job.error_message, None);
    }

    #[test]
    fn odd_values_are_tolerated() {
        let job: RemoteJob = serde_json::from_value(json!({
            "id": 42, "status": "SOMETHING_NEW", "public_model": "True", "created_ts": 1700000000,
            "name": {"nested": true}
        }))
        .expect("decodes");
        assert_eq!(job.job_id(), Some("42"));
        assert_eq!(job.public(), Some(true));
        assert_eq!(job.created_ts.as_deref(), Some("1700000000"));
        assert_eq!(job.name, None);
    }

    #[test]
    fn a_submit_answer_may_say_request_id() {
        let answer: SubmitResponse =
            serde_json::from_value(json!({"status": "REQUESTED", "request_id": "r1", "name": "n"}))
                .expect("decodes");
        assert_eq!(answer.job_id(), Some("r1"));
    }
}
