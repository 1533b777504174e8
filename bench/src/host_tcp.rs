//! The simulated hosts' TCP: the congestion control and the smallest TSO packet every host
//! namespace uses, so that the 2 shared cores spend their time on the links' traffic rather
//! than on artefacts of simulating 17 hosts on them.
//!
//! Two settings of an ordinary host cost a simulation far more than they cost real hosts:
//! - **bbr without the fq qdisc** (this machine's default; tbf is the root qdisc, and the
//!   kernel here has no fq to put under it) paces every packet with its own timer. With eight
//!   transfers per link, 17 simulated hosts at 100 Mbit/s kept both cores 91 % busy moving
//!   plain TCP and nothing else; cubic, Linux's default and what most Kubernetes nodes run,
//!   45 %.
//! - **TSO sizing**: TCP hands the device packets of about a millisecond of the flow's rate,
//!   2 segments for a flow of a few Mbit/s. A NIC cuts those in hardware; a veth passes each
//!   through the bridge, two tbf queues and the receiver's stack in software. With cubic and at
//!   least 32 segments per packet the same traffic took 22 % (`tcp_min_tso_segs`; bbr ignores
//!   it); the benchmark uses 16, which did as well as 32 in the swarm runs.
//!
//! Neither changes what the links carry: tbf still holds every link to its rate.
//! `--congestion-control machine --min-tso-segs 0` keeps the machine's own settings.

use anyhow::{bail, Context, Result};

const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// What every simulated host gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTcp {
    /// `None`: the machine's default.
    pub congestion_control: Option<String>,
    /// `None`: the machine's default.
    pub min_tso_segs: Option<u32>,
}

impl HostTcp {
    /// From the command line: `machine` and 0 mean "leave it".
    pub fn from_args(congestion_control: &str, min_tso_segs: u32) -> Result<Self> {
        let cc = match congestion_control {
            "machine" => None,
            name if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Some(name.to_owned())
            }
            other => bail!("congestion control {other:?} is not a kernel module name"),
        };
        Ok(HostTcp {
            congestion_control: cc,
            min_tso_segs: (min_tso_segs > 0).then_some(min_tso_segs),
        })
    }

    /// The `KEY=VALUE` settings for each host namespace.
    pub fn sysctls(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cc) = &self.congestion_control {
            out.push(format!("net.ipv4.tcp_congestion_control={cc}"));
        }
        if let Some(segs) = self.min_tso_segs {
            out.push(format!("net.ipv4.tcp_min_tso_segs={segs}"));
        }
        out
    }
}

/// A namespace may only pick a congestion control the machine lists as allowed; this adds
/// the one asked for while the benchmark runs and puts the list back when dropped.
#[derive(Debug)]
pub struct AllowedCongestionControl {
    /// The list as it was, when this guard changed it.
    original: Option<String>,
}

impl AllowedCongestionControl {
    pub fn ensure(host: &HostTcp) -> Result<Self> {
        let Some(name) = &host.congestion_control else {
            return Ok(AllowedCongestionControl { original: None });
        };
        let available =
            std::fs::read_to_string(AVAILABLE).with_context(|| format!("reading {AVAILABLE}"))?;
        if !available.split_whitespace().any(|a| a == name) {
            bail!(
                "this kernel has no {name:?} congestion control (available: {}); \
                 pass --congestion-control machine",
                available.trim()
            );
        }
        let allowed =
            std::fs::read_to_string(ALLOWED).with_context(|| format!("reading {ALLOWED}"))?;
        let allowed = allowed.trim().to_owned();
        if allowed.split_whitespace().any(|a| a == name) {
            return Ok(AllowedCongestionControl { original: None });
        }
        std::fs::write(ALLOWED, format!("{allowed} {name}"))
            .with_context(|| format!("allowing {name} in {ALLOWED}"))?;
        Ok(AllowedCongestionControl {
            original: Some(allowed),
        })
    }
}

impl Drop for AllowedCongestionControl {
    fn drop(&mut self) {
        if let Some(list) = &self.original {
            if let Err(e) = std::fs::write(ALLOWED, list) {
                eprintln!("shoal-bench: could not restore {ALLOWED} to {list:?}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_become_sysctls() {
        let t = HostTcp::from_args("cubic", 16).unwrap();
        assert_eq!(
            t.sysctls(),
            [
                "net.ipv4.tcp_congestion_control=cubic",
                "net.ipv4.tcp_min_tso_segs=16"
            ]
        );
        assert!(HostTcp::from_args("machine", 0)
            .unwrap()
            .sysctls()
            .is_empty());
        for bad in ["", "cubic bbr", "../x", "a=b"] {
            assert!(HostTcp::from_args(bad, 0).is_err(), "{bad:?}");
        }
    }
}
