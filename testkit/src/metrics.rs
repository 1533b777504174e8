//! Reading what a `/metrics` endpoint says (the Prometheus text format, version 0.0.4).
//!
//! Tests ask for a metric by name and a subset of its labels and get the sum of the matching
//! series, so adding a label to a metric does not break a test that does not care about it.

/// One series of a scrape: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(key, value)` of `want` is among this series' labels.
    pub fn has_labels(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every series of a scrape; comments, blank and malformed lines are skipped.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Sum of the series named `name` whose labels include all of `labels`; 0 when there are
/// none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_of(&parse_metrics(text), name, labels)
}

/// [`metric_value`] over samples already parsed (a test reading several from one scrape).
pub fn sum_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// [`metric_value`] with the series written as in a scrape: `name` or
/// `name{key="value",...}` (the labels a subset of the series').
pub fn metric_sum(text: &str, selector: &str) -> f64 {
    let (name, labels) = match selector.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
        None => (selector, vec![]),
    };
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    metric_value(text, name.trim(), &labels)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = line.rfind('}')?;
            (
                &line[..i],
                parse_labels(&line[i + 1..close]),
                &line[close + 1..],
            )
        }
        Some(i) => (&line[..i], vec![], &line[i..]),
        None => return None,
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `key="value",...` with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = &body[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP shoal_peer_download_bytes_total Bytes downloaded.
# TYPE shoal_peer_download_bytes_total counter
shoal_peer_download_bytes_total{source=\"origin\"} 1024
shoal_peer_download_bytes_total{source=\"peer\",peer=\"a,b\"} 2048
shoal_peer_download_bytes_total_extra 7
shoal_tasks 3 1700000000000
weird{path=\"a \\\"quoted\\\" \\\\ name\\nnext\"} 1.5e3
broken{x=\"1\"} notanumber

shoal_negative -2
";

    #[test]
    fn sums_series_matching_name_and_labels() {
        let name = "shoal_peer_download_bytes_total";
        assert_eq!(metric_value(SCRAPE, name, &[]), 3072.0);
        assert_eq!(metric_value(SCRAPE, name, &[("source", "origin")]), 1024.0);
        assert_eq!(metric_value(SCRAPE, name, &[("peer", "a,b")]), 2048.0);
        assert_eq!(metric_value(SCRAPE, name, &[("source", "nope")]), 0.0);
        assert!(metric_value(SCRAPE, "absent", &[]).is_sign_positive());
        assert_eq!(
            metric_value(SCRAPE, "shoal_tasks", &[]),
            3.0,
            "timestamp ignored"
        );
        assert_eq!(metric_value(SCRAPE, "shoal_negative", &[]), -2.0);
        assert_eq!(metric_value(SCRAPE, "broken", &[]), 0.0);
    }

    #[test]
    fn reads_escaped_label_values() {
        let samples = parse_metrics(SCRAPE);
        let weird = samples.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(weird.label("path"), Some("a \"quoted\" \\ name\nnext"));
        assert_eq!(weird.value, 1500.0);
        assert_eq!(samples.len(), 6, "{samples:?}");
    }

    #[test]
    fn selector_form_matches_like_name_and_labels() {
        assert_eq!(
            metric_sum(SCRAPE, "shoal_peer_download_bytes_total{source=\"peer\"}"),
            2048.0
        );
        assert_eq!(
            metric_sum(SCRAPE, "shoal_peer_download_bytes_total"),
            3072.0
        );
        assert_eq!(
            metric_sum(SCRAPE, "shoal_peer_download_bytes_total{}"),
            3072.0
        );
    }
}
