//! The machine-readable result of a drill: the scenario, per-second series, per-load
//! percentiles, breaker state bands, fault windows and the verdicts. The HTML report is
//! drawn from this same value.

use crate::expect::{histogram, Verdict};
use crate::record::{BreakerState, Outcome, Recording};
use crate::scenario::{Plan, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize)]
pub struct DrillResult {
    pub name: String,
    pub scenario_file: String,
    pub scenario: Scenario,
    /// Seconds the drill ran.
    pub elapsed: f64,
    pub interrupted: bool,
    pub pass: bool,
    pub expectations: Vec<Verdict>,
    pub loads: Vec<LoadResult>,
    pub faults: Vec<FaultResult>,
    pub breakers: Vec<BreakerBands>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub name: String,
    pub channel: &'static str,
    pub target: String,
    /// Requests sent (answered, failed or timed out).
    pub requests: u64,
    pub successes: u64,
    pub success_rate: f64,
    /// Requests never sent: the drill was interrupted, or ran out of connections before
    /// its end. Counted apart: they say nothing about Quartet.
    pub not_sent: u64,
    /// Latencies from the scheduled start, in milliseconds.
    pub latency_ms: Percentiles,
    /// How many requests ended each way (`200`, `503`, `timeout`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// One entry per second of the drill, by scheduled start.
    pub series: Vec<Second>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Start of the second, from the start of the drill.
    pub t: u64,
    pub requests: u64,
    pub successes: u64,
    pub errors: u64,
    pub not_sent: u64,
    /// `None` when no request was scheduled in this second.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultResult {
    pub index: usize,
    pub target: String,
    pub description: String,
    pub planned_start: f64,
    pub planned_end: f64,
    /// When the drill asked for it, and when Quartet confirmed it.
    pub requested_at: Option<f64>,
    pub applied_at: Option<f64>,
    /// When the drill asked to remove it, and when Quartet confirmed.
    pub removing_at: Option<f64>,
    pub removed_at: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BreakerBands {
    pub channel: String,
    pub target: String,
    pub endpoint: String,
    pub bands: Vec<Band>,
}

/// A stretch of time in one state, as sampled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub state: BreakerState,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: us_to_ms(h.value_at_quantile(0.5)),
        p90: us_to_ms(h.value_at_quantile(0.9)),
        p99: us_to_ms(h.value_at_quantile(0.99)),
        p999: us_to_ms(h.value_at_quantile(0.999)),
        max: us_to_ms(h.max()),
    }
}

/// Turns samples into bands: one per stretch of equal state, ending where the next begins
/// (the last ends at the last sample).
pub fn bands(rec: &Recording) -> Vec<BreakerBands> {
    let mut out: Vec<BreakerBands> = Vec::new();
    for s in &rec.samples {
        let t = s.t.as_secs_f64();
        for b in &s.breakers {
            let entry = match out.iter_mut().position(|x| {
                x.target == b.target && x.endpoint == b.endpoint && x.channel == b.channel
            }) {
                Some(i) => &mut out[i],
                None => {
                    out.push(BreakerBands {
                        channel: b.channel.clone(),
                        target: b.target.clone(),
                        endpoint: b.endpoint.clone(),
                        bands: Vec::new(),
                    });
                    let last = out.len() - 1;
                    &mut out[last]
                }
            };
            match entry.bands.last_mut() {
                Some(last) if last.state == b.state => last.to = t,
                Some(last) => {
                    last.to = t;
                    entry.bands.push(Band {
                        from: t,
                        to: t,
                        state: b.state,
                    });
                }
                None => entry.bands.push(Band {
                    from: t,
                    to: t,
                    state: b.state,
                }),
            }
        }
    }
    out.sort_by(|a, b| (&a.target, &a.endpoint).cmp(&(&b.target, &b.endpoint)));
    out
}

/// The scenario as written, without secrets: passwords in SQL URLs and the values of
/// headers that carry credentials are replaced by `***` (the admin token is never written).
pub fn redacted(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    for l in &mut s.load {
        if let Some(url) = &mut l.request.url {
            *url = redact_url(url);
        }
        for (name, value) in l.request.headers.iter_mut() {
            let n = name.to_ascii_lowercase();
            if n.contains("token")
                || n.contains("authorization")
                || n.contains("secret")
                || n.contains("key")
                || n.contains("cookie")
            {
                *value = "***".to_string();
            }
        }
    }
    s
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`; `password=...` in a
/// key=value string too.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            let mut out = format!("{}{masked}{}", &url[..scheme_end + 3], &rest[at..]);
            if let Some(q) = out.find("password=") {
                let end = out[q..].find('&').map_or(out.len(), |e| q + e);
                out.replace_range(q + "password=".len()..end, "***");
            }
            return out;
        }
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the result from the plan, the recording and the verdicts.
pub fn build(plan: &Plan, rec: &Recording, verdicts: Vec<Verdict>) -> DrillResult {
    let seconds = rec.elapsed.as_secs() + 1;
    let loads = plan
        .loads
        .iter()
        .zip(&rec.loads)
        .map(|(l, lr)| {
            let done: Vec<_> = lr
                .records
                .iter()
                .filter(|r| r.outcome != Outcome::NotSent)
                .collect();
            let h = histogram(done.iter().map(|r| r.latency()));
            let successes = lr.records.iter().filter(|r| r.outcome.is_success()).count() as u64;
            let not_sent = lr
                .records
                .iter()
                .filter(|r| r.outcome == Outcome::NotSent)
                .count() as u64;
            let requests = lr.records.len() as u64 - not_sent;
            let mut outcomes = BTreeMap::new();
            for r in &lr.records {
                *outcomes.entry(r.outcome.label()).or_insert(0u64) += 1;
            }
            let mut series = Vec::new();
            let mut i = 0;
            let records = &lr.records;
            for t in 0..seconds {
                let end = Duration::from_secs(t + 1);
                let start_i = i;
                while i < records.len() && records[i].scheduled < end {
                    i += 1;
                }
                let slice = &records[start_i..i];
                let ok = slice.iter().filter(|r| r.outcome.is_success()).count() as u64;
                let unsent = slice
                    .iter()
                    .filter(|r| r.outcome == Outcome::NotSent)
                    .count() as u64;
                let n = slice.len() as u64 - unsent;
                let sent: Vec<_> = slice
                    .iter()
                    .filter(|r| r.outcome != Outcome::NotSent)
                    .collect();
                let sh = histogram(sent.iter().map(|r| r.latency()));
                let q = |p: f64| (!sent.is_empty()).then(|| us_to_ms(sh.value_at_quantile(p)));
                series.push(Second {
                    t,
                    requests: n,
                    not_sent: unsent,
                    successes: ok,
                    errors: n - ok,
                    success_rate: (n > 0).then(|| ok as f64 / n as f64),
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    max_ms: (!sent.is_empty()).then(|| us_to_ms(sh.max())),
                });
            }
            // Trailing seconds with nothing scheduled add nothing to a plot.
            while series
                .last()
                .is_some_and(|s| s.requests == 0 && s.not_sent == 0)
                && series.len() > 1
            {
                series.pop();
            }
            LoadResult {
                name: l.name.clone(),
                channel: l.channel.as_str(),
                target: l.target.clone(),
                requests,
                not_sent,
                successes,
                success_rate: if requests == 0 {
                    0.0
                } else {
                    successes as f64 / requests as f64
                },
                latency_ms: percentiles(&h),
                outcomes,
                series,
            }
        })
        .collect();
    let faults = rec
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| FaultResult {
            index: i + 1,
            target: f.target.clone(),
            description: f.description.clone(),
            planned_start: f.planned_start.as_secs_f64(),
            planned_end: f.planned_end.as_secs_f64(),
            requested_at: f.requested_at.map(|d| ms(d) / 1000.0),
            applied_at: f.applied_at.map(|d| ms(d) / 1000.0),
            removing_at: f.removing_at.map(|d| ms(d) / 1000.0),
            removed_at: f.removed_at.map(|d| ms(d) / 1000.0),
        })
        .collect();
    let pass = !rec.interrupted && verdicts.iter().all(|v| v.pass);
    DrillResult {
        name: plan.name.clone(),
        scenario_file: plan.file.clone(),
        scenario: redacted(&plan.scenario),
        elapsed: rec.elapsed.as_secs_f64(),
        interrupted: rec.interrupted,
        pass,
        expectations: verdicts,
        loads,
        faults,
        breakers: bands(rec),
    }
}

/// The summary table for the terminal.
pub fn table(result: &DrillResult) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "#".into(),
        "result".into(),
        "expectation".into(),
        "measured".into(),
    ]];
    for v in &result.expectations {
        rows.push([
            v.index.to_string(),
            if v.pass { "PASS".into() } else { "FAIL".into() },
            v.expected.clone(),
            v.measured.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "drill {}: {:.1}s{}\n\n",
        result.name,
        result.elapsed,
        if result.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    ));
    for l in &result.loads {
        out.push_str(&format!(
            "  load {} ({} -> {}): {} requests, {:.2}% ok, p50 {:.1}ms p90 {:.1}ms p99 {:.1}ms max {:.1}ms; {}\n",
            l.name,
            l.channel,
            l.target,
            l.requests,
            l.success_rate * 100.0,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p99,
            l.latency_ms.max,
            l.outcomes
                .iter()
                .map(|(k, v)| format!("{k} x {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for f in &result.faults {
        let applied = match (f.applied_at, f.removed_at) {
            (Some(a), Some(r)) => format!("applied {a:.2}s..{r:.2}s"),
            (Some(a), None) => format!("applied {a:.2}s, not removed"),
            _ => "never applied".to_string(),
        };
        out.push_str(&format!(
            "  fault {} on {}: {} at {}s for {}s ({applied})\n",
            f.index,
            f.target,
            f.description,
            f.planned_start,
            f.planned_end - f.planned_start
        ));
    }
    out.push('\n');
    for (n, r) in rows.iter().enumerate() {
        let line = format!(
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
        if n == 0 {
            out.push_str(&format!(
                "  {}\n",
                "-".repeat(widths.iter().sum::<usize>() + 6 + widths[3].min(1))
            ));
        }
    }
    let failed = result.expectations.iter().filter(|v| !v.pass).count();
    out.push_str(&format!(
        "\n{}: {} of {} expectations hold{}\n",
        if result.pass { "PASS" } else { "FAIL" },
        result.expectations.len() - failed,
        result.expectations.len(),
        if result.interrupted {
            "; the drill was interrupted"
        } else {
            ""
        }
    ));
    out
}
