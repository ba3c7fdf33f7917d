//! The configuration's table tests: defaults, precedence, names, and the problems named.

use super::raw::{env_names, keys};
use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    let mut e = Env::default();
    for (k, v) in pairs {
        e.set(k, v);
    }
    e
}

fn creds() -> Vec<(&'static str, &'static str)> {
    vec![("PINECONE_CLIENT_ID", "id-1"), ("PINECONE_CLIENT_SECRET", "s3cret")]
}

fn load_with(file: Option<&str>, extra_env: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = flags;
    if let Some(text) = file {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        flags.config = Some(path);
    }
    let mut pairs = creds();
    pairs.extend_from_slice(extra_env);
    load(&flags, &env(&pairs))
}

#[test]
fn redis_urls_are_redacted() {
    for (url, shown) in [
        ("redis://:hunter2@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
        ("rediss://app:hunter2@cache.internal:6380/1", "rediss://app:<redacted>@cache.internal:6380/1"),
        ("redis://hunter2@cache", "redis://<redacted>@cache"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://:p@ss:w@rd@cache/0", "redis://:<redacted>@cache/0"),
        ("hunter2", "<redacted: not a URL>"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
}

#[test]
fn the_shared_cache_url_is_checked_and_never_shown() {
    let env_url = [("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:hunter2@10.0.0.7:6379/0")];
    let c = load_with(None, &env_url, Flags::default()).unwrap();
    let cache = c.token.shared_cache.as_ref().unwrap();
    assert_eq!(cache.url.expose(), "redis://:hunter2@10.0.0.7:6379/0");
    assert_eq!(cache.shown, "redis://:<redacted>@10.0.0.7:6379/0");
    assert!(cache.clear_text_password, "a password in clear text off the machine");
    assert!(!format!("{c:?}").contains("hunter2"));
    let rows = c.describe();
    assert!(!format!("{rows:?}").contains("hunter2"));
    let row = rows.iter().find(|(k, _, _)| k == "token.shared_cache").unwrap();
    assert_eq!(row.1, "redis://:<redacted>@10.0.0.7:6379/0");

    let local =
        load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:pw@127.0.0.1:1/0")], Flags::default());
    assert!(!local.unwrap().token.shared_cache.unwrap().clear_text_password, "loopback");
    let tls = load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://:pw@cache:6380")], Flags::default());
    assert!(!tls.unwrap().token.shared_cache.unwrap().clear_text_password, "TLS");
    assert!(load_with(None, &[], Flags::default()).unwrap().token.shared_cache.is_none());

    // From a file (a Kubernetes Secret), trimmed.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, "redis://:hunter2@cache:6379/0\n").unwrap();
    let path = file.to_str().unwrap();
    let c = load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", path)], Flags::default()).unwrap();
    assert_eq!(c.token.shared_cache.unwrap().url.expose(), "redis://:hunter2@cache:6379/0");

    // Bad values name the key, and never quote the URL.
    for (extra, key) in [
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "http://:hunter2@cache")], "token.shared_cache"),
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:hunter2@cache:notaport")], "token.shared_cache"),
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", " ")], "token.shared_cache"),
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://:hunter2@cache:6380/0#insecure")], "token.shared_cache"),
        (
            vec![
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://cache"),
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", path),
            ],
            "token.shared_cache_file",
        ),
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", "/nonexistent/url")], "token.shared_cache_file"),
        (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path)], "token.shared_cache_ca_file"),
        (
            vec![
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://cache"),
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path),
            ],
            "token.shared_cache_ca_file",
        ),
        (
            vec![
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://cache"),
                ("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path),
            ],
            "token.shared_cache_ca_file",
        ),
    ] {
        let e = load_with(None, &extra, Flags::default()).expect_err(key);
        assert_eq!(e.key, key, "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn defaults_match_the_contract() {
    let c = load_with(None, &[], Flags::default()).unwrap();
    assert_eq!(c.listen, Listen::Tcp("127.0.0.1:8484".parse().unwrap()));
    assert_eq!(c.ops_listen, Listen::Tcp("127.0.0.1:9484".parse().unwrap()));
    assert_eq!(c.listen_mode, 0o600);
    assert!(!c.allow_remote);
    assert_eq!(c.token.url, "https://login.pinecone.io/oauth/token");
    assert_eq!(c.token.audience, "https://api.pinecone.io/");
    assert_eq!(c.token.request_format, RequestFormat::Json);
    assert_eq!((c.token.refresh_at, c.token.refresh_jitter), (0.5, 0.1));
    assert_eq!(c.token.timeout, Duration::from_secs(10));
    assert_eq!(c.token.max_requests_per_minute, 6);
    assert_eq!(c.upstream.url, "https://api.pinecone.io");
    assert_eq!(c.upstream.authority.as_str(), "api.pinecone.io");
    assert_eq!(c.upstream.base_path, "");
    assert_eq!(c.upstream.api_version, "2025-10");
    assert!(!c.upstream.override_api_version);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.timeout, Duration::from_secs(60));
    assert_eq!(c.upstream.replay_limit, 1 << 20);
    assert_eq!(c.shutdown.delay, Duration::ZERO);
    assert_eq!(c.shutdown.grace, Duration::from_secs(25));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.credentials.client_id, CredentialSource::Value(Secret::new("id-1")));
}

#[test]
fn precedence_is_default_file_env_flag() {
    let file = "listen = \"127.0.0.1:1001\"\n[upstream]\napi_version = \"2025-04\"\ntimeout = \"7s\"\n";
    let c = load_with(Some(file), &[], Flags::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:1001");
    assert_eq!(c.upstream.timeout, Duration::from_secs(7));

    let c = load_with(
        Some(file),
        &[("PINECONE_PROXY_LISTEN", "127.0.0.1:1002"), ("PINECONE_API_VERSION", "2026-07")],
        Flags::default(),
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:1002");
    assert_eq!(c.upstream.api_version, "2026-07");
    assert_eq!(c.origins["listen"], Origin::Env("PINECONE_PROXY_LISTEN".into()));

    let flags = Flags { listen: Some("127.0.0.1:1003".into()), ..Flags::default() };
    let c = load_with(Some(file), &[("PINECONE_PROXY_LISTEN", "127.0.0.1:1002")], flags).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:1003");
    assert_eq!(c.origins["listen"], Origin::Flag("--listen"));
}

#[test]
fn the_proxy_specific_env_name_wins_over_the_sdk_alias() {
    let c = load_with(
        None,
        &[("PINECONE_API_VERSION", "2025-04"), ("PINECONE_PROXY_UPSTREAM_API_VERSION", "2026-07")],
        Flags::default(),
    )
    .unwrap();
    assert_eq!(c.upstream.api_version, "2026-07");
}

/// The contract's names: every key has `PINECONE_PROXY_<SECTION>_<KEY>`, and the
/// aliases name real keys.
#[test]
fn env_names_are_derived_from_the_keys() {
    let names: Vec<(String, Vec<String>)> = keys().into_iter().map(|(k, _)| (k.clone(), env_names(&k))).collect();
    assert_eq!(names.len(), 49, "{names:?}");
    let find = |key: &str| names.iter().find(|(k, _)| k == key).map(|(_, n)| n.clone()).unwrap();
    assert_eq!(find("listen"), ["PINECONE_PROXY_LISTEN"]);
    assert_eq!(find("token.max_requests_per_minute"), ["PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE"]);
    assert_eq!(find("credentials.client_id"), ["PINECONE_PROXY_CREDENTIALS_CLIENT_ID", "PINECONE_CLIENT_ID"]);
    assert_eq!(find("log.level"), ["PINECONE_PROXY_LOG_LEVEL", "RUST_LOG"]);
    assert_eq!(find("limits.max_head_bytes"), ["PINECONE_PROXY_LIMITS_MAX_HEAD_BYTES"]);
    assert_eq!(find("api_key.project_id"), ["PINECONE_PROXY_API_KEY_PROJECT_ID"]);
    assert_eq!(find("api_key.roles"), ["PINECONE_PROXY_API_KEY_ROLES"]);
    for (key, _) in ENV_ALIASES {
        assert!(names.iter().any(|(k, _)| k == key), "alias for unknown key {key}");
    }
}

#[test]
fn every_key_has_an_env_variable() {
    let pairs = [
        ("PINECONE_PROXY_LISTEN_MODE", "0640"),
        ("PINECONE_PROXY_ALLOW_REMOTE", "true"),
        ("PINECONE_PROXY_TOKEN_REQUEST_FORMAT", "form"),
        ("PINECONE_PROXY_TOKEN_REFRESH_AT", "0.6"),
        ("PINECONE_PROXY_TOKEN_REFRESH_JITTER", "0.05"),
        ("PINECONE_PROXY_TOKEN_TIMEOUT", "3s"),
        ("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "30"),
        ("PINECONE_PROXY_UPSTREAM_OVERRIDE_API_VERSION", "true"),
        ("PINECONE_PROXY_UPSTREAM_CONNECT_TIMEOUT", "250ms"),
        ("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "64KiB"),
        ("PINECONE_PROXY_SHUTDOWN_DELAY", "2s"),
        ("PINECONE_PROXY_SHUTDOWN_GRACE", "1m"),
        ("PINECONE_PROXY_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ];
    let c = load_with(None, &pairs, Flags::default()).unwrap();
    assert_eq!(c.listen_mode, 0o640);
    assert!(c.allow_remote);
    assert_eq!(c.token.request_format, RequestFormat::Form);
    assert_eq!((c.token.refresh_at, c.token.refresh_jitter), (0.6, 0.05));
    assert_eq!(c.token.timeout, Duration::from_secs(3));
    assert_eq!(c.token.max_requests_per_minute, 30);
    assert!(c.upstream.override_api_version);
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream.replay_limit, 64 << 10);
    assert_eq!(c.shutdown.delay, Duration::from_secs(2));
    assert_eq!(c.shutdown.grace, Duration::from_secs(60));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "debug");
}

/// Each bad configuration names the key it is about, and never echoes the secret.
#[test]
fn bad_configuration_names_the_key() {
    type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (Some("lisen = \"127.0.0.1:1\""), &[], "lisen"),
        (Some("[token]\nurll = \"x\""), &[], "token.urll"),
        (Some("[bogus]\nx = 1"), &[], "bogus"),
        (Some("[credentials]\nclient_secret = \"topsecret\""), &[], "credentials.client_secret"),
        (Some("client_secret = \"topsecret\""), &[], "client_secret"),
        (Some("[token]\ntimeout = \"5 parsecs\""), &[], "token.timeout"),
        (Some("[token]\ntimeout = 5"), &[], "token.timeout"),
        (Some("[token]\nrefresh_at = 1.5"), &[], "token.refresh_at"),
        (Some("[token]\nrefresh_jitter = 0.45"), &[], "token.refresh_jitter"),
        (Some("[token]\nmax_requests_per_minute = 0"), &[], "token.max_requests_per_minute"),
        (Some("[token]\nmax_requests_per_minute = -1"), &[], "token.max_requests_per_minute"),
        (Some("[token]\nrequest_format = \"xml\""), &[], "token.request_format"),
        (Some("[upstream]\nurl = \"http://api.pinecone.io\""), &[], "upstream.url"),
        (Some("[upstream]\nurl = \"not a url\""), &[], "upstream.url"),
        (Some("[upstream]\nreplay_limit = \"1 lightyear\""), &[], "upstream.replay_limit"),
        (Some("[upstream]\nreplay_limit = \"65MiB\""), &[], "upstream.replay_limit"),
        (Some("[upstream]\nca_file = \"/nonexistent/ca.pem\""), &[], "upstream.ca_file"),
        (Some("[log]\nformat = \"yaml\""), &[], "log.format"),
        (Some("[log]\nlevel = \"info,[\""), &[], "log.level"),
        (Some("listen_mode = \"0999\""), &[], "listen_mode"),
        (Some("listen_mode = 600"), &[], "listen_mode"),
        (Some("listen = \"0.0.0.0:8484\""), &[], "listen"),
        (Some("token = 3"), &[], "token"),
        (None, &[("PINECONE_PROXY_TOKEN_URL", "http://login.example.com/oauth/token")], "token.url"),
        (None, &[("PINECONE_PROXY_LISTEN", "10.0.0.1:80")], "listen"),
        (None, &[("PINECONE_PROXY_OPS_LISTEN", "nonsense")], "ops_listen"),
        (None, &[("PINECONE_PROXY_SHUTDOWN_GRACE", "-1s")], "shutdown.grace"),
        (None, &[("PINECONE_PROXY_ALLOW_REMOTE", "perhaps")], "allow_remote"),
        (None, &[("PINECONE_PROXY_TOKEN_REFRESH_AT", "half")], "token.refresh_at"),
        (None, &[("PINECONE_CLIENT_ID_FILE", "/x")], "credentials.client_id_file"),
        (Some("[limits]\nmax_connections = 0"), &[], "limits.max_connections"),
        (Some("[upstream]\nmax_connections = 0"), &[], "upstream.max_connections"),
        (Some("[policy]\nallow = [\"crate_api_key\"]"), &[], "policy.allow"),
        (None, &[("PINECONE_PROXY_POLICY_DENY", "list_projects,delet_project")], "policy.deny"),
        (Some("[policy]\nprojects = [\"\"]"), &[], "policy.projects"),
        (Some("[policy]\nallow = \"list_projects\""), &[], "policy.allow"),
        (None, &[("PINECONE_PROXY_LIMITS_IDLE_TIMEOUT", "0s")], "limits.idle_timeout"),
        (None, &[("PINECONE_PROXY_LIMITS_FIRST_BYTE_TIMEOUT", "soon")], "limits.first_byte_timeout"),
        (Some("[limits]\nmax_head_bytes = \"4KiB\""), &[], "limits.max_head_bytes"),
        (Some("[limits]\nmax_concurrent_streams = 0"), &[], "limits.max_concurrent_streams"),
        (Some("[limits]\nreplay_memory = \"lots\""), &[], "limits.replay_memory"),
        (Some("[limits]\nmax_conections = 5"), &[], "limits.max_conections"),
    ];
    for (file, env, key) in cases {
        let err = load_with(*file, env, Flags::default()).expect_err(&format!("{key} should be refused"));
        assert_eq!(err.key, *key, "{err}");
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

#[test]
fn a_value_from_the_environment_names_its_variable_when_it_is_wrong() {
    let err = load_with(None, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "5 parsecs")], Flags::default()).unwrap_err();
    assert_eq!(err.origin, Some(Origin::Env("PINECONE_PROXY_TOKEN_TIMEOUT".into())));
    assert!(err.to_string().starts_with("token.timeout (env PINECONE_PROXY_TOKEN_TIMEOUT): "), "{err}");
}

#[test]
fn missing_credentials_are_refused() {
    let e = load(&Flags::default(), &env(&[("PINECONE_CLIENT_SECRET", "x")])).unwrap_err();
    assert_eq!(e.key, "credentials.client_id");
    let e = load(&Flags::default(), &env(&[("PINECONE_CLIENT_ID", "x")])).unwrap_err();
    assert_eq!(e.key, "credentials.client_secret_file");
    let e =
        load(&Flags::default(), &env(&[("PINECONE_CLIENT_ID", "x"), ("PINECONE_CLIENT_SECRET", "  \n")])).unwrap_err();
    assert_eq!(e.key, "PINECONE_CLIENT_SECRET");
}

#[test]
fn non_loopback_listen_needs_allow_remote() {
    let flags = Flags { listen: Some("0.0.0.0:8484".into()), allow_remote: true, ..Flags::default() };
    assert!(load_with(None, &[], flags).is_ok());
}

#[test]
fn unknown_proxy_env_variables_are_reported_not_fatal() {
    let c = load_with(None, &[("PINECONE_PROXY_PORT", "tcp://10.0.0.1:8484")], Flags::default()).unwrap();
    assert_eq!(c.unknown_env, vec!["PINECONE_PROXY_PORT".to_owned()]);
}

#[test]
fn http_is_allowed_for_loopback_only() {
    for ok in ["http://127.0.0.1:1/x", "http://localhost:9/oauth/token", "http://[::1]:80", "https://api.pinecone.io"] {
        assert!(parse_url(ok).is_ok(), "{ok}");
    }
    for bad in ["http://api.pinecone.io", "http://10.0.0.1", "ftp://x", "https://u:p@host", "/relative"] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn durations_and_sizes_in_the_documented_forms() {
    let file = |key: &str, value: &str| format!("[upstream]\n{key} = \"{value}\"\n");
    for (text, ms) in [("500ms", 500), ("5s", 5000), ("2m", 120_000), ("1h", 3_600_000), ("1m30s", 90_000)] {
        let c = load_with(Some(&file("timeout", text)), &[], Flags::default()).unwrap();
        assert_eq!(c.upstream.timeout, Duration::from_millis(ms), "{text}");
    }
    for (text, bytes) in [("1MiB", 1 << 20), ("64KiB", 65536), ("1000", 1000), ("2MB", 2_000_000)] {
        let c = load_with(Some(&file("replay_limit", text)), &[], Flags::default()).unwrap();
        assert_eq!(c.upstream.replay_limit, bytes, "{text}");
    }
    let c = load_with(Some("[upstream]\nreplay_limit = 4096\n"), &[], Flags::default()).unwrap();
    assert_eq!(c.upstream.replay_limit, 4096, "a plain number of bytes");
    for bad in ["5", "s", "-1s", ""] {
        assert!(load_with(Some(&file("timeout", bad)), &[], Flags::default()).is_err(), "{bad}");
    }
}

#[test]
fn describe_lists_every_key_and_redacts_the_secret() {
    let c = load_with(None, &[("PINECONE_PROXY_UPSTREAM_TIMEOUT", "7s")], Flags::default()).unwrap();
    let rows = c.describe();
    let text = format!("{rows:?}");
    assert!(!text.contains("s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"));
    let row = |key: &str| rows.iter().find(|(k, _, _)| k == key).cloned().unwrap();
    assert_eq!(row("PINECONE_CLIENT_SECRET").1, "<redacted>");
    assert_eq!(
        row("upstream.timeout"),
        ("upstream.timeout".into(), "7s".into(), "env PINECONE_PROXY_UPSTREAM_TIMEOUT".into())
    );
    assert_eq!(row("token.max_requests_per_minute").2, "default");
    assert_eq!(row("upstream.ca_file").1, "(none)");
    assert_eq!(rows.len(), keys().len() + 1);
}

#[test]
fn a_misspelt_key_is_told_the_closest_known_one() {
    for (file, says) in [
        ("lisen = \"127.0.0.1:1\"", "lisen (file "),
        ("[token]\nurll = \"x\"", "did you mean token.url?"),
        ("[token]\ntimout = \"5s\"", "did you mean token.timeout?"),
        ("[limits]\nmax_conections = 5", "did you mean limits.max_connections?"),
        ("lisen = \"127.0.0.1:1\"", "did you mean listen?"),
    ] {
        let e = load_with(Some(file), &[], Flags::default()).unwrap_err();
        assert!(e.to_string().contains(says), "{file}: {e}");
    }
    // Nothing close: no guess.
    let e = load_with(Some("[token]\nwhatever_this_is = 1"), &[], Flags::default()).unwrap_err();
    assert_eq!(e.problem, "unknown key");
}

const PROJECT: (&str, &str) = ("PINECONE_PROXY_API_KEY_PROJECT_ID", "3fa85f64-5717-4562-b3fc-2c963f66afa6");

#[test]
fn indexes_come_from_the_file_or_one_variable_and_the_variable_wins() {
    let file =
        "[api_key]\nproject_id = \"3fa85f64-5717-4562-b3fc-2c963f66afa6\"\n[indexes]\ndocs = \"127.0.0.1:8485\"\n";
    let c = load_with(Some(file), &[], Flags::default()).unwrap();
    assert_eq!(c.indexes, [IndexListen { name: "docs".into(), listen: "127.0.0.1:8485".parse().unwrap() }]);
    let env = [PROJECT, ("PINECONE_PROXY_INDEXES", "books=unix:/run/books.sock, docs=localhost:8486")];
    let c = load_with(Some(file), &env, Flags::default()).unwrap();
    let names: Vec<(String, String)> = c.indexes.iter().map(|i| (i.name.clone(), i.listen.to_string())).collect();
    assert_eq!(names, [("books".into(), "unix:/run/books.sock".into()), ("docs".into(), "127.0.0.1:8486".into())]);
    assert_eq!(c.origins["indexes.docs"], Origin::Env("PINECONE_PROXY_INDEXES".into()));
    assert!(c.unknown_env.is_empty(), "PINECONE_PROXY_INDEXES is a known variable: {:?}", c.unknown_env);
    assert!(c.describe().iter().any(|(k, v, _)| k == "indexes.books" && v == "unix:/run/books.sock"));
}

#[test]
fn bad_indexes_name_their_key() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (&[PROJECT, ("PINECONE_PROXY_INDEXES", "docs")], "indexes", "is not name=address"),
        (&[PROJECT, ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:1,docs=127.0.0.1:2")], "indexes", "each name once"),
        (&[PROJECT, ("PINECONE_PROXY_INDEXES", "docs=0.0.0.0:8485")], "indexes.docs", "not a loopback address"),
        (&[PROJECT, ("PINECONE_PROXY_INDEXES", "a=127.0.0.1:9,b=127.0.0.1:9")], "indexes.b", "indexes.a's address"),
        (&[PROJECT, ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:8484")], "indexes.docs", "listen's address"),
        (&[("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:8485")], "indexes.docs", "[api_key]"),
    ];
    for (env, key, says) in cases {
        let e = load_with(None, env, Flags::default()).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains(says), "{says}: {e}");
    }
    let e = load_with(Some("[indexes]\nDocs_1 = \"127.0.0.1:8485\"\n"), &[PROJECT], Flags::default()).unwrap_err();
    assert_eq!(e.key, "indexes.Docs_1");
    assert!(e.problem.contains("not an index name"), "{e}");
}
