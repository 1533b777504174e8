//! Results of `shoal-bench faults`: JSON (the stable form, parsed by the smoke test) and a
//! table for people. Every figure is a ratio or an amount with a target of issue 21; a target
//! is met when every run of its scenario completed and stayed within it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::lazy_pod_report::median;

/// How the figures are taken, for the reader of the JSON.
pub const METHOD: &str = "Each run of each scenario builds its own world on loopback (Debian's \
     docker-registry, shoal-supernode, shoal-peer daemons from --bin-dir) and measures a \
     fault-free baseline and the faulted case in the same run, with shoal-testkit's scenarios \
     (the functions the peer's CI tests assert loose bounds on). kill-parent / stall-parent: \
     the last surviving get's time from the swarm's common start, faulted ÷ fault-free, every \
     peer shaped by its own --download-rate. registry: requests reaching the registry side of \
     two fault proxies (5 % 503, 5 % reset, seeded per run), faulty ÷ clean, per client (a \
     manifest+HEAD+GET pull through the mirror; shoal-peer get). overload: N clients released \
     at once on one cold blob through one peer: blob HEADs upstream per credential, upstream \
     blob body bytes ÷ blob length, failed clients, the peer's VmHWM.";

/// One figure of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// Which target it is measured against (a key of [`ScenarioReport::targets`]).
    pub target: String,
    pub value: f64,
}

/// One run of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run: u32,
    /// Why the run failed (a client got wrong bytes, a wait timed out, …), if it did.
    pub error: Option<String>,
    pub measures: Vec<Measure>,
    /// The raw figures behind the measures, for people.
    pub detail: String,
    pub seconds: f64,
}

/// One target of a scenario over all runs.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    pub target: String,
    /// The figure must be ≤ this.
    pub limit: f64,
    pub unit: String,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub max: Option<f64>,
    /// Runs that produced the figure.
    pub runs: u32,
    /// Every run completed and its figure is ≤ `limit`.
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub runs: Vec<RunReport>,
    pub targets: Vec<TargetSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultsReport {
    pub runs: u32,
    pub scenarios: Vec<ScenarioReport>,
    /// Every target of every scenario met.
    pub all_met: bool,
    /// Runs that failed, over all scenarios.
    pub failed_runs: u32,
    pub method: String,
}

/// A target: its key, what the figure is, its limit and unit.
pub struct Target {
    pub key: &'static str,
    pub limit: f64,
    pub unit: &'static str,
}

impl ScenarioReport {
    /// Summarises `runs` against `targets`.
    pub fn new(scenario: &str, targets: &[Target], runs: Vec<RunReport>) -> ScenarioReport {
        let failed = runs.iter().any(|r| r.error.is_some());
        let targets = targets
            .iter()
            .map(|t| {
                let mut values: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| &r.measures)
                    .filter(|m| m.target == t.key)
                    .map(|m| m.value)
                    .collect();
                values.sort_by(f64::total_cmp);
                let median = (!values.is_empty()).then(|| median(values.clone()));
                TargetSummary {
                    target: t.key.to_owned(),
                    limit: t.limit,
                    unit: t.unit.to_owned(),
                    min: values.first().copied(),
                    median,
                    max: values.last().copied(),
                    runs: values.len() as u32,
                    met: !failed && !values.is_empty() && values.iter().all(|v| *v <= t.limit),
                }
            })
            .collect();
        ScenarioReport {
            scenario: scenario.to_owned(),
            runs,
            targets,
        }
    }
}

impl FaultsReport {
    pub fn new(runs: u32, scenarios: Vec<ScenarioReport>) -> FaultsReport {
        let all_met = scenarios.iter().all(|s| s.targets.iter().all(|t| t.met));
        let failed_runs = scenarios
            .iter()
            .flat_map(|s| &s.runs)
            .filter(|r| r.error.is_some())
            .count() as u32;
        FaultsReport {
            runs,
            scenarios,
            all_met,
            failed_runs,
            method: METHOD.to_owned(),
        }
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "shoal-bench faults: issue 21's targets, {} run(s) per scenario, each against a \
             fault-free baseline of the same run",
            self.runs
        );
        let runs: Vec<String> = (1..=self.runs).map(|r| format!("run {r}")).collect();
        let _ = write!(s, "\n{:<14}{:<46}{:>10}", "scenario", "figure", "target");
        for r in &runs {
            let _ = write!(s, "{r:>9}");
        }
        let _ = writeln!(s, "{:>9}{:>9}{:>9}  result", "min", "median", "max");
        for sc in &self.scenarios {
            for t in &sc.targets {
                let _ = write!(
                    s,
                    "{:<14}{:<46}{:>10}",
                    sc.scenario,
                    t.target,
                    format!("≤ {}{}", number(t.limit), t.unit)
                );
                for run in 1..=self.runs {
                    let v = sc
                        .runs
                        .iter()
                        .find(|r| r.run == run)
                        .and_then(|r| r.measures.iter().find(|m| m.target == t.target));
                    let cell = match (v, sc.runs.iter().find(|r| r.run == run)) {
                        (Some(m), _) => number(m.value),
                        (None, Some(r)) if r.error.is_some() => "failed".into(),
                        _ => "-".into(),
                    };
                    let _ = write!(s, "{cell:>9}");
                }
                let opt = |v: Option<f64>| v.map(number).unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "{:>9}{:>9}{:>9}  {}",
                    opt(t.min),
                    opt(t.median),
                    opt(t.max),
                    if t.met { "PASS" } else { "MISS" }
                );
            }
        }
        let _ = writeln!(s, "\nper run:");
        for sc in &self.scenarios {
            for r in &sc.runs {
                let what = match &r.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => r.detail.clone(),
                };
                let _ = writeln!(
                    s,
                    "  {} run {} ({:.1} s): {what}",
                    sc.scenario, r.run, r.seconds
                );
            }
        }
        let _ = writeln!(
            s,
            "\n{}",
            if self.all_met {
                "every target met".to_owned()
            } else {
                format!("some targets missed ({} failed run(s))", self.failed_runs)
            }
        );
        s
    }
}

/// A figure with two decimals, or none when it is a whole number.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
