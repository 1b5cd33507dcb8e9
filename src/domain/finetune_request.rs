//! The rules for a fine-tune request, checked before anything is sent to
//! Segmind: a fine-tune costs money and an hour, and most failures are
//! avoidable at submission. The command line (`tunehook segmind submit`)
//! and the API (`POST /v1/finetunes`) both build a JSON body and hand it to
//! [`validate`], so the two can never disagree.
//!
//! Every problem is reported at once, each with the path of its field
//! (`advance_parameters.lora_rank`) and the rule it breaks. Defaults are the
//! ones Segmind documents, filled in so that the request sent is exactly the
//! one printed by a dry run. Enum values are accepted in any case and sent
//! upper-case. A field Segmind does not know is a problem too: a misplaced
//! `lora_rank` at the top level would otherwise be dropped without a word.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

pub const THEMES: [&str; 4] = ["CHARACTER", "PRODUCT", "STYLE", "GENERAL"];
pub const PRIORITIES: [&str; 3] = ["SPEED", "QUALITY", "HIGH_RES_ONLY"];
pub const FINETUNE_TYPES: [&str; 2] = ["FULL", "LORA"];
pub const LORA_RANKS: [u64; 2] = [16, 32];
pub const MIN_ITERATIONS: u64 = 100;

pub const DEFAULT_TRIGGER_WORD: &str = "TOK";
pub const DEFAULT_BASE_MODEL: &str = "FLUX_PRO";
pub const DEFAULT_THEME: &str = "GENERAL";
pub const DEFAULT_PRIORITY: &str = "QUALITY";
pub const DEFAULT_FINETUNE_TYPE: &str = "FULL";
pub const DEFAULT_ITERATIONS: u32 = 300;
pub const DEFAULT_LORA_RANK: u32 = 32;
/// Segmind's default learning rate for a full fine-tune.
pub const DEFAULT_FULL_LEARNING_RATE: f64 = 0.00001;
/// Segmind's default learning rate for a LoRA training.
pub const DEFAULT_LORA_LEARNING_RATE: f64 = 0.0001;

const TOP_LEVEL: [&str; 8] = [
    "name",
    "data_source_path",
    "instance_prompt",
    "trigger_word",
    "base_model",
    "theme",
    "segmind_public",
    "advance_parameters",
];
const ADVANCED: [&str; 6] = [
    "iterations",
    "captioning",
    "priority",
    "finetune_type",
    "lora_rank",
    "learning_rate",
];

/// A request that passed every rule, with every default filled in: the body
/// of Segmind's `POST /finetune/request/submit`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubmitRequest {
    pub name: String,
    pub data_source_path: String,
    pub instance_prompt: String,
    pub trigger_word: String,
    pub base_model: String,
    pub theme: String,
    pub segmind_public: bool,
    pub advance_parameters: AdvanceParameters,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AdvanceParameters {
    pub iterations: u32,
    pub captioning: bool,
    pub priority: String,
    pub finetune_type: String,
    pub lora_rank: u32,
    pub learning_rate: f64,
}

/// One broken rule: the field's path and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one request, in the order of the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<FieldProblem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// Checks `body` against Segmind's documented rules and fills the defaults.
pub fn validate(body: &Value) -> Result<SubmitRequest, Invalid> {
    let mut check = Checker::default();
    let Some(top) = body.as_object() else {
        check.problem("(body)", "must be a JSON object");
        return Err(Invalid(check.problems));
    };
    check.unknown(top, &TOP_LEVEL, "");
    let name = check.required_text(top, "name", "name");
    let data_source_path = check.required_text(top, "data_source_path", "data_source_path");
    let instance_prompt = check.required_text(top, "instance_prompt", "instance_prompt");
    let trigger_word = check
        .optional_text(top, "trigger_word", "trigger_word")
        .unwrap_or_else(|| DEFAULT_TRIGGER_WORD.to_owned());
    let base_model = check
        .optional_text(top, "base_model", "base_model")
        .unwrap_or_else(|| DEFAULT_BASE_MODEL.to_owned());
    let theme = check.one_of(top, "theme", "theme", &THEMES, DEFAULT_THEME);
    let segmind_public = check.flag(top, "segmind_public", "segmind_public", false);

    let empty = Map::new();
    let advanced = match top.get("advance_parameters") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(_) => {
            check.problem("advance_parameters", "must be a JSON object");
            &empty
        }
    };
    check.unknown(advanced, &ADVANCED, "advance_parameters.");
    let iterations = check.iterations(advanced);
    let captioning = check.flag(
        advanced,
        "captioning",
        "advance_parameters.captioning",
        true,
    );
    let priority = check.one_of(
        advanced,
        "priority",
        "advance_parameters.priority",
        &PRIORITIES,
        DEFAULT_PRIORITY,
    );
    let finetune_type = check.one_of(
        advanced,
        "finetune_type",
        "advance_parameters.finetune_type",
        &FINETUNE_TYPES,
        DEFAULT_FINETUNE_TYPE,
    );
    let lora_rank = check.lora_rank(advanced);
    let learning_rate = check.learning_rate(advanced, &finetune_type);

    if !check.problems.is_empty() {
        return Err(Invalid(check.problems));
    }
    Ok(SubmitRequest {
        name,
        data_source_path,
        instance_prompt,
        trigger_word,
        base_model,
        theme,
        segmind_public,
        advance_parameters: AdvanceParameters {
            iterations,
            captioning,
            priority,
            finetune_type,
            lora_rank,
            learning_rate,
        },
    })
}

/// Collects problems while each rule returns a usable value (the default
/// when the field is wrong), so that every field is checked.
#[derive(Default)]
struct Checker {
    problems: Vec<FieldProblem>,
}

impl Checker {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(FieldProblem {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn unknown(&mut self, map: &Map<String, Value>, known: &[&str], prefix: &str) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = match (prefix.is_empty(), ADVANCED.contains(&key.as_str())) {
                (true, true) => format!(" (it belongs in advance_parameters.{key})"),
                _ => String::new(),
            };
            self.problem(
                &format!("{prefix}{key}"),
                format!("is not a field of a Segmind fine-tune request{hint}"),
            );
        }
    }

    fn required_text(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> String {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.problem(path, "is required");
                String::new()
            }
            Some(_) => self.optional_text(map, key, path).unwrap_or_default(),
        }
    }

    fn optional_text(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.problem(path, "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(other) => {
                self.problem(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn one_of(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
        allowed: &[&str],
        default: &str,
    ) -> String {
        let Some(given) = self.optional_text(map, key, path) else {
            return default.to_owned();
        };
        let upper = given.to_ascii_uppercase();
        if allowed.contains(&upper.as_str()) {
            upper
        } else {
            self.problem(
                path,
                format!("must be one of {} (got `{given}`)", allowed.join(", ")),
            );
            default.to_owned()
        }
    }

    fn flag(&mut self, map: &Map<String, Value>, key: &str, path: &str, default: bool) -> bool {
        match map.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(
                    path,
                    format!("must be a boolean (true or false), not {}", kind(other)),
                );
                default
            }
        }
    }

    /// A whole number, or `None` (with a problem) for anything else.
    fn integer(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
        match map.get(key)? {
            Value::Null => None,
            Value::Number(n) => match n.as_u64() {
                Some(v) => Some(v),
                // JSON has one number type: `300.0` is the integer 300, as
                // JSON Schema (and the API's document) counts it.
                None if n
                    .as_f64()
                    .is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64) =>
                {
                    n.as_f64().map(|f| f as u64)
                }
                None if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                    self.problem(path, format!("must be a positive integer (got {n})"));
                    None
                }
                None => {
                    self.problem(path, format!("must be an integer (got {n})"));
                    None
                }
            },
            other => {
                self.problem(path, format!("must be an integer, not {}", kind(other)));
                None
            }
        }
    }

    fn iterations(&mut self, map: &Map<String, Value>) -> u32 {
        const PATH: &str = "advance_parameters.iterations";
        let Some(given) = self.integer(map, "iterations", PATH) else {
            return DEFAULT_ITERATIONS;
        };
        if given < MIN_ITERATIONS {
            self.problem(
                PATH,
                format!("must be at least {MIN_ITERATIONS} (got {given})"),
            );
            return DEFAULT_ITERATIONS;
        }
        u32::try_from(given).unwrap_or_else(|_| {
            self.problem(PATH, format!("must be at most {} (got {given})", u32::MAX));
            DEFAULT_ITERATIONS
        })
    }

    fn lora_rank(&mut self, map: &Map<String, Value>) -> u32 {
        const PATH: &str = "advance_parameters.lora_rank";
        match self.integer(map, "lora_rank", PATH) {
            None => DEFAULT_LORA_RANK,
            Some(rank) if LORA_RANKS.contains(&rank) => rank as u32,
            Some(rank) => {
                self.problem(PATH, format!("must be 16 or 32 (got {rank})"));
                DEFAULT_LORA_RANK
            }
        }
    }

    fn learning_rate(&mut self, map: &Map<String, Value>, finetune_type: &str) -> f64 {
        const PATH: &str = "advance_parameters.learning_rate";
        let default = if finetune_type == "LORA" {
            DEFAULT_LORA_LEARNING_RATE
        } else {
            DEFAULT_FULL_LEARNING_RATE
        };
        match map.get("learning_rate") {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(rate) if rate.is_finite() && rate > 0.0 => rate,
                _ => {
                    self.problem(PATH, format!("must be greater than 0 (got {n})"));
                    default
                }
            },
            Some(other) => {
                self.problem(PATH, format!("must be a number, not {}", kind(other)));
                default
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a dataset is: a URL Segmind fetches, or a file on this machine
/// that must be uploaded first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetLocation<'a> {
    Url(&'a str),
    Local(&'a str),
}

/// `http://` and `https://` are URLs (case-insensitive); anything else is
/// taken for a path.
pub fn dataset_location(given: &str) -> DatasetLocation<'_> {
    let lower: String = given
        .trim_start()
        .chars()
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        DatasetLocation::Url(given.trim())
    } else {
        DatasetLocation::Local(given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"name": "n", "data_source_path": "https://d.example/set.zip", "instance_prompt": "a photo of TOK"})
    }

    fn with(advanced: Value) -> Value {
        let mut body = minimal();
        body["advance_parameters"] = advanced;
        body
    }

    fn problems(body: &Value) -> Vec<(String, String)> {
        match validate(body) {
            Ok(request) => panic!("expected problems, got {request:?}"),
            Err(Invalid(problems)) => problems.into_iter().map(|p| (p.field, p.message)).collect(),
        }
    }

    fn only_problem(body: &Value) -> (String, String) {
        let mut all = problems(body);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    #[test]
    fn the_three_required_fields_and_nothing_else_give_segminds_defaults() {
        let request = validate(&minimal()).expect("valid");
        assert_eq!(
            request,
            SubmitRequest {
                name: "n".into(),
                data_source_path: "https://d.example/set.zip".into(),
                instance_prompt: "a photo of TOK".into(),
                trigger_word: "TOK".into(),
                base_model: "FLUX_PRO".into(),
                theme: "GENERAL".into(),
                segmind_public: false,
                advance_parameters: AdvanceParameters {
                    iterations: 300,
                    captioning: true,
                    priority: "QUALITY".into(),
                    finetune_type: "FULL".into(),
                    lora_rank: 32,
                    learning_rate: 0.00001,
                },
            }
        );
    }

    #[test]
    fn each_required_field_missing_is_named() {
        assert_eq!(
            problems(&json!({})),
            vec![
                ("name".into(), "is required".into()),
                ("data_source_path".into(), "is required".into()),
                ("instance_prompt".into(), "is required".into()),
            ]
        );
    }

    #[test]
    fn an_empty_or_non_text_required_field_is_named() {
        let mut body = minimal();
        body["name"] = json!("  ");
        body["instance_prompt"] = json!(42);
        assert_eq!(
            problems(&body),
            vec![
                ("name".into(), "must not be empty".into()),
                (
                    "instance_prompt".into(),
                    "must be a string, not a number".into()
                ),
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        assert_eq!(
            only_problem(&json!([1])),
            ("(body)".into(), "must be a JSON object".into())
        );
    }

    #[test]
    fn enums_are_accepted_in_any_case_and_sent_upper_case() {
        let mut body = with(json!({"priority": "high_res_only", "finetune_type": "Lora"}));
        body["theme"] = json!("style");
        let request = validate(&body).expect("valid");
        assert_eq!(request.theme, "STYLE");
        assert_eq!(request.advance_parameters.priority, "HIGH_RES_ONLY");
        assert_eq!(request.advance_parameters.finetune_type, "LORA");
    }

    #[test]
    fn a_misspelled_theme_lists_the_allowed_ones() {
        let mut body = minimal();
        body["theme"] = json!("CHARACTOR");
        assert_eq!(
            only_problem(&body),
            (
                "theme".into(),
                "must be one of CHARACTER, PRODUCT, STYLE, GENERAL (got `CHARACTOR`)".into()
            )
        );
    }

    #[test]
    fn a_wrong_priority_or_finetune_type_is_named_with_its_path() {
        assert_eq!(
            only_problem(&with(json!({"priority": "FAST"}))),
            (
                "advance_parameters.priority".into(),
                "must be one of SPEED, QUALITY, HIGH_RES_ONLY (got `FAST`)".into()
            )
        );
        assert_eq!(
            only_problem(&with(json!({"finetune_type": "QLORA"}))),
            (
                "advance_parameters.finetune_type".into(),
                "must be one of FULL, LORA (got `QLORA`)".into()
            )
        );
    }

    #[test]
    fn iterations_must_be_an_integer_of_at_least_100() {
        let path = "advance_parameters.iterations".to_owned();
        assert_eq!(
            only_problem(&with(json!({"iterations": 50}))),
            (path.clone(), "must be at least 100 (got 50)".into())
        );
        assert_eq!(
            only_problem(&with(json!({"iterations": 150.5}))),
            (path.clone(), "must be an integer (got 150.5)".into())
        );
        // A whole number written with a fraction is that integer.
        assert!(validate(&with(json!({"iterations": 300.0}))).is_ok());
        assert_eq!(
            only_problem(&with(json!({"iterations": -3}))),
            (path.clone(), "must be a positive integer (got -3)".into())
        );
        assert_eq!(
            only_problem(&with(json!({"iterations": "300"}))),
            (path, "must be an integer, not a string".into())
        );
        let request = validate(&with(json!({"iterations": 100}))).expect("100 is enough");
        assert_eq!(request.advance_parameters.iterations, 100);
    }

    #[test]
    fn lora_rank_is_16_or_32() {
        assert_eq!(
            only_problem(&with(json!({"lora_rank": 24}))),
            (
                "advance_parameters.lora_rank".into(),
                "must be 16 or 32 (got 24)".into()
            )
        );
        let request = validate(&with(json!({"lora_rank": 16}))).expect("16 is allowed");
        assert_eq!(request.advance_parameters.lora_rank, 16);
    }

    #[test]
    fn learning_rate_must_be_positive_and_defaults_by_finetune_type() {
        let path = "advance_parameters.learning_rate".to_owned();
        assert_eq!(
            only_problem(&with(json!({"learning_rate": 0}))),
            (path.clone(), "must be greater than 0 (got 0)".into())
        );
        assert_eq!(
            only_problem(&with(json!({"learning_rate": -0.1}))),
            (path.clone(), "must be greater than 0 (got -0.1)".into())
        );
        assert_eq!(
            only_problem(&with(json!({"learning_rate": "fast"}))),
            (path, "must be a number, not a string".into())
        );
        let lora = validate(&with(json!({"finetune_type": "lora"}))).expect("valid");
        assert_eq!(lora.advance_parameters.learning_rate, 0.0001);
        let full = validate(&with(json!({"finetune_type": "FULL"}))).expect("valid");
        assert_eq!(full.advance_parameters.learning_rate, 0.00001);
        let given = validate(&with(json!({"learning_rate": 0.005}))).expect("valid");
        assert_eq!(given.advance_parameters.learning_rate, 0.005);
    }

    #[test]
    fn booleans_must_be_booleans() {
        let mut body = with(json!({"captioning": "yes"}));
        body["segmind_public"] = json!(1);
        assert_eq!(
            problems(&body),
            vec![
                (
                    "segmind_public".into(),
                    "must be a boolean (true or false), not a number".into()
                ),
                (
                    "advance_parameters.captioning".into(),
                    "must be a boolean (true or false), not a string".into()
                ),
            ]
        );
        let mut body = with(json!({"captioning": false}));
        body["segmind_public"] = json!(true);
        let request = validate(&body).expect("valid");
        assert!(request.segmind_public);
        assert!(!request.advance_parameters.captioning);
    }

    #[test]
    fn trigger_word_and_base_model_are_kept_when_given() {
        let mut body = minimal();
        body["trigger_word"] = json!("1MAN");
        body["base_model"] = json!("FLUX_PRO_ULTRA");
        let request = validate(&body).expect("valid");
        assert_eq!(request.trigger_word, "1MAN");
        assert_eq!(request.base_model, "FLUX_PRO_ULTRA");
    }

    #[test]
    fn unknown_fields_are_reported_and_a_misplaced_one_says_where_it_belongs() {
        let mut body = with(json!({"steps": 10}));
        body["lora_rank"] = json!(16);
        assert_eq!(
            problems(&body),
            vec![
                (
                    "lora_rank".into(),
                    "is not a field of a Segmind fine-tune request (it belongs in advance_parameters.lora_rank)".into()
                ),
                (
                    "advance_parameters.steps".into(),
                    "is not a field of a Segmind fine-tune request".into()
                ),
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let body = json!({
            "name": "n", "theme": "cosmic",
            "advance_parameters": {"iterations": 50, "lora_rank": 24, "learning_rate": 0, "priority": "fast"}
        });
        let fields: Vec<String> = problems(&body).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "data_source_path",
                "instance_prompt",
                "theme",
                "advance_parameters.iterations",
                "advance_parameters.priority",
                "advance_parameters.lora_rank",
                "advance_parameters.learning_rate",
            ]
        );
    }

    #[test]
    fn advance_parameters_must_be_an_object() {
        assert_eq!(
            only_problem(&with(json!([300]))),
            ("advance_parameters".into(), "must be a JSON object".into())
        );
    }

    #[test]
    fn problems_read_as_one_line_each_with_its_field() {
        let invalid = validate(&with(json!({"lora_rank": 24}))).expect_err("invalid");
        assert_eq!(
            invalid.to_string(),
            "advance_parameters.lora_rank: must be 16 or 32 (got 24)"
        );
    }

    #[test]
    fn http_and_https_are_urls_and_the_rest_are_paths() {
        assert_eq!(
            dataset_location("https://d.example/a.zip"),
            DatasetLocation::Url("https://d.example/a.zip")
        );
        assert_eq!(
            dataset_location("HTTP://d.example/a.zip"),
            DatasetLocation::Url("HTTP://d.example/a.zip")
        );
        assert_eq!(
            dataset_location("photos/set.zip"),
            DatasetLocation::Local("photos/set.zip")
        );
        assert_eq!(dataset_location("é"), DatasetLocation::Local("é"));
    }
}
