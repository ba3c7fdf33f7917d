//! Production lifecycle: the Unix socket listener, the `wait` command, and
//! `shutdown.delay` (still accepting after the signal) before the drain.

use crate::support::*;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use pinecone_admin_proxy::body::empty;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;
use tokio::process::Command;
use tokio::time::Instant;

/// One GET over a Unix socket.
async fn get_unix(path: &std::path::Path, target: &str) -> StatusCode {
    let stream = tokio::net::UnixStream::connect(path).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get(target).header("host", "localhost").body(empty()).unwrap();
    sender.send_request(request).await.unwrap().status()
}

#[tokio::test]
async fn unix_socket_listener_mode_stale_file_and_cleanup() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    // A stale socket file, as a crashed run leaves it: bound once, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());

    let listen = format!("unix:{}", path.display());
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_LISTEN", &listen), ("PINECONE_PROXY_LISTEN_MODE", "0660")]).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert_eq!(get_unix(&path, "/admin/projects").await, StatusCode::OK);

    // A second proxy on the same, live socket is refused rather than stealing it.
    let config = pinecone_admin_proxy::config::load(
        &Default::default(),
        &env(&fake.token_url(), &fake.api_url(), &[("PINECONE_PROXY_LISTEN", &listen)]),
    )
    .unwrap();
    let credentials = pinecone_admin_proxy::credentials::Credentials::load(&config.credentials).unwrap();
    let err = pinecone_admin_proxy::app::start(&config, credentials).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");

    proxy.shutdown();
    proxy.wait().await;
    assert!(!path.exists(), "the socket file is removed at exit");
}

#[tokio::test]
async fn the_default_unix_socket_mode_is_0600() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    let _proxy = proxy_for(&fake, &[("PINECONE_PROXY_LISTEN", &format!("unix:{}", path.display()))]).await;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_not_replaced() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious");
    std::fs::write(&path, "data").unwrap();
    let config = pinecone_admin_proxy::config::load(
        &Default::default(),
        &env(&fake.token_url(), &fake.api_url(), &[("PINECONE_PROXY_LISTEN", &format!("unix:{}", path.display()))]),
    )
    .unwrap();
    let credentials = pinecone_admin_proxy::credentials::Credentials::load(&config.credentials).unwrap();
    let err = pinecone_admin_proxy::app::start(&config, credentials).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

#[tokio::test]
async fn wait_exits_0_when_ready_and_1_on_timeout() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let ops = proxy.ops.to_string();
    let out = Command::new(BIN).args(["wait", "--ops", &ops, "--timeout", "10s"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let refusing = closed_port();
    let nothing = format!("127.0.0.1:{}", refusing.port);
    let started = Instant::now();
    let out = Command::new(BIN).args(["wait", "--ops", &nothing, "--timeout", "700ms"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() >= Duration::from_millis(700), "waited the whole timeout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not ready") && stderr.contains("nothing answers at"), "says why: {stderr}");

    let out = Command::new(BIN).args(["wait", "--ops", "nonsense"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn wait_follows_readiness_not_liveness() {
    // A proxy whose token endpoint is down is live but not ready: wait times out.
    let fake = fake(3600).await;
    fake.state().set_client("demo-client-id", "another-secret");
    let proxy = proxy_for(&fake, &[]).await;
    let ops = proxy.ops.to_string();
    assert_eq!(TestClient::default().get(&ops_url(&proxy, "/healthz")).await.0, StatusCode::OK);
    let out = Command::new(BIN).args(["wait", "--ops", &ops, "--timeout", "500ms"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/readyz answers 503: ") && stderr.contains("credentials"), "readyz's reason: {stderr}");
}

#[tokio::test]
async fn shutdown_delay_keeps_accepting_then_stops() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_SHUTDOWN_DELAY", "1500ms")]).await;
    let listen = proxy.listen.tcp();
    proxy.shutdown();
    let signalled = Instant::now();
    // During the delay, new connections and requests are still served.
    let fresh = TestClient::default();
    assert_eq!(fresh.get(&format!("http://{listen}/admin/projects")).await.0, StatusCode::OK);
    assert!(signalled.elapsed() < Duration::from_millis(1500), "the request ran inside the delay");
    proxy.wait().await;
    assert!(signalled.elapsed() >= Duration::from_millis(1500), "the delay was honoured");
    assert!(tokio::net::TcpStream::connect(listen).await.is_err(), "not accepting after the delay");
}
