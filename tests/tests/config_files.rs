//! Every file under `config/` is valid: the example configuration loads and documents
//! every key with its default.

use pinecone_admin_proxy::config::{self, Env, Flags};
use std::path::Path;

fn creds() -> Env {
    let mut env = Env::default();
    env.set("PINECONE_CLIENT_ID", "id").set("PINECONE_CLIENT_SECRET", "s");
    env
}

fn values(c: &config::Config) -> Vec<(String, String)> {
    c.describe().into_iter().map(|(k, v, _)| (k, v)).collect()
}

/// The example shows each key's default as a line `#key = value` (no space after `#`).
/// Uncommented, those lines must load and give exactly the built-in defaults.
#[test]
fn the_example_configuration_documents_every_key_with_its_true_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pinecone-admin-proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let flags = Flags { config: Some(path.clone()), ..Flags::default() };
    config::load(&flags, &creds()).expect("the example configuration loads as it is");

    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic()) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
        // [api_key]'s keys need its project: the example's.
        .replace("# project_id = ", "project_id = ");
    let dir = tempfile::tempdir().unwrap();
    let defaults_file = dir.path().join("defaults.toml");
    std::fs::write(&defaults_file, &uncommented).unwrap();
    let flags = Flags { config: Some(defaults_file), ..Flags::default() };
    let documented = config::load(&flags, &creds()).expect("the documented defaults load");
    let defaults = config::load(&Flags::default(), &creds()).unwrap();
    let without_project =
        |c: &config::Config| values(c).into_iter().filter(|(k, _)| k != "api_key.project_id").collect::<Vec<_>>();
    assert_eq!(without_project(&documented), without_project(&defaults), "the documented defaults are the real ones");
    let set: Vec<&str> = documented.origins.keys().map(String::as_str).collect();
    for (key, _, _) in defaults.describe() {
        // Keys without a default are documented as examples instead.
        if key.starts_with("credentials.")
            || key.starts_with("policy.")
            || key == "PINECONE_CLIENT_SECRET"
            || key == "upstream.ca_file"
            || key.starts_with("token.shared_cache")
            || key == "api_key.project_id"
        {
            continue;
        }
        assert!(set.contains(&key.as_str()), "{key} has no `#key = default` line in {}", path.display());
    }
    for key in [
        "client_id",
        "client_id_file",
        "client_secret_file",
        "PINECONE_CLIENT_SECRET",
        "ca_file",
        "# allow = ",
        "# deny = ",
        "# projects = ",
        "# shared_cache = ",
        "# shared_cache_file = ",
        "# shared_cache_ca_file = ",
        "# project_id = ",
    ] {
        assert!(text.contains(key), "{key} is not documented");
    }
}

#[test]
fn every_config_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in walk(&dir) {
        let text = std::fs::read_to_string(&entry).unwrap();
        match entry.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                text.parse::<toml::Table>().unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
            }
            _ => assert!(!text.is_empty(), "{} is empty", entry.display()),
        }
        checked += 1;
    }
    assert!(checked >= 1);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

/// No Docker engine runs where the tests do, so the image's build context is checked here:
/// every input of `cargo build` (the manifest, the lock, build.rs and what it reads, the
/// sources) is let in by `.dockerignore` and copied by the Dockerfile.
#[test]
fn the_docker_build_gets_every_input_of_the_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for input in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "spec"] {
        assert!(root.join(input).exists(), "{input}");
        assert!(copied.contains(&input), "the Dockerfile does not COPY {input}");
        let unignored = ignore.lines().any(|l| l.trim_end_matches('/') == format!("!{input}"));
        assert!(unignored, ".dockerignore keeps {input} out of the build context");
    }
    let build_rs = std::fs::read_to_string(root.join("build.rs")).unwrap();
    assert!(build_rs.contains("\"spec/pinecone\""), "build.rs reads something else than spec/: check the Docker build");
}

/// The systemd unit's word on how many connections fit its `LimitNOFILE` is the proxy's
/// own arithmetic, and it tells restart, not reload, for a new secret (as the README does).
#[test]
fn the_systemd_unit_says_what_the_proxy_does() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd/pinecone-admin-proxy.service"),
    )
    .unwrap();
    let limit: u64 = unit.lines().find_map(|l| l.strip_prefix("LimitNOFILE=")).unwrap().parse().unwrap();
    let kept = pinecone_admin_proxy::app::RESERVED_FILES + u64::from(config::RawUpstream::default().max_connections);
    assert!(
        unit.contains(&format!("keeps\n# {kept} for")) || unit.contains(&format!("keeps {kept} for")),
        "{kept} in the comment"
    );
    assert!(unit.contains(&format!("LimitNOFILE - {kept} = {}", limit - kept)), "the sum in the comment");
    assert!(unit.contains("systemctl restart pinecone-admin-proxy"));
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains("`systemctl restart\npinecone-admin-proxy`")
            || readme.contains("`systemctl restart pinecone-admin-proxy`")
    );
}

/// The README's configuration table names, for each key it lists, the environment variable
/// that sets it (`PINECONE_PROXY_<SECTION>_<KEY>` or the SDKs' name), and every key of the
/// configuration is in it (`limits.*` standing for its section).
#[test]
fn the_readmes_key_table_names_every_keys_variable() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("| key | env | default |").expect("the key table");
    let table = &readme[start..readme[start..].find("\n\n").map_or(readme.len(), |n| start + n)];
    let mut listed = Vec::new();
    for row in table.lines().skip(2) {
        let cells: Vec<&str> = row.split(" | ").collect();
        for key in cells[0].split('`').skip(1).step_by(2).filter(|k| !k.contains('*')) {
            if let Some((section, _)) = key.split_once(".<") {
                // A map section (`indexes.<name>`): one variable for all its entries.
                assert!(config::MAP_SECTIONS.contains(&section), "{key}");
                assert!(cells[1].contains(&config::map_env_name(section)), "{key}: {row}");
                continue;
            }
            let names: Vec<String> = std::iter::once(config::env_name(key))
                .chain(config::ENV_ALIASES.iter().filter(|(k, _)| *k == key).map(|(_, n)| (*n).to_owned()))
                .collect();
            assert!(names.iter().any(|n| cells[1].contains(n.as_str())), "{key}: none of {names:?} in {row}");
            listed.push(key.to_owned());
        }
    }
    let raw = serde_json::to_value(config::RawConfig::default()).unwrap();
    for (section, value) in raw.as_object().unwrap() {
        let keys: Vec<String> = match value.as_object() {
            Some(fields) => fields.keys().map(|k| format!("{section}.{k}")).collect(),
            None => vec![section.clone()],
        };
        for key in keys.iter().filter(|k| !k.starts_with("limits.")) {
            assert!(listed.contains(key), "{key} is not in the README's key table");
        }
    }
}
