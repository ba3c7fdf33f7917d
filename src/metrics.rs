//! The Prometheus metrics: one [`Metrics`] owns its registry and a typed handle for every
//! series, bound once where the labels are a closed set (STYLE.md habit 12). Names are
//! PRODUCT.md's, all prefixed `pinecone_proxy_`.

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// `replays_total{result}`: what became of a request that saw a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayResult {
    /// Replayed with a new token, and the upstream accepted it.
    Success,
    /// Replayed, and the upstream answered 401 again; that 401 went to the client.
    Unauthorized,
    /// Not replayed: the body was larger than `upstream.replay_limit`.
    TooLarge,
    /// Not replayed: no new token could be had.
    NoToken,
    /// Not replayed: the replay buffers of all requests together were at
    /// `limits.replay_memory` when this body was read.
    NoBudget,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    pub request_duration: Histogram,
    pub upstream_unreachable: IntCounter,
    pub upstream_timeout: IntCounter,
    pub token_success: IntCounter,
    pub token_transient: IntCounter,
    pub token_rejected: IntCounter,
    pub token_request_duration: Histogram,
    pub token_expiry: Gauge,
    pub token_usable: IntGauge,
    pub token_refresh: Gauge,
    /// When the current token is due to be replaced: fixed per token, so that an alert can
    /// tell a refresh that is late from one that is merely retrying.
    pub token_refresh_due: Gauge,
    pub token_budget_exhausted: IntCounter,
    pub upstream_unauthorized: IntCounter,
    replays: [IntCounter; 5],
    pub inflight: IntGauge,
    /// Connections open on `listen`.
    pub open_connections: IntGauge,
    /// `limits.max_connections` in force (after fitting the open-file limit).
    pub max_connections: IntGauge,
    /// Memory held for 401 replays now, by all requests (at most `limits.replay_memory`).
    pub replay_memory: IntGauge,
    limit_hits: IntCounterVec,
    /// `token_quota_limit`, `token_quota_remaining`, `token_quota_reset_timestamp_seconds`,
    /// by bucket: what the token endpoint last reported.
    quota: [GaugeVec; 3],
    shared_cache_errors: IntCounterVec,
}

const METHODS: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("pinecone_proxy_{name}"), help);
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(format!("pinecone_proxy_{name}"), help).buckets(buckets))
                .expect("valid histogram")
        };
        let requests = IntCounterVec::new(
            opts("requests_total", "Requests answered, by method, status code and Admin API operation."),
            &["method", "code", "operation"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            opts("upstream_errors_total", "Requests that failed towards the upstream, by reason."),
            &["reason"],
        )
        .expect("valid metric");
        let token_requests = IntCounterVec::new(
            opts("token_requests_total", "Token requests, by result: success, transient_error, rejected."),
            &["result"],
        )
        .expect("valid metric");
        let replays = IntCounterVec::new(
            opts(
                "replays_total",
                "Requests that saw a 401, by what became of them: success, unauthorized, too_large, no_token, no_budget.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let build_info =
            prometheus::IntGaugeVec::new(opts("build_info", "Always 1; the version is a label."), &["version"])
                .expect("valid metric");
        build_info.with_label_values(&[crate::VERSION]).set(1);

        let latency_buckets =
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let m = Self {
            request_duration: hist(
                "request_duration_seconds",
                "Time from receiving a request to sending its response headers.",
                latency_buckets.clone(),
            ),
            upstream_unreachable: upstream_errors.with_label_values(&["upstream_unreachable"]),
            upstream_timeout: upstream_errors.with_label_values(&["upstream_timeout"]),
            token_success: token_requests.with_label_values(&["success"]),
            token_transient: token_requests.with_label_values(&["transient_error"]),
            token_rejected: token_requests.with_label_values(&["rejected"]),
            token_request_duration: hist(
                "token_request_duration_seconds",
                "Duration of token requests.",
                latency_buckets,
            ),
            token_expiry: Gauge::with_opts(opts(
                "token_expiry_timestamp_seconds",
                "When the current token expires (UNIX time).",
            ))
            .expect("valid metric"),
            token_usable: IntGauge::with_opts(opts("token_usable", "1 while a usable token is held."))
                .expect("valid metric"),
            token_refresh: Gauge::with_opts(opts(
                "token_refresh_timestamp_seconds",
                "When the next token request is due (UNIX time).",
            ))
            .expect("valid metric"),
            token_refresh_due: Gauge::with_opts(opts(
                "token_refresh_due_timestamp_seconds",
                "When the current token is due to be replaced (UNIX time); a past time means its refresh is late.",
            ))
            .expect("valid metric"),
            token_budget_exhausted: IntCounter::with_opts(opts(
                "token_budget_exhausted_total",
                "Times a token request was held back by token.max_requests_per_minute.",
            ))
            .expect("valid metric"),
            upstream_unauthorized: IntCounter::with_opts(opts(
                "upstream_unauthorized_total",
                "Upstream 401 answers to requests that carried our token.",
            ))
            .expect("valid metric"),
            replays: [
                replays.with_label_values(&["success"]),
                replays.with_label_values(&["unauthorized"]),
                replays.with_label_values(&["too_large"]),
                replays.with_label_values(&["no_token"]),
                replays.with_label_values(&["no_budget"]),
            ],
            inflight: IntGauge::with_opts(opts("inflight_requests", "Requests being forwarded now."))
                .expect("valid metric"),
            open_connections: IntGauge::with_opts(opts(
                "open_connections",
                "Connections open on listen (at most limits.max_connections).",
            ))
            .expect("valid metric"),
            max_connections: IntGauge::with_opts(opts(
                "max_connections",
                "Connections listen accepts at most: limits.max_connections, lowered to fit the open-file limit.",
            ))
            .expect("valid metric"),
            replay_memory: IntGauge::with_opts(opts(
                "replay_memory_bytes",
                "Memory held for 401 replays now, by all requests: the capacity of their buffers (at most limits.replay_memory).",
            ))
            .expect("valid metric"),
            limit_hits: IntCounterVec::new(
                opts(
                    "limit_hits_total",
                    "Times a limit of the request path bit, by limit: max_connections, first_byte_timeout, \
                     header_read_timeout, idle_timeout, body_read_timeout, max_head_bytes, head_memory, accept_errors.",
                ),
                &["limit"],
            )
            .expect("valid metric"),
            quota: [
                (
                    "token_quota_limit",
                    "Token requests a quota bucket allows (per_hour, per_day, rate), as last reported.",
                ),
                ("token_quota_remaining", "Token requests left in a quota bucket, as last reported."),
                ("token_quota_reset_timestamp_seconds", "When a quota bucket fills again (UNIX time)."),
            ]
            .map(|(name, help)| GaugeVec::new(opts(name, help), &["bucket"]).expect("valid metric")),
            shared_cache_errors: IntCounterVec::new(
                opts(
                    "shared_cache_errors_total",
                    "Times the shared token cache failed and the proxy fetched for itself, by reason: \
                     unreachable, timeout, error, unreadable, lock_wait.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            requests,
            registry,
        };
        let r = &m.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(upstream_errors),
            Box::new(token_requests),
            Box::new(m.token_request_duration.clone()),
            Box::new(m.token_expiry.clone()),
            Box::new(m.token_usable.clone()),
            Box::new(m.token_refresh.clone()),
            Box::new(m.token_refresh_due.clone()),
            Box::new(m.token_budget_exhausted.clone()),
            Box::new(m.upstream_unauthorized.clone()),
            Box::new(replays),
            Box::new(m.inflight.clone()),
            Box::new(m.open_connections.clone()),
            Box::new(m.max_connections.clone()),
            Box::new(m.replay_memory.clone()),
            Box::new(m.limit_hits.clone()),
            Box::new(m.quota[0].clone()),
            Box::new(m.quota[1].clone()),
            Box::new(m.quota[2].clone()),
            Box::new(m.shared_cache_errors.clone()),
            Box::new(build_info),
            // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
            // process_max_fds, …: the standard names, read from /proc at each scrape.
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            r.register(c).expect("unique metric names");
        }
        m
    }

    /// Counts one answered request. The method label is a closed set (unknown methods are
    /// `OTHER`), the code is a status code, and the operation one of the route table's
    /// (or `unknown`), so the series stay few.
    pub fn request(&self, method: &Method, status: StatusCode, operation: &'static str) {
        let method = METHODS.iter().find(|m| **m == method.as_str()).copied().unwrap_or("OTHER");
        self.requests.with_label_values(&[method, status.as_str(), operation]).inc();
    }

    /// Creates a limit's series at zero, so that a rate over it is never missing (the
    /// limits call it for each of their closed set of labels).
    pub fn limit_at_zero(&self, limit: &'static str) {
        self.limit_hits.with_label_values(&[limit]);
    }

    /// Counts a limit that bit; `limit` is one of the limits' closed set of labels.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.with_label_values(&[limit]).inc();
    }

    /// Sets a quota bucket's gauges; `bucket` is one of [`crate::token::quota::BUCKETS`].
    pub fn quota(&self, bucket: &'static str, limit: u64, remaining: u64, reset_unix: f64) {
        self.quota[0].with_label_values(&[bucket]).set(limit as f64);
        self.quota[1].with_label_values(&[bucket]).set(remaining as f64);
        self.quota[2].with_label_values(&[bucket]).set(reset_unix);
    }

    /// Counts a shared cache failure; `reason` is one of [`crate::token::shared`]'s labels.
    pub fn shared_cache_error(&self, reason: &'static str) {
        self.shared_cache_errors.with_label_values(&[reason]).inc();
    }

    /// Creates a shared cache failure's series at 0, so that a rate over it is never missing.
    pub fn shared_cache_errors_at_zero(&self, reason: &'static str) {
        self.shared_cache_errors.with_label_values(&[reason]);
    }

    pub fn replay(&self, result: ReplayResult) {
        self.replays[result as usize].inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exposed() {
        let m = Metrics::new();
        m.request(&Method::GET, StatusCode::OK, "list_projects");
        m.request(&Method::from_bytes(b"BREW").unwrap(), StatusCode::METHOD_NOT_ALLOWED, "unknown");
        m.request(&Method::GET, StatusCode::from_u16(999).unwrap(), "list_projects");
        m.request(&Method::GET, StatusCode::OK, "list_projects");
        m.replay(ReplayResult::Success);
        m.quota("per_hour", 10, 7, 1_800_000_000.0);
        m.shared_cache_error("timeout");
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "pinecone_proxy_requests_total{code=\"200\",method=\"GET\",operation=\"list_projects\"} 2",
            "pinecone_proxy_requests_total{code=\"999\",method=\"GET\",operation=\"list_projects\"} 1",
            "pinecone_proxy_requests_total{code=\"405\",method=\"OTHER\",operation=\"unknown\"} 1",
            "pinecone_proxy_request_duration_seconds_bucket",
            "pinecone_proxy_upstream_errors_total{reason=\"upstream_unreachable\"} 0",
            "pinecone_proxy_token_requests_total{result=\"success\"} 0",
            "pinecone_proxy_token_requests_total{result=\"transient_error\"} 0",
            "pinecone_proxy_token_requests_total{result=\"rejected\"} 0",
            "pinecone_proxy_token_request_duration_seconds_bucket",
            "pinecone_proxy_token_expiry_timestamp_seconds",
            "pinecone_proxy_token_usable 0",
            "pinecone_proxy_token_refresh_timestamp_seconds",
            "pinecone_proxy_token_refresh_due_timestamp_seconds",
            "pinecone_proxy_max_connections",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "pinecone_proxy_upstream_unauthorized_total 0",
            "pinecone_proxy_replays_total{result=\"success\"} 1",
            "pinecone_proxy_inflight_requests 0",
            "pinecone_proxy_open_connections 0",
            "pinecone_proxy_replays_total{result=\"no_budget\"} 0",
            "pinecone_proxy_build_info{version=",
            "pinecone_proxy_token_quota_limit{bucket=\"per_hour\"} 10",
            "pinecone_proxy_token_quota_remaining{bucket=\"per_hour\"} 7",
            "pinecone_proxy_token_quota_reset_timestamp_seconds{bucket=\"per_hour\"} 1800000000",
            "pinecone_proxy_shared_cache_errors_total{reason=\"timeout\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
