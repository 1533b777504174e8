//! A blocking CRI v1 client over containerd's unix socket, making the calls kubelet makes.
//! Each call runs on the client's own tokio runtime and is bounded by a timeout; failures
//! are returned (`anyhow`, naming the call), never panics, so a test can check them.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemoveContainerRequest, RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// Image pulls may move tens of MiB through the peer on a slow, busy machine.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(300);
/// Every other call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod sandbox as run: CreateContainer needs its config again.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub config: PodSandboxConfig,
    /// The pod's log directory; container log paths are relative to it.
    pub log_dir: PathBuf,
}

impl Cri {
    /// Connects to containerd's socket and waits (up to `limit`) until CRI answers `Version`.
    pub fn connect(sock: &Path, limit: Duration) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + limit;
        let channel = loop {
            let path = sock.to_path_buf();
            let attempt = rt.block_on(async move {
                let ch = Endpoint::from_static("http://[::]:50051")
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await?;
                let mut rs = RuntimeServiceClient::new(ch.clone());
                tokio::time::timeout(
                    Duration::from_secs(10),
                    rs.version(VersionRequest::default()),
                )
                .await
                .map_err(|_| anyhow!("Version timed out"))??;
                anyhow::Ok(ch)
            });
            match attempt {
                Ok(ch) => break ch,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("CRI on {} not ready", sock.display())))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T, F>(&self, what: &str, limit: Duration, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        // The timer must be made inside the runtime.
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, f).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(st)) => Err(anyhow!("CRI {what}: {:?}: {}", st.code(), st.message())),
            Err(_) => Err(anyhow!("CRI {what}: no answer within {limit:?}")),
        }
    }

    /// `RuntimeName RuntimeVersion`.
    pub fn version(&self) -> Result<String> {
        let mut c = self.runtime.clone();
        let v = self.call(
            "Version",
            CALL_TIMEOUT,
            c.version(VersionRequest::default()),
        )?;
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`) as name → (status, reason).
    pub fn conditions(&self) -> Result<HashMap<String, (bool, String)>> {
        let mut c = self.runtime.clone();
        let st = self.call(
            "Status",
            CALL_TIMEOUT,
            c.status(StatusRequest { verbose: false }),
        )?;
        Ok(st
            .status
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| (c.r#type, (c.status, format!("{} {}", c.reason, c.message))))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// PullImage; returns the image id (`sha256:…` of its config).
    pub fn pull_image(&self, image: &str) -> Result<String> {
        let mut c = self.images.clone();
        let r = self.call(
            &format!("PullImage {image}"),
            PULL_TIMEOUT,
            c.pull_image(PullImageRequest {
                image: Some(image_spec(image)),
                ..Default::default()
            }),
        )?;
        Ok(r.image_ref)
    }

    /// ImageStatus: the image's id, or None when containerd does not have it.
    pub fn image_id(&self, image: &str) -> Result<Option<String>> {
        let mut c = self.images.clone();
        let r = self.call(
            &format!("ImageStatus {image}"),
            CALL_TIMEOUT,
            c.image_status(ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }),
        )?;
        Ok(r.image.map(|i| i.id))
    }

    pub fn remove_image(&self, image: &str) -> Result<()> {
        let mut c = self.images.clone();
        self.call(
            &format!("RemoveImage {image}"),
            CALL_TIMEOUT,
            c.remove_image(RemoveImageRequest {
                image: Some(image_spec(image)),
            }),
        )?;
        Ok(())
    }

    /// RunPodSandbox: host network (no CNI), no hostname (runc cannot set one without a
    /// UTS namespace), logs under `log_dir`.
    pub fn run_pod_sandbox(&self, name: &str, log_dir: &Path) -> Result<Sandbox> {
        fs::create_dir_all(log_dir)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "shoal-test".into(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let r = self.call(
            &format!("RunPodSandbox {name}"),
            PULL_TIMEOUT,
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )?;
        Ok(Sandbox {
            id: r.pod_sandbox_id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// CreateContainer in `sandbox` from `image` (pulled before, as kubelet does), logging
    /// to `sandbox.log_dir/log_name`; `command`/`args` override the image's entrypoint/cmd.
    pub fn create_container(
        &self,
        sandbox: &Sandbox,
        image: &str,
        name: &str,
        log_name: &str,
        command: Option<&[&str]>,
        args: Option<&[&str]>,
    ) -> Result<String> {
        let strings = |v: Option<&[&str]>| {
            v.unwrap_or_default()
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(image_spec(image)),
            command: strings(command),
            args: strings(args),
            log_path: log_name.to_string(),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let r = self.call(
            &format!("CreateContainer {name} ({image})"),
            CALL_TIMEOUT,
            c.create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox.config.clone()),
            }),
        )?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            &format!("StartContainer {id}"),
            CALL_TIMEOUT,
            c.start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
        )?;
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let mut c = self.runtime.clone();
        let r = self.call(
            &format!("ContainerStatus {id}"),
            CALL_TIMEOUT,
            c.container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )?;
        r.status
            .ok_or_else(|| anyhow!("ContainerStatus {id}: no status"))
    }

    /// ExecSync: runs `cmd` in the running container `id` (bounded by `limit`); returns
    /// (exit code, stdout, stderr).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        limit: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let mut c = self.runtime.clone();
        let r = self.call(
            &format!("ExecSync {id} {cmd:?}"),
            limit + Duration::from_secs(30),
            c.exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: limit.as_secs() as i64,
            }),
        )?;
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    /// Polls ContainerStatus until the container has exited; returns its exit code.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Result<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.container_status(id)?;
            if st.state == ContainerState::ContainerExited as i32 {
                return Ok(st.exit_code);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} has not exited within {limit:?}: state {:?}, reason {:?}, message {:?}",
                    ContainerState::try_from(st.state),
                    st.reason,
                    st.message
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            &format!("StopContainer {id}"),
            CALL_TIMEOUT + grace,
            c.stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace.as_secs() as i64,
            }),
        )?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            &format!("RemoveContainer {id}"),
            CALL_TIMEOUT,
            c.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            }),
        )?;
        Ok(())
    }

    /// The ids of all containers containerd's CRI knows.
    pub fn list_containers(&self) -> Result<Vec<String>> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ListContainers",
            CALL_TIMEOUT,
            c.list_containers(ListContainersRequest { filter: None }),
        )?;
        Ok(r.containers.into_iter().map(|c| c.id).collect())
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            &format!("StopPodSandbox {id}"),
            CALL_TIMEOUT,
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            &format!("RemovePodSandbox {id}"),
            CALL_TIMEOUT,
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )?;
        Ok(())
    }

    /// The ids of all pod sandboxes.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<String>> {
        let mut c = self.runtime.clone();
        let r = self.call(
            "ListPodSandbox",
            CALL_TIMEOUT,
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    /// Best effort: stop and remove every container and sandbox, each call bounded by 20 s,
    /// all of it by `limit`; used when tearing an environment down.
    pub fn remove_everything(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let t = Duration::from_secs(20);
        let mut rs = self.runtime.clone();
        let containers = self
            .call(
                "ListContainers",
                t,
                rs.list_containers(ListContainersRequest { filter: None }),
            )
            .map(|r| r.containers)
            .unwrap_or_default();
        for c in containers {
            if Instant::now() < deadline {
                let container_id = c.id;
                let _ = self.call(
                    "StopContainer",
                    t,
                    rs.stop_container(StopContainerRequest {
                        container_id: container_id.clone(),
                        timeout: 0,
                    }),
                );
                let _ = self.call(
                    "RemoveContainer",
                    t,
                    rs.remove_container(RemoveContainerRequest { container_id }),
                );
            }
        }
        let pods = self
            .call(
                "ListPodSandbox",
                t,
                rs.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .map(|r| r.items)
            .unwrap_or_default();
        for p in pods {
            if Instant::now() < deadline {
                let pod_sandbox_id = p.id;
                let _ = self.call(
                    "StopPodSandbox",
                    t,
                    rs.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: pod_sandbox_id.clone(),
                    }),
                );
                let _ = self.call(
                    "RemovePodSandbox",
                    t,
                    rs.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id }),
                );
            }
        }
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// The text of a CRI container log (`TIMESTAMP STREAM P|F TEXT` lines; `P` marks a partial
/// line continued by the next entry): every stream, lines joined with `\n`.
pub fn log_text(path: &Path) -> Result<String> {
    let raw = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_cri_log(&raw)
}

pub fn parse_cri_log(raw: &str) -> Result<String> {
    let mut out = String::new();
    for line in raw.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("not a CRI log line: {line:?}");
        };
        if stream != "stdout" && stream != "stderr" {
            bail!("unknown stream in CRI log line: {line:?}");
        }
        out.push_str(parts.next().unwrap_or(""));
        match tag {
            "F" => out.push('\n'),
            "P" => {}
            _ => bail!("unknown tag in CRI log line: {line:?}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_cri_log;

    #[test]
    fn cri_log_lines() {
        let raw = "2024-05-01T10:00:00.1Z stdout F hello world\n\
                   2024-05-01T10:00:00.2Z stderr P part \n\
                   2024-05-01T10:00:00.3Z stderr F two\n\
                   2024-05-01T10:00:00.4Z stdout F \n";
        assert_eq!(parse_cri_log(raw).unwrap(), "hello world\npart two\n\n");
        assert!(parse_cri_log("garbage\n").is_err());
    }
}
