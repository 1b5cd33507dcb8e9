//! A dataset at a public URL, checked the way Segmind will fetch it: `HEAD`
//! must answer 2xx with a `Content-Length` under the limit, and the first
//! four bytes (a ranged `GET`) must be the ZIP signature `PK\x03\x04`.
//!
//! Redirects are followed by hand, at most five, so that each hop can be
//! reported: a URL that works only through a redirect chain is worth
//! knowing about. A URL from Segmind's own upload (its `s3_url`, on
//! Segmind's bucket) is private to Segmind and is not checked. Printed URLs
//! never show their query, where pre-signed URLs keep their signatures.
//!
//! The service checks URLs that API callers send, so it must not become a
//! way to probe the network it runs in: with [`Reach::Public`] every hop's
//! host is looked up here, each of its addresses must be public
//! ([`special_purpose`] names the ranges that are not) and its port 80 or
//! 443, and the request goes to those very addresses. A refusal happens
//! before anything is sent, so it says the same whether anything listens
//! there or not, and repeats nothing a target said. [`Reach::Anywhere`] is
//! the command line on the user's own machine, or `dataset.allow_private`.

use super::{MAX_DATASET_BYTES, Report, megabytes};
use reqwest::{Method, StatusCode, header};
use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};
use url::{Host, Url};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// The hosts of Segmind's upload bucket (the `s3_url` its pre-signed
/// upload answers). Datasets there are Segmind's own and private: a public
/// `HEAD` would be refused.
pub const SEGMIND_UPLOAD_HOSTS: [&str; 1] = ["finetune-pipeline.s3.amazonaws.com"];

/// The ZIP local-file signature every archive starts with.
const ZIP_SIGNATURE: &[u8; 4] = b"PK\x03\x04";

/// What a refusal suggests to someone whose datasets are on their own network.
const ALLOW_PRIVATE: &str =
    "set dataset.allow_private = true if your datasets live on your own network";

/// Whether `url` is on Segmind's upload bucket.
pub fn is_segmind_upload(url: &str) -> bool {
    Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|host| SEGMIND_UPLOAD_HOSTS.contains(&host.as_str()))
}

/// The URL as it is safe to print: no user, password, query or fragment.
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Where a check may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Public addresses on ports 80 and 443 only, at every hop: the
    /// service's rule, so that a request to its API cannot make it probe
    /// its own network.
    Public,
    /// Wherever the URL leads, as reqwest resolves it (proxy variables
    /// honoured): `tunehook segmind submit` on the user's own machine, or
    /// the service with `dataset.allow_private = true`.
    Anywhere,
}

/// The special-purpose range `ip` is in, by name, or `None` for an address
/// on the public internet. An IPv4 address written as IPv6 (mapped
/// `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) is judged as the IPv4
/// address it reaches; the deprecated IPv4-compatible `::a.b.c.d` is
/// refused whatever it embeds. Numeric hosts in other spellings
/// (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`) are read as the IPv4
/// address they name by the `url` crate, before this sees them.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_broadcast() => "broadcast",
        (0, ..) => "this network (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared, CGNAT (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    Some(match ip.segments() {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback (::1)",
        [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0xffff, 0, high, low] => {
            return special_v4(embedded(high, low));
        }
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (::/96)",
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return special_v4(embedded(high, low)),
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 0..=0x1ff, ..] => "IETF protocol assignments (2001::/23)",
        [0x2001, 0xdb8, ..] | [0x3fff, 0..=0xfff, ..] => "documentation",
        [0x2002, high, low, ..] => return special_v4(embedded(high, low)),
        [0xfc00..=0xfdff, ..] => "unique-local (fc00::/7)",
        [0xfe80..=0xfebf, ..] => "link-local (fe80::/10)",
        [0xfec0..=0xfeff, ..] => "site-local (fec0::/10)",
        [0xff00..=0xffff, ..] => "multicast (ff00::/8)",
        [first, ..] if first & 0xe000 != 0x2000 => "not global unicast (outside 2000::/3)",
        _ => return None,
    })
}

/// Why a hop is not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Not http or https.
    Scheme,
    /// `addr` is in a special-purpose range (named for the log only).
    Private {
        addr: SocketAddr,
        range: &'static str,
    },
    /// A port other than 80 and 443.
    Port(u16),
    /// The host name has no address.
    NotFound,
    /// The host name's lookup outlasted the connect timeout.
    LookupTimedOut,
}

impl Refusal {
    /// The problem as reported. A private address reads the same whatever
    /// it is and whether anything listens there; after a redirect nothing
    /// of the `Location` is repeated.
    fn problem(&self, url: &Url, redirected: bool) -> String {
        let host = url.host_str().unwrap_or_default();
        match (self, redirected) {
            (Refusal::Scheme, false) => "is not an http(s) URL".into(),
            (Refusal::Scheme, true) => {
                "the dataset URL redirects to a URL that is not http(s)".into()
            }
            (Refusal::Private { .. }, false) => format!(
                "the dataset URL points to a private or local address; tunehook does not fetch those ({ALLOW_PRIVATE})"
            ),
            (Refusal::Private { .. }, true) => format!(
                "the dataset URL redirects to a private or local address; tunehook does not fetch those ({ALLOW_PRIVATE})"
            ),
            (Refusal::Port(port), false) => format!(
                "the dataset URL uses port {port}; tunehook fetches datasets only on ports 80 and 443 ({ALLOW_PRIVATE})"
            ),
            (Refusal::Port(_), true) => format!(
                "the dataset URL redirects to a port other than 80 and 443; tunehook fetches datasets only on those ({ALLOW_PRIVATE})"
            ),
            (Refusal::NotFound, false) => format!("the host {host} was not found"),
            (Refusal::NotFound, true) => {
                "the dataset URL redirects to a host that was not found".into()
            }
            (Refusal::LookupTimedOut, false) => {
                format!("the host {host} could not be looked up in time")
            }
            (Refusal::LookupTimedOut, true) => {
                "the dataset URL redirects to a host that could not be looked up in time".into()
            }
        }
    }
}

/// Whether [`Reach::Public`] may connect to `addr`: a public address (the
/// address is judged first, so a private one is refused as such whatever
/// its port), on port 80 or 443.
fn public_only(addr: SocketAddr) -> Result<(), Refusal> {
    if let Some(range) = special_purpose(addr.ip()) {
        return Err(Refusal::Private { addr, range });
    }
    if !matches!(addr.port(), 80 | 443) {
        return Err(Refusal::Port(addr.port()));
    }
    Ok(())
}

/// The rule a vetted address must pass ([`public_only`]; this module's
/// tests give a rule under which one loopback listener counts as public).
type Permit = Arc<dyn Fn(SocketAddr) -> Result<(), Refusal> + Send + Sync>;

type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Finds a host name's addresses: the system's resolver in service, a
/// table in tests.
trait Resolver: Send + Sync {
    fn lookup(&self, host: String, port: u16) -> Lookup<'_>;
}

/// The system's resolver (`getaddrinfo`, as reqwest's default uses).
struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: String, port: u16) -> Lookup<'_> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// The resolver of a client built for one vetted hop: it finds nothing, so
/// a name other than the one pinned with `resolve_to_addrs` cannot be
/// looked up behind the vetting's back.
struct NoLookup;

impl reqwest::dns::Resolve for NoLookup {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let refused = format!("{} was not vetted; no lookup is made for it", name.as_str());
        Box::pin(std::future::ready(Err(refused.into())))
    }
}

/// The addresses a hop to `url` may connect to, every one of them
/// permitted, or why there are none. An IP-address host is its own
/// address; a name is looked up once, through `resolver`, within `wait`,
/// and refused when any of its addresses is not permitted, so that which
/// one a connection would pick does not matter.
async fn vet(
    url: &Url,
    resolver: &dyn Resolver,
    permit: &Permit,
    wait: Duration,
) -> Result<Vec<SocketAddr>, Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme);
    }
    let port = url.port_or_known_default().ok_or(Refusal::Scheme)?;
    let addrs = match url.host() {
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(Host::Domain(name)) => {
            match tokio::time::timeout(wait, resolver.lookup(name.to_owned(), port)).await {
                Err(_) => return Err(Refusal::LookupTimedOut),
                Ok(Err(_)) => return Err(Refusal::NotFound),
                Ok(Ok(addrs)) if addrs.is_empty() => return Err(Refusal::NotFound),
                Ok(Ok(addrs)) => addrs,
            }
        }
        None => return Err(Refusal::NotFound),
    };
    for addr in &addrs {
        permit(*addr)?;
    }
    Ok(addrs)
}

/// How a check's requests reach their hosts.
enum Connect {
    /// One client that resolves names itself: [`Reach::Anywhere`].
    Direct(reqwest::Client),
    /// Each hop vetted, then sent through a client that can reach only the
    /// addresses vetted: [`Reach::Public`].
    ///
    /// Checking a name and then letting reqwest look it up again could be
    /// raced (DNS rebinding: a public address for the check, 127.0.0.1 a
    /// moment later for the connection). Here the name is looked up once
    /// ([`vet`]), and the hop's client gets exactly those addresses for it
    /// (`resolve_to_addrs`) and a resolver that finds nothing else
    /// ([`NoLookup`]), so no second lookup happens; proxy variables are
    /// ignored, as a proxy would resolve the name itself. An IP-address
    /// host is vetted as written, and reqwest connects to it without a
    /// lookup. A vetting `dns_resolver` alone would be as safe from races,
    /// but it never sees IP-address hosts, and its refusal would come back
    /// as a connection error; vetting before the request keeps a refusal
    /// apart from anything a connection could say.
    Vetted {
        resolver: Arc<dyn Resolver>,
        permit: Permit,
    },
}

pub struct UrlChecker {
    timeout: Duration,
    connect: Connect,
}

/// A client's common settings: a call gives up after `timeout`, redirects
/// are left to [`UrlChecker::follow`].
fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout(timeout))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
}

fn connect_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(10))
}

impl UrlChecker {
    /// A checker whose calls each give up after `timeout`, connecting as
    /// `reach` allows. Fails only when the HTTP client cannot be built,
    /// which callers report: a default client would follow redirects unseen
    /// and wait without limit.
    pub fn new(timeout: Duration, reach: Reach) -> Result<UrlChecker, reqwest::Error> {
        let connect = match reach {
            Reach::Anywhere => Connect::Direct(
                client_builder(timeout)
                    .build()
                    .map_err(reqwest::Error::without_url)?,
            ),
            Reach::Public => Connect::Vetted {
                resolver: Arc::new(SystemResolver),
                permit: Arc::new(public_only),
            },
        };
        Ok(UrlChecker { timeout, connect })
    }

    /// Checks the dataset at `url`.
    pub async fn check(&self, url: &str) -> Report {
        let mut report = Report::default();
        let parsed = match Url::parse(url) {
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

    /// The client for one hop to `url`: the shared one, or (vetted) one
    /// that reaches only the addresses vetted; else the problem to report.
    async fn client_for(&self, url: &Url, redirected: bool) -> Result<reqwest::Client, String> {
        let (resolver, permit) = match &self.connect {
            Connect::Direct(http) => {
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(Refusal::Scheme.problem(url, redirected));
                }
                return Ok(http.clone());
            }
            Connect::Vetted { resolver, permit } => (resolver, permit),
        };
        let addrs = match vet(
            url,
            resolver.as_ref(),
            permit,
            connect_timeout(self.timeout),
        )
        .await
        {
            Ok(addrs) => addrs,
            Err(refusal) => {
                if let Refusal::Private { addr, range } = &refusal {
                    tracing::warn!(
                        url = %shown(url),
                        address = %addr,
                        range,
                        redirected,
                        "dataset URL refused: not a public address"
                    );
                }
                return Err(refusal.problem(url, redirected));
            }
        };
        pinned(self.timeout, url, &addrs)
            .map_err(|e| format!("cannot be checked: no HTTP client ({})", e.without_url()))
    }

    /// Sends `method` to `url`, following up to [`MAX_REDIRECTS`]
    /// redirects, each noted and each hop vetted as the first; the final
    /// answer and its URL, or `None` (with a problem) when there is none.
    async fn follow(
        &self,
        method: Method,
        mut url: Url,
        report: &mut Report,
        what: &str,
    ) -> Option<(reqwest::Response, Url)> {
        for hop in 0..=MAX_REDIRECTS {
            let http = match self.client_for(&url, hop > 0).await {
                Ok(http) => http,
                Err(problem) => {
                    report.problem(None, problem);
                    return None;
                }
            };
            let mut request = http.request(method.clone(), url.clone());
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

/// A client for one hop whose only way to `url`'s host is `addrs` (see
/// [`Connect::Vetted`]).
fn pinned(
    timeout: Duration,
    url: &Url,
    addrs: &[SocketAddr],
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = client_builder(timeout)
        .no_proxy()
        .dns_resolver(Arc::new(NoLookup));
    if let Some(Host::Domain(name)) = url.host() {
        builder = builder.resolve_to_addrs(name, addrs);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

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
        let url = Url::parse("https://u:p@h.example/a.zip?X-Amz-Signature=s#f").expect("url");
        assert_eq!(shown(&url), "https://h.example/a.zip");
    }

    #[test]
    fn every_special_purpose_ipv4_range_is_named_from_its_first_to_its_last_address() {
        for (address, range) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network (0.0.0.0/8)"),
            ("0.255.255.255", "this network (0.0.0.0/8)"),
            ("10.0.0.0", "private (10.0.0.0/8)"),
            ("10.255.255.255", "private (10.0.0.0/8)"),
            ("100.64.0.0", "shared, CGNAT (100.64.0.0/10)"),
            ("100.127.255.255", "shared, CGNAT (100.64.0.0/10)"),
            ("127.0.0.1", "loopback (127.0.0.0/8)"),
            ("127.255.255.254", "loopback (127.0.0.0/8)"),
            ("169.254.0.0", "link-local (169.254.0.0/16)"),
            ("169.254.169.254", "link-local (169.254.0.0/16)"),
            ("172.16.0.0", "private (172.16.0.0/12)"),
            ("172.31.255.255", "private (172.16.0.0/12)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("192.88.99.1", "6to4 relay (192.88.99.0/24)"),
            ("192.168.0.0", "private (192.168.0.0/16)"),
            ("192.168.255.255", "private (192.168.0.0/16)"),
            ("198.18.0.0", "benchmarking (198.18.0.0/15)"),
            ("198.19.255.255", "benchmarking (198.18.0.0/15)"),
            ("224.0.0.1", "multicast (224.0.0.0/4)"),
            ("239.255.255.255", "multicast (224.0.0.0/4)"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("255.255.255.254", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(special_purpose(ip(address)), Some(range), "{address}");
        }
    }

    #[test]
    fn every_special_purpose_ipv6_range_is_named_and_ipv4_inside_ipv6_is_judged_as_ipv4() {
        for (address, range) in [
            ("::", "unspecified"),
            ("::1", "loopback (::1)"),
            // IPv4-mapped and IPv4-translated: the IPv4 address decides.
            ("::ffff:127.0.0.1", "loopback (127.0.0.0/8)"),
            ("::ffff:10.1.2.3", "private (10.0.0.0/8)"),
            ("::ffff:169.254.169.254", "link-local (169.254.0.0/16)"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("::ffff:0:192.168.1.1", "private (192.168.0.0/16)"),
            // IPv4-compatible (deprecated): refused whatever it embeds.
            ("::127.0.0.1", "IPv4-compatible (::/96)"),
            ("::8.8.8.8", "IPv4-compatible (::/96)"),
            // NAT64 and 6to4: the IPv4 address they reach decides.
            ("64:ff9b::127.0.0.1", "loopback (127.0.0.0/8)"),
            ("64:ff9b::a9fe:a9fe", "link-local (169.254.0.0/16)"),
            ("64:ff9b::100.64.0.1", "shared, CGNAT (100.64.0.0/10)"),
            ("64:ff9b:1::1", "local-use NAT64 (64:ff9b:1::/48)"),
            ("2002:7f00:1::1", "loopback (127.0.0.0/8)"),
            ("2002:ac10:1::", "private (172.16.0.0/12)"),
            ("100::1", "discard-only (100::/64)"),
            ("2001::1", "Teredo (2001::/32)"),
            ("2001:2::1", "IETF protocol assignments (2001::/23)"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("fc00::1", "unique-local (fc00::/7)"),
            ("fdff:ffff::1", "unique-local (fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("febf::1", "link-local (fe80::/10)"),
            ("fec0::1", "site-local (fec0::/10)"),
            ("ff02::1", "multicast (ff00::/8)"),
            ("ff0e::1", "multicast (ff00::/8)"),
            ("4000::1", "not global unicast (outside 2000::/3)"),
        ] {
            assert_eq!(special_purpose(ip(address)), Some(range), "{address}");
        }
    }

    #[test]
    fn public_addresses_are_not_special_even_when_written_as_ipv6() {
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
        ] {
            assert_eq!(special_purpose(ip(address)), None, "{address}");
        }
    }

    /// A resolver with a table: a name it does not know is not found.
    /// Every lookup is counted.
    struct Table {
        names: Vec<(&'static str, Vec<&'static str>)>,
        lookups: AtomicUsize,
    }

    impl Table {
        fn new(names: Vec<(&'static str, Vec<&'static str>)>) -> Table {
            Table {
                names,
                lookups: AtomicUsize::new(0),
            }
        }
    }

    impl Resolver for Table {
        fn lookup(&self, host: String, port: u16) -> Lookup<'_> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let found = self
                .names
                .iter()
                .find(|(name, _)| *name == host)
                .map(|(_, ips)| ips.iter().map(|a| SocketAddr::new(ip(a), port)).collect())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
            Box::pin(std::future::ready(found))
        }
    }

    /// A resolver that never answers.
    struct Silent;

    impl Resolver for Silent {
        fn lookup(&self, _: String, _: u16) -> Lookup<'_> {
            Box::pin(std::future::pending())
        }
    }

    fn public() -> Permit {
        Arc::new(public_only)
    }

    async fn vetted(url: &str, resolver: &dyn Resolver) -> Result<Vec<SocketAddr>, Refusal> {
        let url = Url::parse(url).expect("a URL");
        vet(&url, resolver, &public(), Duration::from_millis(200)).await
    }

    #[tokio::test]
    async fn numeric_hosts_in_every_spelling_are_read_as_loopback_and_refused_without_a_lookup() {
        let table = Table::new(vec![]);
        for url in [
            "http://127.0.0.1/x.zip",
            "http://2130706433/x.zip",
            "http://0x7f000001/x.zip",
            "http://0x7F.0.0.1/x.zip",
            "http://0177.0.0.1/x.zip",
            "http://017700000001/x.zip",
            "http://127.1/x.zip",
            "http://127.0.1/x.zip",
            "https://127.0.0.1./x.zip",
        ] {
            let parsed = Url::parse(url).expect("a URL");
            assert_eq!(
                parsed.host(),
                Some(Host::Ipv4(Ipv4Addr::LOCALHOST)),
                "{url}"
            );
            assert!(
                matches!(vetted(url, &table).await, Err(Refusal::Private { range, .. }) if range == "loopback (127.0.0.0/8)"),
                "{url}"
            );
        }
        for url in [
            "http://[::ffff:127.0.0.1]/x.zip",
            "http://[::ffff:7f00:1]/x.zip",
            "http://[::1]/x.zip",
            "http://[0:0:0:0:0:0:0:1]/x.zip",
            "http://[::]/x.zip",
            "http://0.0.0.0/x.zip",
            "http://0/x.zip",
            "http://[64:ff9b::7f00:1]/x.zip",
            "http://169.254.169.254/latest/meta-data/",
            "http://0xa9fea9fe/latest/meta-data/",
        ] {
            assert!(
                matches!(vetted(url, &table).await, Err(Refusal::Private { .. })),
                "{url}"
            );
        }
        assert_eq!(table.lookups.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_name_passes_only_when_every_address_it_has_is_public_and_the_port_is_80_or_443() {
        let table = Table::new(vec![
            (
                "datasets.example",
                vec!["93.184.216.34", "2606:2800:220:1::1"],
            ),
            ("localhost", vec!["127.0.0.1", "::1"]),
            ("rebinding.example", vec!["93.184.216.34", "10.0.0.7"]),
            ("metadata.example", vec!["::ffff:169.254.169.254"]),
        ]);
        assert_eq!(
            vetted("https://datasets.example/set.zip", &table).await,
            Ok(vec![
                "93.184.216.34:443".parse().expect("addr"),
                "[2606:2800:220:1::1]:443".parse().expect("addr"),
            ])
        );
        assert_eq!(
            vetted("http://datasets.example/set.zip", &table).await,
            Ok(vec![
                "93.184.216.34:80".parse().expect("addr"),
                "[2606:2800:220:1::1]:80".parse().expect("addr"),
            ])
        );
        for url in [
            "http://localhost/set.zip",
            "http://LOCALHOST:8080/set.zip",
            "https://rebinding.example/set.zip",
            "https://metadata.example/set.zip",
            // A private address is refused as such whatever its port.
            "http://10.0.0.7:8080/set.zip",
        ] {
            assert!(
                matches!(vetted(url, &table).await, Err(Refusal::Private { .. })),
                "{url}"
            );
        }
        assert_eq!(
            vetted("http://datasets.example:8080/set.zip", &table).await,
            Err(Refusal::Port(8080))
        );
        assert_eq!(
            vetted("http://datasets.example:443/set.zip", &table).await,
            Ok(vec![
                "93.184.216.34:443".parse().expect("addr"),
                "[2606:2800:220:1::1]:443".parse().expect("addr"),
            ])
        );
        assert_eq!(
            vetted("https://nowhere.example/set.zip", &table).await,
            Err(Refusal::NotFound)
        );
        assert_eq!(
            vetted("ftp://datasets.example/set.zip", &table).await,
            Err(Refusal::Scheme)
        );
        assert_eq!(
            vetted("https://datasets.example/set.zip", &Silent).await,
            Err(Refusal::LookupTimedOut)
        );
    }

    /// A server on 127.0.0.1 that answers every request with `answer` and
    /// counts the connections it accepts. A connection is counted before it
    /// is answered, so once a check has its answer, its hit is counted.
    struct Server {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
    }

    impl Server {
        async fn start(answer: String) -> Server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port");
            let addr = listener.local_addr().expect("an address");
            let hits = Arc::new(AtomicUsize::new(0));
            let count = Arc::clone(&hits);
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Server { addr, hits }
        }

        async fn not_found() -> Server {
            Server::start(
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            )
            .await
        }

        async fn redirect_to(location: &str) -> Server {
            Server::start(format!(
                "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            ))
            .await
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// A checker with the service's rule, except that `public` counts as a
    /// public address: the loopback listener standing in for a dataset host
    /// on the internet, which no test can reach offline.
    fn vetted_checker(resolver: Table, public: SocketAddr) -> UrlChecker {
        UrlChecker {
            timeout: Duration::from_secs(5),
            connect: Connect::Vetted {
                resolver: Arc::new(resolver),
                permit: Arc::new(move |addr| {
                    if addr == public {
                        Ok(())
                    } else {
                        public_only(addr)
                    }
                }),
            },
        }
    }

    fn messages(report: &Report) -> Vec<String> {
        report.problems.iter().map(|p| p.message.clone()).collect()
    }

    #[tokio::test]
    async fn a_public_host_is_checked_through_the_address_it_was_vetted_at() {
        let dataset = Server::start(
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nPK\x03\x04".into(),
        )
        .await;
        let checker = vetted_checker(
            Table::new(vec![("datasets.example", vec!["127.0.0.1"])]),
            dataset.addr,
        );
        let url = format!("http://datasets.example:{}/set.zip", dataset.addr.port());
        let report = checker.check(&url).await;
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(dataset.hits(), 2, "a HEAD and a ranged GET");
    }

    #[tokio::test]
    async fn a_public_url_redirecting_to_a_private_one_is_refused_before_it_is_reached() {
        let inside = Server::not_found().await;
        let port = inside.addr.port();
        let private_message = format!(
            "the dataset URL redirects to a private or local address; tunehook does not fetch those ({ALLOW_PRIVATE})"
        );
        for location in [
            format!("http://127.0.0.1:{port}/x.zip"),
            format!("http://[::ffff:127.0.0.1]:{port}/x.zip"),
            format!("http://2130706433:{port}/x.zip"),
            format!("http://0x7f000001:{port}/x.zip"),
            format!("http://localhost:{port}/x.zip"),
            format!("http://rebinding.example:{port}/x.zip"),
            // The same host as the public one, on another port.
            format!("http://datasets.example:{port}/x.zip"),
            "http://169.254.169.254/latest/meta-data/".into(),
        ] {
            let outside = Server::redirect_to(&location).await;
            let checker = vetted_checker(
                Table::new(vec![
                    ("datasets.example", vec!["127.0.0.1"]),
                    ("localhost", vec!["127.0.0.1", "::1"]),
                    ("rebinding.example", vec!["127.0.0.1"]),
                ]),
                outside.addr,
            );
            let start = format!("http://datasets.example:{}/x.zip", outside.addr.port());
            let report = checker.check(&start).await;
            assert_eq!(messages(&report), [private_message.as_str()], "{location}");
            assert_eq!(outside.hits(), 1, "{location}: the public hop is asked");
            assert!(
                report.notes.iter().any(|n| n.contains("redirects (302)")),
                "{location}: {report:?}"
            );
        }
        assert_eq!(inside.hits(), 0, "no redirect reached the private server");

        // Without the rule, the same redirect does reach it.
        let outside = Server::redirect_to(&format!("http://127.0.0.1:{port}/x.zip")).await;
        let anywhere = UrlChecker::new(Duration::from_secs(5), Reach::Anywhere).expect("checker");
        let report = anywhere
            .check(&format!("http://{}/x.zip", outside.addr))
            .await;
        assert!(inside.hits() > 0, "{report:?}");
    }

    #[tokio::test]
    async fn a_redirect_to_another_port_or_scheme_is_refused_without_repeating_the_location() {
        for (location, message) in [
            (
                "http://93.184.216.34:8080/x.zip",
                format!(
                    "the dataset URL redirects to a port other than 80 and 443; tunehook fetches datasets only on those ({ALLOW_PRIVATE})"
                ),
            ),
            (
                "file:///etc/passwd",
                "the dataset URL redirects to a URL that is not http(s)".to_owned(),
            ),
            (
                "https://nowhere.example/x.zip",
                "the dataset URL redirects to a host that was not found".to_owned(),
            ),
        ] {
            let outside = Server::redirect_to(location).await;
            let checker = vetted_checker(Table::new(vec![]), outside.addr);
            let report = checker
                .check(&format!("http://{}/x.zip", outside.addr))
                .await;
            assert_eq!(messages(&report), [message.as_str()], "{location}");
        }
    }

    #[tokio::test]
    async fn a_hops_client_reaches_the_vetted_addresses_and_looks_up_no_other_name() {
        let server = Server::not_found().await;
        let port = server.addr.port();
        let url = Url::parse(&format!("http://datasets.example:{port}/x.zip")).expect("url");
        let client = pinned(Duration::from_secs(5), &url, &[server.addr]).expect("a client");
        let answer = client.get(url.clone()).send().await.expect("an answer");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(server.hits(), 1);
        // `localhost` would resolve to this very server; the hop's client
        // does not look it up.
        let other = client
            .get(format!("http://localhost:{port}/x.zip"))
            .send()
            .await;
        assert!(other.is_err(), "{other:?}");
        assert_eq!(server.hits(), 1);
    }
}
