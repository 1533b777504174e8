//! Talking to supernodes. Peers announce to every supernode; each task belongs to one of them
//! by rendezvous hashing of its id, with the next in rank as fail-over, so several supernodes
//! share the tasks without talking to each other.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_common::api::{
    self, codes, AnnounceReply, ErrorBody, Heartbeat, HeartbeatReply, PeerAnnounce, PieceReport,
    RegisterTask, ReportReply, ScheduleReply, ScheduleRequest, TaskInfo,
};
use shoal_common::{HashRing, TaskId};
use url::Url;

use crate::error::{Error, Result};
use crate::source::http::error_chain;

pub struct SupernodeClient {
    http: reqwest::Client,
    ring: HashRing<Url>,
    announce: PeerAnnounce,
}

/// A failed supernode call, and whether the request reached the supernode at all: only calls
/// that never arrived may be repeated on the next supernode of the ring.
struct Failed {
    error: Error,
    reached: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed {
            error,
            reached: true,
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Self {
        f.error
    }
}

/// How long a non-long-poll call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl SupernodeClient {
    pub fn new(supernodes: Vec<Url>, announce: PeerAnnounce) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .build()
            // Only fails when the TLS backend cannot initialise (a broken installation).
            .unwrap_or_else(|_| reqwest::Client::new());
        let ring = HashRing::new(
            supernodes
                .into_iter()
                .map(|u| (u.as_str().trim_end_matches('/').to_owned(), u))
                .collect(),
        );
        SupernodeClient {
            http,
            ring,
            announce,
        }
    }

    pub fn peer_id(&self) -> &str {
        &self.announce.peer_id
    }

    fn join(base: &Url, path: &str) -> String {
        format!("{}{}", base.as_str().trim_end_matches('/'), path)
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        base: &Url,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> std::result::Result<Option<R>, Failed> {
        let url = Self::join(base, path);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(timeout)
            .header(shoal_common::PEER_ID_HEADER, &self.announce.peer_id);
        if let Some(b) = body {
            req = req.json(b);
        }
        let err = |message: String, unknown_peer| Error::Supernode {
            url: base.to_string(),
            message,
            unknown_peer,
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(Failed {
                    error: err(error_chain(&e), false),
                    reached: false,
                })
            }
        };
        let status = resp.status();
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| err(error_chain(&e), false))?;
            if bytes.is_empty() {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(format!("bad reply to {path}: {e}"), false).into());
        }
        let body: Option<ErrorBody> = resp.json().await.ok();
        if status == StatusCode::NOT_FOUND {
            if let Some(b) = &body {
                if b.code == codes::TASK_UNKNOWN {
                    return Ok(None);
                }
                if b.code == codes::PEER_UNKNOWN {
                    return Err(err(b.message.clone(), true).into());
                }
            }
        }
        let msg = body
            .map(|b| format!("{}: {}", b.code, b.message))
            .unwrap_or_default();
        Err(err(format!("{path}: HTTP {status} {msg}"), false).into())
    }

    /// Calls the task's owner, failing over to the next supernode when it is unreachable.
    async fn task_call<B: Serialize, R: DeserializeOwned>(
        &self,
        task: &TaskId,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<R>> {
        let mut last = None;
        for base in self.ring.ranked(&task.to_string()) {
            match self.call(base, method.clone(), path, body, timeout).await {
                Err(Failed {
                    error,
                    reached: false,
                }) => last = Some(error),
                other => return other.map_err(Error::from),
            }
        }
        Err(last.unwrap_or(Error::Supernode {
            url: String::new(),
            message: "no supernode configured".into(),
            unknown_peer: false,
        }))
    }

    /// Announces this peer to every supernode; fails if none accepted.
    pub async fn announce(&self) -> Result<AnnounceReply> {
        let mut first_ok = None;
        let mut last_err = None;
        for base in self.ring.members() {
            match self
                .call::<_, AnnounceReply>(
                    base,
                    reqwest::Method::POST,
                    &format!("{}/peers", api::API_PREFIX),
                    Some(&self.announce),
                    CALL_TIMEOUT,
                )
                .await
            {
                Ok(Some(r)) => first_ok = first_ok.or(Some(r)),
                Ok(None) => {}
                Err(Failed { error, .. }) => {
                    tracing::warn!(supernode = %base, %error, "announce failed");
                    last_err = Some(error);
                }
            }
        }
        match (first_ok, last_err) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::Supernode {
                url: String::new(),
                message: "empty reply to announce".into(),
                unknown_peer: false,
            }),
        }
    }

    /// Heartbeats every supernode; `Err(unknown_peer)` when one forgot us.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<()> {
        let path = format!("{}/heartbeat", api::peer_path(&self.announce.peer_id));
        let mut result = Ok(());
        for base in self.ring.members() {
            if let Err(Failed { error, .. }) = self
                .call::<_, HeartbeatReply>(
                    base,
                    reqwest::Method::POST,
                    &path,
                    Some(hb),
                    CALL_TIMEOUT,
                )
                .await
            {
                result = Err(error);
            }
        }
        result
    }

    pub async fn leave(&self) {
        let path = api::peer_path(&self.announce.peer_id);
        for base in self.ring.members() {
            let _ = self
                .call::<(), serde_json::Value>(
                    base,
                    reqwest::Method::DELETE,
                    &path,
                    None,
                    Duration::from_secs(2),
                )
                .await;
        }
    }

    pub async fn task_info(&self, task: &TaskId) -> Result<Option<TaskInfo>> {
        self.task_call::<(), _>(
            task,
            reqwest::Method::GET,
            &api::task_path(task),
            None,
            CALL_TIMEOUT,
        )
        .await
    }

    /// Registers on a task; `Ok(None)` when the supernode needs a layout first.
    pub async fn register(&self, task: &TaskId, body: &RegisterTask) -> Result<Option<TaskInfo>> {
        self.task_call(
            task,
            reqwest::Method::POST,
            &format!("{}/peers", api::task_path(task)),
            Some(body),
            CALL_TIMEOUT,
        )
        .await
    }

    pub async fn schedule(&self, task: &TaskId, body: &ScheduleRequest) -> Result<ScheduleReply> {
        let timeout = CALL_TIMEOUT + Duration::from_millis(body.wait_ms);
        self.task_call(
            task,
            reqwest::Method::POST,
            &format!("{}/schedule", api::task_path(task)),
            Some(body),
            timeout,
        )
        .await?
        .ok_or_else(|| Error::Supernode {
            url: String::new(),
            message: format!("task {task} is unknown to the supernode"),
            unknown_peer: true,
        })
    }

    pub async fn report(&self, task: &TaskId, body: &PieceReport) -> Result<ReportReply> {
        Ok(self
            .task_call(
                task,
                reqwest::Method::POST,
                &format!("{}/reports", api::task_path(task)),
                Some(body),
                CALL_TIMEOUT,
            )
            .await?
            .unwrap_or_default())
    }

    pub async fn leave_task(&self, task: &TaskId) -> Result<()> {
        let path = format!("{}/peers/{}", api::task_path(task), self.announce.peer_id);
        self.task_call::<(), serde_json::Value>(
            task,
            reqwest::Method::DELETE,
            &path,
            None,
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}
