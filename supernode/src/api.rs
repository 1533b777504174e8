//! The HTTP surface: the router, one thin handler per route (decode → domain call → encode) and
//! [`ApiError`], which turns every failure, including rejected paths and bodies, into an
//! [`ErrorBody`] with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shoal_common::api::{
    codes, AnnounceReply, ErrorBody, Heartbeat, HeartbeatReply, PeerAnnounce, PieceReport,
    RegisterTask, ReportReply, ScheduleReply, ScheduleRequest, TaskInfo,
};
use shoal_common::TaskId;

use crate::error::Error;
use crate::status::{PeerStatus, TaskStatus};
use crate::supernode::Supernode;

/// Largest request body accepted (a `have` set of a million pieces is 256 KiB of hex).
pub const MAX_BODY_BYTES: usize = 4 << 20;

type Sn = State<Arc<Supernode>>;

pub(crate) fn router(sn: Arc<Supernode>) -> Router {
    Router::new()
        .route("/api/v1/peers", post(announce).get(list_peers))
        .route("/api/v1/peers/{peer}", delete(remove_peer))
        .route("/api/v1/peers/{peer}/heartbeat", post(heartbeat))
        .route("/api/v1/tasks", get(list_tasks))
        .route("/api/v1/status", get(crate::ui::status))
        .route("/api/v1/tasks/{task}", get(task_info))
        .route("/api/v1/tasks/{task}/peers", post(register))
        .route("/api/v1/tasks/{task}/peers/{peer}", delete(unregister))
        .route("/api/v1/tasks/{task}/schedule", post(schedule))
        .route("/api/v1/tasks/{task}/reports", post(report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/ui", get(crate::ui::page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sn)
}

/// A failed request as the client sees it. Internal details only reach the log.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Logged, never sent.
    detail: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::BadRequest(m) => Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, m),
            Error::PeerUnknown(_) => Self::new(StatusCode::NOT_FOUND, codes::PEER_UNKNOWN, message),
            Error::TaskUnknown(_) => Self::new(StatusCode::NOT_FOUND, codes::TASK_UNKNOWN, message),
            Error::Conflict(_) => Self::new(StatusCode::CONFLICT, codes::CONFLICT, message),
            _ => ApiError {
                detail: Some(message),
                ..Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::INTERNAL,
                    "internal error",
                )
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::new(r.status(), codes::BAD_REQUEST, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        let status = if r.status().is_server_error() {
            StatusCode::BAD_REQUEST
        } else {
            r.status()
        };
        Self::new(status, codes::BAD_REQUEST, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, detail = ?self.detail, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, code = self.code, "{}", self.message);
        }
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(T);

/// `Path` whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(T);

type ApiResult<T> = Result<Json<T>, ApiError>;

fn task_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse::<TaskId>()
        .map_err(|e| Error::BadRequest(e.to_string()).into())
}

async fn announce(State(sn): Sn, ApiJson(a): ApiJson<PeerAnnounce>) -> ApiResult<AnnounceReply> {
    Ok(Json(sn.state().announce(&a)?))
}

async fn heartbeat(
    State(sn): Sn,
    ApiPath(peer): ApiPath<String>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<HeartbeatReply> {
    Ok(Json(sn.state().heartbeat(&peer, &hb)?))
}

async fn remove_peer(
    State(sn): Sn,
    ApiPath(peer): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    sn.state().remove_peer(&peer)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_peers(State(sn): Sn) -> Json<Vec<PeerStatus>> {
    Json(sn.state().list_peers())
}

async fn list_tasks(State(sn): Sn) -> Json<Vec<TaskStatus>> {
    Json(sn.state().list_tasks())
}

async fn task_info(State(sn): Sn, ApiPath(task): ApiPath<String>) -> ApiResult<TaskInfo> {
    Ok(Json(sn.state().task_info(&task_id(&task)?)?))
}

async fn register(
    State(sn): Sn,
    ApiPath(task): ApiPath<String>,
    ApiJson(r): ApiJson<RegisterTask>,
) -> ApiResult<TaskInfo> {
    Ok(Json(sn.state().register(&task_id(&task)?, &r)?))
}

async fn unregister(
    State(sn): Sn,
    ApiPath((task, peer)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    sn.state().unregister(&task_id(&task)?, &peer)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn schedule(
    State(sn): Sn,
    ApiPath(task): ApiPath<String>,
    ApiJson(r): ApiJson<ScheduleRequest>,
) -> ApiResult<ScheduleReply> {
    let task = task_id(&task)?;
    Ok(Json(sn.state().schedule(&task, &r, sn.shutdown()).await?))
}

async fn report(
    State(sn): Sn,
    ApiPath(task): ApiPath<String>,
    ApiJson(r): ApiJson<PieceReport>,
) -> ApiResult<ReportReply> {
    Ok(Json(sn.state().report(&task_id(&task)?, &r)?))
}

async fn metrics(State(sn): Sn) -> Response {
    shoal_runtime::metrics::response(sn.state().metrics.render().map_err(Into::into))
}

async fn readyz(State(sn): Sn) -> Response {
    if sn.shutdown().is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::BAD_REQUEST,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        codes::BAD_REQUEST,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
