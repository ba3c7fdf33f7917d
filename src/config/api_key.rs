//! The rules of `[api_key]`: the managed key's project, roles, name prefix and lease, as
//! pure functions of the values written (the same shape as [`super::rules`]).

use super::ConfigError;
use super::raw::RawApiKey;
use std::time::Duration;

/// Pinecone's API-key roles (FACTS.md, "API keys").
pub const API_KEY_ROLES: [&str; 6] = [
    "ProjectEditor",
    "ProjectViewer",
    "ControlPlaneEditor",
    "ControlPlaneViewer",
    "DataPlaneEditor",
    "DataPlaneViewer",
];

/// The longest `api_key.name_prefix`: with the lease end (10 digits until 2286), the random
/// part and two dashes, a name stays within Pinecone's 80 characters.
pub const MAX_PREFIX: usize = 48;

/// The validated `[api_key]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyConfig {
    pub project_id: String,
    /// Each of [`API_KEY_ROLES`] at most once, in the order written.
    pub roles: Vec<String>,
    pub name_prefix: String,
    pub lifetime: Duration,
    pub rotate_at: f64,
    pub grace: Duration,
    pub max_creates_per_hour: u32,
    pub delete_on_shutdown: bool,
}

type Rule<T> = Result<T, ConfigError>;

/// `[api_key]` as typed values: `None` without `project_id`. `set` names a key of the
/// section that was set, if any: without `project_id` it would do nothing, which is said.
pub(super) fn api_key(raw: &RawApiKey, set: Option<&str>) -> Rule<Option<ApiKeyConfig>> {
    let Some(project_id) = &raw.project_id else {
        return match set {
            None => Ok(None),
            Some(key) => Err(ConfigError::new(
                "api_key.project_id",
                format!("is required once [api_key] is used ({key} is set): the project to mint the managed key in"),
            )),
        };
    };
    if !(1..=3600).contains(&raw.max_creates_per_hour) {
        let n = raw.max_creates_per_hour;
        return Err(ConfigError::new("api_key.max_creates_per_hour", format!("must be between 1 and 3600, got {n}")));
    }
    Ok(Some(ApiKeyConfig {
        project_id: project(project_id).map_err(|p| ConfigError::new("api_key.project_id", p))?,
        roles: roles(&raw.roles).map_err(|p| ConfigError::new("api_key.roles", p))?,
        name_prefix: check_prefix(&raw.name_prefix)
            .map(|()| raw.name_prefix.clone())
            .map_err(|p| ConfigError::new("api_key.name_prefix", p))?,
        lifetime: raw.lifetime,
        rotate_at: raw.rotate_at,
        grace: raw.grace,
        max_creates_per_hour: raw.max_creates_per_hour,
        delete_on_shutdown: raw.delete_on_shutdown,
    }))
    .and_then(|config| lease(raw).map(|()| config))
}

/// A project id: a UUID, as the Admin API writes them (`3fa85f64-5717-4562-b3fc-2c963f66afa6`).
fn project(text: &str) -> Result<String, String> {
    let id = text.trim();
    let groups: Vec<&str> = id.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    if shaped {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "must be a project id, a UUID such as 3fa85f64-5717-4562-b3fc-2c963f66afa6 (list_projects shows them), got {id:?}"
        ))
    }
}

/// One or more of Pinecone's roles, each once; an unknown one is named with the closest.
fn roles(written: &[String]) -> Result<Vec<String>, String> {
    if written.is_empty() {
        return Err(format!("must name at least one role: {}", API_KEY_ROLES.join(", ")));
    }
    let mut roles: Vec<String> = Vec::new();
    for role in written {
        if !API_KEY_ROLES.contains(&role.as_str()) {
            let closest = API_KEY_ROLES.iter().min_by_key(|known| strsim::levenshtein(role, known)).expect("six roles");
            return Err(format!(
                "{role:?} is not an API key role; did you mean {closest}? (one of {})",
                API_KEY_ROLES.join(", ")
            ));
        }
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    Ok(roles)
}

/// Why an `api_key.name_prefix` cannot be used, if it cannot: 1 to [`MAX_PREFIX`]
/// characters of `a-z 0-9 -`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX {
        return Err(format!("must be 1 to {MAX_PREFIX} characters, got {}", prefix.len()));
    }
    match prefix.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        Some(c) => Err(format!("may hold only a-z, 0-9 and -, got {c:?}")),
        None => Ok(()),
    }
}

/// The lease: a lifetime of at least a second, a rotation point inside it, and a rotation
/// cadence that leaves half of `max_creates_per_hour` for replacements and retries (a
/// budget that regular rotations use up would leave a revoked key unreplaced for an hour).
fn lease(raw: &RawApiKey) -> Rule<()> {
    if raw.lifetime < Duration::from_secs(1) {
        return Err(ConfigError::new("api_key.lifetime", "must be at least 1s"));
    }
    if !(raw.rotate_at > 0.0 && raw.rotate_at < 1.0) {
        return Err(ConfigError::new(
            "api_key.rotate_at",
            format!("must be greater than 0 and less than 1 (a fraction of the lease), got {}", raw.rotate_at),
        ));
    }
    let every = raw.lifetime.mul_f64(raw.rotate_at);
    let per_hour = 3600.0 / every.as_secs_f64();
    if per_hour * 2.0 > f64::from(raw.max_creates_per_hour) {
        return Err(ConfigError::new(
            "api_key.lifetime",
            format!(
                "rotating every {} (api_key.lifetime × api_key.rotate_at) mints {per_hour:.1} keys an hour; \
                 api_key.max_creates_per_hour ({}) must be at least twice that, so that replacements and retries fit",
                humantime::format_duration(Duration::from_secs(every.as_secs().max(1))),
                raw.max_creates_per_hour
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawApiKey {
        RawApiKey { project_id: Some("3fa85f64-5717-4562-b3fc-2c963f66afa6".into()), ..RawApiKey::default() }
    }

    fn problem(raw: &RawApiKey) -> (String, String) {
        let e = api_key(raw, None).unwrap_err();
        (e.key, e.problem)
    }

    #[test]
    fn the_defaults_with_a_project_are_a_managed_key() {
        let config = api_key(&raw(), None).unwrap().unwrap();
        assert_eq!(config.roles, ["ControlPlaneViewer", "DataPlaneEditor"]);
        assert_eq!(
            (config.lifetime, config.rotate_at, config.grace),
            (Duration::from_secs(86_400), 0.5, Duration::from_secs(300))
        );
        assert_eq!(api_key(&RawApiKey::default(), None).unwrap(), None, "no project, no key");
    }

    #[test]
    fn a_section_without_its_project_is_an_error_that_names_what_was_set() {
        let e = api_key(&RawApiKey::default(), Some("api_key.roles")).unwrap_err();
        assert_eq!(e.key, "api_key.project_id");
        assert!(e.problem.contains("api_key.roles is set"), "{}", e.problem);
    }

    #[test]
    fn bad_values_name_their_key_and_what_is_wrong() {
        let cases: Vec<(RawApiKey, &str, &str)> = vec![
            (RawApiKey { project_id: Some("demo-project".into()), ..raw() }, "api_key.project_id", "UUID"),
            (
                RawApiKey { project_id: Some("3fa85f64-5717-4562-b3fc-2c963f66afaZ".into()), ..raw() },
                "api_key.project_id",
                "UUID",
            ),
            (
                RawApiKey { roles: vec!["DataPlaneEditr".into()], ..raw() },
                "api_key.roles",
                "did you mean DataPlaneEditor?",
            ),
            (
                RawApiKey { roles: vec!["controlplaneviewer".into()], ..raw() },
                "api_key.roles",
                "did you mean ControlPlaneViewer?",
            ),
            (RawApiKey { roles: vec![], ..raw() }, "api_key.roles", "at least one"),
            (RawApiKey { name_prefix: "My_App".into(), ..raw() }, "api_key.name_prefix", "'M'"),
            (RawApiKey { name_prefix: "a".repeat(49), ..raw() }, "api_key.name_prefix", "1 to 48"),
            (RawApiKey { name_prefix: String::new(), ..raw() }, "api_key.name_prefix", "1 to 48"),
            (RawApiKey { rotate_at: 1.0, ..raw() }, "api_key.rotate_at", "less than 1"),
            (RawApiKey { lifetime: Duration::ZERO, ..raw() }, "api_key.lifetime", "at least 1s"),
            (RawApiKey { lifetime: Duration::from_secs(600), ..raw() }, "api_key.lifetime", "12.0 keys an hour"),
            (RawApiKey { max_creates_per_hour: 0, ..raw() }, "api_key.max_creates_per_hour", "between 1 and 3600"),
        ];
        for (raw, key, text) in cases {
            let (k, p) = problem(&raw);
            assert_eq!(k, key, "{p}");
            assert!(p.contains(text), "{key}: {p}");
        }
    }

    #[test]
    fn roles_are_kept_once_in_the_order_written() {
        let roles = vec!["DataPlaneViewer".into(), "ProjectViewer".into(), "DataPlaneViewer".into()];
        let config = api_key(&RawApiKey { roles, ..raw() }, None).unwrap().unwrap();
        assert_eq!(config.roles, ["DataPlaneViewer", "ProjectViewer"]);
    }

    #[test]
    fn a_prefix_is_short_and_plain() {
        assert_eq!(check_prefix("pinecone-admin-proxy"), Ok(()));
        assert_eq!(check_prefix(&"a".repeat(MAX_PREFIX)), Ok(()));
        assert!(check_prefix("proxy.prod").unwrap_err().contains("'.'"));
    }
}
