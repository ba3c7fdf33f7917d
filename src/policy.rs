//! What this application may do: the `[policy]` that narrows an organization-wide service
//! account to some of the Admin API's operations, in some projects (PRODUCT.md, "Policy").
//! Operations are named by [`crate::routes`].
//!
//! [`Policy::decide`] is a pure function of the policy and a resolved request; the one
//! decision that needs the network (an API key's project, looked up by id) is handed back to
//! [`crate::proxy`] as [`Decision::KeyProject`], and finished by [`Policy::decide_key`].

use crate::routes::{Plane, ROUTES, Resolved, Route, Segment, UNKNOWN, operation_names, plain, resolve};
use http::Method;

/// The policy's shorthands: every GET, every documented operation, undocumented routes.
const READ_ONLY: &str = "read_only";
const EVERYTHING: &str = "*";

/// Whether an operation is limited by `policy.projects`: its path names a project, or an
/// API key (whose project is looked up).
fn project_scoped(route: &Route) -> bool {
    route.segments.iter().any(|s| matches!(s, Segment::Param("project_id" | "api_key_id")))
}

/// The operations a policy entry names, as a set of route indices, and whether it names
/// the undocumented routes.
fn entry_set(entry: &str) -> Option<(u128, bool)> {
    let set = |keep: &dyn Fn(&Route) -> bool| {
        ROUTES.iter().enumerate().filter(|(_, r)| keep(r)).fold(0u128, |set, (i, _)| set | (1 << i))
    };
    match entry {
        EVERYTHING => Some((set(&|_| true), false)),
        READ_ONLY => Some((set(&|r| r.method == Method::GET), false)),
        UNKNOWN => Some((0, true)),
        name => {
            let named = set(&|r| r.operation == name || r.aliases.contains(&name));
            (named != 0).then_some((named, false))
        }
    }
}

/// The known name closest to an unknown one, for the error message.
fn closest(name: &str) -> &'static str {
    operation_names()
        .chain([READ_ONLY, EVERYTHING, UNKNOWN])
        .min_by_key(|known| strsim::levenshtein(name, known))
        .expect("there are operations")
}

/// Why a policy entry is not valid.
pub(crate) fn check_entry(entry: &str) -> Result<(), String> {
    match entry_set(entry) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{entry:?} is not a Pinecone API operation; did you mean {:?}? (names are the operationIds of the \
             Admin API's, the control plane's and the data plane's OpenAPI specifications, or \"read_only\", \"*\", \"unknown\")",
            closest(entry)
        )),
    }
}

/// One list of a policy, with the entry that put each route in.
#[derive(Debug, Clone, Default)]
struct Entries {
    entries: Vec<(String, u128, bool)>,
}

impl Entries {
    fn new(names: &[String]) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            check_entry(name)?;
            let (set, unknown) = entry_set(name).expect("checked");
            entries.push((name.clone(), set, unknown));
        }
        Ok(Self { entries })
    }

    /// The entry that holds this route (`None`: an undocumented route).
    fn find(&self, route: Option<usize>) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, set, unknown)| match route {
                Some(i) => set & (1 << i) != 0,
                None => *unknown,
            })
            .map(|(name, _, _)| name.as_str())
    }
}

/// The validated `[policy]`.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Entries,
    deny: Entries,
    /// `None`: every project.
    projects: Option<Vec<String>>,
}

/// Why an allowed request was allowed: the entry of `policy.allow`, and what `projects`
/// said. Borrowed from the policy, so that deciding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowed<'p> {
    entry: &'p str,
    scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// No `projects`, or an operation that is not project-scoped.
    Any,
    /// The path's `project_id` is in `projects`.
    Project,
    /// The API key's project (looked up) is in `projects`.
    KeyProject,
}

impl std::fmt::Display for Allowed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "allowed by policy.allow ({:?})", self.entry)?;
        match self.scope {
            Scope::Any => Ok(()),
            Scope::Project => f.write_str(", its project in policy.projects"),
            Scope::KeyProject => f.write_str(", the API key's project in policy.projects"),
        }
    }
}

/// What the policy says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision<'p> {
    /// Forward it.
    Allowed(Allowed<'p>),
    /// Refuse it; the rule, for the error message (it names the operation).
    Refused(String),
    /// An operation on an API key by id (`api_key_id`), with `policy.projects` set: allowed
    /// if the key's project is one of them; [`Policy::decide_key`] finishes it.
    KeyProject(Allowed<'p>),
}

impl Policy {
    /// `Err((key, problem))` names the list with the bad entry.
    pub fn new(allow: &[String], deny: &[String], projects: &[String]) -> Result<Self, (&'static str, String)> {
        let allow = Entries::new(allow).map_err(|p| ("policy.allow", p))?;
        let deny = Entries::new(deny).map_err(|p| ("policy.deny", p))?;
        if let Some(bad) = projects.iter().find(|p| !plain(p)) {
            return Err((
                "policy.projects",
                format!("{bad:?} is not a project id (letters, digits and -._~:@, as in a path)"),
            ));
        }
        let projects = (!projects.is_empty()).then(|| projects.to_vec());
        Ok(Self { allow, deny, projects })
    }

    /// The decision for a request, as far as it can be made without the network.
    pub(crate) fn decide(&self, resolved: &Resolved<'_>) -> Decision<'_> {
        let op = resolved.operation();
        if let Some(why) = resolved.ambiguous() {
            return Decision::Refused(format!(
                "the request cannot be matched to an Admin API operation: {why}; a policy forwards only \
                 requests whose route it can tell"
            ));
        }
        let index = resolved.index();
        if let Some(entry) = self.deny.find(index) {
            return Decision::Refused(format!("{op} is denied by policy.deny ({entry:?})"));
        }
        let Some(entry) = self.allow.find(index) else {
            return Decision::Refused(match resolved.route() {
                Some(_) => format!("{op} is not in policy.allow"),
                None => "the route is not an Admin API operation (unknown), and policy.allow has no \"unknown\"".into(),
            });
        };
        let allowed = |scope| Allowed { entry, scope };
        let (Some(projects), Some(route)) = (&self.projects, resolved.route()) else {
            return Decision::Allowed(allowed(Scope::Any));
        };
        if !project_scoped(route) {
            return Decision::Allowed(allowed(Scope::Any));
        }
        if let Some(project) = resolved.param("project_id") {
            return match projects.iter().any(|p| p == project) {
                true => Decision::Allowed(allowed(Scope::Project)),
                false => Decision::Refused(format!("{op} in project {project}, which is not in policy.projects")),
            };
        }
        Decision::KeyProject(allowed(Scope::KeyProject))
    }

    /// Finishes a [`Decision::KeyProject`]: `project` is the key's project, or why it could
    /// not be had (which refuses: a failed lookup never allows).
    pub(crate) fn decide_key<'p>(
        &self,
        resolved: &Resolved<'_>,
        allowed: Allowed<'p>,
        project: Result<&str, &str>,
    ) -> Decision<'p> {
        let op = resolved.operation();
        let key = resolved.param("api_key_id").unwrap_or_default();
        let projects = self.projects.as_deref().unwrap_or_default();
        match project {
            Ok(project) if projects.iter().any(|p| p == project) => Decision::Allowed(allowed),
            // The key's project is not named: the application may not learn which project
            // a key it may not use belongs to.
            Ok(_) => {
                Decision::Refused(format!("{op} on API key {key}: the key is not in a project of policy.projects"))
            }
            Err(why) => Decision::Refused(format!(
                "{op} on API key {key}: the key's project could not be looked up ({why}); policy.projects \
                 allows it only for keys of its projects"
            )),
        }
    }

    /// The projects an API key must belong to, for `policy-check`'s explanation.
    pub fn projects(&self) -> &[String] {
        self.projects.as_deref().unwrap_or_default()
    }

    /// Lines for `check-config`: what the policy allows, which operations `policy.projects`
    /// narrows, and which it cannot (organization-level objects).
    pub fn describe(&self) -> Vec<String> {
        let allowed: Vec<&Route> = ROUTES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.allow.find(Some(*i)).is_some() && self.deny.find(Some(*i)).is_none())
            .map(|(_, r)| r)
            .collect();
        let names = |scoped: bool| {
            let mut v: Vec<&str> =
                allowed.iter().filter(|r| project_scoped(r) == scoped).map(|r| r.operation).collect();
            v.sort_unstable();
            v.dedup();
            if v.is_empty() { "none".to_owned() } else { v.join(", ") }
        };
        let mut lines = vec![format!("policy: {} of {} operations allowed", allowed.len(), ROUTES.len())];
        match &self.projects {
            Some(projects) => {
                lines.push(format!("policy: only in projects {}: {}", projects.join(", "), names(true)));
                lines.push(format!(
                    "policy: not project-scoped (organization-level objects; policy.projects cannot narrow them, \
                     allow/deny alone decide): {}",
                    names(false)
                ));
            }
            None => {
                let mut all: Vec<&str> = allowed.iter().map(|r| r.operation).collect();
                all.sort_unstable();
                lines.push(format!(
                    "policy: in every project: {}",
                    if all.is_empty() { "none".into() } else { all.join(", ") }
                ));
            }
        }
        let unknown = self.allow.find(None).is_some() && self.deny.find(None).is_none();
        lines.push(format!("policy: undocumented routes (unknown): {}", if unknown { "forwarded" } else { "refused" }));
        lines
    }
}

/// What `policy-check` prints, and whether the request would be forwarded.
#[derive(Debug)]
pub struct Explained {
    pub lines: Vec<String>,
    pub allowed: bool,
}

/// `policy-check METHOD PATH`: the operation, its path parameters, the decision and the
/// rule that made it. An operation on an API key by id, with `projects` set, is allowed
/// subject to the key's project, which only the running proxy can look up.
pub fn explain(policy: Option<&Policy>, method: &Method, path: &str) -> Explained {
    let resolved = resolve(method, path);
    let mut lines = vec![match resolved.route() {
        Some(route) => format!("operation: {} ({} {})", route.operation, route.method, route.template),
        None => format!("operation: {UNKNOWN} (no documented route is {method} {path})"),
    }];
    match resolved.route().map(|r| r.plane) {
        Some(Plane::Control) => lines.push(
            "plane: control plane (a project API key in Api-Key: the proxy's managed key with [api_key], else the client's own; never the bearer token)".into(),
        ),
        Some(Plane::Data) => lines.push(
            "plane: data plane (served on each index's own host: through an [indexes] listener, with the proxy's managed key)".into(),
        ),
        _ => {}
    }
    if resolved.params().next().is_some() {
        lines.push(format!("path parameters: {}", resolved.params_text()));
    }
    let Some(policy) = policy else {
        lines.push("decision: allowed".into());
        lines.push("rule: no [policy] is set: every request is forwarded".into());
        return Explained { lines, allowed: true };
    };
    let allowed = match policy.decide(&resolved) {
        Decision::Allowed(allowed) => {
            lines.push("decision: allowed".into());
            lines.push(format!("rule: {allowed}"));
            true
        }
        Decision::Refused(why) => {
            lines.push("decision: refused (403 forbidden_by_policy)".into());
            lines.push(format!("rule: {why}"));
            false
        }
        Decision::KeyProject(allowed) => {
            lines.push(format!(
                "decision: allowed if the API key belongs to one of policy.projects ({}); the proxy looks its \
                 project up with fetch_api_key at the first request for it, and refuses if that fails",
                policy.projects().join(", ")
            ));
            lines.push(format!("rule: {allowed}"));
            true
        }
    };
    Explained { lines, allowed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], projects: &[&str]) -> Policy {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy::new(&v(allow), &v(deny), &v(projects)).unwrap()
    }

    fn refused(d: Decision<'_>) -> String {
        match d {
            Decision::Refused(why) => why,
            other => panic!("allowed: {other:?}"),
        }
    }

    fn allowed(d: Decision<'_>) -> String {
        match d {
            Decision::Allowed(a) => a.to_string(),
            other => panic!("not allowed: {other:?}"),
        }
    }

    #[test]
    fn decisions_name_their_rule() {
        let p = policy(&["read_only", "create_api_key"], &["fetch_organization"], &["p-1"]);
        let d = |m: Method, path: &str| p.decide(&resolve(&m, path));
        assert_eq!(allowed(d(Method::GET, "/admin/projects")), "allowed by policy.allow (\"read_only\")");
        assert_eq!(
            allowed(d(Method::POST, "/admin/projects/p-1/api-keys")),
            "allowed by policy.allow (\"create_api_key\"), its project in policy.projects"
        );
        assert_eq!(
            refused(d(Method::POST, "/admin/projects/p-2/api-keys")),
            "create_api_key in project p-2, which is not in policy.projects"
        );
        assert_eq!(refused(d(Method::DELETE, "/admin/projects/p-1")), "delete_project is not in policy.allow");
        assert_eq!(
            refused(d(Method::GET, "/admin/organizations/o-1")),
            "fetch_organization is denied by policy.deny (\"fetch_organization\")",
            "deny wins over allow"
        );
        assert!(refused(d(Method::GET, "/v1/whatever")).contains("(unknown), and policy.allow has no \"unknown\""));
        assert!(
            matches!(d(Method::GET, "/admin/service-accounts"), Decision::Allowed(a) if a.scope == Scope::Any),
            "organization-level objects are not project-scoped"
        );
        assert!(matches!(d(Method::GET, "/admin/api-keys/k-1"), Decision::KeyProject(_)));

        let p = policy(&["*", "unknown"], &[], &[]);
        assert!(matches!(p.decide(&resolve(&Method::GET, "/v1/whatever")), Decision::Allowed(_)));
        assert!(
            matches!(p.decide(&resolve(&Method::GET, "/admin/api-keys/k-1")), Decision::Allowed(_)),
            "no projects: no lookup"
        );
        assert!(
            refused(p.decide(&resolve(&Method::DELETE, "/admin/projects/p-1/../p-2"))).contains("dot segment"),
            "an ambiguous path is refused even with unknown allowed"
        );
        let p = policy(&["*"], &["unknown", "delete_project"], &[]);
        assert!(refused(p.decide(&resolve(&Method::GET, "/v1/x"))).contains("denied by policy.deny (\"unknown\")"));
        assert!(matches!(p.decide(&resolve(&Method::DELETE, "/admin/api-keys/k")), Decision::Allowed(_)));
    }

    #[test]
    fn an_api_key_decision_follows_its_looked_up_project() {
        let p = policy(&["delete_api_key"], &[], &["p-1", "p-3"]);
        let r = resolve(&Method::DELETE, "/admin/api-keys/k-7");
        let Decision::KeyProject(a) = p.decide(&r) else { panic!("a lookup is needed") };
        assert_eq!(
            allowed(p.decide_key(&r, a, Ok("p-3"))),
            "allowed by policy.allow (\"delete_api_key\"), the API key's project in policy.projects"
        );
        assert_eq!(
            refused(p.decide_key(&r, a, Ok("p-2"))),
            "delete_api_key on API key k-7: the key is not in a project of policy.projects",
            "the project of a key the application may not use is not named"
        );
        assert!(refused(p.decide_key(&r, a, Err("404"))).contains("could not be looked up (404)"));
    }

    #[test]
    fn an_old_name_is_an_alias() {
        let p = policy(&["list_api_keys"], &[], &[]);
        assert!(matches!(p.decide(&resolve(&Method::GET, "/admin/projects/p/api-keys")), Decision::Allowed(_)));
    }

    #[test]
    fn unknown_names_are_refused_with_the_closest_known_one() {
        let e = Policy::new(&["crate_api_key".into()], &[], &[]).unwrap_err();
        assert_eq!(e.0, "policy.allow");
        assert!(e.1.contains("did you mean \"create_api_key\""), "{}", e.1);
        let e = Policy::new(&[], &["read_onyl".into()], &[]).unwrap_err();
        assert_eq!(e.0, "policy.deny");
        assert!(e.1.contains("did you mean \"read_only\""), "{}", e.1);
        assert_eq!(Policy::new(&[], &[], &["a/b".into()]).unwrap_err().0, "policy.projects");
    }

    #[test]
    fn control_plane_operations_are_named_in_a_policy() {
        let p = policy(&["list_indexes", "describe_index"], &[], &[]);
        assert!(allowed(p.decide(&resolve(&Method::GET, "/indexes"))).contains("list_indexes"));
        assert!(refused(p.decide(&resolve(&Method::POST, "/indexes"))).contains("create_index is not in policy.allow"));
        let read_only = policy(&["read_only"], &[], &[]);
        assert!(matches!(read_only.decide(&resolve(&Method::GET, "/indexes/docs")), Decision::Allowed(_)));
        assert!(matches!(read_only.decide(&resolve(&Method::DELETE, "/indexes/docs")), Decision::Refused(_)));
        let e = Policy::new(&["list_indexs".into()], &[], &[]).unwrap_err();
        assert!(e.1.contains("did you mean \"list_indexes\""), "{}", e.1);
        let explained = explain(Some(&p), &Method::GET, "/indexes").lines.join("\n");
        assert!(explained.contains("plane: control plane"), "{explained}");
        let admin = explain(Some(&p), &Method::GET, "/admin/projects").lines.join("\n");
        assert!(!admin.contains("plane:"), "{admin}");
    }

    #[test]
    fn check_config_says_what_projects_cannot_narrow() {
        let lines = policy(&["list_projects", "create_api_key", "list_service_accounts"], &[], &["p-1"]).describe();
        assert_eq!(lines[0], format!("policy: 3 of {} operations allowed", ROUTES.len()));
        assert_eq!(lines[1], "policy: only in projects p-1: create_api_key");
        assert!(lines[2].ends_with(": list_projects, list_service_accounts"), "{}", lines[2]);
        assert_eq!(lines[3], "policy: undocumented routes (unknown): refused");
    }
}
