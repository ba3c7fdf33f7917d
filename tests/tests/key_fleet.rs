//! The managed key shared by a fleet (`[api_key]` with `token.shared_cache`), against a real
//! `redis-server`: one key for the fleet, created by one proxy under the lock, taken by the
//! others, rotated once, replaced once after a revocation, and never deleted by one pod
//! leaving.

use crate::shared_cache::Redis;
use crate::support::*;
use pinecone_admin_proxy::app::Running;
use pinecone_admin_proxy::fake::FakePinecone;
use std::time::Duration;

async fn fleet_proxy(fake: &FakePinecone, redis: &Redis, extra: &[(&str, &str)]) -> Running {
    let (project, url) = (fake.state().project_id(), redis.url());
    let mut env = vec![
        ("PINECONE_PROXY_TOKEN_SHARED_CACHE", url.as_str()),
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
    ];
    env.extend_from_slice(extra);
    proxy_for(fake, &env).await
}

async fn fleet(fake: &FakePinecone, redis: &Redis, n: usize, extra: &[(&str, &str)]) -> Vec<Running> {
    let mut proxies = Vec::new();
    for _ in 0..n {
        proxies.push(fleet_proxy(fake, redis, extra).await);
    }
    proxies
}

fn keys(proxy: &Running) -> &pinecone_admin_proxy::api_key::source::KeySource {
    proxy.keys.as_ref().expect("[api_key] is set")
}

/// The id of the key each proxy holds, once each holds one.
async fn held(proxies: &[Running]) -> Vec<String> {
    let mut ids = Vec::new();
    for p in proxies {
        ids.push(keys(p).get().await.expect("a key").id.clone());
    }
    ids
}

/// Waits until every proxy holds a key other than `old`.
async fn all_moved_on(proxies: &[Running], old: &str) {
    for p in proxies {
        let mut changed = keys(p).subscribe();
        tokio::time::timeout(Duration::from_secs(20), async {
            while keys(p).current().is_none_or(|k| k.id == old) {
                changed.changed().await.unwrap();
            }
        })
        .await
        .expect("every proxy takes the next key");
    }
}

#[tokio::test]
async fn fifty_proxies_started_together_make_one_key_and_a_rolling_restart_makes_none() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    // Started one after another within milliseconds, before the first token (300 ms) is
    // there: all fifty go for the key at once.
    fake.state().set_token_delay(Duration::from_millis(300));
    let mut proxies = fleet(&fake, &redis, 50, &[]).await;
    let ids = held(&proxies).await;
    assert_eq!(fake.state().api_keys_created(), 1, "one create_api_key for fifty proxies");
    assert!(ids.iter().all(|id| *id == ids[0]), "one key for the fleet");
    let created_here = proxies.iter().filter(|p| keys(p).current().unwrap().own).count();
    assert_eq!(created_here, 1, "created by one, taken by the others");

    // A rolling restart: each proxy stops (its key is the fleet's: not deleted), a new one
    // starts and takes the fleet's key.
    for slot in &mut proxies {
        let old = std::mem::replace(slot, fleet_proxy(&fake, &redis, &[]).await);
        old.shutdown();
        old.wait().await;
    }
    let after = held(&proxies).await;
    assert!(after.iter().all(|id| *id == ids[0]), "the same key after the restart");
    assert_eq!(fake.state().api_keys_created(), 1, "no creation during the rolling restart");
    assert!(fake.state().api_keys().iter().any(|k| k["id"] == ids[0].as_str()), "never deleted by a pod leaving");
    // And it works.
    let (status, _, _) = TestClient::default().get(&url(&proxies[7], "/indexes")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_fleet_rotates_once_and_the_creator_deletes_the_old_key() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let lease = [
        ("PINECONE_PROXY_API_KEY_LIFETIME", "4s"),
        ("PINECONE_PROXY_API_KEY_ROTATE_AT", "0.5"),
        ("PINECONE_PROXY_API_KEY_GRACE", "500ms"),
        ("PINECONE_PROXY_API_KEY_MAX_CREATES_PER_HOUR", "3600"),
    ];
    fake.state().set_recording(true);
    let proxies = fleet(&fake, &redis, 5, &lease).await;
    let first = held(&proxies).await[0].clone();
    all_moved_on(&proxies, &first).await;
    let second = held(&proxies).await;
    assert!(second.iter().all(|id| *id == second[0]), "one next key for the fleet: {second:?}");
    assert_eq!(fake.state().api_keys_created(), 2, "one rotation for five proxies");
    let mut activity = fake.state().subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.state().api_keys().iter().any(|k| k["id"] == first.as_str()) {
            activity.changed().await.unwrap();
        }
    })
    .await
    .expect("the old key deleted after the grace");
    let target = format!("/admin/api-keys/{first}");
    let deletes =
        fake.state().recorded().into_iter().filter(|r| r.method == http::Method::DELETE && r.target == target);
    assert_eq!(deletes.count(), 1, "deleted once, by its successor's creator");
}

#[tokio::test]
async fn a_revoked_fleet_key_is_replaced_once_for_the_fleet() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let proxies = fleet(&fake, &redis, 5, &[]).await;
    let first = held(&proxies).await[0].clone();
    assert!(fake.state().revoke_api_key(&first));
    // Every proxy sees the 401, and every request is replayed with the next key.
    let client = TestClient::default();
    let requests: Vec<_> = proxies
        .iter()
        .flat_map(|p| (0..4).map(move |_| url(p, "/indexes")))
        .map(|target| {
            let client = client.clone();
            tokio::spawn(async move { client.get(&target).await.0 })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    let after = held(&proxies).await;
    assert!(after.iter().all(|id| *id == after[0] && *id != first), "{after:?}");
    assert_eq!(fake.state().api_keys_created(), 2, "one replacement for the fleet");
}

#[tokio::test]
async fn garbage_in_the_fleets_entry_is_counted_never_used_and_overwritten() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let a = fleet_proxy(&fake, &redis, &[]).await;
    let first = keys(&a).get().await.unwrap().id.clone();
    let entry = redis.keys().await.into_iter().find(|k| k.ends_with(":api-key")).expect("the fleet's entry");
    assert!(!entry.contains(&fake.state().project_id()), "the name says nothing of the plan: {entry}");
    let _: () =
        redis::cmd("SET").arg(&entry).arg("not a sealed key").query_async(&mut redis.conn().await).await.unwrap();

    let b = fleet_proxy(&fake, &redis, &[]).await;
    let second = keys(&b).get().await.unwrap().id.clone();
    assert_ne!(second, first, "the garbage was not taken for a key");
    assert_eq!(fake.state().api_keys_created(), 2);
    let text = String::from_utf8(b.metrics.render()).unwrap();
    assert!(text.contains(r#"pinecone_proxy_shared_cache_errors_total{reason="unreadable"} 1"#), "{text}");
    // B's key overwrote the garbage: the next proxy takes it.
    let c = fleet_proxy(&fake, &redis, &[]).await;
    assert_eq!(keys(&c).get().await.unwrap().id, second);
    assert_eq!(fake.state().api_keys_created(), 2);
}

#[tokio::test]
async fn with_redis_unreachable_each_proxy_keeps_a_key_of_its_own() {
    let refusing = closed_port();
    let fake = fake(3600).await;
    let (project, redis_url) = (fake.state().project_id(), format!("redis://127.0.0.1:{}/0", refusing.port));
    let env = [
        ("PINECONE_PROXY_TOKEN_SHARED_CACHE", redis_url.as_str()),
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
    ];
    let a = proxy_for(&fake, &env).await;
    let b = proxy_for(&fake, &env).await;
    let (ka, kb) = (keys(&a).get().await.unwrap(), keys(&b).get().await.unwrap());
    assert_ne!(ka.id, kb.id, "each its own, within its own budget");
    assert_eq!(fake.state().api_keys_created(), 2);
    let (status, _, _) = TestClient::default().get(&url(&b, "/indexes")).await;
    assert_eq!(status, 200);
}
