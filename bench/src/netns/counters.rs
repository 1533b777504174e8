//! Traffic counters of the simulated hosts: an interface's, a namespace's TCP stack's, and
//! every switch port's in one reading.

use std::collections::HashMap;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use super::Namespace;

impl Namespace {
    /// An interface counter (`tx_bytes`, `rx_bytes`, …) as the namespace sees it in
    /// `/sys/class/net/IF/statistics/`.
    pub fn counter(&self, iface: &str, counter: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{iface}/statistics/{counter}");
        let out = self
            .command("cat")
            .arg(&path)
            .output()
            .with_context(|| format!("reading {path} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "reading {path} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("{path} in {} holds {:?}", self.name, text.trim()))
    }

    pub fn tcp_stats(&self) -> Result<TcpStats> {
        let out = self
            .command("cat")
            .args(["/proc/net/snmp", "/proc/net/netstat"])
            .output()
            .with_context(|| format!("reading TCP counters in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "reading TCP counters in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(TcpStats::parse(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// TCP counters of a namespace's stack, from `/proc/net/snmp` and `/proc/net/netstat`: the
/// loss episodes a shaped link causes show up as retransmissions and, when whole windows are
/// lost, retransmission timeouts (each a stall of at least 200 ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    pub retransmitted_segments: u64,
    pub timeouts: u64,
}

impl TcpStats {
    /// Parses the two files' text (header lines followed by value lines, `Prefix: names…` /
    /// `Prefix: values…`); counters not found count as 0.
    pub fn parse(text: &str) -> TcpStats {
        let mut values = std::collections::HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (Some((p1, names)), Some((p2, nums))) =
                (pair[0].split_once(':'), pair[1].split_once(':'))
            else {
                continue;
            };
            if p1 != p2 || names.split_whitespace().any(|n| n.parse::<i64>().is_ok()) {
                continue;
            }
            for (n, v) in names.split_whitespace().zip(nums.split_whitespace()) {
                if let Ok(v) = v.parse::<u64>() {
                    values.insert(format!("{p1}:{n}"), v);
                }
            }
        }
        let get = |k: &str| values.get(k).copied().unwrap_or(0);
        TcpStats {
            retransmitted_segments: get("Tcp:RetransSegs"),
            timeouts: get("TcpExt:TCPTimeouts"),
        }
    }

    pub fn since(self, before: TcpStats) -> TcpStats {
        TcpStats {
            retransmitted_segments: self
                .retransmitted_segments
                .saturating_sub(before.retransmitted_segments),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
        }
    }
}

/// Bytes each host sent and received so far, by switch port name, read in one go from the
/// switch side (a port's rx is its host's upload, its tx the host's download).
pub async fn port_counters(switch: &Namespace) -> Result<HashMap<String, HostBytes>> {
    let out = tokio::process::Command::new("ip")
        .args(["-j", "-s", "-n", switch.name(), "link", "show"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running `ip -j -s link show`")?;
    if !out.status.success() {
        bail!(
            "`ip -j -s -n {} link show` failed: {}",
            switch.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_port_counters(&out.stdout)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostBytes {
    pub sent: u64,
    pub received: u64,
}

/// What `port` carried between two readings of [`port_counters`] (0 for a port missing from
/// either).
pub fn port_delta(
    before: &HashMap<String, HostBytes>,
    after: &HashMap<String, HostBytes>,
    port: &str,
) -> HostBytes {
    let (b, a) = (
        before.get(port).copied().unwrap_or_default(),
        after.get(port).copied().unwrap_or_default(),
    );
    HostBytes {
        sent: a.sent.saturating_sub(b.sent),
        received: a.received.saturating_sub(b.received),
    }
}

fn parse_port_counters(json: &[u8]) -> Result<HashMap<String, HostBytes>> {
    let links: Vec<serde_json::Value> =
        serde_json::from_slice(json).context("parsing `ip -j -s link show`")?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?;
            let stats = &l["stats64"];
            Some((
                name.to_owned(),
                HostBytes {
                    sent: stats["rx"]["bytes"].as_u64()?,
                    received: stats["tx"]["bytes"].as_u64()?,
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counters_from_ip_json() {
        let json = br#"[{"ifname":"lo","stats64":{"rx":{"bytes":1},"tx":{"bytes":2}}},
            {"ifname":"p-n1","link":"br0","stats64":{"rx":{"bytes":300},"tx":{"bytes":4000}}},
            {"ifname":"br0"}]"#;
        let m = parse_port_counters(json).unwrap();
        assert_eq!(
            m["p-n1"],
            HostBytes {
                sent: 300,
                received: 4000
            }
        );
        assert_eq!(m.len(), 2);
        assert!(parse_port_counters(b"not json").is_err());
    }

    #[test]
    fn tcp_counters_from_proc() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 42 0\n\
                    TcpExt: SyncookiesSent TCPTimeouts\nTcpExt: 0 7\n";
        let s = TcpStats::parse(text);
        assert_eq!(
            s,
            TcpStats {
                retransmitted_segments: 42,
                timeouts: 7
            }
        );
        assert_eq!(TcpStats::parse("garbage\n"), TcpStats::default());
        let before = TcpStats {
            retransmitted_segments: 40,
            timeouts: 9,
        };
        assert_eq!(s.since(before).retransmitted_segments, 2);
        assert_eq!(s.since(before).timeouts, 0);
    }
}
