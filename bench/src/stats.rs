//! Numbers: the distribution lower bound, percentiles, Prometheus text parsing.

/// The time below which no scheme can give every node the blob:
/// `max(F/u_s, F/d, N·F/(u_s + N·u))`, with F in bits and rates in bit/s. The origin must send
/// every bit at least once, the slowest downlink must receive it, and the N·F bits all nodes
/// receive must be uploaded by the origin and the nodes together.
pub fn lower_bound_secs(
    size_bytes: u64,
    nodes: u32,
    origin_up: f64,
    node_down: f64,
    node_up: f64,
) -> f64 {
    let f = size_bytes as f64 * 8.0;
    let n = f64::from(nodes);
    (f / origin_up)
        .max(f / node_down)
        .max(n * f / (origin_up + n * node_up))
}

/// Nearest-rank percentile of ascending `sorted` (`p` in 0..=100).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What a round's node results come to: the times of the nodes that made it, ascending, and
/// the last of them when no node failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub times: Vec<f64>,
    pub completed: u32,
    pub failed: u32,
    pub last_s: Option<f64>,
}

impl Completion {
    /// From each node's (success, seconds).
    pub fn of(results: impl IntoIterator<Item = (bool, f64)>) -> Self {
        let mut times = Vec::new();
        let mut failed = 0;
        for (ok, seconds) in results {
            if ok {
                times.push(seconds);
            } else {
                failed += 1;
            }
        }
        times.sort_by(f64::total_cmp);
        let last_s = (failed == 0).then(|| times.last().copied()).flatten();
        Completion {
            completed: times.len() as u32,
            failed,
            last_s,
            times,
        }
    }
}

/// A peer's `/metrics` byte counters: what it downloaded from the origin and from other
/// peers, and what it uploaded to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerBytes {
    pub from_origin: u64,
    pub from_peers: u64,
    pub uploaded: u64,
}

impl PeerBytes {
    pub fn from_metrics(text: &str) -> Self {
        let m = "shoal_peer_download_bytes_total";
        PeerBytes {
            from_origin: prom_sum(text, m, &[("source", "origin")]) as u64,
            from_peers: prom_sum(text, m, &[("source", "peer")]) as u64,
            uploaded: prom_sum(text, "shoal_peer_upload_bytes_total", &[]) as u64,
        }
    }
}

/// Sum of the samples of `metric` in Prometheus text format whose labels include every
/// `name="value"` pair of `labels`.
pub fn prom_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (label_part, value) = if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.find('}')?;
                (&inner[..end], inner[end + 1..].trim())
            } else if rest.starts_with(' ') {
                ("", rest.trim())
            } else {
                return None; // a longer metric name sharing the prefix
            };
            let all_match = labels.iter().all(|(k, v)| {
                label_part
                    .split(',')
                    .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
            });
            if !all_match {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_matches_the_issue() {
        let r = 100e6;
        let b = lower_bound_secs(128 << 20, 8, r, r, r);
        assert!((b - 10.737).abs() < 0.01, "{b}");
        let b = lower_bound_secs(64 << 20, 16, r, r, r);
        assert!((b - 5.369).abs() < 0.01, "{b}");
        // Slow nodes' uploads dominate: N·F/(u_s + N·u).
        let b = lower_bound_secs(1_000_000, 10, 8e6, 80e6, 0.0);
        assert!((b - 10.0).abs() < 1e-9, "{b}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7.5], 99.0), Some(7.5));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    #[test]
    fn prometheus() {
        let text = "# HELP x\n\
            shoal_peer_download_bytes_total{source=\"peer\"} 100\n\
            shoal_peer_download_bytes_total{task=\"a\",source=\"origin\"} 5e1\n\
            shoal_peer_download_bytes_total{source=\"origin\",task=\"b\"} 25\n\
            shoal_peer_download_bytes_total_extra 9\n\
            shoal_peer_upload_bytes_total 70\n";
        let m = "shoal_peer_download_bytes_total";
        assert_eq!(prom_sum(text, m, &[("source", "peer")]), 100.0);
        assert_eq!(prom_sum(text, m, &[("source", "origin")]), 75.0);
        assert_eq!(prom_sum(text, m, &[]), 175.0);
        assert_eq!(prom_sum(text, "shoal_peer_upload_bytes_total", &[]), 70.0);
        assert_eq!(prom_sum("garbage {", m, &[]), 0.0);
        let p = PeerBytes::from_metrics(text);
        assert_eq!((p.from_origin, p.from_peers, p.uploaded), (75, 100, 70));
    }

    #[test]
    fn completion() {
        let c = Completion::of([(true, 3.0), (true, 1.0), (false, 9.0), (true, 2.0)]);
        assert_eq!((c.completed, c.failed, c.last_s), (3, 1, None));
        assert_eq!(c.times, [1.0, 2.0, 3.0]);
        let c = Completion::of([(true, 3.0), (true, 1.0)]);
        assert_eq!((c.completed, c.failed, c.last_s), (2, 0, Some(3.0)));
        assert_eq!(Completion::of([]).last_s, None);
    }
}
