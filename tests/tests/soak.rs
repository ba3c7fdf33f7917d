//! The soak run, kept out of CI: `cargo test --release --test tests -- --ignored soak
//! --nocapture` (SOAK_SECONDS, default 600). The proxy binary runs for ten minutes at a
//! steady load with 5-second tokens and a token endpoint that fails one request in five,
//! and prints requests, non-2xx answers, expired tokens presented, token requests per
//! lifetime, and the proxy's RSS at start and end.

use crate::binary::{Proc, command_under};
use crate::support::*;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;
use tokio::time::Instant;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a ten-minute soak; run by hand"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let lifetime = 5;
    let fake = fake(lifetime).await;
    fake.state().set_token_failure_every(5);
    let envs = [
        ("PINECONE_CLIENT_ID", DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_URL", &fake.token_url()),
        ("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url()),
        ("PINECONE_PROXY_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "40"),
        // Warnings, and the line that names the bound addresses.
        ("RUST_LOG", "warn,pinecone_admin_proxy::app=info"),
    ];
    let proc = Proc::started(command_under(&[], &[], &envs)).await;
    let (listen, ops) = (proc.listen, proc.ops);
    assert!(pinecone_admin_proxy::wait::wait_ready(ops, Duration::from_secs(10)).await);
    let pid = proc.pid();
    let rss_start = rss_kib(pid);
    let token_requests_start = fake.state().token_requests.load(SeqCst);

    // 8 workers, each a request every 10 ms: about 800 requests a second.
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (requests, failures, url) =
                (requests.clone(), failures.clone(), format!("http://{listen}/admin/projects"));
            tokio::spawn(async move {
                let client = TestClient::default();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while Instant::now() < end {
                    tick.tick().await;
                    let (status, _, _) = client.get(&url).await;
                    requests.fetch_add(1, SeqCst);
                    if !status.is_success() {
                        failures.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rss_end = rss_kib(pid);
    let state = fake.state();
    let token_requests = state.token_requests.load(SeqCst) - token_requests_start;
    let lifetimes = seconds as f64 / lifetime as f64;
    println!("soak: {seconds} s, {lifetime} s tokens, token endpoint failing 1 request in 5");
    println!("| figure | value |\n| --- | --- |");
    println!("| requests | {} |", requests.load(SeqCst));
    println!("| non-2xx responses | {} |", failures.load(SeqCst));
    println!("| expired tokens presented | {} |", state.expired_presented.load(SeqCst));
    println!("| upstream 401s | {} |", state.unauthorized.load(SeqCst));
    println!("| token requests | {token_requests} ({:.2} per lifetime) |", token_requests as f64 / lifetimes);
    println!("| tokens issued | {} |", state.tokens_issued.load(SeqCst));
    println!("| proxy RSS at start / end | {rss_start} KiB / {rss_end} KiB |");
    drop(proc);
    assert_eq!(failures.load(SeqCst), 0);
    assert_eq!(state.expired_presented.load(SeqCst), 0);
}
