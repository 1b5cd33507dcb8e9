//! Following one job live from a running tunehook, over its Server-Sent
//! Events stream (`GET /v1/jobs/{id}/events`), until the job finishes: what
//! `tunehook segmind watch` does. A dropped stream is opened again with
//! `Last-Event-ID`, so nothing is missed in between.

use anyhow::Context;
use serde_json::Value;
use std::time::Duration;

/// How a watched job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Available,
    /// A failure status (`FAILED`, `ERROR`, `CANCELLED`...), with the job's
    /// error message when it has one.
    Failed {
        status: String,
        error: Option<String>,
    },
}

/// Times a dropped stream is opened again before giving up.
const RECONNECTS: u32 = 10;

/// Follows `finetune_id` on the tunehook at `base` (`http://host:port`)
/// until it reaches a final status; `report` gets one line per change.
pub async fn watch(
    base: &str,
    api_token: &str,
    finetune_id: &str,
    mut report: impl FnMut(&str),
) -> anyhow::Result<Ending> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot build an HTTP client")?;
    let mut base = url::Url::parse(base).with_context(|| format!("`{base}` is not a URL"))?;
    base.set_path("/");
    let job_url = endpoint(&base, &["v1", "jobs", finetune_id])?;
    let events_url = endpoint(&base, &["v1", "jobs", finetune_id, "events"])?;
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    let mut opened_once = false;
    loop {
        let mut request = client
            .get(events_url.clone())
            .bearer_auth(api_token)
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let mut stream = match request.send().await {
            Ok(response) if response.status().is_success() => {
                opened_once = true;
                response
            }
            Ok(response) => anyhow::bail!(
                "tunehook answered {} for {finetune_id}: {}",
                response.status(),
                error_message(response).await
            ),
            // Never reached: the service is not there (or not at this
            // address), which waiting will not change.
            Err(e) if !opened_once => {
                return Err(e.without_url()).with_context(|| {
                    format!(
                        "cannot reach tunehook at {}; is `tunehook serve` running there? (--url names another address)",
                        base.as_str().trim_end_matches('/')
                    )
                });
            }
            Err(e) if reconnects < RECONNECTS => {
                reconnects += 1;
                tracing::debug!(error = %e.without_url(), "the stream did not open; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.without_url()).context("cannot reach tunehook"),
        };
        if last_id.is_none() {
            // The stream is open first, so nothing after this read is lost.
            let job: Value = client
                .get(job_url.clone())
                .bearer_auth(api_token)
                .send()
                .await
                .map_err(reqwest::Error::without_url)
                .context("cannot read the job")?
                .json()
                .await
                .context("the job is not JSON")?;
            let status = job["status"].as_str().unwrap_or("?").to_owned();
            report(&format!("{finetune_id}: {status}"));
            if let Some(ending) = ending(&status, &job) {
                return Ok(ending);
            }
        }
        let mut buffer = String::new();
        loop {
            match stream.chunk().await {
                Ok(Some(bytes)) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => break,
            }
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let Some((id, event)) = message(&block) else {
                    continue;
                };
                last_id = Some(id);
                reconnects = 0;
                report(&describe(&event));
                let status = event["data"]["status"].as_str().unwrap_or_default();
                if event["type"] == "finetune.status_changed" {
                    if let Some(ending) = ending(status, &event["data"]) {
                        return Ok(ending);
                    }
                }
            }
        }
        if reconnects >= RECONNECTS {
            anyhow::bail!("the stream from tunehook kept closing");
        }
        reconnects += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn endpoint(base: &url::Url, segments: &[&str]) -> anyhow::Result<url::Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("`{base}` cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// The id and JSON of one Server-Sent Events message; `None` for a comment.
fn message(block: &str) -> Option<(String, Value)> {
    let mut id = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some((id?, serde_json::from_str(&data).ok()?))
}

fn describe(event: &Value) -> String {
    let data = &event["data"];
    let id = data["finetune_id"].as_str().unwrap_or("?");
    let status = data["status"].as_str().unwrap_or("?");
    let source = data["source"].as_str().unwrap_or("?");
    match event["type"].as_str() {
        Some("finetune.updated") => {
            let changed: Vec<&str> = data["changed"]
                .as_array()
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{id}: {status}, updated {} ({source})", changed.join(", "))
        }
        _ => match data["previous_status"].as_str() {
            Some(previous) => format!("{id}: {previous} → {status} ({source})"),
            None => format!("{id}: {status} ({source})"),
        },
    }
}

/// How a job in `status` ended, if it did; `job` (the job, or an event's
/// data) gives the error message of a failure.
fn ending(status: &str, job: &Value) -> Option<Ending> {
    let status = crate::domain::Status::parse(status)?;
    match status.terminal()? {
        crate::domain::status::Terminal::Success => Some(Ending::Available),
        crate::domain::status::Terminal::Failure => Some(Ending::Failed {
            status: status.as_str().to_owned(),
            error: job["error_message"].as_str().map(str::to_owned),
        }),
    }
}

async fn error_message(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned()
}
