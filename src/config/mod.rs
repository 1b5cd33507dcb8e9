//! Settings, in layers: built-in defaults, then the TOML file, then the
//! environment. Unknown keys are an error that names them. Secrets are held in
//! [`Secret`], which never prints its value.

mod sinks;

pub use sinks::{DeliverySettings, SINK_KINDS, SinkSettings, SinkUrl};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// The file read when neither `--config` nor `TUNEHOOK_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "config/tunehook.toml";

/// Environment variables with names of their own, and the key each sets.
pub const NAMED_ENV_VARS: [(&str, &str); 8] = [
    ("TUNEHOOK_LISTEN", "server.listen"),
    ("TUNEHOOK_DATABASE_URL", "database.url"),
    ("TUNEHOOK_INGEST_TOKEN", "ingest.token"),
    ("TUNEHOOK_API_TOKEN", "api.token"),
    ("SEGMIND_API_KEY", "segmind.api_key"),
    ("SEGMIND_BASE_URL", "segmind.base_url"),
    ("TUNEHOOK_LOG", "log.filter"),
    ("TUNEHOOK_LOG_FORMAT", "log.format"),
];

/// The shortest token `ingest.token` and `api.token` may be set to.
pub const MIN_TOKEN_LEN: usize = 16;

/// Prefix for every other key: `TUNEHOOK__SERVER__MAX_BODY_BYTES` sets
/// `server.max_body_bytes`.
pub const ENV_PREFIX: &str = "TUNEHOOK__";

/// `TUNEHOOK_` variables that are not settings: the config file's path,
/// and the switches of the test and benchmark harnesses.
const OTHER_ENV_VARS: [&str; 4] = [
    "TUNEHOOK_CONFIG",
    "TUNEHOOK_TEST_",
    "TUNEHOOK_BENCH_",
    "TUNEHOOK_SCHEMATHESIS_",
];

/// Variables that start like tunehook's but set nothing (a typo such as
/// `TUNEHOOK_LISTNE`, or single underscores where `TUNEHOOK__…` needs
/// double ones), each as a warning naming the closest variable that would
/// set something. Variables Kubernetes makes for a service named tunehook
/// (`TUNEHOOK_SERVICE_HOST`, `TUNEHOOK_PORT_8080_TCP`, …) are left alone.
/// A `TUNEHOOK__…` variable naming no key is already an error.
pub fn unknown_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut known: Vec<(String, String)> = NAMED_ENV_VARS
        .iter()
        .map(|(var, key)| ((*var).to_owned(), (*key).to_owned()))
        .collect();
    if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(Settings::default()) {
        for (section, keys) in sections {
            if let serde_json::Value::Object(keys) = keys {
                for key in keys.keys() {
                    known.push((
                        format!(
                            "{ENV_PREFIX}{}__{}",
                            section.to_uppercase(),
                            key.to_uppercase()
                        ),
                        format!("{section}.{key}"),
                    ));
                }
            }
        }
    }
    let mut warnings = Vec::new();
    for (var, _) in vars {
        let upper = var.to_uppercase();
        let kubernetes =
            upper.starts_with("TUNEHOOK_SERVICE_") || upper.starts_with("TUNEHOOK_PORT");
        if !upper.starts_with("TUNEHOOK_")
            || upper.starts_with(ENV_PREFIX)
            || kubernetes
            || OTHER_ENV_VARS.iter().any(|other| upper.starts_with(other))
            || known.iter().any(|(name, _)| *name == upper)
        {
            continue;
        }
        let closest = known
            .iter()
            .map(|(name, key)| (strsim::levenshtein(&upper, name), name, key))
            .min_by_key(|(distance, ..)| *distance);
        warnings.push(match closest {
            Some((distance, name, key)) if distance <= upper.len() / 3 + 2 => {
                format!("{var} sets nothing; did you mean {name} ({key})?")
            }
            _ => format!(
                "{var} sets nothing; settings are set by the variables in the README's Configuration table or as TUNEHOOK__SECTION__KEY"
            ),
        });
    }
    warnings
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub ingest: IngestSettings,
    pub api: TokenSettings,
    pub segmind: SegmindSettings,
    pub dataset: DatasetSettings,
    pub log: LogSettings,
    pub reconcile: ReconcileSettings,
    pub metrics: MetricsSettings,
    pub delivery: DeliverySettings,
    pub retention: RetentionSettings,
    pub ui: UiSettings,
    pub sinks: Vec<SinkSettings>,
}

/// How long history is kept: a duration, or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Forever,
    For(Duration),
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            // Whole days as days: humantime would write 90 days in months.
            Keep::For(d)
                if d.as_secs() > 0 && d.as_secs() % 86_400 == 0 && d.subsec_nanos() == 0 =>
            {
                write!(f, "{}d", d.as_secs() / 86_400)
            }
            Keep::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Keep, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        humantime::parse_duration(text.trim())
            .map(Keep::For)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is neither a duration such as \"90d\" nor \"forever\""
                ))
            })
    }
}

/// What is removed from the history, and how often.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Webhook requests as received (their bodies are most of the database).
    pub receipts: Keep,
    /// Delivery attempts, by when they started.
    pub attempts: Keep,
    /// Deliveries that were delivered, by when.
    pub delivered: Keep,
    /// Time between background prunes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Wait after start before the first prune.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let ninety_days = Keep::For(Duration::from_secs(90 * 86_400));
        RetentionSettings {
            receipts: ninety_days,
            attempts: ninety_days,
            delivered: ninety_days,
            interval: Duration::from_secs(3600),
            initial_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Whether `GET /metrics` needs the API bearer token.
    pub require_token: bool,
    /// How long the gauges read from the database (outbox depth, jobs by
    /// status) are reused between scrapes; `0s` reads them on every scrape.
    #[serde(with = "humantime_serde")]
    pub cache: Duration,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            require_token: false,
            cache: Duration::from_secs(5),
        }
    }
}

/// The web dashboard served at `/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// Whether the dashboard is served; off, `/` is the API's 404.
    pub enabled: bool,
    /// How long a dashboard session lasts after signing in.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings {
            enabled: true,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// Time between passes over Segmind's job list.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Wait after start before the first pass.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// An id Segmind's details answer 404 for this long is no longer asked
    /// about (its job shows `segmind_status: NOT_FOUND`).
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            interval: Duration::from_secs(120),
            initial_delay: Duration::from_secs(5),
            forget_after: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: String,
    /// Where users reach this service, used only to print the full webhook
    /// URL (`tunehook tokens`); empty means "derive it from `listen`".
    #[serde(serialize_with = "serialize_redacted_http_url")]
    pub public_url: String,
    pub max_body_bytes: usize,
    /// Webhooks handled at once; beyond this the answer is a quick 503.
    pub max_concurrent_webhooks: usize,
    /// Server-Sent Events streams open at once; beyond this, 503.
    pub max_streams: usize,
    /// Bytes of webhook bodies waiting for the writer at once; beyond this
    /// the answer is a quick 503.
    pub max_pending_webhook_bytes: usize,
    /// Connections open at once; at the cap, no more are accepted until one
    /// closes.
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A client must send its request headers within this.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            public_url: String::new(),
            max_body_bytes: 1024 * 1024,
            max_concurrent_webhooks: 1024,
            max_streams: 256,
            max_pending_webhook_bytes: 64 * 1024 * 1024,
            max_connections: 4096,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit reaches the disk before it is acknowledged.
    Full,
    /// Faster; a power loss may drop the last commits (never corrupts).
    Normal,
}

/// Which database a `database.url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `sqlite://…`: a file on this machine (the default).
    Sqlite,
    /// `postgres://…` or `postgresql://…`: a PostgreSQL server.
    Postgres,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`; shown with its password redacted.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// SQLite: how far each commit goes before it is acknowledged.
    pub synchronous: Synchronous,
    /// Most write requests committed together in one transaction.
    pub max_batch: usize,
    /// SQLite: connections serving reads (queries, health); writes have
    /// their own.
    pub read_connections: u32,
    /// PostgreSQL: connections serving reads; the writer has its own.
    pub max_connections: u32,
    /// PostgreSQL: how long to wait at start for a server that is not up
    /// yet.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a write waits for another process's write lock.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://data/tunehook.db".into(),
            synchronous: Synchronous::Full,
            max_batch: 512,
            read_connections: 4,
            max_connections: 10,
            connect_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .field("synchronous", &self.synchronous)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .finish()
    }
}

impl DatabaseSettings {
    /// The database `url` names; SQLite for anything that is not a
    /// PostgreSQL URL (`validate` refuses other schemes).
    pub fn kind(&self) -> DatabaseKind {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            DatabaseKind::Postgres
        } else {
            DatabaseKind::Sqlite
        }
    }

    /// `url` with its password, if any, replaced: what logs, errors and
    /// `check-config` show.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `url` with its password, and any `password=` query parameter, redacted.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if !parsed.scheme().starts_with("sqlite") => {
            // The URL would percent-encode brackets in a password: a
            // placeholder goes in, the readable mark replaces it after.
            const MARK: &str = "tunehook-redacted-password";
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(MARK));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        MARK.to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string().replace(MARK, "[redacted]")
        }
        Ok(_) => raw.to_owned(),
        // Unreadable: show its scheme only, never what may be a password.
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://[unreadable URL]"),
            None => "[unreadable URL]".to_owned(),
        },
    }
}

fn serialize_redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// An http(s) URL as `check-config` shows it: without its password or the
/// values of its query (either may be a secret); the rest as written.
pub fn redact_http_url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return raw.to_owned();
    };
    if parsed.password().is_none() && parsed.query().is_none() {
        // Nothing to hide: as written (parsing would add a `/`).
        return raw.to_owned();
    }
    const MARK: &str = "tunehook-redacted";
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MARK));
    }
    let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
    if parsed.query().is_some() {
        parsed.set_query(None);
        if !keys.is_empty() {
            parsed
                .query_pairs_mut()
                .extend_pairs(keys.iter().map(|k| (k.as_str(), MARK)));
        }
    }
    parsed.to_string().replace(MARK, "[redacted]")
}

fn serialize_redacted_http_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_http_url(url))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// When unset, a random token is generated on first start and kept in
    /// the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

/// Whether a webhook's claim waits for Segmind's API to agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// Apply a claim only once Segmind's details for the job agree.
    Api,
    /// Believe webhooks as they come.
    Off,
}

/// What becomes of a claim Segmind's API could not be asked about before
/// `ingest.confirm_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unconfirmed {
    /// Apply it on the webhook's word, recorded `unconfirmed`.
    Apply,
    /// Leave it unapplied (the receipt keeps it).
    Drop,
    /// Keep it waiting, unapplied, past the deadline until Segmind can be
    /// asked; then settle it by what the API says.
    Hold,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// When unset, a random token is generated on first start and kept in
    /// the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// `api` or `off`; unset: `api` when `segmind.api_key` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Confirm>,
    /// How long a claim may wait for Segmind's API to agree.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    pub unconfirmed: Unconfirmed,
    /// Claims waiting for Segmind's API at most; a webhook beyond it is
    /// stored (outcome `dropped`, confirmation `unconfirmed`, the reason in
    /// its `error`) and its claim is not queued.
    pub max_pending_confirmations: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            token: None,
            confirm: None,
            confirm_timeout: Duration::from_secs(120),
            unconfirmed: Unconfirmed::Apply,
            max_pending_confirmations: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmindSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    #[serde(serialize_with = "serialize_redacted_http_url")]
    pub base_url: String,
    /// Limit for one call to Segmind's API.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Answers larger than this many bytes fail the call.
    pub max_response_bytes: u64,
    /// Reads of Segmind's API (details, list) per second, sustained, shared
    /// by the confirmer and the reconciler.
    pub max_requests_per_second: f64,
    /// Reads that may go at once after a quiet spell.
    pub burst: u32,
}

impl Default for SegmindSettings {
    fn default() -> Self {
        SegmindSettings {
            api_key: None,
            base_url: "https://api.segmind.com".into(),
            timeout: Duration::from_secs(30),
            max_response_bytes: crate::segmind::DEFAULT_MAX_RESPONSE_BYTES,
            max_requests_per_second: 5.0,
            burst: 10,
        }
    }
}

/// The check of the dataset URL `POST /v1/finetunes` is given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSettings {
    /// Whether the check may fetch private, local and other special-purpose
    /// addresses, and ports other than 80 and 443: for datasets on the
    /// user's own network. Off, an API caller cannot make tunehook probe
    /// the network it runs in (the default).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter, like `RUST_LOG`: `info`, `tunehook=debug,info`.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// A secret value: its `Debug`, `Display` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        // Environment values that look like numbers arrive as numbers.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i128),
            Float(f64),
        }
        Ok(Secret(match Raw::deserialize(deserializer)? {
            Raw::Text(s) => s,
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
        }))
    }
}

/// A configuration that cannot be used, with a message that says why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the settings: defaults, then `file` (or `config/tunehook.toml`
    /// when it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let file = match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.into())),
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let named = Env::raw()
            .only(&NAMED_ENV_VARS.map(|(var, _)| var))
            .map(|var| {
                NAMED_ENV_VARS
                    .iter()
                    .find(|(name, _)| var.as_str().eq_ignore_ascii_case(name))
                    .map(|(_, key)| (*key).into())
                    .unwrap_or_else(|| var.into())
            });
        figment = figment
            .merge(named)
            .merge(Env::prefixed(ENV_PREFIX).split("__"));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// `[database]`: a URL of a known scheme that can be read, and sizes
    /// above zero. A URL is shown with its password redacted.
    fn validate_database(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let db = &self.database;
        let shown = db.redacted_url();
        if db.url.starts_with("sqlite:") {
            // sqlx reads the rest when the database is opened.
        } else if db.kind() == DatabaseKind::Postgres {
            let parsed = match url::Url::parse(&db.url) {
                Ok(parsed) => parsed,
                Err(e) => {
                    return invalid(format!(
                        "database.url: `{shown}` cannot be read as a URL ({e}); write it as postgres://USER:PASSWORD@HOST:5432/DATABASE"
                    ));
                }
            };
            let socket = parsed.query_pairs().any(|(k, _)| k == "host");
            if parsed.host_str().is_none_or(str::is_empty) && !socket {
                return invalid(format!(
                    "database.url: `{shown}` names no host; write it as postgres://USER:PASSWORD@HOST:5432/DATABASE"
                ));
            }
            for (key, value) in parsed.query_pairs() {
                const MODES: [&str; 6] = [
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ];
                if key == "sslmode" && !MODES.contains(&value.as_ref()) {
                    return invalid(format!(
                        "database.url: sslmode `{value}` is not one of {}",
                        MODES.join(", ")
                    ));
                }
            }
        } else {
            return invalid(format!(
                "database.url: `{shown}` is neither a sqlite:// nor a postgres:// URL (for example sqlite://data/tunehook.db or postgres://tunehook:PASSWORD@db:5432/tunehook)"
            ));
        }
        if db.max_batch == 0 || db.read_connections == 0 || db.max_connections == 0 {
            return invalid(
                "database.max_batch, database.read_connections and database.max_connections must be greater than 0".into(),
            );
        }
        Ok(())
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "server.listen: `{}` is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.max_body_bytes == 0
            || self.server.max_concurrent_webhooks == 0
            || self.server.max_pending_webhook_bytes == 0
            || self.server.max_connections == 0
        {
            return invalid(
                "server.max_body_bytes, server.max_concurrent_webhooks, server.max_pending_webhook_bytes and server.max_connections must be greater than 0"
                    .into(),
            );
        }
        self.validate_database()?;
        if !self.server.public_url.is_empty() {
            let absolute = url::Url::parse(&self.server.public_url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !absolute {
                return invalid(format!(
                    "server.public_url: `{}` is not an absolute http(s) URL such as https://tunehook.example.com",
                    self.server.public_url
                ));
            }
        }
        for (key, token) in [
            ("ingest.token", &self.ingest.token),
            ("api.token", &self.api.token),
        ] {
            if let Some(token) = token {
                let ok = !token.expose().is_empty()
                    && token
                        .expose()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok {
                    return invalid(format!(
                        "{key} must be non-empty and use only letters, digits, `-`, `.`, `_` or `~`"
                    ));
                }
                if token.expose().len() < MIN_TOKEN_LEN {
                    return invalid(format!(
                        "{key} is shorter than {MIN_TOKEN_LEN} characters: too easy to guess; leave it unset for a generated one, or use e.g. `openssl rand -hex 32`"
                    ));
                }
            }
        }
        if !(self.segmind.base_url.starts_with("http://")
            || self.segmind.base_url.starts_with("https://"))
        {
            return invalid(format!(
                "segmind.base_url: `{}` is not an http(s) URL",
                self.segmind.base_url
            ));
        }
        if self.segmind.max_response_bytes == 0 {
            return invalid("segmind.max_response_bytes must be greater than 0".into());
        }
        let rate = self.segmind.max_requests_per_second;
        if !(rate.is_finite() && rate > 0.0) || self.segmind.burst == 0 {
            return invalid(
                "segmind.max_requests_per_second and segmind.burst must be greater than 0".into(),
            );
        }
        if self.reconcile.interval.is_zero() || self.segmind.timeout.is_zero() {
            return invalid("reconcile.interval and segmind.timeout must be greater than 0".into());
        }
        if self.retention.interval.is_zero() {
            return invalid("retention.interval must be greater than 0".into());
        }
        if self.ui.session_ttl.is_zero() {
            return invalid("ui.session_ttl must be greater than 0".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_err() {
            return invalid(format!(
                "log.filter: `{}` is not a valid filter",
                self.log.filter
            ));
        }
        if self.ingest.confirm == Some(Confirm::Api) && self.segmind.api_key.is_none() {
            return invalid(
                "ingest.confirm: `api` needs segmind.api_key (SEGMIND_API_KEY) to ask Segmind"
                    .into(),
            );
        }
        if self.ingest.confirm_timeout.is_zero() {
            return invalid("ingest.confirm_timeout must be greater than 0".into());
        }
        if self.ingest.max_pending_confirmations == 0 {
            return invalid("ingest.max_pending_confirmations must be greater than 0".into());
        }
        sinks::validate(&self.delivery, &self.sinks)
    }

    /// Whether webhooks wait for Segmind's API to agree: `ingest.confirm`,
    /// or, when it is unset, whenever an API key is set.
    pub fn confirm(&self) -> Confirm {
        self.ingest
            .confirm
            .unwrap_or(if self.segmind.api_key.is_some() {
                Confirm::Api
            } else {
                Confirm::Off
            })
    }

    /// The settings as TOML, secrets shown as `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
    }
}

/// Figment's messages name the key and the file; keep them, but never echo a
/// value that could be a secret.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let place = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (in {s})"))
                .unwrap_or_default();
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, _) => {
                    // Figment's path already ends with the unknown field.
                    let full = if e.path.last() == Some(field) {
                        key
                    } else if key.is_empty() {
                        field.clone()
                    } else {
                        format!("{key}.{field}")
                    };
                    return format!("unknown key `{full}`{place}");
                }
                figment::error::Kind::InvalidType(actual, expected) => {
                    format!(
                        "expected {}, found {}",
                        in_user_words(expected),
                        actual_kind(actual)
                    )
                }
                figment::error::Kind::InvalidValue(actual, expected) => {
                    let found = match actual {
                        figment::error::Actual::Signed(n) if *n < 0 => " (negative)",
                        _ => "",
                    };
                    format!("expected {}{found}", in_user_words(expected))
                }
                figment::error::Kind::UnknownVariant(_, expected) => {
                    format!("expected one of {}", expected.join(", "))
                }
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("{what}{place}")
            } else {
                format!("{key}: {what}{place}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What serde calls a type, as a user writes the value.
fn in_user_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
            "a whole number of 0 or more, such as 1024".to_owned()
        }
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number, such as 30".to_owned(),
        "f32" | "f64" => "a number, such as 0.5".to_owned(),
        "a boolean" | "bool" => "true or false".to_owned(),
        e if e.contains("duration") => "a duration such as \"30s\", \"5m\" or \"2h\"".to_owned(),
        other => other.to_owned(),
    }
}

fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Map => "a table",
        Actual::Seq => "a list",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Settings {
            api: TokenSettings {
                token: Some(Secret::new("hunter2-very-secret")),
            },
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.to_redacted_toml().contains("hunter2"));
        assert!(s.to_redacted_toml().contains("[redacted]"));
    }

    #[test]
    fn a_variable_that_sets_nothing_is_named_with_the_closest_that_would() {
        let vars = [
            ("TUNEHOOK_LISTNE", "0.0.0.0:8080"),
            ("TUNEHOOK_SERVER_MAX_BODY_BYTES", "10"),
            ("TUNEHOOK_LISTEN", "0.0.0.0:8080"),
            ("TUNEHOOK__SERVER__MAX_BODY_BYTES", "10"),
            ("TUNEHOOK_CONFIG", "x.toml"),
            ("TUNEHOOK_TEST_BROWSER", "required"),
            ("TUNEHOOK_SERVICE_HOST", "10.0.0.1"),
            ("TUNEHOOK_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let warnings = unknown_env_vars(vars);
        assert_eq!(
            warnings,
            [
                "TUNEHOOK_LISTNE sets nothing; did you mean TUNEHOOK_LISTEN (server.listen)?",
                "TUNEHOOK_SERVER_MAX_BODY_BYTES sets nothing; did you mean TUNEHOOK__SERVER__MAX_BODY_BYTES (server.max_body_bytes)?",
            ]
        );
    }

    #[test]
    fn the_segmind_and_public_urls_are_shown_without_password_or_query_values() {
        let mut s = Settings::default();
        s.segmind.base_url = "https://user:hunter2@api.example.com/v1?token=hunter3".into();
        s.server.public_url = "https://me:hunter4@hooks.example.com".into();
        let shown = s.to_redacted_toml();
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("https://user:[redacted]@api.example.com/v1?token=[redacted]"),
            "{shown}"
        );
        assert!(shown.contains("hooks.example.com"), "{shown}");
    }

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        for (raw, shown) in [
            (
                "postgres://tunehook:hunter2@db:5432/tunehook?sslmode=require",
                "postgres://tunehook:[redacted]@db:5432/tunehook?sslmode=require",
            ),
            (
                "postgresql://db/tunehook?user=t&password=hunter2",
                "postgresql://db/tunehook?user=t&password=[redacted]",
            ),
            ("postgres://hunter2@/", "postgres://[unreadable URL]"),
            ("sqlite://data/tunehook.db", "sqlite://data/tunehook.db"),
            (
                "mysql://u:hunter2@127.0.0.1/x",
                "mysql://u:[redacted]@127.0.0.1/x",
            ),
        ] {
            let s = Settings {
                database: DatabaseSettings {
                    url: raw.into(),
                    ..DatabaseSettings::default()
                },
                ..Settings::default()
            };
            assert_eq!(s.database.redacted_url(), shown);
            assert!(!s.to_redacted_toml().contains("hunter2"), "{raw}");
            assert!(!format!("{s:?}").contains("hunter2"), "{raw}");
        }
    }

    #[test]
    fn retention_reads_durations_and_forever_and_writes_them_back_the_same() {
        let settings: RetentionSettings =
            toml::from_str("receipts = \"30d\"\nattempts = \"forever\"\ndelivered = \"36h\"\n")
                .expect("valid");
        assert_eq!(
            settings.receipts,
            Keep::For(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(settings.attempts, Keep::Forever);
        assert_eq!(
            settings.delivered,
            Keep::For(Duration::from_secs(36 * 3600))
        );
        let text = toml::to_string(&settings).expect("serializes");
        assert!(text.contains("receipts = \"30d\""), "{text}");
        assert!(text.contains("attempts = \"forever\""), "{text}");
        let again: RetentionSettings = toml::from_str(&text).expect("reads back");
        assert_eq!(again.delivered, settings.delivered);
        assert_eq!(RetentionSettings::default().receipts.to_string(), "90d");
        let bad = toml::from_str::<RetentionSettings>("receipts = \"soon\"\n");
        assert!(bad.is_err_and(|e| e.to_string().contains("forever")));
    }

    #[test]
    fn the_defaults_are_valid() {
        Settings::default().validate().expect("defaults are valid");
    }

    #[test]
    fn the_pace_of_reads_and_the_pending_cap_must_leave_room_for_a_call() {
        let refused: [fn(&mut Settings); 4] = [
            |s| s.segmind.max_requests_per_second = 0.0,
            |s| s.segmind.max_requests_per_second = f64::NAN,
            |s| s.segmind.burst = 0,
            |s| s.ingest.max_pending_confirmations = 0,
        ];
        for change in refused {
            let mut settings = Settings::default();
            change(&mut settings);
            assert!(settings.validate().is_err());
        }
        let slow: Settings = toml::from_str(
            "[segmind]\nmax_requests_per_second = 0.5\n[ingest]\nunconfirmed = \"hold\"\n",
        )
        .expect("a fraction of a call a second, and hold");
        assert_eq!(slow.ingest.unconfirmed, Unconfirmed::Hold);
        slow.validate().expect("half a call a second is a pace");
    }
}
