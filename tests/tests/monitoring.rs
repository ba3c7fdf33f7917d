//! The operations kit in `config/monitoring/` is true to the proxy: every metric its alert
//! rules and dashboard name is one a running proxy exports, every alert has its runbook
//! section and its unit tests (which `promtool test rules` runs in CI).

use crate::support::*;
use std::collections::BTreeSet;
use std::path::Path;
use yaml_rust2::YamlLoader;

fn kit(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/monitoring").join(file)).unwrap()
}

/// The metric names in a PromQL text: identifiers that start like the proxy's or the
/// process collector's, less a histogram's `_bucket`, `_sum` and `_count`.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            && (promql[i..].starts_with("pinecone_proxy_") || promql[i..].starts_with("process_"));
        if !starts {
            i += 1;
            continue;
        }
        let end = promql[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(promql.len(), |n| i + n);
        let name = &promql[i..end];
        let name = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(name.to_owned());
        i = end;
    }
    names
}

fn rules() -> Vec<yaml_rust2::Yaml> {
    let docs = YamlLoader::load_from_str(&kit("alerts.yaml")).unwrap();
    docs[0]["groups"][0]["rules"].as_vec().unwrap().clone()
}

#[tokio::test]
async fn the_rules_and_the_dashboard_name_only_exported_metrics() {
    // With a quota and a shared cache (here one that nobody listens on), so that every
    // series exists.
    let fake = fake(3600).await;
    fake.state().set_quota(Some(pinecone_admin_proxy::fake::quota::Quota::parse("per_hour=10,per_day=50").unwrap()));
    let refusing = closed_port();
    let redis = format!("redis://127.0.0.1:{}/0", refusing.port);
    let project = fake.state().project_id();
    let proxy = proxy_for(
        &fake,
        &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", &redis), ("PINECONE_PROXY_API_KEY_PROJECT_ID", &project)],
    )
    .await;
    proxy.tokens.get().await.unwrap();
    let client = TestClient::default();
    client.get(&url(&proxy, "/admin/projects")).await;
    let (_, _, body) = client.get(&ops_url(&proxy, "/metrics")).await;
    let exported: BTreeSet<String> = String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(exported.contains("pinecone_proxy_token_usable") && exported.contains("process_resident_memory_bytes"));

    let mut named = BTreeSet::new();
    for rule in rules() {
        named.extend(metric_names(rule["expr"].as_str().unwrap()));
    }
    let dashboard: serde_json::Value = serde_json::from_str(&kit("dashboard.json")).unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            named.extend(metric_names(target["expr"].as_str().unwrap()));
            exprs += 1;
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            named.extend(metric_names(query));
        }
    }
    assert!(exprs >= 20, "{exprs} dashboard queries");
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(missing.is_empty(), "named by the kit but not exported: {missing:?}");

    // The README's table of metrics names every family the proxy exports, and no other.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("Metrics, all prefixed `pinecone_proxy_`:").expect("the metrics table");
    let table = readme[start..].split("\n\n").nth(1).expect("the table after its line");
    let mut documented = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let names = row.split(" | ").next().unwrap();
        for name in names.split('`').skip(1).step_by(2) {
            documented.insert(format!("pinecone_proxy_{}", name.split('{').next().unwrap()));
        }
    }
    let ours: BTreeSet<String> = exported.iter().filter(|n| n.starts_with("pinecone_proxy_")).cloned().collect();
    assert_eq!(documented, ours, "the README's metrics table against /metrics");
    assert!(named.len() >= 15, "{named:?}");
}

#[test]
fn every_alert_has_its_annotations_runbook_section_and_tests() {
    let runbook = kit("RUNBOOK.md");
    let anchors: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_ascii_lowercase()).collect();
    let tests = YamlLoader::load_from_str(&kit("alerts.test.yaml")).unwrap();
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in tests[0]["tests"].as_vec().unwrap() {
        for case in test["alert_rule_test"].as_vec().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            match case["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()) {
                true => firing.insert(name),
                false => quiet.insert(name),
            };
        }
    }
    let rules = rules();
    assert!(rules.len() >= 9);
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let a = &rule["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(a[key].as_str().is_some_and(|s| s.len() > 10), "{name}: {key}");
        }
        let anchor =
            a["runbook_url"].as_str().unwrap().rsplit_once("RUNBOOK.md#").expect("an anchor into RUNBOOK.md").1;
        assert!(anchors.contains(anchor), "{name}: no section ## {name} in RUNBOOK.md for #{anchor}");
        assert!(matches!(rule["labels"]["severity"].as_str(), Some("page" | "warning")), "{name}: severity");
        assert!(firing.contains(name), "{name}: no test where it fires");
        assert!(quiet.contains(name), "{name}: no test where it stays quiet");
    }
}
