//! The access log: one line per request, written off the request path.
//!
//! A request's [`Record`] is filled in as it goes through the phases and completed
//! when its response body ends (so a 40 s stream is logged with its whole duration and
//! size). The request path only puts the record on a bounded channel; a thread of its
//! own formats and writes it (JSON or text) to stdout, so a slow stdout never slows
//! traffic. When the channel is full the record is dropped and counted
//! (`sluice_access_log_dropped_total`).
//!
//! Every refusal by the proxy and every error (a status of 400 or more, or a body cut
//! short) is logged; other requests are logged at the sampling rate. No credential
//! and no header value is ever logged: the consumer is the name the gateway gave it,
//! the path is logged without its query string unless configured otherwise.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::Entropy;
use crate::metrics::Metrics;
use crate::trace::TraceId;

/// How many records may wait for the writer before new ones are dropped.
pub const DEFAULT_CAPACITY: usize = 8192;

/// After writing what was queued, the writer waits this long before it looks again,
/// so that under load it writes batches and the request path never wakes it: a
/// record queued while it waits costs no system call. An idle writer blocks until the
/// next record, which it writes at once. When the log is dropped, the writer is woken,
/// writes what is left and is waited for.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs, for reading in a terminal.
    Text,
    /// No access log.
    Off,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text),
            "off" => Ok(Format::Off),
            other => Err(format!("{other:?}: use json, text or off")),
        }
    }
}

/// Settings of the access log.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// The line format.
    pub format: Format,
    /// The share of successful requests logged, from 0 to 1; refusals and errors
    /// are always logged.
    pub sample: f64,
    /// Log the query string with the path.
    pub query: bool,
    /// Records that may wait for the writer.
    pub capacity: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            format: Format::Json,
            sample: 1.0,
            query: false,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

/// How a response body ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// Every byte was delivered.
    Complete,
    /// The agent's body failed part way.
    UpstreamFailed,
    /// A deadline cut it (total or idle).
    TimedOut,
    /// The client went away first.
    ClientGone,
}

/// The rate-limit decision that bound a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitRecord {
    /// The policy.
    pub policy: String,
    /// The tier.
    pub tier: String,
    /// What the limit has left: requests in the window (tokens for a token budget
    /// that is the only limit), 0 for a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
}

/// One request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the request arrived (RFC 3339, milliseconds, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The W3C trace id.
    #[serde(serialize_with = "display")]
    pub trace_id: TraceId,
    /// The client address (the peer, or the one trusted proxies report).
    pub client: IpAddr,
    /// The method.
    pub method: String,
    /// The host routing used, when the request named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The normalised path (and query, when configured).
    pub path: String,
    /// The pool that served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The endpoint of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The consumer, when identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The consumer's tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// `ok`, `anonymous`, or the reason authentication refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    /// The binding rate-limit decision: the limit that refused, or the one the
    /// `RateLimit` headers of an admitted request report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratelimit: Option<LimitRecord>,
    /// The dry-run policy that would have refused the request, as in the
    /// `x-sluice-ratelimit-dry-run` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    /// Time spent waiting for an endpoint, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub queue_ms: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// The pool the request came to before falling back, when it fell back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// The agent's status, when an agent answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The status the client received.
    pub status: u16,
    /// The reason code of a response the proxy answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Arrival to the first response body byte, in milliseconds.
    #[serde(serialize_with = "opt_millis", skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<Duration>,
    /// Arrival to the end of the response body, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub duration_ms: Duration,
    /// How the response body ended.
    pub completion: Completion,
    /// LLM tokens reserved at admission.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_reserved: Option<u64>,
    /// LLM tokens the agent reported using.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_used: Option<u64>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_time(*t))
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_ms(*d))
}

fn opt_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// Milliseconds with microsecond precision.
fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn format_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => "-".to_owned(),
    }
}

impl Record {
    /// Whether the record must be logged whatever the sampling rate: a refusal by the
    /// proxy, an error status, or a body that did not complete.
    pub fn is_error(&self) -> bool {
        self.reason.is_some() || self.status >= 400 || self.completion != Completion::Complete
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        // Serialising a struct of plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }

    fn write_text(&self, out: &mut Vec<u8>) {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{} trace={} client={} {} {}{} status={}",
            format_time(self.time),
            self.trace_id,
            self.client,
            self.method,
            self.host.as_deref().unwrap_or(""),
            self.path,
            self.status
        );
        let mut field = |key: &str, value: &dyn std::fmt::Display| {
            let _ = write!(line, " {key}={value}");
        };
        if let Some(v) = &self.pool {
            field("pool", v);
        }
        if let Some(v) = &self.endpoint {
            field("endpoint", v);
        }
        if let Some(v) = &self.upstream_status {
            field("upstream_status", v);
        }
        if let Some(v) = &self.reason {
            field("reason", v);
        }
        if let Some(v) = &self.consumer {
            field("consumer", v);
        }
        if let Some(v) = &self.tier {
            field("tier", v);
        }
        if let Some(v) = &self.auth {
            field("auth", v);
        }
        if let Some(l) = &self.ratelimit {
            field("policy", &format_args!("{}/{}", l.policy, l.tier));
            if let Some(r) = l.remaining {
                field("remaining", &r);
            }
        }
        if let Some(v) = &self.dry_run {
            field("dry_run", v);
        }
        if let Some(v) = &self.fallback_from {
            field("fallback_from", v);
        }
        if self.retries > 0 {
            field("retries", &self.retries);
        }
        field("queue_ms", &round_ms(self.queue_ms));
        if let Some(v) = self.ttfb_ms {
            field("ttfb_ms", &round_ms(v));
        }
        field("duration_ms", &round_ms(self.duration_ms));
        field("bytes_in", &self.bytes_in);
        field("bytes_out", &self.bytes_out);
        if let Some(v) = &self.tokens_reserved {
            field("tokens_reserved", v);
        }
        if let Some(v) = &self.tokens_used {
            field("tokens_used", v);
        }
        if self.completion != Completion::Complete {
            let end = match self.completion {
                Completion::Complete => "complete",
                Completion::UpstreamFailed => "upstream_failed",
                Completion::TimedOut => "timed_out",
                Completion::ClientGone => "client_gone",
            };
            field("completion", &end);
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Where the writer thread writes: stdout in production, anything in tests.
pub type Sink = Box<dyn Write + Send>;

/// The access log of one proxy. Cheap to clone; off when built with [`Format::Off`].
#[derive(Clone, Debug)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// `None` only while dropping.
    tx: Option<SyncSender<Record>>,
    /// The writer thread, woken and waited for when the log is dropped.
    writer: Option<std::thread::JoinHandle<()>>,
    sample: f64,
    query: bool,
    entropy: Entropy,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Starts the writer thread, writing to stdout.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn stdout(config: &AccessLogConfig, metrics: &Metrics) -> std::io::Result<Self> {
        Self::start(config, metrics, Box::new(std::io::stdout()))
    }

    /// Starts the writer thread, writing to `sink`.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn start(config: &AccessLogConfig, metrics: &Metrics, sink: Sink) -> std::io::Result<Self> {
        if config.format == Format::Off {
            return Ok(Self::off());
        }
        let (tx, rx) = sync_channel(config.capacity.max(1));
        let format = config.format;
        let written = metrics.access_log_lines.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || write_lines(&rx, format, sink, &written))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                tx: Some(tx),
                writer: Some(writer),
                sample: config.sample.clamp(0.0, 1.0),
                query: config.query,
                entropy: Entropy::from_system(),
                dropped: metrics.access_log_dropped.clone(),
            })),
        })
    }

    /// Whether the log is on.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether paths are logged with their query string.
    pub fn logs_query(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.query)
    }

    /// Logs `record`: always when it is an error, else at the sampling rate. Never
    /// blocks: a full queue drops the record and counts it.
    pub fn log(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        if !record.is_error() && !inner.sampled() {
            return;
        }
        let Some(tx) = &inner.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => inner.dropped.inc(),
            Err(TrySendError::Disconnected(_)) => inner.dropped.inc(),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer sees the queue closed once it has written what is left.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

impl Inner {
    fn sampled(&self) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        // 53 random bits as a fraction in [0, 1).
        let unit = (self.entropy.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.sample
    }
}

/// The writer thread: formats each record and writes it, flushing whenever the queue
/// is empty, then waits [`BATCH_INTERVAL`] before the next batch; until every sender is
/// gone.
fn write_lines(
    rx: &Receiver<Record>,
    format: Format,
    sink: Sink,
    written: &prometheus::IntCounter,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut line = Vec::with_capacity(512);
    while let Ok(mut record) = rx.recv() {
        loop {
            line.clear();
            match format {
                Format::Json => record.write_json(&mut line),
                Format::Text | Format::Off => record.write_text(&mut line),
            }
            // A closed stdout loses the line; the queue is drained all the same, so
            // that the request path never backs up.
            if out.write_all(&line).is_ok() {
                written.inc();
            }
            match rx.try_recv() {
                Ok(next) => record = next,
                Err(_) => break,
            }
        }
        let _ = out.flush();
        // Woken early when the log is dropped.
        std::thread::park_timeout(BATCH_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            trace_id: TraceId([0xab; 16]),
            client: IpAddr::from([10, 0, 0, 1]),
            method: "POST".into(),
            host: Some("chat.example".into()),
            path: "/v1/chat/completions".into(),
            pool: Some("demo/chat".into()),
            endpoint: Some("10.0.0.7:8000".into()),
            consumer: Some("acme".into()),
            tier: Some("premium".into()),
            auth: Some("ok"),
            ratelimit: Some(LimitRecord {
                policy: "demo/chat-limits".into(),
                tier: "premium".into(),
                remaining: Some(57),
            }),
            dry_run: None,
            queue_ms: Duration::from_micros(1500),
            retries: 1,
            fallback_from: None,
            upstream_status: Some(200),
            status: 200,
            reason: None,
            bytes_in: 42,
            bytes_out: 1024,
            ttfb_ms: Some(Duration::from_millis(20)),
            duration_ms: Duration::from_millis(40_000),
            completion: Completion::Complete,
            tokens_reserved: Some(400),
            tokens_used: Some(9),
        }
    }

    #[test]
    fn json_lines_carry_every_field_in_base_units() {
        let mut out = Vec::new();
        record().write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON line");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["queue_ms"], 1.5);
        assert_eq!(v["duration_ms"], 40000.0);
        assert_eq!(v["tokens_reserved"], 400);
        assert_eq!(v["tokens_used"], 9);
        assert_eq!(v["ratelimit"]["policy"], "demo/chat-limits");
        assert_eq!(v["ratelimit"]["remaining"], 57);
        assert!(v.get("dry_run").is_none());
        assert_eq!(v["completion"], "complete");
        assert!(v.get("reason").is_none());
        assert_eq!(out.last(), Some(&b'\n'));
    }

    #[test]
    fn text_lines_are_one_line_of_key_values() {
        let mut out = Vec::new();
        let mut r = record();
        r.status = 429;
        r.reason = Some("rate_limited");
        r.write_text(&mut out);
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.starts_with("2023-11-14T22:13:20.123Z trace="),
            "{line}"
        );
        assert!(
            line.contains(" POST chat.example/v1/chat/completions status=429"),
            "{line}"
        );
        assert!(line.contains(" reason=rate_limited"), "{line}");
        assert!(
            line.contains(" policy=demo/chat-limits/premium remaining=57"),
            "{line}"
        );
        assert!(
            line.contains(" tokens_reserved=400 tokens_used=9"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    /// A sink that hands each write to a channel.
    struct Chan(std::sync::mpsc::Sender<Vec<u8>>);

    impl Write for Chan {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn dropping_the_log_writes_every_queued_line_first() {
        let metrics = Metrics::new();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let log = AccessLog::start(&AccessLogConfig::default(), &metrics, Box::new(Chan(tx)))
            .expect("start");
        // Batches: the writer waits between them, and the last ones go at the drop.
        for _ in 0..3 {
            for _ in 0..100 {
                log.log(record());
            }
            std::thread::yield_now();
        }
        drop(log);
        // Written by the time the drop returns: nothing is waited for here.
        let written: Vec<u8> = rx.try_iter().flatten().collect();
        assert_eq!(written.iter().filter(|b| **b == b'\n').count(), 300);
        assert_eq!(metrics.access_log_dropped.get(), 0);
    }

    #[test]
    fn errors_are_always_logged_and_successes_sampled() {
        let metrics = Metrics::new();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let config = AccessLogConfig {
            sample: 0.0,
            ..AccessLogConfig::default()
        };
        let log = AccessLog::start(&config, &metrics, Box::new(Chan(tx))).expect("start");
        // The success is sampled out before it reaches the queue, so the first line
        // written is the refusal logged after it.
        log.log(record());
        let mut refused = record();
        refused.status = 503;
        refused.reason = Some("queue_full");
        log.log(refused);
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a line is written");
        let v: serde_json::Value = serde_json::from_slice(&got).expect("JSON");
        assert_eq!(v["reason"], "queue_full");
    }
}
