//! No code: the tests in `tests/` check the deployment files (Helm chart, Dockerfile,
//! `docs/metrics.md`, the Grafana dashboard) against the workspace's binaries.
