//! The command line: `serve`, `migrate`, `check-config`, `tokens`,
//! `healthcheck`, `reconcile`, `prune`, `send-test-event`, and `segmind …`
//! (in `segmind`) to drive Segmind's fine-tune API. `main.rs` only parses
//! and calls [`run`].

mod segmind;

use crate::{
    app::Application,
    config::Settings,
    store::{Store, TokenKind},
    telemetry,
};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "tunehook",
    version,
    about = "Receives Segmind fine-tune webhooks and keeps every job's state in SQLite.",
    after_help = "Example:\n  tunehook serve\n  tunehook tokens"
)]
pub struct Cli {
    /// Configuration file (default: config/tunehook.toml when it exists).
    #[arg(long, global = true, env = "TUNEHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    #[command(after_help = "Example:\n  TUNEHOOK_LISTEN=0.0.0.0:8080 tunehook serve")]
    Serve,
    /// Apply the database migrations and exit.
    #[command(after_help = "Example:\n  tunehook migrate")]
    Migrate,
    /// Validate and print the effective configuration, secrets redacted.
    #[command(after_help = "Example:\n  tunehook --config config/tunehook.toml check-config")]
    CheckConfig,
    /// Print the webhook path to register in the Segmind console, and the API token;
    /// with --rotate, replace a generated token first.
    #[command(
        after_help = "Example:\n  tunehook tokens\n  tunehook tokens --rotate ingest   # after the webhook URL leaked"
    )]
    Tokens {
        /// Replace this generated token (`ingest` or `api`) with a new one and print it; a
        /// running service refuses the old one within a second.
        #[arg(long, value_name = "TOKEN", value_parser = ["ingest", "api"])]
        rotate: Option<String>,
    },
    /// Exit 0 when /readyz on the configured listen address answers 200 (for container health checks).
    #[command(after_help = "Example:\n  tunehook healthcheck && echo ready")]
    Healthcheck,
    /// Run one reconcile pass against Segmind's API, print its summary and exit.
    #[command(after_help = "Example:\n  SEGMIND_API_KEY=SG_... tunehook reconcile")]
    Reconcile,
    /// Remove old receipts, attempts and delivered deliveries now (per [retention], or older than
    /// --older-than), print what was removed as JSON and exit. Safe while the service runs.
    #[command(
        after_help = "Example:\n  tunehook prune --dry-run\n  tunehook prune --older-than 30d"
    )]
    Prune {
        /// Remove every kind of history older than this (such as 30d or 12h), instead of
        /// the configured retention.
        #[arg(long = "older-than", value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Print what would be removed, and remove nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Drive Segmind's fine-tune API: upload, submit, list, details, access (needs SEGMIND_API_KEY).
    #[command(
        after_help = "Exit codes: 0 success, 2 a check failed (nothing was sent), 1 Segmind or the network failed.\n\nExample:\n  tunehook segmind submit --name me --dataset photos.zip --instance-prompt 'a photo of TOK'"
    )]
    Segmind {
        #[command(subcommand)]
        command: segmind::SegmindCommand,
    },
    /// POST a Segmind-shaped webhook to URL and print the response.
    #[command(
        after_help = "Example:\n  tunehook send-test-event http://127.0.0.1:8080/webhooks/segmind/TOKEN \\\n    --event AVAILABLE --finetune-id ft_123 --name my-model"
    )]
    SendTestEvent {
        /// The full webhook URL, token included.
        url: String,
        /// The event (status) name, such as TRAINING_COMPLETED or AVAILABLE.
        #[arg(long)]
        event: String,
        /// The job's id.
        #[arg(long = "finetune-id")]
        finetune_id: String,
        /// The job's name.
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn run(cli: Cli) -> ExitCode {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let vars = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    for warning in crate::config::unknown_env_vars(vars) {
        eprintln!("warning: {warning}");
    }
    let result = match cli.command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
        Command::CheckConfig => {
            println!("# configuration is valid; effective settings (secrets redacted):");
            print!("{}", settings.to_redacted_toml());
            for (key, value) in [
                ("ingest.token", &settings.ingest.token),
                ("api.token", &settings.api.token),
            ] {
                if value.is_none() {
                    println!(
                        "# {key} is not set: the token generated on first start is used (`tunehook tokens`)"
                    );
                }
            }
            Ok(())
        }
        Command::Tokens { rotate: None } => tokens(settings).await,
        Command::Tokens {
            rotate: Some(which),
        } => {
            let Some(kind) = TokenKind::parse(&which) else {
                eprintln!("error: --rotate takes `ingest` or `api`");
                return ExitCode::from(2);
            };
            let configured = match kind {
                TokenKind::Ingest => settings.ingest.token.is_some(),
                TokenKind::Api => settings.api.token.is_some(),
            };
            if configured {
                eprintln!("error: {}", kind.configured_message());
                return ExitCode::from(2);
            }
            rotate_token(settings, kind).await
        }
        Command::Reconcile => reconcile(settings).await,
        Command::Segmind { command } => return segmind::run(settings, command).await,
        Command::Prune {
            older_than,
            dry_run,
        } => prune(settings, older_than, dry_run).await,
        Command::Healthcheck => healthcheck(settings).await,
        Command::SendTestEvent {
            url,
            event,
            finetune_id,
            name,
        } => send_test_event(&url, &event, &finetune_id, name.as_deref()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    let app = Application::build(settings).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    app.run().await
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    // A server not up yet is asked again until `database.connect_timeout`:
    // each attempt is logged, as `serve` logs it.
    telemetry::init(&settings.log);
    let count = Store::migrate_only(&settings.database)
        .await
        .with_context(|| format!("cannot migrate {}", settings.database.redacted_url()))?;
    println!(
        "{count} migration(s) applied to {}",
        settings.database.redacted_url()
    );
    Ok(())
}

async fn healthcheck(settings: Settings) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = settings.server.listen.parse()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}/readyz", addr.port());
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("cannot reach {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    println!("ready");
    Ok(())
}

async fn reconcile(settings: Settings) -> anyhow::Result<()> {
    let routes = crate::delivery::routes(&settings.sinks);
    let (store, writer) = Store::open_existing(&settings.database, routes)
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                settings.database.redacted_url()
            )
        })?;
    let reconciler = crate::reconcile::Reconciler::new(&settings, store.clone())
        .context("cannot build the HTTP client for Segmind")?;
    let result = reconciler.run_pass().await;
    drop(reconciler);
    drop(store);
    writer
        .finished()
        .await
        .map_err(|cause| anyhow::anyhow!("the database writer failed: {cause}"))?;
    // Shown as `POST /v1/reconcile` answers it.
    let report = crate::http::views::PassReport::from(result?);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn prune(
    settings: Settings,
    older_than: Option<std::time::Duration>,
    dry_run: bool,
) -> anyhow::Result<()> {
    // Opened as the service opens it: WAL mode and the busy timeout let
    // this second writer take turns with a running service's.
    let (store, writer) = Store::open_existing(&settings.database, Vec::new())
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                settings.database.redacted_url()
            )
        })?;
    let cutoffs = crate::retention::cutoffs(&settings.retention, older_than);
    let result = if dry_run {
        store
            .prune_preview(&cutoffs)
            .await
            .map(|counts| serde_json::json!({"dry_run": true, "before": cutoffs, "would_remove": counts}))
    } else {
        let never = tokio_util::sync::CancellationToken::new();
        crate::retention::prune(&store, &cutoffs, &never)
            .await
            .map(|report| {
                serde_json::json!({"dry_run": false, "before": cutoffs, "removed": report.removed})
            })
    };
    drop(store);
    writer
        .finished()
        .await
        .map_err(|cause| anyhow::anyhow!("the database writer failed: {cause}"))?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

async fn tokens(settings: Settings) -> anyhow::Result<()> {
    let (store, writer) = Store::open_existing(&settings.database, Vec::new())
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                settings.database.redacted_url()
            )
        })?;
    let generated = store.generated_tokens().await?;
    drop(store);
    writer
        .finished()
        .await
        .map_err(|cause| anyhow::anyhow!("the database writer failed: {cause}"))?;

    let (ingest, ingest_origin) = match &settings.ingest.token {
        Some(token) => (token.expose().to_owned(), "configured"),
        None => (generated.ingest, "generated"),
    };
    let (api, api_origin) = match &settings.api.token {
        Some(token) => (token.expose().to_owned(), "configured"),
        None => (generated.api, "generated"),
    };
    let path = format!("/webhooks/segmind/{ingest}");
    println!("Webhook URL to register in the Segmind console ({ingest_origin} token):");
    println!("  {}{path}", base_url(&settings));
    println!("Webhook path: {path}");
    println!("API token ({api_origin}), sent as `Authorization: Bearer <token>`:");
    println!("  {api}");
    Ok(())
}

/// Replaces a generated token in the database and prints the new one. A
/// service running on the same database re-reads the tokens every second
/// and refuses the old one from then on.
async fn rotate_token(settings: Settings, kind: TokenKind) -> anyhow::Result<()> {
    let (store, writer) = Store::open_existing(&settings.database, Vec::new())
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                settings.database.redacted_url()
            )
        })?;
    // Generates the other token too when this is the first start, as
    // `tunehook tokens` would.
    store.generated_tokens().await?;
    let token = store.rotate_token(kind).await?;
    drop(store);
    writer
        .finished()
        .await
        .map_err(|cause| anyhow::anyhow!("the database writer failed: {cause}"))?;
    println!(
        "The {} token was replaced; a running tunehook refuses the old one within a second.",
        kind.as_str()
    );
    match kind {
        TokenKind::Ingest => {
            let path = format!("/webhooks/segmind/{token}");
            println!("Webhook URL to register in the Segmind console (generated token):");
            println!("  {}{path}", base_url(&settings));
            println!("Webhook path: {path}");
        }
        TokenKind::Api => {
            println!("API token (generated), sent as `Authorization: Bearer <token>`:");
            println!("  {token}");
        }
    }
    Ok(())
}

/// Where users reach the service: `server.public_url` when set, else the
/// listen address (with a placeholder host when it listens on all).
fn base_url(settings: &Settings) -> String {
    if !settings.server.public_url.is_empty() {
        return settings.server.public_url.trim_end_matches('/').to_owned();
    }
    match settings.server.listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => format!("http://<your-host>:{}", addr.port()),
        _ => format!("http://{}", settings.server.listen),
    }
}

async fn send_test_event(
    url: &str,
    event: &str,
    finetune_id: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({
        "event": event,
        "finetune_id": finetune_id,
        "status": event,
        "timestamp": crate::time::now_rfc3339(),
    });
    if let Some(name) = name {
        body["name"] = name.into();
    }
    let client = reqwest::Client::builder()
        .user_agent(concat!(
            "tunehook/",
            env!("CARGO_PKG_VERSION"),
            " send-test-event"
        ))
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build an HTTP client")?;
    // reqwest's errors quote the URL, and with it the token: strip it and
    // name the URL with its token hidden instead.
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("cannot reach {}", redact_url(url)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(reqwest::Error::without_url)
        .context("cannot read the answer")?;
    println!("HTTP {status}");
    println!("{text}");
    anyhow::ensure!(
        status.is_success(),
        "the webhook was not accepted ({status})"
    );
    Ok(())
}

/// The URL as it is safe to print: scheme, host, port and path, with its
/// last path segment (the ingest token) hidden, and no user, password,
/// query or fragment.
fn redact_url(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "the given URL (not a valid URL)".to_owned();
    };
    let mut segments: Vec<&str> = parsed
        .path_segments()
        .map(|segments| segments.collect())
        .unwrap_or_default();
    if let Some(token) = segments.iter_mut().rev().find(|s| !s.is_empty()) {
        *token = "[token]";
    }
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}/{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or("?"),
        segments.join("/")
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_printed_url_hides_the_token_and_any_credentials() {
        for (url, shown) in [
            (
                "http://127.0.0.1:8080/webhooks/segmind/tok3n",
                "http://127.0.0.1:8080/webhooks/segmind/[token]",
            ),
            (
                "https://h.example/webhooks/segmind/tok3n/?x=tok3n#tok3n",
                "https://h.example/webhooks/segmind/[token]/",
            ),
            (
                "http://user:tok3n@h.example/tok3n",
                "http://h.example/[token]",
            ),
            ("tok3n", "the given URL (not a valid URL)"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
