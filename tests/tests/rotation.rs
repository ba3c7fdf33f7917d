//! Credential rotation: a rename over the file, an in-place rewrite, and Kubernetes'
//! `..data` symlink swap are each noticed within 5 seconds and tried by fetching a token;
//! a rejected new secret leaves the current token in use and shows in `/status`.

use crate::support::*;
use http::StatusCode;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

enum Form {
    Rename,
    Rewrite,
    DataSwap,
}

/// Lays out the secret as the form needs it; returns the path the proxy reads.
fn lay_out(dir: &Path, form: &Form, secret: &str) -> PathBuf {
    match form {
        Form::Rename | Form::Rewrite => {
            let p = dir.join("client-secret");
            std::fs::write(&p, format!("{secret}\n")).unwrap();
            p
        }
        Form::DataSwap => {
            // What kubelet makes of a secret volume: a timestamped directory, `..data`
            // pointing at it, and the key a symlink through `..data`.
            let ts = dir.join("..2026_11_29_07_00_00.1");
            std::fs::create_dir(&ts).unwrap();
            std::fs::write(ts.join("client-secret"), secret).unwrap();
            symlink("..2026_11_29_07_00_00.1", dir.join("..data")).unwrap();
            symlink("..data/client-secret", dir.join("client-secret")).unwrap();
            dir.join("client-secret")
        }
    }
}

fn rotate(dir: &Path, form: &Form, secret: &str) {
    match form {
        Form::Rename => {
            let tmp = dir.join(".client-secret.tmp");
            std::fs::write(&tmp, format!("{secret}\n")).unwrap();
            std::fs::rename(&tmp, dir.join("client-secret")).unwrap();
        }
        Form::Rewrite => std::fs::write(dir.join("client-secret"), format!("{secret}\n")).unwrap(),
        Form::DataSwap => {
            let ts = dir.join("..2026_11_29_08_00_00.2");
            std::fs::create_dir(&ts).unwrap();
            std::fs::write(ts.join("client-secret"), secret).unwrap();
            symlink("..2026_11_29_08_00_00.2", dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            std::fs::remove_dir_all(dir.join("..2026_11_29_07_00_00.1")).unwrap();
        }
    }
}

async fn rotation_is_noticed(form: Form) {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = lay_out(dir.path(), &form, DEMO_CLIENT_SECRET);
    let proxy = start_with(&strip_secret(&env(
        &fake.token_url(),
        &fake.api_url(),
        &[("PINECONE_CLIENT_SECRET_FILE", path.to_str().unwrap())],
    )))
    .await;
    let first = proxy.tokens.get().await.unwrap();
    let mut changes = proxy.credentials.subscribe();

    fake.state().set_client(DEMO_CLIENT_ID, "the-rotated-secret");
    fake.state().revoke_all();
    let rotated = Instant::now();
    rotate(dir.path(), &form, "the-rotated-secret");
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("noticed within 5 s").unwrap();
    assert_eq!(changes.borrow().generation, 2);
    assert_eq!(changes.borrow().client_secret.expose(), "the-rotated-secret");
    let second = proxy.tokens.newer_than(first.generation).await.expect("a token from the new secret");
    assert!(rotated.elapsed() < Duration::from_secs(5));
    assert_eq!(second.generation, 2);
    assert_eq!(TestClient::default().get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
    assert_eq!(status["token"]["credential_generation_in_use"], 2);
}

fn strip_secret(env: &pinecone_admin_proxy::config::Env) -> pinecone_admin_proxy::config::Env {
    let mut out = pinecone_admin_proxy::config::Env::default();
    for name in [
        "PINECONE_CLIENT_ID",
        "PINECONE_CLIENT_SECRET_FILE",
        "PINECONE_PROXY_TOKEN_URL",
        "PINECONE_PROXY_UPSTREAM_URL",
        "PINECONE_PROXY_LISTEN",
        "PINECONE_PROXY_OPS_LISTEN",
    ] {
        if let Some(v) = env.get(name) {
            out.set(name, v);
        }
    }
    out
}

#[tokio::test]
async fn a_rename_over_the_file_is_noticed() {
    rotation_is_noticed(Form::Rename).await;
}

#[tokio::test]
async fn an_in_place_rewrite_is_noticed() {
    rotation_is_noticed(Form::Rewrite).await;
}

#[tokio::test]
async fn a_kubernetes_data_symlink_swap_is_noticed() {
    rotation_is_noticed(Form::DataSwap).await;
}

#[tokio::test]
async fn a_wrong_new_secret_keeps_the_current_token_and_is_reported() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = lay_out(dir.path(), &Form::Rewrite, DEMO_CLIENT_SECRET);
    let proxy = start_with(&strip_secret(&env(
        &fake.token_url(),
        &fake.api_url(),
        &[("PINECONE_CLIENT_SECRET_FILE", path.to_str().unwrap())],
    )))
    .await;
    let first = proxy.tokens.get().await.unwrap();
    let mut changes = proxy.credentials.subscribe();
    let mut attempts = proxy.tokens.subscribe();
    rotate(dir.path(), &Form::Rewrite, "a-wrong-secret");
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("noticed").unwrap();
    // The refresher tries the new secret at once; wait for its verdict.
    tokio::time::timeout(Duration::from_secs(5), attempts.changed()).await.expect("the new secret was tried").unwrap();
    assert_eq!(proxy.metrics.token_rejected.get(), 1);
    assert_eq!(proxy.tokens.current().expect("the current token stays").generation, first.generation);
    assert_eq!(TestClient::default().get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
    assert_eq!(status["credentials"]["generation"], 2);
    assert_eq!(status["token"]["credential_generation_in_use"], 1);
    assert_eq!(status["token"]["credential_generation_tried"], 2);
    assert_eq!(status["token"]["credentials_rejected"], true);
    assert_eq!(status["token"]["last_error"]["kind"], "rejected");
    assert!(
        !String::from_utf8_lossy(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2)
            .contains("a-wrong-secret")
    );
}
