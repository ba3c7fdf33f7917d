//! The token engine (refresher and source) against an in-memory token source, under paused tokio time: no sockets,
//! no real waiting, jitter off.

use super::*;
use crate::config::{CredentialSource, CredentialsConfig, RequestFormat};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::token::Fetched;
use crate::token::TokenUnavailable;
use crate::token::quota::Bucket;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Answers token requests from a script (then successes), after `delay`.
#[derive(Debug, Clone, Default)]
struct Scripted {
    calls: Arc<AtomicU64>,
    script: Arc<Mutex<VecDeque<Result<Duration, FetchError>>>>,
    /// The quota readings each answer reports, in order (then none).
    quota: Arc<Mutex<VecDeque<Vec<Bucket>>>>,
    delay: Duration,
    lifetime: Duration,
}

impl Scripted {
    fn new(lifetime: Duration) -> Self {
        Self { lifetime, ..Self::default() }
    }
    fn then(self, r: Result<Duration, FetchError>) -> Self {
        self.script.lock().push_back(r);
        self
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    /// The next answer reports one bucket.
    fn quota(self, name: &'static str, limit: u64, remaining: u64, reset_in: Duration) -> Self {
        let reset = SystemTime::now() + reset_in;
        self.quota.lock().push_back(vec![Bucket { name, limit, remaining, reset, clamped: false }]);
        self
    }
}

impl Fetch for Scripted {
    async fn fetch(&self, _: &crate::credentials::CredentialSet) -> Answer {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        let next = self.script.lock().pop_front().unwrap_or(Ok(self.lifetime));
        let quota = self.quota.lock().pop_front().unwrap_or_default();
        let result = next.map(|lifetime| Fetched { access_token: Secret::new(format!("token-{n}")), lifetime });
        Answer { result, quota }
    }
}

fn config(max_per_minute: u32) -> TokenConfig {
    TokenConfig {
        url: "http://127.0.0.1/oauth/token".parse().unwrap(),
        audience: "https://api.pinecone.io/".into(),
        request_format: RequestFormat::Json,
        refresh_at: 0.5,
        refresh_jitter: 0.1,
        timeout: Duration::from_secs(10),
        max_requests_per_minute: max_per_minute,
        shared_cache: None,
    }
}

fn credentials() -> Credentials {
    Credentials::load(&CredentialsConfig {
        client_id: CredentialSource::Value(Secret::new("id")),
        client_secret: CredentialSource::Value(Secret::new("secret")),
    })
    .unwrap()
}

fn start(fetcher: Scripted, max_per_minute: u32) -> (TokenSource, tokio::task::JoinHandle<()>) {
    let source = TokenSource::new(Arc::new(Metrics::new()), Duration::from_secs(10));
    let refresher = Refresher::new(source.clone(), fetcher, credentials(), &config(max_per_minute)).without_jitter();
    (source, tokio::spawn(refresher.run(std::future::pending())))
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn first_token_at_once_then_refresh_at_half_life() {
    let fetcher = Scripted::new(S(100));
    let (source, _task) = start(fetcher.clone(), 6);
    let t0 = Instant::now();
    let token = source.get().await.unwrap();
    assert_eq!(token.generation, 1);
    assert_eq!(fetcher.calls(), 1);
    assert_eq!(Instant::now(), t0, "the first request goes out at once");
    tokio::time::sleep(S(49)).await;
    assert_eq!(fetcher.calls(), 1, "no refresh before refresh_at");
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2, "refreshed at half the lifetime");
    assert_eq!(source.current().unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_waiters_share_one_request() {
    let mut fetcher = Scripted::new(S(100));
    fetcher.delay = Duration::from_millis(500);
    let (source, _task) = start(fetcher.clone(), 6);
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn({
                let s = source.clone();
                async move { s.get().await }
            })
        })
        .collect();
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().generation, 1);
    }
    assert_eq!(fetcher.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_usable_token() {
    let fetcher = Scripted::new(S(100)).then(Ok(S(100))).then(Err(FetchError::transient("HTTP 503")));
    let (source, _task) = start(fetcher.clone(), 6);
    source.get().await.unwrap();
    tokio::time::sleep(S(51)).await;
    assert_eq!(fetcher.calls(), 2, "the refresh was tried");
    let token = source.current().expect("the old token is still usable");
    assert_eq!(token.generation, 1);
    assert_eq!(source.snapshot().last_error.unwrap().kind, "transient_error");
    // The retry (after a 1 s backoff) replaces it.
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 3);
    assert_eq!(source.current().unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn no_token_after_its_usable_window() {
    // Every refresh fails: the token must stop being handed out at 90 s
    // (lifetime 100 s, margin 10 s), never later.
    let fetcher = Scripted::new(S(100)).then(Ok(S(100)));
    for _ in 0..100 {
        fetcher.script.lock().push_back(Err(FetchError::transient("down")));
    }
    let (source, _task) = start(fetcher.clone(), 60);
    source.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(89_900)).await;
    assert!(source.current().is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(source.current().is_none());
    match source.get().await {
        Err(TokenUnavailable::Timeout { retry_after }) => assert!(retry_after >= S(1)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_fail_waiters_at_once_and_retry_after_a_minute() {
    let rejected =
        FetchError::Rejected { status: 401, error: "access_denied".into(), description: "Unauthorized".into() };
    let fetcher = Scripted::new(S(100)).then(Err(rejected));
    let (source, _task) = start(fetcher.clone(), 6);
    let t0 = Instant::now();
    assert_eq!(source.get().await.unwrap_err(), TokenUnavailable::CredentialsRejected { audience: false });
    assert!(Instant::now() - t0 < S(1), "not held for token.timeout");
    tokio::time::sleep(S(59)).await;
    assert_eq!(fetcher.calls(), 1, "no retry within a minute");
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2);
    assert_eq!(source.current().unwrap().generation, 1);
}

#[tokio::test(start_paused = true)]
async fn invalidation_fetches_once_for_many_reports() {
    let fetcher = Scripted::new(S(1000));
    let (source, _task) = start(fetcher.clone(), 6);
    let first = source.get().await.unwrap();
    for _ in 0..50 {
        source.invalidate(first.generation);
    }
    let newer = source.newer_than(first.generation).await.unwrap();
    assert_eq!(newer.generation, 2);
    // A late report about the old generation changes nothing.
    source.invalidate(first.generation);
    tokio::time::sleep(S(10)).await;
    assert_eq!(fetcher.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_spent_bucket_holds_every_request_until_its_reset() {
    // The first answer says the hourly bucket is spent for 200 s. The token (100 s) is
    // used to the end of its usable window (90 s), then no token is had, but nothing
    // is asked of the endpoint before the reset.
    let fetcher = Scripted::new(S(100)).quota("per_hour", 2, 0, S(200));
    let (source, _task) = start(fetcher.clone(), 6);
    assert_eq!(source.get().await.unwrap().generation, 1);
    let quota = source.snapshot().quota;
    assert_eq!((quota[0].bucket, quota[0].remaining, quota[0].spent), ("per_hour", 0, true));
    tokio::time::sleep(S(60)).await;
    assert_eq!(fetcher.calls(), 1, "no refresh at the refresh point");
    assert_eq!(source.current().unwrap().generation, 1, "the token stays in use");
    tokio::time::sleep(S(31)).await;
    assert!(source.current().is_none(), "not past its usable window");
    assert!(source.not_ready_reason().unwrap().contains("quota is spent (bucket per_hour"));
    match source.get().await {
        Err(TokenUnavailable::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    tokio::time::sleep_until(Instant::now() + S(199) - S(101)).await;
    assert_eq!(fetcher.calls(), 1, "nothing sent into the spent bucket");
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2, "sent at the reset");
    assert_eq!(source.current().unwrap().generation, 2);
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_for_its_retry_after_whatever_the_reset_says() {
    let too_many = FetchError::Transient { reason: "HTTP 429".into(), retry_after: Some(S(30)) };
    let fetcher = Scripted::new(S(1000)).then(Err(too_many)).quota("rate", 30, 0, S(120));
    let (source, _task) = start(fetcher.clone(), 6);
    assert!(source.current().is_none());
    tokio::time::sleep(S(29)).await;
    assert_eq!(fetcher.calls(), 1, "not before Retry-After");
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2, "Retry-After (30 s) wins over the bucket's reset at 120 s");
    assert!(source.current().is_some());
    // A Retry-After longer than the reset wins too.
    let longer = FetchError::Transient { reason: "HTTP 429".into(), retry_after: Some(S(300)) };
    let fetcher = Scripted::new(S(1000)).then(Err(longer));
    let fetcher = fetcher.quota("rate", 30, 0, S(120));
    let (_source, _task) = start(fetcher.clone(), 6);
    tokio::time::sleep_until(Instant::now() + S(299)).await;
    assert_eq!(fetcher.calls(), 1);
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_low_bucket_puts_the_refresh_off_to_the_latest_safe_point() {
    // Lifetime 1000 s: refresh due at 500 s, usable until 940 s, token.timeout 10 s, so
    // the latest safe point is 930 s. 3 of 50 left is low.
    let fetcher = Scripted::new(S(1000)).quota("per_day", 50, 3, S(5000));
    let (source, _task) = start(fetcher.clone(), 6);
    source.get().await.unwrap();
    assert!(source.snapshot().quota[0].low);
    tokio::time::sleep(S(929)).await;
    assert_eq!(fetcher.calls(), 1, "not at the refresh point");
    tokio::time::sleep(S(2)).await;
    assert_eq!(fetcher.calls(), 2, "at the latest safe point");
    assert_eq!(source.current().unwrap().generation, 2, "before the old token stopped being usable");
    // That answer said nothing of quotas: the reading stays, so the next refresh is
    // put off the same way.
    tokio::time::sleep(S(600)).await;
    assert_eq!(fetcher.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_budget_holds_when_everything_fails() {
    let fetcher = Scripted::new(S(100));
    for _ in 0..1000 {
        fetcher.script.lock().push_back(Err(FetchError::transient("down")));
    }
    let (_source, _task) = start(fetcher.clone(), 3);
    // Backoff alone would allow more than 3 requests in the first minute (1+2+4+8+…).
    tokio::time::sleep(S(60) - Duration::from_millis(1)).await;
    assert!(fetcher.calls() <= 3, "{} requests in a minute", fetcher.calls());
    tokio::time::sleep(S(600)).await;
    assert!(fetcher.calls() <= 3 * 11, "{}", fetcher.calls());
}

mod property {
    //! For any lifetime, any pattern of failures, any fetch latency and any 401s: a token
    //! handed out is never past its real expiry, and no 60-second window holds more
    //! token requests than the budget.

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Outcome {
        Ok,
        Transient(Option<u64>),
        Rejected,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            2 => Just(Outcome::Ok),
            3 => proptest::option::of(0u64..900).prop_map(Outcome::Transient),
            1 => Just(Outcome::Rejected),
        ]
    }

    /// Records when each request was sent and when each token really expires (its
    /// lifetime counted from the answer, which comes `delay` after the request).
    #[derive(Debug, Default)]
    struct Truth {
        calls: Mutex<Vec<Instant>>,
        expiries: Mutex<HashMap<String, Instant>>,
        script: Mutex<VecDeque<Outcome>>,
        lifetime: Duration,
        delay: Duration,
    }

    impl Fetch for Arc<Truth> {
        async fn fetch(&self, _: &crate::credentials::CredentialSet) -> Answer {
            Answer::from(self.answer().await)
        }
    }

    impl Truth {
        async fn answer(&self) -> Result<Fetched, FetchError> {
            let n = {
                let mut calls = self.calls.lock();
                calls.push(Instant::now());
                calls.len()
            };
            tokio::time::sleep(self.delay).await;
            match self.script.lock().pop_front().unwrap_or(Outcome::Ok) {
                Outcome::Ok => {
                    let name = format!("token-{n}");
                    self.expiries.lock().insert(name.clone(), Instant::now() + self.lifetime);
                    Ok(Fetched { access_token: Secret::new(name), lifetime: self.lifetime })
                }
                Outcome::Transient(retry_after) => Err(FetchError::Transient {
                    reason: "scripted".into(),
                    retry_after: retry_after.map(Duration::from_secs),
                }),
                Outcome::Rejected => Err(FetchError::Rejected {
                    status: 401,
                    error: "access_denied".into(),
                    description: "Unauthorized".into(),
                }),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn no_expired_token_is_handed_out_and_the_budget_holds(
            lifetime in 1u64..172_800,
            script in proptest::collection::vec(outcome(), 0..200),
            max_per_minute in 1u32..12,
            steps in proptest::collection::vec((0.0f64..0.3, any::<bool>()), 1..300),
            delay_ms in 0u64..3_000,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async move {
                let truth = Arc::new(Truth {
                    script: Mutex::new(script.into()),
                    lifetime: Duration::from_secs(lifetime),
                    delay: Duration::from_millis(delay_ms),
                    ..Truth::default()
                });
                let source = TokenSource::new(Arc::new(Metrics::new()), Duration::from_secs(10));
                let refresher = Refresher::new(source.clone(), truth.clone(), credentials(), &config(max_per_minute));
                let task = tokio::spawn(refresher.run(std::future::pending()));
                // Steps of up to 0.3 lifetimes; at each, a request looks at the token,
                // and sometimes the upstream rejects it.
                for (fraction, reject) in steps {
                    let gap = Duration::from_secs(lifetime).mul_f64(fraction).max(Duration::from_millis(1));
                    tokio::time::sleep(gap).await;
                    if let Some(token) = source.current() {
                        let name = token.authorization().to_str().unwrap().trim_start_matches("Bearer ").to_owned();
                        let expires = truth.expiries.lock()[&name];
                        assert!(Instant::now() < expires, "{name} handed out after its real expiry");
                        if reject {
                            source.invalidate(token.generation);
                        }
                    }
                }
                task.abort();
                let calls = truth.calls.lock().clone();
                let max = max_per_minute as usize;
                for window in calls.windows(max + 1) {
                    assert!(
                        window[max] - window[0] >= schedule::BUDGET_WINDOW,
                        "{} requests within {:?}", max + 1, window[max] - window[0]
                    );
                }
            });
        }
    }
}

#[test]
fn while_held_the_cache_is_read_once_a_second_and_never_during_a_backoff() {
    let now = Instant::now();
    let at = |s: u64| now + Duration::from_secs(s);
    let plan = Plan {
        now,
        token: None,
        invalidated: 0,
        credentials: 1,
        credentials_tried: 1,
        hold: None,
        quota_spent_until: Some(at(60)),
        quota_low_until: None,
    };
    let step = |plan: Plan| Step { now, token: None, plan, next: at(60) };
    // Held by a spent bucket only: read now, then wake for the next read in a second.
    assert_eq!(held(&step(plan), None), (true, at(1)));
    // Read a moment ago: not again before its second is up.
    assert_eq!(held(&step(plan), Some(at(1))), (false, at(1)));
    // A backoff holds the reads back too, until it ends.
    let backoff = Plan { hold: Some(Hold::Backoff(at(5))), ..plan };
    assert_eq!(held(&step(backoff), None), (false, at(5)));
    // The budget (next later than wanted) with nothing else held: read at once.
    let budget = Plan { quota_spent_until: None, ..plan };
    assert_eq!(held(&Step { next: at(30), ..step(budget) }, None), (true, at(1)));
}
