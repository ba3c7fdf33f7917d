//! The route table of `api.pinecone.io`, from its OpenAPI specifications in `spec/pinecone/`
//! (copies of `../shared/pinecone/`, every published version): the Admin API (`admin_*`) and
//! the control plane (`db_control_*`, `inference_*`, `assistant_control_*`) and the data plane
//! (`db_data_*`, served on each index's own host), their union. Each
//! method and path template (under its spec's server URL path: `/assistant` for assistants)
//! becomes one route with its `operationId` and its plane; where versions named a route
//! differently, the newest name is the route's and the older ones are aliases. The YAML stays
//! the single source: the table is written to `$OUT_DIR/routes.rs` at each build that sees a
//! spec change, and `crate::routes` includes it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

/// The specifications read, by file name prefix, and the plane their routes belong to.
const FAMILIES: [(&str, &str); 5] = [
    ("admin_", "Admin"),
    ("db_control_", "Control"),
    ("inference_", "Control"),
    ("assistant_control_", "Control"),
    ("db_data_", "Data"),
];

/// The plane of a spec file, by its name.
fn family(name: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|(prefix, _)| name.starts_with(prefix) && name.ends_with(".oas.yaml")).map(|(_, plane)| *plane)
}

/// The path of a spec's first server URL (`https://api.pinecone.io/assistant`: `/assistant`).
fn server_path(doc: &Yaml) -> String {
    let url = doc["servers"][0]["url"].as_str().unwrap_or_default();
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or(String::new(), |i| after_scheme[i..].trim_end_matches('/').to_owned())
}

/// The data plane's gRPC methods (`/VectorService/Query`) and the REST route their
/// `google.api.http` annotation names (its first binding: `POST /query`), from every
/// `db_data_*.proto`, newest last.
fn grpc_methods(dir: &Path) -> BTreeMap<String, (String, String)> {
    let mut protos: Vec<_> = std::fs::read_dir(dir)
        .expect("spec/pinecone is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("db_data_") && n.ends_with(".proto"))
        })
        .collect();
    protos.sort();
    let mut methods = BTreeMap::new();
    for proto in protos {
        println!("cargo::rerun-if-changed={}", proto.display());
        let text = std::fs::read_to_string(&proto).expect("a proto is readable");
        let mut rpc: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("rpc ") {
                rpc = rest.split('(').next().map(|name| format!("/VectorService/{}", name.trim()));
                continue;
            }
            let Some(name) = rpc.as_ref() else { continue };
            let binding = ["post", "get", "delete", "patch", "put"].iter().find_map(|m| {
                Some((m.to_ascii_uppercase(), line.strip_prefix(&format!("{m}:"))?.trim().trim_matches('"').to_owned()))
            });
            if let Some((method, path)) = binding {
                methods.insert(name.clone(), (method, path));
                rpc = None;
            }
        }
    }
    assert!(!methods.is_empty(), "no gRPC methods in spec/pinecone/db_data_*.proto");
    methods
}

fn main() {
    let dir = Path::new("spec/pinecone");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("spec/pinecone is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(family).is_some())
        .collect();
    // admin_2025-04 … admin_2026-07: within a family the names sort as the versions do.
    files.sort();
    assert!(!files.is_empty(), "no specifications in spec/pinecone");

    // (path template, method) -> the plane and the operation ids it had, oldest first.
    let mut routes: BTreeMap<(String, String), (&str, Vec<String>)> = BTreeMap::new();
    for file in &files {
        println!("cargo::rerun-if-changed={}", file.display());
        let plane = family(file.file_name().and_then(|n| n.to_str()).unwrap_or_default()).expect("filtered");
        let text = std::fs::read_to_string(file).expect("a spec is readable");
        let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let prefix = server_path(&docs[0]);
        let paths = docs[0]["paths"].as_hash().unwrap_or_else(|| panic!("{}: no paths", file.display()));
        for (path, item) in paths {
            let path = format!("{prefix}{}", path.as_str().expect("a path is text"));
            let Some(item) = item.as_hash() else { continue };
            for (method, op) in item {
                let Some(method) = method.as_str().filter(|m| METHODS.contains(m)) else { continue };
                let id = match &op["operationId"] {
                    Yaml::String(id) => id.clone(),
                    _ => panic!("{}: {method} {path} has no operationId", file.display()),
                };
                let (known, names) =
                    routes.entry((path.clone(), method.to_ascii_uppercase())).or_insert((plane, Vec::new()));
                assert_eq!(*known, plane, "{method} {path} is in two planes");
                names.retain(|n| *n != id);
                names.push(id);
            }
        }
    }

    let grpc = grpc_methods(dir);
    let mut out = String::from("// Generated by build.rs from spec/pinecone/*.oas.yaml and *.proto. Do not edit.\n\n");
    // Ordered by the number of segments, so that a request is compared with the routes of
    // its own length only (`BY_SEGMENTS[n]`: the range of routes with n segments).
    let mut routes: Vec<_> = routes.into_iter().collect();
    routes.sort_by_key(|((path, _), _)| path.matches('/').count());
    let mut by_segments = [(0usize, 0usize); 9];
    for (i, ((path, _), _)) in routes.iter().enumerate() {
        let n = path.matches('/').count();
        assert!(n < by_segments.len(), "{path}: more segments than routes::MAX_SEGMENTS");
        if by_segments[n].1 == 0 {
            by_segments[n].0 = i;
        }
        by_segments[n].1 = i + 1;
    }
    let ranges: Vec<String> = by_segments.iter().map(|(a, b)| format!("{a}..{}", (*b).max(*a))).collect();
    writeln!(out, "pub(crate) static BY_SEGMENTS: [std::ops::Range<usize>; 9] = [{}];\n", ranges.join(", ")).unwrap();
    out.push_str("pub(crate) static ROUTES: &[Route] = &[\n");
    for ((path, method), (plane, names)) in &routes {
        let (name, aliases) = names.split_last().expect("at least one name");
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => format!("Segment::Param({param:?})"),
                None => format!("Segment::Literal({s:?})"),
            })
            .collect();
        writeln!(
            out,
            "    Route {{ method: http::Method::{method}, template: {path:?}, segments: &[{}], operation: {name:?}, aliases: &{aliases:?}, plane: Plane::{plane} }},",
            segments.join(", ")
        )
        .unwrap();
    }
    out.push_str("];\n\n");
    // Each gRPC method of the data plane, and the REST route its google.api.http names.
    out.push_str("pub(crate) static GRPC: &[(&str, usize)] = &[\n");
    for (grpc_path, (method, path)) in &grpc {
        let index = routes
            .iter()
            .position(|((p, m), _)| p == path && m == method)
            .unwrap_or_else(|| panic!("{grpc_path}: its REST twin {method} {path} is in no specification"));
        writeln!(out, "    ({grpc_path:?}, {index}),").unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("routes.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
