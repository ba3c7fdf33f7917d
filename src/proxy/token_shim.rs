//! `POST /oauth/token` on the proxy: an SDK that insists on its own token exchange gets a
//! random placeholder, never the real token, and the placeholder it then sends is replaced
//! like any other `Authorization`.

use super::error::ProxyError;
use crate::body::{Body, BoxError, full};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use std::time::Duration;

/// `POST /oauth/token` on the proxy: a fresh random placeholder, never the real token, so
/// an SDK that insists on its own token exchange works when pointed at the proxy. The
/// placeholder it then sends is replaced like any other `Authorization`.
pub(super) async fn token_shim<B>(body: B, deadline: Duration) -> Result<Response<Body>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Read (and ignore) the body so an HTTP/1 connection stays reusable: at most
    // TOKEN_SHIM_BODY_LIMIT bytes, all of it within `limits.body_read_timeout`. A client
    // that sends more, or never finishes, gets an error, and hyper closes an HTTP/1.1
    // connection whose body was not read to its end.
    let read = http_body_util::Limited::new(body, TOKEN_SHIM_BODY_LIMIT).collect();
    match tokio::time::timeout(deadline, read).await {
        Err(_) => return Err(ProxyError::BodyTimeout(deadline)),
        Ok(Err(_)) => {
            return Err(ProxyError::bad_request(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a token request body is at most {TOKEN_SHIM_BODY_LIMIT} bytes"),
            ));
        }
        Ok(Ok(_)) => {}
    }
    let placeholder: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let body = serde_json::json!({
        "access_token": format!("pinecone-admin-proxy-placeholder-{placeholder}"),
        "expires_in": 86400,
        "token_type": "Bearer",
    });
    let mut response = Response::new(full(serde_json::to_vec(&body).expect("json")));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The most of a `POST /oauth/token` body the shim reads: an SDK's token request is a few
/// hundred bytes.
const TOKEN_SHIM_BODY_LIMIT: usize = 64 * 1024;
