//! The supernode's router driven in-process (`tower::ServiceExt::oneshot`): what the API, UI
//! and load tests share.
#![allow(dead_code)] // each test file uses a different subset

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use shoal_common::Digest;
use shoal_supernode::{Supernode, SupernodeConfig};
use tower::ServiceExt;

/// A supernode with the default settings and a registry of its own.
pub fn app() -> Router {
    app_with(SupernodeConfig::default())
}

pub fn app_with(config: SupernodeConfig) -> Router {
    Supernode::new(config, &prometheus::Registry::new())
        .expect("a supernode with valid settings")
        .router()
}

/// One request through the router: status, headers and body. `json` sets the content type.
pub async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Body,
    json: bool,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if json {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("a valid request"))
        .await
        .expect("the router is infallible");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("a full body").to_bytes();
    (parts.status, parts.headers, bytes.to_vec())
}

/// `GET uri`: status, headers and body.
pub async fn get(app: &Router, uri: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    send(app, Method::GET, uri, Body::empty(), false).await
}

/// `POST uri` with a JSON body, which must succeed; its JSON answer (`Null` when empty).
pub async fn post(app: &Router, uri: &str, body: Value) -> Value {
    let (status, _, bytes) = send(app, Method::POST, uri, Body::from(body.to_string()), true).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(status.is_success(), "POST {uri}: {status} {text}");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// A distinct, valid piece digest for piece `p`.
pub fn digest(p: u64) -> String {
    Digest::of(&p.to_le_bytes()).to_string()
}
