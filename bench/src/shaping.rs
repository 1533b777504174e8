//! Link shaping: a token-bucket filter on both ends of every host's veth, so each host gets
//! RATE up (its `eth0` egress) and RATE down (the switch port's egress).

use anyhow::Result;

use crate::netns::{run_tool, Network, HOST_IFACE};

/// The smallest bucket: one whole GSO packet must fit. A veth hands tbf TCP's super-packets
/// (up to 64 KiB of payload, plus every segment's headers in tbf's accounting); one larger
/// than the bucket is cut into MTU-sized packets, which then cross the bridge, the other
/// tbf and the receiver's stack one by one. At 62.5 KB (5 ms of 100 Mbit/s) that cost the
/// 16-node benchmark a tenth of its CPU and the origin hundreds of retransmitted segments.
const MIN_BURST: u64 = 96 << 10;

/// `tc … tbf` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bit_per_s: u64,
    pub burst_bytes: u64,
    pub latency_ms: u32,
}

impl Tbf {
    /// Burst: 5 ms at the rate, but at least [`MIN_BURST`]; latency 50 ms of queue.
    pub fn for_rate_mbit(mbit: u32) -> Self {
        let rate = u64::from(mbit) * 1_000_000;
        Tbf {
            rate_bit_per_s: rate,
            burst_bytes: (rate / 8 / 200).max(MIN_BURST),
            latency_ms: 50,
        }
    }

    pub fn tc_args(&self) -> Vec<String> {
        vec![
            "tbf".into(),
            "rate".into(),
            format!("{}bit", self.rate_bit_per_s),
            "burst".into(),
            self.burst_bytes.to_string(),
            "latency".into(),
            format!("{}ms", self.latency_ms),
        ]
    }
}

fn apply(ns: &str, iface: &str, tbf: &Tbf) -> Result<()> {
    let mut args = vec!["-n", ns, "qdisc", "replace", "dev", iface, "root"];
    let tbf_args = tbf.tc_args();
    args.extend(tbf_args.iter().map(String::as_str));
    run_tool("tc", &args)?;
    Ok(())
}

/// Shapes every host link of the network, both directions.
pub fn shape_all(net: &Network, tbf: &Tbf) -> Result<()> {
    for host in net.hosts() {
        apply(host.ns.name(), HOST_IFACE, tbf)?;
        apply(net.switch().name(), &host.switch_port, tbf)?;
    }
    Ok(())
}

/// Shapes every host link (see [`shape_all`]) and gives every host the same `sysctls`.
pub fn shape_hosts(net: &Network, tbf: &Tbf, sysctls: &[String]) -> Result<()> {
    shape_all(net, tbf)?;
    for host in net.hosts() {
        host.ns.sysctls(sysctls)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_mbit() {
        let t = Tbf::for_rate_mbit(100);
        assert_eq!(t.rate_bit_per_s, 100_000_000);
        assert_eq!(t.burst_bytes, 98_304);
        assert_eq!(
            t.tc_args().join(" "),
            "tbf rate 100000000bit burst 98304 latency 50ms"
        );
        assert_eq!(Tbf::for_rate_mbit(1).burst_bytes, 96 << 10);
        assert_eq!(Tbf::for_rate_mbit(1000).burst_bytes, 625_000);
    }
}
