//! pinecone-admin-proxy: a local HTTP proxy that holds a Pinecone service account's client
//! credentials, keeps a valid Admin API access token, and forwards plain-HTTP requests to
//! the Pinecone Admin API with `Authorization` and `X-Pinecone-Api-Version` added.
//!
//! The crate map:
//!
//! - [`config`]: defaults, file, environment and flags into a validated [`config::Config`].
//! - [`credentials`]: where the client id and secret come from; noticing that they changed.
//! - [`secret`]: values that are never printed, and their fingerprints.
//! - [`token`]: what a token is, how one is fetched, when the next one is fetched, and the
//!   engine that hands usable tokens to requests.
//! - [`body`]: the body type every request and response shares.
//! - [`api_key`]: the managed API key of the control and data planes: its lease and its
//!   Admin API calls (issue 24, under way).
//! - [`outbound`]: the one outbound HTTP stack (token requests and forwarding): a pool of
//!   hyper HTTP/1.1 and HTTP/2 connections per host, over rustls.
//! - [`proxy`]: forwarding: the request rewrite, header policy, streaming, proxy errors.
//! - [`routes`]: the Admin API's route table (from its OpenAPI specifications), and the
//!   operation a request names.
//! - [`policy`]: the `[policy]` that narrows what the proxy forwards.
//! - [`replay`]: request bodies kept in memory for one replay after an upstream 401.
//! - [`ops`]: health, readiness, startup, metrics, status and quit endpoints.
//! - [`index_listeners`]: one listener per index (`[indexes]`), its data plane.
//! - [`api_key`]: the managed API key: minted, rotated, shared by a fleet, deleted.
//! - [`metrics`]: the one `Metrics` struct that owns the Prometheus registry.
//! - [`net`]: addresses (`Listen`) and the loopback rules, one of each.
//! - [`serve`]: listeners (TCP, Unix), the accept loop, graceful shutdown.
//! - [`shutdown`]: the one-way switch that tells tasks to stop (re-exported as `serve::Trigger`).
//! - [`limits`]: what one inbound connection may take in time, and the lines and counts when a limit bites.
//! - [`admission`]: who gets a connection on a crowded ops listener (per-peer caps, the
//!   longest idle evicted).
//! - [`app`]: wiring it all together; `start` and `run`.
//! - [`wait`]: the `wait` command: poll a running proxy's `/readyz`.
//! - [`fake`]: the fake Pinecone (token endpoint and in-memory Admin API) for `demo`,
//!   `fake-pinecone` and the tests.
//! - [`logging`]: the text and JSON log output (tracing-subscriber's).
//!
//! The layers, lowest first; a module imports only from layers below its own (the test
//! `layers::no_module_imports_one_above_it` keeps it so, and so keeps out import cycles):
//!
//! 0. leaves: `body`, `metrics`, `net`, `secret`, `shutdown`, `routes`
//! 1. on the route table: `policy`
//! 2. configuration: `config`
//! 3. on the configuration: `credentials`, `limits`, `logging`, `outbound`, `replay`, `wait`
//! 4. engines: `token`, `admission`
//! 5. on the token engine: `api_key`
//! 6. services and serving: `proxy`, `serve`
//! 7. what serves: `ops`, `fake`, `index_listeners`
//! 8. the wiring: `app`

pub(crate) mod admission;
pub mod api_key;
pub mod app;
pub mod body;
pub mod config;
pub mod credentials;
pub mod fake;
pub(crate) mod index_listeners;
pub(crate) mod limits;
pub mod logging;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod ops;
pub(crate) mod outbound;
pub mod policy;
pub(crate) mod proxy;
pub(crate) mod replay;
pub(crate) mod routes;
pub mod secret;
pub mod serve;
pub(crate) mod shutdown;
pub mod token;
pub mod wait;

/// The crate version, sent as `User-Agent` and shown in `/status` and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod layers {
    //! The crate map's layers, checked against the `crate::` paths of every production file.

    /// Each module (its top-level name) and its layer, as the crate map states them.
    const LAYERS: &[(&str, u8)] = &[
        ("body", 0),
        ("metrics", 0),
        ("net", 0),
        ("secret", 0),
        ("shutdown", 0),
        ("routes", 0),
        ("policy", 1),
        ("config", 2),
        ("credentials", 3),
        ("limits", 3),
        ("logging", 3),
        ("outbound", 3),
        ("replay", 3),
        ("wait", 3),
        ("token", 4),
        ("api_key", 5),
        ("admission", 4),
        ("proxy", 6),
        ("serve", 6),
        ("ops", 7),
        ("fake", 7),
        ("index_listeners", 7),
        ("app", 8),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _)| *m == module)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("module {module} has no layer: add it to the crate map in lib.rs and to LAYERS"))
    }

    /// The top-level modules a file's production code names as `crate::<module>` (comments
    /// and the `#[cfg(test)]` part left out).
    fn imports(source: &str) -> Vec<String> {
        let production = source.split("#[cfg(test)]").next().unwrap_or_default();
        let mut found = Vec::new();
        for line in production.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // `crate::VERSION` and the like are the root's own items, below every layer.
                let module = name.starts_with(|c: char| c.is_ascii_lowercase());
                if module && !found.contains(&name) {
                    found.push(name);
                }
            }
        }
        found
    }

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_module_imports_one_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut wrong = Vec::new();
        for path in all {
            let relative = path.strip_prefix(&src).expect("under src/");
            let top = relative.iter().next().and_then(|c| c.to_str()).unwrap_or_default().trim_end_matches(".rs");
            if matches!(top, "lib" | "main") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("a source file");
            for import in imports(&source) {
                if import != top && layer(&import) >= layer(top) {
                    wrong.push(format!(
                        "{} imports crate::{import} (layer {} from layer {})",
                        relative.display(),
                        layer(&import),
                        layer(top)
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "imports that point up or sideways:\n{}", wrong.join("\n"));
    }

    #[test]
    fn imports_are_read_from_production_code_only() {
        let source = "use crate::body::Body;\n// crate::app in a comment\nfn f() { crate::net::is_loopback_host(\"x\"); }\n#[cfg(test)]\nuse crate::app;\n";
        assert_eq!(imports(source), ["body", "net"]);
    }
}
