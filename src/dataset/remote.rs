//! A dataset at a public URL, checked the way Segmind will fetch it: `HEAD`
//! must answer 2xx with a `Content-Length` under the limit, and the first
//! four bytes (a ranged `GET`) must be the ZIP signature `PK\x03\x04`.
//!
//! Redirects are followed by hand, at most five, so that each hop can be
//! reported: a URL that works only through a redirect chain is worth
//! knowing about. A URL from Segmind's own upload (its `s3_url`, on
//! Segmind's bucket) is private to Segmind and is not checked. Printed URLs
//! never show their query, where pre-signed URLs keep their signatures.

use super::{MAX_DATASET_BYTES, Report, megabytes};
use reqwest::{Method, StatusCode, header};
use std::time::Duration;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// The hosts of Segmind's upload bucket (the `s3_url` its pre-signed
/// upload answers). Datasets there are Segmind's own and private: a public
/// `HEAD` would be refused.
pub const SEGMIND_UPLOAD_HOSTS: [&str; 1] = ["finetune-pipeline.s3.amazonaws.com"];

/// The ZIP local-file signature every archive starts with.
const ZIP_SIGNATURE: &[u8; 4] = b"PK\x03\x04";

/// Whether `url` is on Segmind's upload bucket.
pub fn is_segmind_upload(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|host| SEGMIND_UPLOAD_HOSTS.contains(&host.as_str()))
}

/// The URL as it is safe to print: no user, password, query or fragment.
pub fn shown(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

pub struct UrlChecker {
    http: reqwest::Client,
}

impl UrlChecker {
    /// A checker whose calls each give up after `timeout`. Fails only when
    /// the HTTP client cannot be built, which callers report: a default
    /// client would follow redirects unseen and wait without limit.
    pub fn new(timeout: Duration) -> Result<UrlChecker, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(reqwest::Error::without_url)?;
        Ok(UrlChecker { http })
    }

    /// Checks the dataset at `url`.
    pub async fn check(&self, url: &str) -> Report {
        let mut report = Report::default();
        let parsed = match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                report.problem(None, "is not an http(s) URL");
                return report;
            }
        };
        if is_segmind_upload(url) {
            report
                .notes
                .push("a Segmind upload: its checks were made before it was uploaded".into());
            return report;
        }
        let Some((head, at)) = self
            .follow(Method::HEAD, parsed.clone(), &mut report, "HEAD")
            .await
        else {
            return report;
        };
        if !head.status().is_success() {
            report.problem(
                None,
                format!(
                    "HEAD {} answered {}; Segmind needs a URL that answers HEAD and GET",
                    shown(&at),
                    head.status()
                ),
            );
        } else {
            match head
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                None => report.problem(
                    None,
                    "HEAD answered without a Content-Length; Segmind needs it to fetch the dataset",
                ),
                Some(size) if size >= MAX_DATASET_BYTES => report.problem(
                    None,
                    format!(
                        "the dataset is {}; Segmind takes datasets under {}",
                        megabytes(size),
                        megabytes(MAX_DATASET_BYTES)
                    ),
                ),
                Some(_) => {}
            }
        }
        // The ranged GET starts from the URL given, as Segmind's will: its
        // redirects are reported only when they differ from HEAD's.
        let mut get_report = Report::default();
        if let Some((response, _)) = self
            .follow(Method::GET, parsed, &mut get_report, "GET")
            .await
        {
            report.problems.append(&mut get_report.problems);
            for note in get_report.notes {
                if !report.notes.contains(&note) {
                    report.notes.push(note);
                }
            }
            self.signature(response, &mut report).await;
        } else {
            report.problems.append(&mut get_report.problems);
        }
        report
    }

    /// Sends `method` to `url`, following up to [`MAX_REDIRECTS`]
    /// redirects, each noted; the final answer and its URL, or `None`
    /// (with a problem) when there is none.
    async fn follow(
        &self,
        method: Method,
        mut url: url::Url,
        report: &mut Report,
        what: &str,
    ) -> Option<(reqwest::Response, url::Url)> {
        for hop in 0..=MAX_REDIRECTS {
            let mut request = self.http.request(method.clone(), url.clone());
            if method == Method::GET {
                request = request.header(header::RANGE, "bytes=0-3");
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    let why = if e.is_timeout() {
                        "did not answer in time".to_owned()
                    } else {
                        format!("cannot be reached ({})", e.without_url())
                    };
                    report.problem(None, format!("{what} {} {why}", shown(&url)));
                    return None;
                }
            };
            if !response.status().is_redirection() {
                return Some((response, url));
            }
            let next = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|to| url.join(to).ok());
            let Some(next) = next else {
                report.problem(
                    None,
                    format!(
                        "{what} {} answered {} without a usable Location",
                        shown(&url),
                        response.status()
                    ),
                );
                return None;
            };
            if hop == MAX_REDIRECTS {
                break;
            }
            report.notes.push(format!(
                "{what} {} redirects ({}) to {}",
                shown(&url),
                response.status().as_u16(),
                shown(&next)
            ));
            url = next;
        }
        report.problem(
            None,
            format!("{what} was redirected more than {MAX_REDIRECTS} times"),
        );
        None
    }

    /// Whether the ranged GET's answer starts with the ZIP signature. Only
    /// the first bytes are read, even from a server that ignores `Range`.
    async fn signature(&self, mut response: reqwest::Response, report: &mut Report) {
        let status = response.status();
        if !(status.is_success() || status == StatusCode::PARTIAL_CONTENT) {
            report.problem(
                None,
                format!("GET answered {status}; Segmind needs a URL that answers HEAD and GET"),
            );
            return;
        }
        let mut head = Vec::with_capacity(4);
        while head.len() < 4 {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    head.extend_from_slice(&chunk[..chunk.len().min(4 - head.len())])
                }
                Ok(None) => break,
                Err(e) => {
                    report.problem(None, format!("GET could not be read ({})", e.without_url()));
                    return;
                }
            }
        }
        if head.as_slice() != ZIP_SIGNATURE {
            report.problem(
                None,
                "does not start with the ZIP signature (PK\\x03\\x04): not a ZIP archive",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segminds_bucket_is_recognised_and_other_hosts_are_not() {
        assert!(is_segmind_upload(
            "https://finetune-pipeline.s3.amazonaws.com/uploads/u/f-set.zip"
        ));
        assert!(!is_segmind_upload("https://example.com/set.zip"));
        assert!(!is_segmind_upload("not a url"));
    }

    #[test]
    fn a_shown_url_has_no_query_or_credentials() {
        let url = url::Url::parse("https://u:p@h.example/a.zip?X-Amz-Signature=s#f").expect("url");
        assert_eq!(shown(&url), "https://h.example/a.zip");
    }
}
