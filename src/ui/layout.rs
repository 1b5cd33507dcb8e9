//! The frame every page shares, and the small pieces pages are made of:
//! times, durations, status badges, links kept on this site.

use maud::{DOCTYPE, Markup, html};

/// What the header shows as the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Jobs,
    Deliveries,
    Sinks,
    /// Signed out: no navigation.
    None,
}

/// A whole page. `live` is the event stream the page follows, if any.
pub fn page(title: &str, nav: Nav, live: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tunehook" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body data-live=[live] {
                a.skip href="#main" { "Skip to the page" }
                header.top {
                    a.brand href="/" { "tunehook" }
                    @if nav != Nav::None {
                        nav aria-label="Main" {
                            a #nav-jobs href="/" aria-current=[(nav == Nav::Jobs).then_some("page")] { "Jobs" }
                            a #nav-deliveries href="/deliveries" aria-current=[(nav == Nav::Deliveries).then_some("page")] { "Deliveries" }
                            a #nav-sinks href="/sinks" aria-current=[(nav == Nav::Sinks).then_some("page")] { "Sinks & status" }
                        }
                        form.signout method="post" action="/signout" {
                            button #signout type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// A stored RFC 3339 time: the browser shows it in its own zone (the
/// script rewrites the text), with the UTC time on hover.
pub fn time(at: &str) -> Markup {
    let utc = utc_text(at);
    html! { time datetime=(at) title=(utc) { (utc) } }
}

/// `2026-01-02T03:04:05.123456Z` as `2026-01-02 03:04:05 UTC`.
fn utc_text(at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        Err(_) => at.to_owned(),
    }
}

/// Seconds between two stored times (0 when either is unreadable or they
/// are out of order).
pub fn seconds_between(from: &str, to: &str) -> i64 {
    match (
        chrono::DateTime::parse_from_rfc3339(from),
        chrono::DateTime::parse_from_rfc3339(to),
    ) {
        (Ok(a), Ok(b)) => (b - a).num_seconds().max(0),
        _ => 0,
    }
}

/// A duration as people read it: `45s`, `12m 5s`, `3h 20m`, `2d 4h`; a
/// zero second part is left out (`12m`, `1h`).
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (big, unit, small, small_unit) = match s {
        0..60 => return format!("{s}s"),
        60..3600 => (s / 60, "m", s % 60, "s"),
        3600..86_400 => (s / 3600, "h", s % 3600 / 60, "m"),
        _ => (s / 86_400, "d", s % 86_400 / 3600, "h"),
    };
    if small == 0 {
        format!("{big}{unit}")
    } else {
        format!("{big}{unit} {small}{small_unit}")
    }
}

/// A status as a badge; its class gives it a colour per family.
pub fn status(status: &str) -> Markup {
    html! { span class=(format!("badge status {}", status_family(status))) { (status) } }
}

/// The colour family of a status: done, failed, moving or waiting.
pub fn status_family(status: &str) -> &'static str {
    match crate::domain::status::Status::from_stored(status).terminal() {
        Some(crate::domain::status::Terminal::Success) => "done",
        Some(_) => "failed",
        None if status.contains("QUEUED") || status == "REQUESTED" => "waiting",
        None => "moving",
    }
}

/// A link when `value` is an http(s) URL, the text alone otherwise (a
/// `javascript:` URL from a webhook is never made a link).
pub fn maybe_link(value: &str) -> Markup {
    let is_web = value.starts_with("https://") || value.starts_with("http://");
    html! {
        @if is_web { a href=(value) rel="noreferrer noopener" { (value) } } @else { (value) }
    }
}

/// `next` when it is a path on this site: it starts with one `/`, and
/// holds no backslash and no control character (browsers read `\` as `/`
/// and drop tabs and newlines, so `/\evil` or `/<tab>/evil` would go to
/// another site), so a sign-in link cannot send anyone elsewhere.
pub fn local_path(next: Option<&str>) -> Option<&str> {
    next.filter(|p| {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.chars().any(|c| c == '\\' || c.is_control())
    })
}

/// A query string of the pairs whose value is present and non-empty.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.append_pair(key, value);
        }
    }
    let text = out.finish();
    if text.is_empty() {
        text
    } else {
        format!("?{text}")
    }
}

/// An empty-state line.
/// `text` with what a reader cannot see made visible: control characters
/// (NUL, escapes, line breaks inside a name) and the marks that reorder
/// text (bidirectional overrides and isolates) are written as `<U+202E>`,
/// so a name cannot hide or reverse what follows it on the page.
pub fn visible(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                format!("<U+{:04X}>", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hidden_characters_in_a_name_are_written_out() {
        assert_eq!(super::visible("plain name"), "plain name");
        assert_eq!(
            super::visible("evil\u{202e}gnp.exe\u{0}x\n"),
            "evil<U+202E>gnp.exe<U+0000>x<U+000A>"
        );
        assert_eq!(super::visible("a\u{2066}b"), "a<U+2066>b");
    }

    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(725), "12m 5s");
        assert_eq!(duration(3 * 3600 + 20 * 60 + 7), "3h 20m");
        assert_eq!(duration(2 * 86_400 + 4 * 3600), "2d 4h");
        assert_eq!(duration(12 * 60), "12m");
        assert_eq!(duration(3600 + 59), "1h");
    }

    #[test]
    fn only_paths_on_this_site_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/jobs/a?x=1")), Some("/jobs/a?x=1"));
        for elsewhere in [
            "//evil.example",
            "https://evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/a\\b",
            "/\u{1}x",
            "jobs",
            "",
        ] {
            assert_eq!(local_path(Some(elsewhere)), None, "{elsewhere}");
        }
    }

    #[test]
    fn script_urls_are_shown_as_text() {
        let markup = maybe_link("javascript:alert(1)").into_string();
        assert!(!markup.contains("href"), "{markup}");
        assert!(
            maybe_link("https://x.example/a")
                .into_string()
                .contains("href=\"https://x.example/a\"")
        );
    }
}
