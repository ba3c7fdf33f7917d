//! The header policy, both ways: hop-by-hop headers out (RFC 9110 §7.6.1, and the method
//! overrides), our `Authorization` in, and the API version in unless the client chose one.
//! Values are built once, at configuration time; per request, one pass over the names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The request id Pinecone answers with, quoted in audit lines and lookup errors.
pub(super) static X_PINECONE_REQUEST_ID: HeaderName = HeaderName::from_static("x-pinecone-request-id");
pub(super) static X_PINECONE_API_VERSION: HeaderName = HeaderName::from_static("x-pinecone-api-version");
/// The control and data planes' credential.
pub(super) static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Removes the connection-specific headers (RFC 9110 §7.6.1) and those named in
/// `Connection`, from a request or a response. `TE: trailers` is kept: it is end-to-end in
/// meaning, and hyper sends HTTP/1.1 trailers only to a peer that announced it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Almost no request or response carries one: one pass over the names decides, where
    // removing nine names costs about 3,400 instructions a request (bench/profile).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != header::TE {
            headers.remove(&name);
        }
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::MAX_FORWARDS);
    for name in METHOD_OVERRIDES {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The connection-specific header names (RFC 9110 §7.6.1, and the older `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authorization` and `Proxy-Authenticate`), `Max-Forwards`
/// (it is for TRACE and OPTIONS, and a hop that answers when it reaches 0 would answer in
/// Pinecone's name), and the [`METHOD_OVERRIDES`].
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::MAX_FORWARDS,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        || METHOD_OVERRIDES.contains(&name.as_str())
}

/// Headers with which some servers and frameworks let a request name another method than
/// its own (`POST` with `X-HTTP-Method-Override: DELETE`): the policy judged the request's
/// own method, so they never reach the upstream, policy or not.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The request header policy: hop-by-hop headers out, our `Authorization` in, and the API
/// version in unless the client chose one (or always, with `override_api_version`). The
/// client's `Host` is left for [`crate::outbound::Pool::send`], which replaces it with the upstream's in
/// the same lookup.
pub(crate) fn rewrite_request_headers(
    headers: &mut HeaderMap,
    authorization: &HeaderValue,
    api_version: &HeaderValue,
    override_api_version: bool,
) {
    strip_hop_by_hop(headers);
    headers.insert(header::AUTHORIZATION, authorization.clone());
    set_api_version(headers, api_version, override_api_version);
}

/// The same for a control-plane request with the managed key: hop-by-hop headers out, the
/// client's `Authorization` and every `Api-Key` of its out, the managed key in, the API
/// version as above.
pub(crate) fn rewrite_key_headers(
    headers: &mut HeaderMap,
    api_key: &HeaderValue,
    api_version: &HeaderValue,
    override_api_version: bool,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    // `insert` replaces every value the name had.
    headers.insert(API_KEY.clone(), api_key.clone());
    set_api_version(headers, api_version, override_api_version);
}

/// Ours when the client sent none (or always, with `override_api_version`).
fn set_api_version(headers: &mut HeaderMap, api_version: &HeaderValue, override_api_version: bool) {
    if override_api_version {
        headers.insert(X_PINECONE_API_VERSION.clone(), api_version.clone());
    } else {
        // One lookup, where `contains_key` and then `insert` would hash the name twice.
        headers.entry(X_PINECONE_API_VERSION.clone()).or_insert_with(|| api_version.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_policy_table() {
        let auth = HeaderValue::from_static("Bearer real");
        let version = HeaderValue::from_static("2025-10");
        let mut h = headers(&[
            ("authorization", "Bearer placeholder"),
            ("proxy-authorization", "Basic x"),
            ("host", "127.0.0.1:8484"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("content-type", "application/json"),
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("x-http-method-override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("x-method-override", "DELETE"),
        ]);
        rewrite_request_headers(&mut h, &auth, &version, false);
        assert_eq!(h.get("authorization").unwrap(), "Bearer real");
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2025-10");
        assert_eq!(h.get("te").unwrap(), "trailers");
        for gone in [
            "proxy-authorization",
            "connection",
            "keep-alive",
            "x-private",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h.get_all("x-custom").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.get("host").unwrap(), "127.0.0.1:8484", "left for the upstream client to replace");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
    }

    #[test]
    fn client_api_version_wins_unless_overridden() {
        let auth = HeaderValue::from_static("Bearer t");
        let version = HeaderValue::from_static("2025-10");
        let mut h = headers(&[("x-pinecone-api-version", "2026-07")]);
        rewrite_request_headers(&mut h, &auth, &version, false);
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2026-07");
        rewrite_request_headers(&mut h, &auth, &version, true);
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2025-10");
        assert_eq!(h.get_all("x-pinecone-api-version").iter().count(), 1);
    }

    #[test]
    fn the_managed_key_replaces_the_clients_credentials() {
        let key = HeaderValue::from_static("pckey_managed");
        let version = HeaderValue::from_static("2025-10");
        let mut h = headers(&[
            ("api-key", "client-one"),
            ("Api-Key", "client-two"),
            ("authorization", "Bearer client"),
            ("connection", "close"),
            ("x-pinecone-api-version", "2026-07"),
        ]);
        rewrite_key_headers(&mut h, &key, &version, false);
        assert_eq!(h.get_all("api-key").iter().collect::<Vec<_>>(), ["pckey_managed"]);
        assert!(!h.contains_key("authorization") && !h.contains_key("connection"));
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2026-07");
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }
}
