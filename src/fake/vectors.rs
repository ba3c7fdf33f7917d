//! An index's vectors in the fake's memory, per namespace, and the REST operations on them
//! (`db_data`): `upsertVectors`, `queryVectors` (by vector or by id, cosine, euclidean or dot
//! product; filters are not evaluated and answer 400), `fetchVectors`, `listVectors` (by
//! prefix, paginated), `updateVector`, `deleteVectors`, `describeIndexStats`, and the
//! namespaces (`listNamespacesOperation`, `describeNamespace`, `deleteNamespace`).

use super::{error, invalid, json};
use crate::body::Body;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The most matches a query may ask for (`QueryRequest.topK`'s maximum in db_data).
const MAX_TOP_K: usize = 10_000;

/// A query's match: id, score, values, metadata.
pub(crate) type Match = (String, f64, Vec<f64>, Option<Value>);

/// One stored vector.
#[derive(Debug, Clone)]
struct Stored {
    values: Vec<f64>,
    metadata: Option<Value>,
}

/// An index's vectors, by namespace and id.
#[derive(Debug, Default)]
pub(crate) struct Vectors {
    dimension: Option<usize>,
    metric: String,
    namespaces: BTreeMap<String, BTreeMap<String, Stored>>,
}

impl Vectors {
    /// An empty index of `dimension` (none: the first upsert's), scored by `metric`.
    pub(crate) fn new(dimension: Option<usize>, metric: &str) -> Self {
        Self { dimension, metric: metric.to_owned(), namespaces: BTreeMap::new() }
    }

    /// Stores `items` (id, values, metadata) in `namespace`: how many, or why not.
    pub(crate) fn put(
        &mut self,
        namespace: &str,
        items: Vec<(String, Vec<f64>, Option<Value>)>,
    ) -> Result<usize, String> {
        if let Some((_, values, _)) = items.iter().find(|(_, v, _)| self.dimension.is_some_and(|d| d != v.len())) {
            let index = self.dimension.unwrap_or(0);
            return Err(format!("Vector dimension {} does not match the dimension of the index {index}", values.len()));
        }
        let count = items.len();
        let stored = self.namespaces.entry(namespace.to_owned()).or_default();
        stored.extend(items.into_iter().map(|(id, values, metadata)| (id, Stored { values, metadata })));
        Ok(count)
    }

    /// The `top_k` nearest of `namespace` to `vector` (or to the vector stored as `id`):
    /// id, score, values, metadata. `top_k` is required, from 1 to 10,000 (the spec's
    /// `QueryRequest.topK`; gRPC's 0 is its absence).
    pub(crate) fn nearest(
        &self,
        namespace: &str,
        vector: Option<Vec<f64>>,
        id: Option<&str>,
        top_k: usize,
    ) -> Result<Vec<Match>, String> {
        if !(1..=MAX_TOP_K).contains(&top_k) {
            return Err(format!("topK is required, from 1 to {MAX_TOP_K}."));
        }
        let empty = BTreeMap::new();
        let stored = self.namespaces.get(namespace).unwrap_or(&empty);
        let by_id = id.and_then(|id| stored.get(id)).map(|s| s.values.clone());
        let vector = vector.or(by_id).ok_or("Either vector or id is required.")?;
        let mut scored: Vec<(f64, &String, &Stored)> =
            stored.iter().map(|(id, s)| (score(&self.metric, &vector, &s.values), id, s)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(top_k)
            .map(|(sc, id, s)| (id.clone(), sc, s.values.clone(), s.metadata.clone()))
            .collect())
    }

    /// The stored vectors of `ids` in `namespace`.
    pub(crate) fn get(&self, namespace: &str, ids: &[String]) -> Vec<(String, Vec<f64>, Option<Value>)> {
        let Some(stored) = self.namespaces.get(namespace) else { return Vec::new() };
        ids.iter().filter_map(|id| stored.get(id).map(|s| (id.clone(), s.values.clone(), s.metadata.clone()))).collect()
    }

    /// Vectors by namespace, the dimension and the metric.
    pub(crate) fn counts(&self) -> (Vec<(String, usize)>, Option<usize>, &str) {
        (self.namespaces.iter().map(|(ns, v)| (ns.clone(), v.len())).collect(), self.dimension, &self.metric)
    }

    pub(super) fn upsert(&mut self, request: &Value) -> Response<Body> {
        let Some(items) = request["vectors"].as_array() else { return invalid("vectors must be a list.") };
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            let (Some(id), Some(values)) = (item["id"].as_str(), item["values"].as_array()) else {
                return invalid("Each vector needs an id and values.");
            };
            let values: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            parsed.push((id.to_owned(), values, item.get("metadata").filter(|m| m.is_object()).cloned()));
        }
        match self.put(request["namespace"].as_str().unwrap_or(""), parsed) {
            Ok(count) => json(StatusCode::OK, &json!({ "upsertedCount": count })),
            Err(message) => invalid(&message),
        }
    }

    pub(super) fn query(&self, request: &Value) -> Response<Body> {
        if request.get("filter").is_some_and(|f| !f.is_null()) {
            return invalid("The fake Pinecone does not evaluate metadata filters.");
        }
        let namespace = request["namespace"].as_str().unwrap_or("");
        let vector = request["vector"].as_array().map(|v| v.iter().filter_map(Value::as_f64).collect());
        let top_k = request["topK"].as_u64().map_or(0, |k| usize::try_from(k).unwrap_or(usize::MAX));
        let found = match self.nearest(namespace, vector, request["id"].as_str(), top_k) {
            Ok(found) => found,
            Err(message) => return invalid(&message),
        };
        let (values, metadata) = (request["includeValues"] == true, request["includeMetadata"] == true);
        let matches: Vec<Value> = found
            .into_iter()
            .map(|(id, score, v, meta)| {
                let mut m = json!({ "id": id, "score": score });
                if values {
                    m["values"] = json!(v);
                }
                if let (true, Some(meta)) = (metadata, meta) {
                    m["metadata"] = meta;
                }
                m
            })
            .collect();
        json(StatusCode::OK, &json!({ "matches": matches, "namespace": namespace, "usage": { "readUnits": 1 } }))
    }

    pub(super) fn fetch(&self, query: &str) -> Response<Body> {
        let mut ids = Vec::new();
        let mut namespace = String::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "ids" => ids.push(v.into_owned()),
                "namespace" => namespace = v.into_owned(),
                _ => {}
            }
        }
        let found: serde_json::Map<String, Value> = self
            .get(&namespace, &ids)
            .into_iter()
            .map(|(id, values, metadata)| {
                let mut v = json!({ "id": id, "values": values });
                if let Some(meta) = metadata {
                    v["metadata"] = meta;
                }
                (id, v)
            })
            .collect();
        json(StatusCode::OK, &json!({ "vectors": found, "namespace": namespace, "usage": { "readUnits": 1 } }))
    }

    pub(super) fn delete(&mut self, request: &Value) -> Response<Body> {
        let namespace = request["namespace"].as_str().unwrap_or("");
        if request["deleteAll"] == true {
            self.namespaces.remove(namespace);
        } else if let (Some(ids), Some(stored)) = (request["ids"].as_array(), self.namespaces.get_mut(namespace)) {
            for id in ids.iter().filter_map(Value::as_str) {
                stored.remove(id);
            }
        }
        json(StatusCode::OK, &json!({}))
    }

    /// `GET /vectors/list`: the ids of `namespace` that start with `prefix`, in order, `limit`
    /// (at most 100) a page; `paginationToken` is the last id of the page before.
    pub(super) fn list(&self, query: &str) -> Response<Body> {
        let (mut prefix, mut namespace, mut after, mut limit) = (String::new(), String::new(), None, 100);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "prefix" => prefix = v.into_owned(),
                "namespace" => namespace = v.into_owned(),
                "paginationToken" => after = Some(v.into_owned()),
                "limit" => match v.parse::<usize>() {
                    Ok(n @ 1..=100) => limit = n,
                    _ => return invalid("limit must be between 1 and 100."),
                },
                _ => {}
            }
        }
        let empty = BTreeMap::new();
        let stored = self.namespaces.get(&namespace).unwrap_or(&empty);
        let mut ids = stored
            .keys()
            .filter(|id| id.starts_with(&prefix) && after.as_ref().is_none_or(|a| *id > a))
            .take(limit + 1);
        let page: Vec<&String> = ids.by_ref().take(limit).collect();
        let mut answer = json!({
            "vectors": page.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
            "namespace": namespace, "usage": { "readUnits": 1 },
        });
        if ids.next().is_some() {
            answer["pagination"] = json!({ "next": page.last() });
        }
        json(StatusCode::OK, &answer)
    }

    /// `POST /vectors/update`: one vector by `id`, its `values` replaced and `setMetadata`
    /// merged into its metadata. An update by filter answers 400, as a query's filter does.
    pub(super) fn update(&mut self, request: &Value) -> Response<Body> {
        let Some(id) = request["id"].as_str() else {
            return invalid("The fake Pinecone does not evaluate metadata filters: give an id.");
        };
        let values: Option<Vec<f64>> =
            request["values"].as_array().map(|v| v.iter().filter_map(Value::as_f64).collect());
        if let (Some(v), Some(d)) = (&values, self.dimension)
            && v.len() != d
        {
            return invalid(&format!("Vector dimension {} does not match the dimension of the index {d}", v.len()));
        }
        let namespace = request["namespace"].as_str().unwrap_or("");
        let Some(stored) = self.namespaces.get_mut(namespace).and_then(|n| n.get_mut(id)) else {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Vector {id} not found"));
        };
        if let Some(values) = values {
            stored.values = values;
        }
        if let Some(set) = request["setMetadata"].as_object() {
            let metadata = stored.metadata.get_or_insert_with(|| json!({}));
            for (k, v) in set {
                metadata[k] = v.clone();
            }
        }
        json(StatusCode::OK, &json!({}))
    }

    /// `GET /namespaces`: each namespace and how many records it holds.
    pub(super) fn namespaces(&self) -> Response<Body> {
        let list: Vec<Value> =
            self.namespaces.iter().map(|(name, v)| json!({ "name": name, "record_count": v.len() })).collect();
        json(StatusCode::OK, &json!({ "total_count": list.len(), "namespaces": list }))
    }

    /// `GET /namespaces/{namespace}`.
    pub(super) fn namespace(&self, name: &str) -> Response<Body> {
        match self.namespaces.get(name) {
            Some(v) => json(StatusCode::OK, &json!({ "name": name, "record_count": v.len() })),
            None => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Namespace {name} not found")),
        }
    }

    /// `DELETE /namespaces/{namespace}`: the namespace and its records.
    pub(super) fn delete_namespace(&mut self, name: &str) -> Response<Body> {
        match self.namespaces.remove(name) {
            Some(_) => json(StatusCode::OK, &json!({})),
            None => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Namespace {name} not found")),
        }
    }

    pub(super) fn stats(&self) -> Response<Body> {
        let (counts, _, _) = self.counts();
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let namespaces: serde_json::Map<String, Value> =
            counts.into_iter().map(|(ns, n)| (ns, json!({ "vectorCount": n }))).collect();
        json(
            StatusCode::OK,
            &json!({
                "namespaces": namespaces,
                "dimension": self.dimension,
                "indexFullness": 0.0,
                "totalVectorCount": total,
                "metric": self.metric,
                "vectorType": "dense",
            }),
        )
    }
}

/// How alike two vectors are by the index's metric: higher is closer (euclidean as its
/// negative distance squared would not be Pinecone's; it answers the distance, ranked
/// ascending, so it is negated for the ranking and reported as is).
fn score(metric: &str, a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        "dotproduct" => dot,
        "euclidean" => -a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>(),
        _ => {
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let n = norm(a) * norm(b);
            if n == 0.0 { 0.0 } else { dot / n }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_rank_the_closest_first() {
        let (a, b, c) = ([1.0, 0.0], [0.9, 0.1], [0.0, 1.0]);
        for metric in ["cosine", "dotproduct", "euclidean"] {
            assert!(score(metric, &a, &b) > score(metric, &a, &c), "{metric}");
        }
        assert!((score("cosine", &a, &a) - 1.0).abs() < 1e-9);
    }
}
