//! Operational metrics in the Prometheus text format (`GET /metrics`).
//!
//! Hand-rolled on atomics rather than a metrics framework: the set is small and fixed,
//! and every label value comes from code (route templates, methods, status codes,
//! message kinds), never from a request, so the series count is bounded and no
//! username, token or id can reach a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sotto_server_store::{BATCH_BUCKET_BOUNDS, BatchStats, StoreStats};

use crate::AppState;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram (non-cumulative bucket counts; rendered cumulatively).
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BOUNDS.len()],
    /// Observations above the last bound.
    over: u64,
    sum_secs: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        match LATENCY_BOUNDS.iter().position(|b| secs <= *b) {
            Some(i) => {
                if let Some(n) = self.buckets.get_mut(i) {
                    *n += 1;
                }
            }
            None => self.over += 1,
        }
        self.sum_secs += secs;
        self.count += 1;
    }
}

/// What kind of write the delivery service accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// An application message.
    Message,
    /// A commit (with or without a Welcome).
    Commit,
}

/// The server's counters. One per [`AppState`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route template, status) → count and latency.
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    messages_accepted: AtomicU64,
    commits_accepted: AtomicU64,
    duplicates: AtomicU64,
    entries_stored: AtomicU64,
    entries_pushed: AtomicU64,
    entries_fetched: AtomicU64,
    entries_acked: AtomicU64,
    attachments_uploaded: AtomicU64,
    attachment_bytes_uploaded: AtomicU64,
    attachments_downloaded: AtomicU64,
    websocket_connections_total: AtomicU64,
    websocket_store_reads: AtomicU64,
}

impl Metrics {
    /// Counts an accepted write that stored `entries` mailbox entries.
    pub fn accepted(&self, kind: WriteKind, duplicate: bool, entries: usize) {
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let counter = match kind {
            WriteKind::Message => &self.messages_accepted,
            WriteKind::Commit => &self.commits_accepted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.entries_stored
            .fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Counts mailbox entries sent to a device over its WebSocket.
    pub fn pushed(&self, n: u64) {
        self.entries_pushed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts mailbox entries returned by `GET /v1/mailbox`.
    pub fn fetched(&self, n: u64) {
        self.entries_fetched.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts mailbox entries deleted by acks.
    pub fn acked(&self, n: u64) {
        self.entries_acked.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a stored attachment.
    pub fn attachment_uploaded(&self, bytes: u64) {
        self.attachments_uploaded.fetch_add(1, Ordering::Relaxed);
        self.attachment_bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts an attachment download that started.
    pub fn attachment_downloaded(&self) {
        self.attachments_downloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted WebSocket connection.
    pub fn websocket_opened(&self) {
        self.websocket_connections_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a mailbox read by a WebSocket (for entries not handed over by the
    /// request that stored them on this node).
    pub fn websocket_store_read(&self) {
        self.websocket_store_reads.fetch_add(1, Ordering::Relaxed);
    }

    fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            requests
                .entry((method.to_owned(), route.to_owned(), status))
                .or_default()
                .observe(took);
        }
    }

    /// The exposition text, given the gauges read from elsewhere.
    fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        counter(
            &mut out,
            "sotto_messages_accepted_total",
            "Accepted writes to the delivery service, by kind (duplicates excluded).",
            &[
                ("kind=\"message\"", load(&self.messages_accepted)),
                ("kind=\"commit\"", load(&self.commits_accepted)),
            ],
        );
        counter(
            &mut out,
            "sotto_duplicate_sends_total",
            "Message sends recognised as retries of an earlier send and not fanned out again.",
            &[("", load(&self.duplicates))],
        );
        counter(
            &mut out,
            "sotto_mailbox_entries_stored_total",
            "Mailbox entries written (one per recipient device of each accepted write).",
            &[("", load(&self.entries_stored))],
        );
        counter(
            &mut out,
            "sotto_messages_delivered_total",
            "Mailbox entries handed to devices, by channel.",
            &[
                ("channel=\"websocket\"", load(&self.entries_pushed)),
                ("channel=\"fetch\"", load(&self.entries_fetched)),
            ],
        );
        counter(
            &mut out,
            "sotto_mailbox_entries_acked_total",
            "Mailbox entries deleted because their device acknowledged them.",
            &[("", load(&self.entries_acked))],
        );
        counter(
            &mut out,
            "sotto_attachments_uploaded_total",
            "Attachment blobs stored.",
            &[("", load(&self.attachments_uploaded))],
        );
        counter(
            &mut out,
            "sotto_attachment_bytes_uploaded_total",
            "Bytes of attachment blobs stored.",
            &[("", load(&self.attachment_bytes_uploaded))],
        );
        counter(
            &mut out,
            "sotto_attachments_downloaded_total",
            "Attachment downloads started.",
            &[("", load(&self.attachments_downloaded))],
        );
        counter(
            &mut out,
            "sotto_websocket_connections_total",
            "WebSocket connections accepted since start.",
            &[("", load(&self.websocket_connections_total))],
        );
        counter(
            &mut out,
            "sotto_websocket_store_reads_total",
            "Mailbox reads by WebSockets: on connecting, and for entries stored by another node or not handed over.",
            &[("", load(&self.websocket_store_reads))],
        );
        gauge(
            &mut out,
            "sotto_websocket_connections",
            "WebSocket connections open on this node.",
            gauges.websockets as f64,
        );
        gauge(
            &mut out,
            "sotto_uptime_seconds",
            "Seconds since this node started.",
            gauges.uptime.as_secs_f64(),
        );
        if let Some(stats) = &gauges.store {
            gauge(
                &mut out,
                "sotto_mailbox_depth",
                "Mailbox entries waiting for an ack, across all devices.",
                stats.mailbox_entries as f64,
            );
            gauge(
                &mut out,
                "sotto_stored_bodies",
                "Message bodies stored (each once, however many mailboxes reference it).",
                stats.bodies as f64,
            );
            gauge(
                &mut out,
                "sotto_accounts",
                "Registered accounts.",
                stats.accounts as f64,
            );
            gauge(
                &mut out,
                "sotto_devices",
                "Registered devices.",
                stats.devices as f64,
            );
            gauge(&mut out, "sotto_groups", "Groups.", stats.groups as f64);
        }
        if let Some(batches) = &gauges.batches {
            render_batches(&mut out, batches);
        }
        self.render_requests(&mut out);
        out
    }

    fn render_requests(&self, out: &mut String) {
        let Ok(requests) = self.requests.lock() else {
            return;
        };
        let name = "sotto_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP request latency (to the response head), by method, route template and status."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for ((method, route, status), h) in requests.iter() {
            let labels = format!(
                "method=\"{}\",route=\"{}\",status=\"{status}\"",
                escape(method),
                escape(route)
            );
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BOUNDS.iter().zip(h.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_secs);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
}

/// Values read at scrape time.
struct Gauges {
    websockets: usize,
    uptime: Duration,
    store: Option<StoreStats>,
    batches: Option<BatchStats>,
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, value) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn render_batches(out: &mut String, b: &BatchStats) {
    let name = "sotto_store_commit_batch_size";
    let _ = writeln!(
        out,
        "# HELP {name} Write requests per store transaction (group commit: one fsync per batch)."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, n) in BATCH_BUCKET_BOUNDS.iter().zip(b.size_buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", b.batches);
    let _ = writeln!(out, "{name}_sum {}", b.writes);
    let _ = writeln!(out, "{name}_count {}", b.batches);
    counter(
        out,
        "sotto_store_failed_commits_total",
        "Store transactions whose COMMIT failed (every request in them got an error).",
        &[("", b.failed_commits)],
    );
}

/// Label values come from code, but escape them anyway as the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: times every request, counts it under its route template (never the
/// concrete path, which would carry usernames and ids) and runs it in a `request` span
/// named the same way.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // The span names the route template and method only: never the concrete path
    // (usernames, ids), a query string (`?token=`) or a header.
    let span = tracing::debug_span!("request", method = %method, route = %route);
    let response = tracing::Instrument::instrument(next.run(req), span).await;
    state.metrics().observe_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`.
#[utoipa::path(
    get, path = sotto_api::paths::METRICS.template, tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn export(State(state): State<AppState>) -> Response {
    let store = match state.store().stats().await {
        Ok(stats) => Some(stats),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: store statistics unavailable");
            None
        }
    };
    let gauges = Gauges {
        websockets: state.live_sockets(),
        uptime: state.uptime(),
        store,
        batches: state.store().batch_stats(),
    };
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics().render(&gauges),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_overflow() {
        let m = Metrics::default();
        m.observe_request("GET", "/x", 200, Duration::from_micros(100));
        m.observe_request("GET", "/x", 200, Duration::from_millis(3));
        m.observe_request("GET", "/x", 200, Duration::from_secs(60));
        let mut out = String::new();
        m.render_requests(&mut out);
        let labels = "method=\"GET\",route=\"/x\",status=\"200\"";
        assert!(out.contains(&format!(
            "sotto_http_request_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 1\n"
        )));
        assert!(out.contains(&format!(
            "sotto_http_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 2\n"
        )));
        assert!(out.contains(&format!(
            "sotto_http_request_duration_seconds_bucket{{{labels},le=\"10\"}} 2\n"
        )));
        assert!(out.contains(&format!(
            "sotto_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n"
        )));
        assert!(out.contains(&format!(
            "sotto_http_request_duration_seconds_count{{{labels}}} 3\n"
        )));
    }

    #[test]
    fn duplicates_do_not_count_as_accepted() {
        let m = Metrics::default();
        m.accepted(WriteKind::Message, false, 3);
        m.accepted(WriteKind::Message, true, 0);
        m.accepted(WriteKind::Commit, false, 2);
        let out = m.render(&Gauges {
            websockets: 0,
            uptime: Duration::ZERO,
            store: None,
            batches: None,
        });
        assert!(out.contains("sotto_messages_accepted_total{kind=\"message\"} 1\n"));
        assert!(out.contains("sotto_messages_accepted_total{kind=\"commit\"} 1\n"));
        assert!(out.contains("sotto_duplicate_sends_total 1\n"));
        assert!(out.contains("sotto_mailbox_entries_stored_total 5\n"));
    }
}
