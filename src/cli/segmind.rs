//! `tunehook segmind …`: drive Segmind's fine-tune API from the command
//! line — upload a dataset, submit a fine-tune, list jobs, show one, set
//! its access — with every check `POST /v1/finetunes` makes, run before
//! anything is sent or paid for.
//!
//! Exit codes: 0 success, 2 when a check failed or the configuration lacks
//! what the command needs (nothing was sent), 1 when Segmind or the network
//! failed. Results go to stdout (the finetune id, the `s3_url`, a table or
//! JSON), so scripts can capture them; notes and progress go to stderr.
//! Segmind's errors show its status and message, never the key.

use crate::{
    config::Settings,
    dataset::{
        self,
        local::check_zip,
        remote::{Reach, UrlChecker},
    },
    domain::finetune_request::{self, DatasetLocation, SubmitRequest},
    segmind::{SegmindClient, upload::Uploader},
    store::{Store, Submission, WriterTask},
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

#[derive(Debug, Subcommand)]
pub enum SegmindCommand {
    /// Check a dataset ZIP, upload it to Segmind through a pre-signed URL and print its s3_url.
    #[command(after_help = "Example:\n  SEGMIND_API_KEY=SG_... tunehook segmind upload photos.zip")]
    Upload {
        /// The dataset ZIP.
        dataset: PathBuf,
    },
    /// Check and submit a fine-tune; print its id and track it from REQUESTED.
    #[command(
        after_help = "Example:\n  tunehook segmind submit --name me --dataset photos.zip --instance-prompt 'a photo of TOK' --dry-run\n  tunehook segmind submit --file request.json"
    )]
    Submit(Box<SubmitArgs>),
    /// List Segmind's fine-tunes.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one fine-tune as Segmind reports it.
    Details {
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a fine-tuned model public or private.
    #[command(after_help = "Example:\n  tunehook segmind access ft_123 --public false")]
    Access {
        id: String,
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        public: bool,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Follow one job live from a running tunehook until it finishes: exit 0 when it is
    /// AVAILABLE, 1 when it fails.
    #[command(
        after_help = "Example:\n  tunehook segmind watch ft_123\n  tunehook segmind watch ft_123 --url http://tunehook:8080"
    )]
    Watch {
        id: String,
        /// The running tunehook (default: the configured listen address).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The whole request as Segmind's submit body, in a JSON file.
    #[arg(long, value_name = "request.json", conflicts_with_all = [
        "name", "dataset", "instance_prompt", "trigger_word", "theme", "base_model", "iterations",
        "priority", "finetune_type", "lora_rank", "learning_rate", "captioning", "public"])]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// A public ZIP URL, or a local ZIP (checked and uploaded first).
    #[arg(long, value_name = "URL_OR_ZIP")]
    dataset: Option<String>,
    #[arg(long = "instance-prompt")]
    instance_prompt: Option<String>,
    #[arg(long = "trigger-word")]
    trigger_word: Option<String>,
    /// CHARACTER, PRODUCT, STYLE or GENERAL.
    #[arg(long)]
    theme: Option<String>,
    #[arg(long = "base-model")]
    base_model: Option<String>,
    /// At least 100.
    #[arg(long)]
    iterations: Option<String>,
    /// SPEED, QUALITY or HIGH_RES_ONLY.
    #[arg(long)]
    priority: Option<String>,
    /// FULL or LORA.
    #[arg(long = "finetune-type")]
    finetune_type: Option<String>,
    /// 16 or 32.
    #[arg(long = "lora-rank")]
    lora_rank: Option<String>,
    #[arg(long = "learning-rate")]
    learning_rate: Option<String>,
    /// true or false.
    #[arg(long, value_name = "true|false")]
    captioning: Option<String>,
    /// true or false: the model is public on Segmind.
    #[arg(long, value_name = "true|false")]
    public: Option<String>,
    /// Check, and print the request that would be sent; send nothing.
    #[arg(long = "dry-run")]
    dry_run: bool,
}

/// Why a command stopped.
enum Failure {
    /// A check failed or something needed is missing: nothing was sent.
    Invalid(Vec<String>),
    /// Segmind or the network failed.
    Remote(String),
}

pub async fn run(settings: Settings, command: SegmindCommand) -> ExitCode {
    let result = match command {
        SegmindCommand::Upload { dataset } => upload(&settings, &dataset).await.map(|url| {
            println!("{url}");
        }),
        SegmindCommand::Submit(args) => submit(&settings, *args).await,
        SegmindCommand::List { json } => list(&settings, json).await,
        SegmindCommand::Details { id, json } => details(&settings, &id, json).await,
        SegmindCommand::Access { id, public, json } => access(&settings, &id, public, json).await,
        SegmindCommand::Watch { id, url } => watch(&settings, &id, url.as_deref()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(problems)) => {
            for problem in problems {
                eprintln!("error: {problem}");
            }
            eprintln!("nothing was sent to Segmind");
            ExitCode::from(2)
        }
        Err(Failure::Remote(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Follows a job on a running tunehook with its API token (configured, or
/// the one generated in the database).
async fn watch(settings: &Settings, id: &str, url: Option<&str>) -> Result<(), Failure> {
    let token = match &settings.api.token {
        Some(token) => token.expose().to_owned(),
        None => {
            let (store, writer) = Store::open_existing(&settings.database, Vec::new())
                .await
                .map_err(|e| remote(format!("cannot open the database for the API token: {e}")))?;
            let tokens = store.generated_tokens().await.map_err(remote)?;
            drop(store);
            let _ = writer.finished().await;
            tokens.api
        }
    };
    let base = match url {
        Some(url) => url.to_owned(),
        None => local_url(&settings.server.listen),
    };
    let ending = crate::watch::watch(&base, &token, id, |line| println!("{line}"))
        .await
        .map_err(|e| remote(format!("{e:#}")))?;
    match ending {
        crate::watch::Ending::Available => Ok(()),
        crate::watch::Ending::Failed { status, error } => Err(Failure::Remote(match error {
            Some(error) => format!("{id} finished {status}: {error}"),
            None => format!("{id} finished {status}"),
        })),
    }
}

/// The listen address as a URL this machine can reach.
fn local_url(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        Ok(addr) => format!("http://{addr}"),
        Err(_) => format!("http://{listen}"),
    }
}

fn client(settings: &Settings) -> Result<SegmindClient, Failure> {
    let key = settings.segmind.api_key.clone().ok_or_else(|| {
        Failure::Invalid(vec![
            "SEGMIND_API_KEY (segmind.api_key) is not set; Segmind's API needs it".into(),
        ])
    })?;
    SegmindClient::new(&settings.segmind.base_url, key, settings.segmind.timeout)
        .map(|c| c.with_max_response_bytes(settings.segmind.max_response_bytes))
        .map_err(|e| Failure::Remote(format!("cannot build the HTTP client: {e}")))
}

fn remote(e: impl std::fmt::Display) -> Failure {
    Failure::Remote(e.to_string())
}

/// Checks a local ZIP; its problems fail the command, its notes are shown.
fn check_local(path: &Path) -> Result<(), Failure> {
    let checked = check_zip(path);
    for note in &checked.report.notes {
        eprintln!("note: {note}");
    }
    if !checked.report.is_ok() {
        return Err(Failure::Invalid(
            checked
                .report
                .problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        ));
    }
    eprintln!(
        "{}: {} image(s), {} caption(s), {}",
        path.display(),
        checked.images,
        checked.captions,
        dataset::megabytes(checked.size)
    );
    Ok(())
}

async fn check_url(settings: &Settings, url: &str) -> Result<(), Failure> {
    // The user's own machine: local URLs are theirs to check.
    let checker = UrlChecker::new(settings.segmind.timeout, Reach::Anywhere)
        .map_err(|e| Failure::Remote(format!("cannot build the HTTP client: {e}")))?;
    let report = checker.check(url).await;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(Failure::Invalid(
            report
                .problems
                .iter()
                .map(|p| format!("data_source_path: {p}"))
                .collect(),
        ))
    }
}

/// Checks and uploads a local ZIP; its `s3_url`.
async fn upload(settings: &Settings, path: &Path) -> Result<String, Failure> {
    check_local(path)?;
    let client = client(settings)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::Invalid(vec![format!("{}: not a file name", path.display())]))?;
    let urls = client.presigned_url(file_name).await.map_err(remote)?;
    let (Some(presigned), Some(s3_url)) = (urls.presigned_url, urls.s3_url) else {
        return Err(Failure::Remote(
            "Segmind's pre-signed URL answer lacks presigned_url or s3_url".into(),
        ));
    };
    let uploader = Uploader::new(settings.segmind.timeout)
        .map_err(|e| Failure::Remote(format!("cannot build the HTTP client: {e}")))?;
    let progress = Progress::new();
    let report = progress.clone();
    let sent = uploader
        .put_file(&presigned, path, move |done, total| {
            report.update(done, total)
        })
        .await
        .map_err(remote)?;
    progress.finish(sent);
    Ok(s3_url)
}

/// Upload progress: a bar when stderr is a terminal, else a line at each
/// quarter, so that logs stay readable.
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quarter: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "uploading [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            quarter: Default::default(),
        }
    }

    fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let quarter = (done * 4).checked_div(total).unwrap_or(4);
        let before = self
            .quarter
            .fetch_max(quarter, std::sync::atomic::Ordering::Relaxed);
        if quarter > before && quarter < 4 {
            eprintln!("uploaded {done} of {total} bytes ({}%)", quarter * 25);
        }
    }

    fn finish(&self, sent: u64) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("uploaded {sent} bytes");
    }
}

/// The request body from `--file` or the flags, as JSON for the shared rules.
fn request_body(args: &SubmitArgs) -> Result<Value, Failure> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(vec![format!("cannot read {}: {e}", path.display())]))?;
        return serde_json::from_str(&text)
            .map_err(|e| Failure::Invalid(vec![format!("{} is not JSON: {e}", path.display())]));
    }
    let mut body = serde_json::Map::new();
    let mut advanced = serde_json::Map::new();
    let texts = [
        ("name", &args.name),
        ("data_source_path", &args.dataset),
        ("instance_prompt", &args.instance_prompt),
        ("trigger_word", &args.trigger_word),
        ("theme", &args.theme),
        ("base_model", &args.base_model),
    ];
    for (key, value) in texts {
        if let Some(value) = value {
            body.insert(key.into(), json!(value));
        }
    }
    if let Some(public) = &args.public {
        body.insert("segmind_public".into(), typed(public));
    }
    for (key, value) in [
        ("priority", &args.priority),
        ("finetune_type", &args.finetune_type),
    ] {
        if let Some(value) = value {
            advanced.insert(key.into(), json!(value));
        }
    }
    for (key, value) in [
        ("iterations", &args.iterations),
        ("lora_rank", &args.lora_rank),
        ("learning_rate", &args.learning_rate),
        ("captioning", &args.captioning),
    ] {
        if let Some(value) = value {
            advanced.insert(key.into(), typed(value));
        }
    }
    if !advanced.is_empty() {
        body.insert("advance_parameters".into(), Value::Object(advanced));
    }
    Ok(Value::Object(body))
}

/// A flag's text as the JSON value it spells (a number, `true`, `false`),
/// else as text: the shared rules then name what is wrong with it.
fn typed(text: &str) -> Value {
    match text.trim() {
        t if t.eq_ignore_ascii_case("true") => Value::Bool(true),
        t if t.eq_ignore_ascii_case("false") => Value::Bool(false),
        t => match serde_json::from_str::<Value>(t) {
            Ok(number @ Value::Number(_)) => number,
            _ => Value::String(text.to_owned()),
        },
    }
}

async fn submit(settings: &Settings, args: SubmitArgs) -> Result<(), Failure> {
    let body = request_body(&args)?;
    let mut request = finetune_request::validate(&body)
        .map_err(|invalid| Failure::Invalid(invalid.0.iter().map(ToString::to_string).collect()))?;
    let local = match finetune_request::dataset_location(&request.data_source_path) {
        DatasetLocation::Url(url) => {
            check_url(settings, url).await?;
            None
        }
        DatasetLocation::Local(path) => {
            let path = PathBuf::from(path);
            check_local(&path)?;
            Some(path)
        }
    };
    if args.dry_run {
        if let Some(path) = &local {
            eprintln!(
                "note: {} would be uploaded first, and data_source_path would be its s3_url",
                path.display()
            );
        }
        println!("{}", pretty(&request)?);
        eprintln!("dry run: the request is valid; nothing was sent");
        return Ok(());
    }
    let client = client(settings)?;
    if let Some(path) = &local {
        request.data_source_path = upload(settings, path).await?;
    }
    let answer = client.submit(&request).await.map_err(remote)?;
    let finetune_id = answer.job_id().map(str::to_owned).ok_or_else(|| {
        Failure::Remote("Segmind accepted the request but its answer names no finetune id".into())
    })?;
    println!("{finetune_id}");
    record(settings, finetune_id, request).await;
    Ok(())
}

fn pretty(request: &SubmitRequest) -> Result<String, Failure> {
    serde_json::to_string_pretty(request).map_err(|e| Failure::Remote(e.to_string()))
}

/// Records the submitted job in the local database, so that it is tracked
/// from REQUESTED. The job exists at Segmind whatever happens here, so a
/// database that cannot be reached is a warning, not a failure.
async fn record(settings: &Settings, finetune_id: String, request: SubmitRequest) {
    let Some((store, writer)) = open_store(settings, "submitted").await else {
        return;
    };
    let recorded = store
        .record_submission(Submission {
            finetune_id,
            request,
            idempotency_key: None,
        })
        .await;
    close_store(store, writer).await;
    match recorded {
        Ok(_) => eprintln!(
            "recorded as REQUESTED in {}",
            settings.database.redacted_url()
        ),
        Err(e) => eprintln!("warning: submitted, but not recorded: {e}"),
    }
}

/// Records a model's new access on the local job, when there is one.
async fn record_access(settings: &Settings, finetune_id: &str, public: bool) {
    let Some((store, writer)) = open_store(settings, "changed at Segmind").await else {
        return;
    };
    let recorded = store.record_access(finetune_id, public).await;
    close_store(store, writer).await;
    match recorded {
        Ok(Some(_)) => eprintln!(
            "recorded on the job in {}",
            settings.database.redacted_url()
        ),
        Ok(None) => {}
        Err(e) => eprintln!("warning: changed at Segmind, but not recorded: {e}"),
    }
}

/// The local database, opened the way `tunehook reconcile` opens it (WAL
/// lets this run beside the service); `None`, with a warning, when it
/// cannot be opened.
async fn open_store(settings: &Settings, done: &str) -> Option<(Store, WriterTask)> {
    match Store::open_existing(&settings.database, crate::delivery::routes(&settings.sinks)).await {
        Ok(opened) => Some(opened),
        Err(e) => {
            eprintln!(
                "warning: {done}, but not recorded: cannot open the database at {}: {e}",
                settings.database.redacted_url()
            );
            None
        }
    }
}

async fn close_store(store: Store, writer: WriterTask) {
    drop(store);
    let closed = tokio::time::timeout(Duration::from_secs(30), writer.finished()).await;
    if !matches!(closed, Ok(Ok(()))) {
        eprintln!("warning: the database did not close cleanly");
    }
}

async fn list(settings: &Settings, as_json: bool) -> Result<(), Failure> {
    let jobs = client(settings)?.list().await.map_err(remote)?;
    if as_json {
        println!("{}", to_json(&jobs)?);
        return Ok(());
    }
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|j| {
            [
                j.job_id().unwrap_or("-").to_owned(),
                shown(&j.status),
                shown(&j.name),
                shown(&j.base_model),
                shown(&j.train_type),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "STATUS", "NAME", "BASE MODEL", "TYPE"], &rows)
    );
    Ok(())
}

async fn details(settings: &Settings, id: &str, as_json: bool) -> Result<(), Failure> {
    let Some(job) = client(settings)?.details(id).await.map_err(remote)? else {
        return Err(Failure::Remote(format!(
            "Segmind knows no fine-tune `{id}`"
        )));
    };
    if as_json {
        println!("{}", to_json(&job)?);
        return Ok(());
    }
    let public = job.public().map(|p| p.to_string());
    let rows: Vec<[String; 2]> = [
        ("finetune_id", job.job_id().map(str::to_owned)),
        ("name", job.name.clone()),
        ("status", job.status.clone()),
        ("base_model", job.base_model.clone()),
        ("theme", job.theme.clone()),
        ("train_type", job.train_type.clone()),
        ("public", public),
        ("data_source_path", job.data_source_path.clone()),
        ("trained_model_url", job.trained_model_url.clone()),
        ("inference_api_url", job.inference_api_url.clone()),
        ("cloud_storage_url", job.cloud_storage_url.clone()),
        ("error_message", job.error_message.clone()),
        ("created_ts", job.created_ts.clone()),
        ("updated_ts", job.updated_ts.clone()),
    ]
    .into_iter()
    .map(|(k, v)| [k.to_owned(), shown(&v)])
    .collect();
    print!("{}", table(&["FIELD", "VALUE"], &rows));
    Ok(())
}

async fn access(settings: &Settings, id: &str, public: bool, as_json: bool) -> Result<(), Failure> {
    client(settings)?
        .access_update(id, public)
        .await
        .map_err(remote)?;
    record_access(settings, id, public).await;
    if as_json {
        println!("{}", json!({"finetune_id": id, "public": public}));
    } else {
        println!("{id} is now {}", if public { "public" } else { "private" });
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| Failure::Remote(e.to_string()))
}

fn shown(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

/// Columns padded to their widest cell.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_text_becomes_the_json_value_it_spells() {
        assert_eq!(typed("300"), json!(300));
        assert_eq!(typed("0.005"), json!(0.005));
        assert_eq!(typed("TRUE"), json!(true));
        assert_eq!(typed("false"), json!(false));
        assert_eq!(typed("lots"), json!("lots"));
    }

    #[test]
    fn a_table_pads_each_column_to_its_widest_cell() {
        let rows = [["ft_1".to_owned(), "AVAILABLE".to_owned()]];
        assert_eq!(
            table(&["ID", "STATUS"], &rows),
            "ID    STATUS\nft_1  AVAILABLE\n"
        );
    }
}
