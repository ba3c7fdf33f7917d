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

/// `api_key_operations_total{operation}`: an Admin API call of the managed key's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOperation {
    Create,
    Delete,
}

/// The managed key's series, registered only when `[api_key]` is set (so that a proxy
/// without one never shows, or alerts on, a key it was not asked to keep).
#[derive(Debug, Clone)]
pub struct KeyMetrics {
    /// 1 while a usable key is held.
    pub usable: IntGauge,
    /// When the current key's lease ends (UNIX time).
    pub lease_end: Gauge,
    /// By operation (create, delete), then result (success, transient_error, rejected).
    operations: [[IntCounter; 3]; 2],
    pub orphans_deleted: IntCounter,
}

impl KeyMetrics {
    /// The results of `api_key_operations_total`, in the order of its counters.
    pub const RESULTS: [&'static str; 3] = ["success", "transient_error", "rejected"];

    /// Counts a call; `result` is one of [`KeyMetrics::RESULTS`].
    pub fn operation(&self, operation: KeyOperation, result: &str) {
        let i = Self::RESULTS.iter().position(|r| *r == result).expect("a result label");
        self.operations[operation as usize][i].inc();
    }

    /// What a counter of `api_key_operations_total` says.
    pub fn operation_count(&self, operation: KeyOperation, result: &str) -> u64 {
        let i = Self::RESULTS.iter().position(|r| *r == result).expect("a result label");
        self.operations[operation as usize][i].get()
    }

    /// Made without a registry, for tests of the engine.
    pub fn unregistered() -> Self {
        Self::make(&Registering(Registry::new()))
    }

    fn make(r: &Registering) -> Self {
        let operations = r.counters(
            "api_key_operations_total",
            "Admin API calls of the managed API key's life, by operation (create, delete) and result \
             (success, transient_error, rejected).",
            &["operation", "result"],
        );
        Self {
            usable: r.int_gauge("api_key_usable", "1 while a usable managed API key is held."),
            lease_end: r.gauge(
                "api_key_lease_end_timestamp_seconds",
                "When the current managed API key's lease ends (UNIX time); it is never used after.",
            ),
            operations: ["create", "delete"]
                .map(|op| Self::RESULTS.map(|result| operations.with_label_values(&[op, result]))),
            orphans_deleted: r.counter(
                "api_key_orphans_deleted_total",
                "Keys of ours past their lease and grace that the janitor deleted (left by a proxy that was killed).",
            ),
        }
    }
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

/// Makes each metric and registers it in the same step, so that no metric is made and
/// forgotten: what `Metrics` holds is what the registry exposes.
struct Registering(Registry);

impl Registering {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, metric: C) -> C {
        self.0.register(Box::new(metric.clone())).expect("unique metric names");
        metric
    }

    fn opts(name: &str, help: &str) -> Opts {
        Opts::new(format!("pinecone_proxy_{name}"), help)
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, label: &str) -> GaugeVec {
        self.add(GaugeVec::new(Self::opts(name, help), &[label]).expect("valid metric"))
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(name, help)).expect("valid metric"))
    }

    /// `build_info`, and the process metrics under their standard names.
    fn standard(&self) {
        let build_info = prometheus::IntGaugeVec::new(
            Registering::opts("build_info", "Always 1; the version is a label."),
            &["version"],
        )
        .expect("valid metric");
        self.add(build_info).with_label_values(&[crate::VERSION]).set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, …: the standard names, read from /proc at each scrape.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        self.0.register(Box::new(process)).expect("unique metric names");
    }

    fn histogram(&self, name: &str, help: &str) -> Histogram {
        // From a millisecond (a cached token, a local upstream) to the 60 s upstream timeout.
        let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let opts = HistogramOpts::new(format!("pinecone_proxy_{name}"), help).buckets(buckets);
        self.add(Histogram::with_opts(opts).expect("valid histogram"))
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registering(Registry::new());
        let upstream_errors =
            r.counters("upstream_errors_total", "Requests that failed towards the upstream, by reason.", &["reason"]);
        let token_requests = r.counters(
            "token_requests_total",
            "Token requests, by result: success, transient_error, rejected.",
            &["result"],
        );
        let replays = r.counters(
            "replays_total",
            "Requests that saw a 401, by what became of them: success, unauthorized, too_large, no_token, no_budget.",
            &["result"],
        );
        r.standard();
        let [token_expiry, token_refresh, token_refresh_due] = Self::token_times(&r);
        let [inflight, open_connections, max_connections, replay_memory] = Self::load(&r);
        Self {
            requests: r.counters(
                "requests_total",
                "Requests answered, by method, status code and operation (the specifications' operationId, or unknown).",
                &["method", "code", "operation"],
            ),
            request_duration: r.histogram(
                "request_duration_seconds",
                "Time from receiving a request to sending its response headers.",
            ),
            upstream_unreachable: upstream_errors.with_label_values(&["upstream_unreachable"]),
            upstream_timeout: upstream_errors.with_label_values(&["upstream_timeout"]),
            token_success: token_requests.with_label_values(&["success"]),
            token_transient: token_requests.with_label_values(&["transient_error"]),
            token_rejected: token_requests.with_label_values(&["rejected"]),
            token_request_duration: r.histogram("token_request_duration_seconds", "Duration of token requests."),
            token_expiry,
            token_refresh,
            token_refresh_due,
            token_usable: r.int_gauge("token_usable", "1 while a usable token is held."),
            token_budget_exhausted: r.counter(
                "token_budget_exhausted_total",
                "Times a token request was held back by token.max_requests_per_minute.",
            ),
            upstream_unauthorized: r
                .counter("upstream_unauthorized_total", "Upstream 401 answers to requests that carried our token."),
            replays: ["success", "unauthorized", "too_large", "no_token", "no_budget"]
                .map(|result| replays.with_label_values(&[result])),
            inflight,
            open_connections,
            max_connections,
            replay_memory,
            limit_hits: r.counters(
                "limit_hits_total",
                "Times a limit of the request path bit, by limit: max_connections, first_byte_timeout, \
                 header_read_timeout, idle_timeout, body_read_timeout, max_head_bytes, head_memory, accept_errors.",
                &["limit"],
            ),
            quota: Self::quota_gauges(&r),
            shared_cache_errors: r.counters(
                "shared_cache_errors_total",
                "Times the shared token cache failed and the proxy fetched for itself, by reason: \
                 unreachable, timeout, error, unreadable, lock_wait, stale, bad_lock, oversized.",
                &["reason"],
            ),
            registry: r.0,
        }
    }

    /// `token_quota_limit`, `token_quota_remaining`, `token_quota_reset_timestamp_seconds`.
    fn quota_gauges(r: &Registering) -> [GaugeVec; 3] {
        [
            ("token_quota_limit", "Token requests a quota bucket allows (per_hour, per_day, rate), as last reported."),
            ("token_quota_remaining", "Token requests left in a quota bucket, as last reported."),
            ("token_quota_reset_timestamp_seconds", "When a quota bucket fills again (UNIX time)."),
        ]
        .map(|(name, help)| r.gauges(name, help, "bucket"))
    }

    /// When the token expires, when the next token request is due, when the token is due
    /// to be replaced: UNIX times.
    fn token_times(r: &Registering) -> [Gauge; 3] {
        [
            r.gauge("token_expiry_timestamp_seconds", "When the current token expires (UNIX time)."),
            r.gauge("token_refresh_timestamp_seconds", "When the next token request is due (UNIX time)."),
            r.gauge(
                "token_refresh_due_timestamp_seconds",
                "When the current token is due to be replaced (UNIX time); a past time means its refresh is late.",
            ),
        ]
    }

    /// What the request path holds now: requests, connections, the connection cap, replay memory.
    fn load(r: &Registering) -> [IntGauge; 4] {
        [
            r.int_gauge("inflight_requests", "Requests being forwarded now."),
            r
                .int_gauge("open_connections", "Connections open on listen (at most limits.max_connections)."),
            r.int_gauge(
                "max_connections",
                "Connections listen accepts at most: limits.max_connections, lowered to fit the open-file limit.",
            ),
            r.int_gauge(
                "replay_memory_bytes",
                "Memory held for 401 replays now, by all requests: the capacity of their buffers (at most limits.replay_memory).",
            ),
        ]
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

    /// Registers the managed key's series (once, when `[api_key]` is set).
    pub fn register_api_key(&self) -> KeyMetrics {
        KeyMetrics::make(&Registering(self.registry.clone()))
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
        assert!(!text.contains("api_key"), "no key series without [api_key]");
        let keys = m.register_api_key();
        keys.operation(KeyOperation::Delete, "rejected");
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "pinecone_proxy_api_key_usable 0",
            "pinecone_proxy_api_key_lease_end_timestamp_seconds 0",
            "pinecone_proxy_api_key_operations_total{operation=\"create\",result=\"success\"} 0",
            "pinecone_proxy_api_key_operations_total{operation=\"delete\",result=\"rejected\"} 1",
            "pinecone_proxy_api_key_orphans_deleted_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
