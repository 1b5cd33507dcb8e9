//! Properties of the pure domain: the payload parser and the state rules,
//! over generated inputs.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use tunehook::domain::{
    Decision, JobFields, Observation, Payload, Source, Status, observe,
    payload::{ID_KEYS, NESTED_OBJECTS, STATUS_KEYS},
    status::TERMINAL_RANK,
};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "AVAILABLE",
            "queued",
            "Training Completed",
            "ft-1",
            ""
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "event",
                    "event_type",
                    "type",
                    "status",
                    "finetune_id",
                    "request_id",
                    "id",
                    "data",
                    "finetune",
                    "payload",
                    "name",
                    "trained_model_url",
                    "x",
                ]),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// The documented lookup: top level, then data, finetune, payload; within
/// each, the keys in order; a present value is a non-empty string (ids:
/// also a number).
fn documented_first(value: &Value, keys: &[&str], numbers: bool) -> Option<String> {
    let Value::Object(top) = value else {
        return None;
    };
    let mut places: Vec<&Map<String, Value>> = vec![top];
    for nested in NESTED_OBJECTS {
        if let Some(Value::Object(inner)) = top.get(nested) {
            places.push(inner);
        }
    }
    places.iter().find_map(|place| {
        keys.iter().find_map(|key| match place.get(*key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::Number(n)) if numbers => Some(n.to_string()),
            _ => None,
        })
    })
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Payload::parse(&bytes);
    }

    #[test]
    fn the_parser_finds_what_the_documented_lookup_order_says(value in any_json()) {
        let bytes = value.to_string();
        // What the parser sees is the text: compare with the text read back
        // (floats need not survive a round trip digit for digit).
        let value: Value = serde_json::from_str(&bytes).expect("valid JSON");
        match Payload::parse(bytes.as_bytes()) {
            Ok(payload) => {
                let status = documented_first(&value, &STATUS_KEYS, false);
                prop_assert_eq!(payload.status.map(|s| s.as_str().to_owned()), status.map(|s| Status::parse(&s).map(|s| s.as_str().to_owned()).unwrap_or_default()));
                let id = documented_first(&value, &ID_KEYS, true);
                prop_assert_eq!(payload.finetune_id, id.map(|s| s.trim().to_owned()));
            }
            // Only a present but unusable status or id is refused.
            Err(_) => prop_assert!(
                documented_first(&value, &STATUS_KEYS, false).is_some_and(|s| Status::parse(&s).is_none())
                    || documented_first(&value, &ID_KEYS, true).is_some()
            ),
        }
    }
}

fn status_pool() -> impl Strategy<Value = Status> {
    prop::sample::select(vec![
        "REQUESTED",
        "DATA_PROCESSING",
        "QUEUED",
        "PENDING",
        "TRAINING_INITIATED",
        "TRAINING",
        "RUNNING",
        "SOMETHING_NEW",
        "TRAINING_COMPLETED",
        "INFERENCE_QUEUED",
        "DEPLOYING",
        "AVAILABLE",
        "FAILED",
        "ERROR",
        "CANCELLED",
    ])
    .prop_map(|s| Status::parse(s).expect("valid"))
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Webhook),
        Just(Source::Reconcile),
        Just(Source::Api)
    ]
}

proptest! {
    #[test]
    fn any_sequence_of_observations_moves_only_forward_and_records_each_status_once(
        seen in prop::collection::vec((status_pool(), source()), 1..40)
    ) {
        let mut job = None;
        let mut recorded = Vec::new();
        let fields = JobFields::default();
        for (i, (status, source)) in seen.iter().enumerate() {
            let at = format!("t{i:03}");
            let before = job.as_ref().map(|j: &tunehook::domain::Job| j.status.clone());
            let effect = observe(&mut job, &Observation { finetune_id: "ft", status, fields: &fields, source: *source, observed_at: &at });
            if effect.decision == Decision::Apply {
                if let Some(from) = &before {
                    let (a, b) = (from.rank(), status.rank());
                    prop_assert!(
                        b > a || (b == a && *source == Source::Reconcile),
                        "{from} -> {status} by {source}"
                    );
                }
                recorded.push(status.clone());
            } else {
                prop_assert_eq!(job.as_ref().map(|j| j.status.clone()), before);
            }
        }
        let unique: BTreeSet<_> = recorded.iter().collect();
        prop_assert_eq!(unique.len(), recorded.len(), "a status recorded twice: {:?}", recorded);
        prop_assert_eq!(job.map(|j| j.status), recorded.last().cloned());
    }

    #[test]
    fn webhooks_alone_end_on_the_first_seen_status_of_the_highest_rank(
        seen in prop::collection::vec(status_pool(), 1..40)
    ) {
        let mut job = None;
        let fields = JobFields::default();
        for (i, status) in seen.iter().enumerate() {
            let at = format!("t{i:03}");
            observe(&mut job, &Observation { finetune_id: "ft", status, fields: &fields, source: Source::Webhook, observed_at: &at });
        }
        let top = seen.iter().map(Status::rank).max().unwrap_or(0);
        let expected = seen.iter().find(|s| s.rank() == top).cloned();
        prop_assert_eq!(job.as_ref().map(|j| j.status.clone()), expected);
        if top == TERMINAL_RANK {
            prop_assert!(job.is_some_and(|j| j.status.is_terminal()));
        }
    }
}
