//! Simulated hosts: network namespaces, each with one veth link (`eth0`) to a bridge in a
//! dedicated "switch" namespace, so nothing touches the host's own network. Every namespace
//! is a guard: dropping it kills what still runs inside and deletes it (its veth goes with it).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod counters;

pub use counters::{port_counters, port_delta, HostBytes};

/// Every namespace this tool creates starts with this (`shoal-bench cleanup` looks for it).
pub const PREFIX: &str = "shb-";

/// Work directories (in the temp dir) start with this.
pub const WORK_DIR_PREFIX: &str = "shoal-bench-";

/// Interface name of every host's link, inside its namespace.
pub const HOST_IFACE: &str = "eth0";

const BRIDGE: &str = "br0";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    run_tool("ip", args)
}

pub fn run_tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{program}` (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with loopback up; deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    pub fn create(name: &str) -> Result<Self> {
        if !name.starts_with(PREFIX) {
            bail!("namespace {name:?} must start with {PREFIX:?}");
        }
        ip(&["netns", "add", name])?;
        let ns = Namespace {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes ownership of an existing namespace (to delete a leftover).
    pub fn adopt(name: &str) -> Self {
        Namespace {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME PROGRAM`: `ip` execs the program, so the child's pid is the
    /// program's.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program.as_ref())
            .stdin(Stdio::null());
        cmd
    }

    /// Sets sysctls (`net.ipv4.…=VALUE`) as this namespace sees them, in one `sysctl` run.
    pub fn sysctls(&self, settings: &[String]) -> Result<()> {
        if settings.is_empty() {
            return Ok(());
        }
        let mut args = vec!["netns", "exec", &self.name, "sysctl", "-q", "-w"];
        args.extend(settings.iter().map(String::as_str));
        ip(&args).map(drop)
    }

    pub fn tokio_command(&self, program: impl AsRef<Path>) -> tokio::process::Command {
        tokio::process::Command::from(self.command(program))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// Kills whatever still runs in the namespace, then deletes it. Errors are reported, not
/// returned: this runs from destructors.
fn delete_namespace(name: &str) {
    kill_namespace_processes(name);
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("shoal-bench: warning: {e:#}");
    }
}

fn namespace_pids(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_namespace_processes(name: &str) {
    let pids = namespace_pids(name);
    if pids.is_empty() {
        return;
    }
    crate::processes::signal_pids(&pids, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !namespace_pids(name).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::processes::signal_pids(&namespace_pids(name), libc::SIGKILL);
}

/// Names of existing namespaces starting with `prefix`.
pub fn list_namespaces(prefix: &str) -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    // Lines look like `name (id: 3)` or `name`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes the namespaces of run `run` (and what runs inside): a killed run that had the same
/// id left them behind.
pub fn remove_leftovers(run: &str) -> Result<()> {
    for stale in list_namespaces(&format!("{PREFIX}{run}-"))? {
        eprintln!("removing stale namespace {stale}");
        drop(Namespace::adopt(&stale));
    }
    Ok(())
}

/// `shoal-bench cleanup`: every namespace starting with `prefix` (and what runs inside), and
/// leftover work directories in the temp dir and /dev/shm. Meant for after a run was killed.
pub fn cleanup_command(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        bail!("refusing to remove every namespace: give a non-empty --prefix");
    }
    let mut names = list_namespaces(prefix)?;
    // Hosts before switches, so their links go away from the host side first.
    names.sort_by_key(|n| (n.ends_with("-sw"), n.clone()));
    for name in &names {
        delete_namespace(name);
        eprintln!("removed namespace {name}");
    }
    eprintln!("{} namespace(s) removed", names.len());
    // Work directories of runs that could not clean up (killed with SIGKILL).
    let dirs = [std::env::temp_dir(), std::path::PathBuf::from("/dev/shm")];
    let entries = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(WORK_DIR_PREFIX) && entry.path().is_dir() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => eprintln!("removed {}", entry.path().display()),
                Err(e) => eprintln!("warning: removing {}: {e}", entry.path().display()),
            }
        }
    }
    Ok(())
}

/// A simulated host: its namespace, its address and the name of its port on the switch.
#[derive(Debug)]
pub struct Host {
    pub ns: Namespace,
    pub ip: Ipv4Addr,
    pub switch_port: String,
}

/// Hosts on one bridge. Field order matters: hosts are dropped before the switch.
#[derive(Debug)]
pub struct Network {
    hosts: Vec<Host>,
    switch: Namespace,
    run: String,
}

/// Prefix length of every host address; hosts live in 10.77.0.0/16.
const PREFIX_LEN: u8 = 16;

impl Network {
    /// A switch namespace `shb-RUN-sw` with a bridge. `run` keeps concurrent runs apart.
    pub fn new(run: &str) -> Result<Self> {
        let switch = Namespace::create(&format!("{PREFIX}{run}-sw"))?;
        let sw = switch.name().to_owned();
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        Ok(Network {
            hosts: Vec::new(),
            switch,
            run: run.to_owned(),
        })
    }

    pub fn switch(&self) -> &Namespace {
        &self.switch
    }

    /// Adds host `short` (namespace `shb-RUN-SHORT`) at `ip`, linked to the bridge.
    pub fn add_host(&mut self, short: &str, ip_addr: Ipv4Addr) -> Result<usize> {
        let ns = Namespace::create(&format!("{PREFIX}{}-{short}", self.run))?;
        let port = format!("p-{short}");
        if port.len() > 15 {
            bail!("host name {short:?} is too long for an interface name");
        }
        let sw = self.switch.name();
        ip(&[
            "link",
            "add",
            HOST_IFACE,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            sw,
        ])?;
        ip(&["-n", sw, "link", "set", &port, "master", BRIDGE, "up"])?;
        let cidr = format!("{ip_addr}/{PREFIX_LEN}");
        ip(&["-n", ns.name(), "addr", "add", &cidr, "dev", HOST_IFACE])?;
        ip(&["-n", ns.name(), "link", "set", HOST_IFACE, "up"])?;
        self.hosts.push(Host {
            ns,
            ip: ip_addr,
            switch_port: port,
        });
        Ok(self.hosts.len() - 1)
    }

    /// The hosts of a cluster benchmark: `origin` ([`ORIGIN_IP`]), `ctl` ([`CONTROL_IP`]), then
    /// `n1`…`nN` ([`node_ip`]), in this order (see [`Network::origin`] and the others).
    pub fn cluster(run: &str, nodes: u32) -> Result<Self> {
        let mut net = Network::new(run)?;
        net.add_host("origin", ORIGIN_IP)?;
        net.add_host("ctl", CONTROL_IP)?;
        for i in 0..nodes {
            net.add_host(&format!("n{}", i + 1), node_ip(i))?;
        }
        Ok(net)
    }

    /// Of a [`Network::cluster`]: the origin, the control host and node `i` (0-based).
    pub fn origin(&self) -> &Host {
        self.host(0)
    }

    pub fn ctl(&self) -> &Host {
        self.host(1)
    }

    pub fn node(&self, i: usize) -> &Host {
        self.host(2 + i)
    }

    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

/// Address of node `i` (0-based): 10.77.1.1, 10.77.1.2, … 250 per /24.
pub fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, (i % 250 + 1) as u8)
}

pub const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_distinct_and_valid() {
        let all: std::collections::HashSet<_> = (0..500).map(node_ip).collect();
        assert_eq!(all.len(), 500);
        assert!(!all.contains(&ORIGIN_IP) && !all.contains(&CONTROL_IP));
        assert_eq!(node_ip(0), Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(node_ip(249), Ipv4Addr::new(10, 77, 1, 250));
        assert_eq!(node_ip(250), Ipv4Addr::new(10, 77, 2, 1));
    }
}
