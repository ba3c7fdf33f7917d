//! The route table of `api.pinecone.io`, made by `build.rs` from the OpenAPI specifications
//! (every published version, in `spec/pinecone/`): the Admin API's routes and the control
//! plane's (indexes, collections, backups, inference, assistants), each with its [`Plane`].
//! [`resolve`] names a request's operation (or `unknown`) and its path parameters: a scan
//! of the routes with the path's number of segments, on a path split once. A path that a server could normalise into another
//! route (`..`, `%2F`, an empty segment, a letter-case variant) is marked ambiguous.

use http::Method;

/// One segment of a route's path template.
#[derive(Debug)]
pub(crate) enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

/// Which credential a route takes, and where it is served: the Admin API a service
/// account's bearer token, the control plane a project API key (FACTS.md), both on
/// `api.pinecone.io`; the data plane a project API key on each index's own host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plane {
    Admin,
    Control,
    Data,
}

/// A documented route: method and path template, and its operation.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) template: &'static str,
    pub(crate) segments: &'static [Segment],
    /// The `operationId` of the newest specification that has the route.
    pub(crate) operation: &'static str,
    /// What older specifications called it.
    pub(crate) aliases: &'static [&'static str],
    pub(crate) plane: Plane,
}

include!(concat!(env!("OUT_DIR"), "/routes.rs"));

/// The data plane's operations that read with a POST (a query has a body): they change
/// nothing, so they get no audit line, as a GET gets none.
pub(crate) const READS_BY_POST: [&str; 4] =
    ["queryVectors", "describeIndexStats", "fetch_vectors_by_metadata", "searchRecordsNamespace"];

/// The operation of a request that matches no documented route.
pub(crate) const UNKNOWN: &str = "unknown";

/// The longest template has four segments; a path of more is undocumented.
const MAX_SEGMENTS: usize = 8;
const _: () = assert!(BY_SEGMENTS.len() == MAX_SEGMENTS + 1);
const MAX_PARAMS: usize = 2;
const _: () = assert!(ROUTES.len() <= 128, "an operation set is a u128");

/// The methods of the route table; a case variant of one (`delete`) is ambiguous, since
/// a server may treat it as the method.
const METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH"];

/// Where a request stands in the route table: its route (if documented) and path parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved<'a> {
    route: Option<(usize, &'static Route)>,
    params: [Option<(&'static str, &'a str)>; MAX_PARAMS],
    /// Why the path or method could mean another route to a server that normalises it
    /// (`..`, `%2F`, an empty segment): a policy refuses such a request, even with
    /// `unknown` allowed, since its route cannot be told.
    ambiguous: Option<&'static str>,
}

impl<'a> Resolved<'a> {
    /// The operation's name: the `operationId`, or `unknown`.
    pub(crate) fn operation(&self) -> &'static str {
        self.route.map_or(UNKNOWN, |(_, r)| r.operation)
    }

    /// The documented route's index in [`ROUTES`], if any.
    pub(crate) fn index(&self) -> Option<usize> {
        self.route.map(|(i, _)| i)
    }

    /// Why the request could mean another route to a server that normalises it, if it could.
    pub(crate) fn ambiguous(&self) -> Option<&'static str> {
        self.ambiguous
    }

    /// The documented route, if any.
    pub(crate) fn route(&self) -> Option<&'static Route> {
        self.route.map(|(_, r)| r)
    }

    /// The path parameters, in the order of the template.
    pub(crate) fn params(&self) -> impl Iterator<Item = (&'static str, &'a str)> + '_ {
        self.params.iter().flatten().copied()
    }

    pub(crate) fn param(&self, name: &str) -> Option<&'a str> {
        self.params().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// `project_id=…,api_key_id=…` (for the audit line; the values are plain segments).
    pub(crate) fn params_text(&self) -> String {
        let mut text = String::new();
        for (name, value) in self.params() {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(name);
            text.push('=');
            text.push_str(value);
        }
        text
    }
}

/// The bytes of a plain path segment: what Admin API ids and literals are made of.
/// Anything else (a percent-encoding, `;` parameters, `\\`) may be decoded or normalised by
/// a server into another route than the one judged.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~' | b':' | b'@');
        b += 1;
    }
    table
};

/// Whether a path segment is plain: [`PLAIN`] bytes, and not a dot segment.
pub(crate) fn plain(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && segment.bytes().all(|b| PLAIN[b as usize])
}

/// The route of `method` and `path` (a request's path, without its query).
pub(crate) fn resolve<'a>(method: &Method, path: &'a str) -> Resolved<'a> {
    let unknown = |ambiguous| Resolved { route: None, params: [None; MAX_PARAMS], ambiguous };
    if let Some(grpc) = grpc_route(method, path) {
        return grpc;
    }
    let Some(rest) = path.strip_prefix('/') else { return unknown(Some("the path does not start with /")) };
    // One pass over the bytes: each checked, the segments cut at each `/`.
    let mut segments = [""; MAX_SEGMENTS];
    let mut n = 0;
    let mut start = 0;
    let bytes = rest.as_bytes();
    for i in 0..=bytes.len() {
        if i < bytes.len() && bytes[i] != b'/' {
            if !PLAIN[bytes[i] as usize] {
                return unknown(Some(
                    "a path segment has a character other than letters, digits and -._~:@ (a percent-encoding?)",
                ));
            }
            continue;
        }
        let segment = &rest[start..i];
        start = i + 1;
        if matches!(segment, "" | "." | "..") {
            // `/` alone is the root: undocumented, but not ambiguous.
            return unknown((path != "/").then_some(match segment {
                "" => "the path has an empty segment (// or a trailing /)",
                _ => "the path has a dot segment",
            }));
        }
        if n == MAX_SEGMENTS {
            return unknown(None);
        }
        segments[n] = segment;
        n += 1;
    }
    let segments = &segments[..n];
    // A HEAD is the GET of its path without the body (RFC 9110 §9.3.2): judged as that GET.
    let method = if *method == Method::HEAD { &Method::GET } else { method };
    let candidates = BY_SEGMENTS[n].clone();
    'routes: for (index, route) in ROUTES.iter().enumerate().skip(candidates.start).take(candidates.len()) {
        if route.method != *method {
            continue;
        }
        let mut params = [None; MAX_PARAMS];
        let mut k = 0;
        for (template, segment) in route.segments.iter().zip(segments) {
            match template {
                Segment::Literal(literal) if literal == segment => {}
                Segment::Param(name) if k < MAX_PARAMS => {
                    params[k] = Some((*name, *segment));
                    k += 1;
                }
                _ => continue 'routes,
            }
        }
        return Resolved { route: Some((index, route)), params, ambiguous: None };
    }
    // Off the path of documented requests: an extension method that is a standard one in
    // another case, or a documented route in other letter case (`/Admin/Projects`), which
    // a case-insensitive server would take for that route.
    let variant =
        !METHODS.contains(&method.as_str()) && METHODS.iter().any(|m| m.eq_ignore_ascii_case(method.as_str()));
    if variant {
        return unknown(Some("the method is a case variant of a standard one"));
    }
    let routes = &ROUTES[candidates];
    let case_variant = routes.iter().any(|route| route.method == *method && same_but_for_case(route, segments));
    unknown(case_variant.then_some("the path differs from a documented route only in letter case"))
}

/// A gRPC call of the data plane (`POST /VectorService/Query`): the REST operation its
/// `google.api.http` annotation names.
fn grpc_route<'a>(method: &Method, path: &str) -> Option<Resolved<'a>> {
    if *method != Method::POST || !path.starts_with("/VectorService/") {
        return None;
    }
    let (_, index) = GRPC.iter().find(|(grpc, _)| *grpc == path)?;
    Some(Resolved { route: Some((*index, &ROUTES[*index])), params: [None; MAX_PARAMS], ambiguous: None })
}

/// Whether `segments` match the route's template when letter case is ignored.
fn same_but_for_case(route: &Route, segments: &[&str]) -> bool {
    route.segments.iter().zip(segments).all(|(template, segment)| match template {
        Segment::Literal(literal) => literal.eq_ignore_ascii_case(segment),
        Segment::Param(_) => true,
    })
}

/// Every operation name the policy accepts: the routes' names and their aliases.
pub(crate) fn operation_names() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().flat_map(|r| std::iter::once(r.operation).chain(r.aliases.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_routes_resolve_with_their_plane() {
        for (method, path, operation, plane) in [
            (Method::GET, "/indexes", "list_indexes", Plane::Control),
            (Method::POST, "/indexes", "create_index", Plane::Control),
            (Method::GET, "/indexes/docs", "describe_index", Plane::Control),
            (Method::DELETE, "/indexes/docs", "delete_index", Plane::Control),
            (Method::POST, "/embed", "embed", Plane::Control),
            (Method::GET, "/assistant/assistants", "list_assistants", Plane::Control),
            (Method::GET, "/assistant/assistants/helper", "get_assistant", Plane::Control),
            (Method::GET, "/admin/projects", "list_projects", Plane::Admin),
            (Method::POST, "/vectors/upsert", "upsertVectors", Plane::Data),
            (Method::POST, "/query", "queryVectors", Plane::Data),
            (Method::GET, "/vectors/fetch", "fetchVectors", Plane::Data),
            (Method::POST, "/describe_index_stats", "describeIndexStats", Plane::Data),
            (Method::POST, "/records/namespaces/books/upsert", "upsertRecordsNamespace", Plane::Data),
            // A gRPC method counts as the REST operation its google.api.http annotation names.
            (Method::POST, "/VectorService/Query", "queryVectors", Plane::Data),
            (Method::POST, "/VectorService/Upsert", "upsertVectors", Plane::Data),
            (Method::POST, "/VectorService/DescribeIndexStats", "describeIndexStats", Plane::Data),
            (Method::POST, "/VectorService/ListNamespaces", "listNamespacesOperation", Plane::Data),
        ] {
            let r = resolve(&method, path);
            assert_eq!(r.operation(), operation, "{method} {path}");
            assert_eq!(r.route().map(|r| r.plane), Some(plane), "{method} {path}");
        }
        assert_eq!(resolve(&Method::GET, "/indexes/docs").param("index_name"), Some("docs"));
        // Assistants live under /assistant only: the bare path is not a route.
        assert_eq!(resolve(&Method::GET, "/assistants").operation(), UNKNOWN);
    }

    #[test]
    fn routes_resolve_with_their_parameters() {
        let r = resolve(&Method::GET, "/admin/projects/p-1/api-keys");
        assert_eq!(r.operation(), "list_project_api_keys");
        assert_eq!(r.params().collect::<Vec<_>>(), [("project_id", "p-1")]);
        assert_eq!(r.params_text(), "project_id=p-1");
        assert_eq!(resolve(&Method::DELETE, "/admin/api-keys/k-9").param("api_key_id"), Some("k-9"));
        assert_eq!(resolve(&Method::HEAD, "/admin/projects").operation(), "list_projects", "HEAD is GET");
        for (method, path, ambiguous) in [
            (Method::GET, "/", false),
            (Method::PUT, "/admin/projects", false),
            (Method::GET, "/admin/nothing", false),
            (Method::GET, "/a/b/c/d/e/f/g/h/i/j", false),
            (Method::from_bytes(b"PROPFIND").unwrap(), "/admin/projects", false),
            (Method::GET, "/admin/projects/", true),
            (Method::GET, "/admin/projects//api-keys", true),
            (Method::GET, "admin/projects", true),
            (Method::DELETE, "/admin/projects/p-1/../p-2", true),
            (Method::DELETE, "/admin/projects/./p-2", true),
            (Method::POST, "/admin/projects/p-2/api%2Dkeys", true),
            (Method::DELETE, "/admin/projects/p-1%2F..%2Fp-2", true),
            (Method::DELETE, "/admin/projects/p-2;x=1", true),
            (Method::DELETE, "/admin/projects/p-2\\x", true),
            (Method::from_bytes(b"delete").unwrap(), "/admin/projects/p-2", true),
            (Method::GET, "/Admin/Projects", true),
            (Method::DELETE, "/admin/PROJECTS/p-2", true),
            (Method::GET, "/admin/projects/p-2/API-keys", true),
            (Method::POST, "/ADMIN/projects/p-2/api-keys", true),
            (Method::GET, "/Admin/Nothing", false),
        ] {
            let r = resolve(&method, path);
            assert_eq!(r.operation(), UNKNOWN, "{method} {path}");
            assert_eq!(r.ambiguous.is_some(), ambiguous, "{method} {path}");
        }
    }

    /// Every operation of every specification, read here from the YAML apart from
    /// `build.rs`: a concrete path made of its template resolves to it (or to the newer name
    /// of its route, with this one as an alias), with its path parameters.
    #[test]
    fn the_reads_by_post_are_data_plane_operations() {
        for op in READS_BY_POST {
            let route = ROUTES.iter().find(|r| r.operation == op).unwrap_or_else(|| panic!("{op} is no operation"));
            assert_eq!((route.method.clone(), route.plane), (Method::POST, Plane::Data), "{op}");
        }
    }

    #[test]
    fn every_operation_of_every_spec_resolves_to_itself() {
        use yaml_rust2::YamlLoader;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("spec/pinecone");
        let mut seen = 0;
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_str().unwrap().to_owned();
            let Some(plane) = plane_of(&name) else { continue };
            let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            // Assistants are served under their server URL's path; the data plane on each
            // index's own host.
            let prefix = if name.starts_with("assistant_control_") { "/assistant" } else { "" };
            let host = if plane == Plane::Data { "{index_host}" } else { "api.pinecone.io" };
            assert_eq!(docs[0]["servers"][0]["url"].as_str().unwrap(), format!("https://{host}{prefix}"));
            for (template, item) in docs[0]["paths"].as_hash().unwrap() {
                let template = format!("{prefix}{}", template.as_str().unwrap());
                for (method, op) in item.as_hash().unwrap() {
                    let Some(id) = op["operationId"].as_str() else { continue };
                    let method = Method::from_bytes(method.as_str().unwrap().to_ascii_uppercase().as_bytes()).unwrap();
                    let mut expected = Vec::new();
                    let path: Vec<String> = template
                        .split('/')
                        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => {
                                let value = format!("{name}-3fa85f64-5717-4562-b3fc-2c963f66afa6");
                                expected.push((name.to_owned(), value.clone()));
                                value
                            }
                            None => s.to_owned(),
                        })
                        .collect();
                    let path = path.join("/");
                    let r = resolve(&method, &path);
                    let route = r.route().unwrap_or_else(|| panic!("{}: {method} {path} is unknown", file.display()));
                    assert!(
                        route.operation == id || route.aliases.contains(&id),
                        "{}: {method} {template} is {id}, resolved to {}",
                        file.display(),
                        route.operation
                    );
                    let params: Vec<(String, String)> = r.params().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
                    assert_eq!(params, expected, "{method} {template}");
                    assert!(operation_names().any(|n| n == id));
                    assert_eq!(route.plane, plane, "{method} {template}");
                    seen += 1;
                }
            }
        }
        // The Admin API's 5 versions, the control plane's 2 (18, 4 and 5 operations each)
        // and the data plane's 2 (18 each).
        assert!(seen >= 5 * 13 + 19 + 2 * (18 + 4 + 5) + 2 * 18, "{seen} operations in the specs");
    }

    /// The plane of a specification file, by its name (as `build.rs` decides it).
    fn plane_of(name: &str) -> Option<Plane> {
        let control = ["db_control_", "inference_", "assistant_control_"];
        match name.ends_with(".oas.yaml") {
            true if name.starts_with("admin_") => Some(Plane::Admin),
            true if control.iter().any(|prefix| name.starts_with(prefix)) => Some(Plane::Control),
            true if name.starts_with("db_data_") => Some(Plane::Data),
            _ => None,
        }
    }

    /// `spec/pinecone/` is the crate's copy of the specifications in the project's shared
    /// folder (`../shared/pinecone/`, beside the repository where it is checked out with
    /// it): the copy must be the same, file for file, so the route table is never stale.
    #[test]
    fn the_specs_are_the_shared_ones() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let shared = root.join("../shared/pinecone");
        let Ok(entries) = std::fs::read_dir(&shared) else {
            eprintln!("no {}: the copy in spec/pinecone is not compared", shared.display());
            return;
        };
        let mut compared = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if plane_of(&name).is_some() || (name.starts_with("db_data_") && name.ends_with(".proto")) {
                let ours = std::fs::read(root.join("spec/pinecone").join(&name))
                    .unwrap_or_else(|_| panic!("{name} is in {} but not in spec/pinecone", shared.display()));
                assert!(
                    ours == std::fs::read(&path).unwrap(),
                    "spec/pinecone/{name} differs from the shared one: copy it"
                );
                compared += 1;
            }
        }
        assert_eq!(
            compared,
            std::fs::read_dir(root.join("spec/pinecone")).unwrap().count(),
            "a spec that is not shared"
        );
    }
}
