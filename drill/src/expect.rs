//! Expectations evaluated on a [`Recording`]: pure functions of the data, so each is tested
//! on synthetic recordings.

use crate::record::{BreakerObs, Record, Recording};
use crate::scenario::{Anchor, Expect, Plan, Window};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// One expectation's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// 1-based, as the scenario's `[[expect]]` entries are counted.
    pub index: usize,
    pub kind: &'static str,
    /// What was expected: `success_rate of reads during fault 1 >= 99%`.
    pub expected: String,
    /// What was measured, in words: `99.6% (996 of 1000)`.
    pub measured: String,
    /// The measured number (a share, seconds, ...) when there is one.
    pub value: Option<f64>,
    pub pass: bool,
}

/// The requests of a load in a window.
///
/// `all` and `[START, END]` take the requests by scheduled start. A window relative to a
/// fault takes only the requests that surely met (or surely missed) the fault, because
/// setting and removing it are requests to the admin API whose effect lands somewhere
/// between asking and the answer:
///
/// - `before fault N`: requests that ended before the drill asked for the fault;
/// - `during fault N`: requests sent after Quartet confirmed the fault and before the drill
///   asked to remove it;
/// - `after fault N`: requests sent after Quartet confirmed the removal.
///
/// The few requests in flight at an edge are in neither window next to it. Requests never
/// sent are in no window.
pub fn select<'a>(records: &'a [Record], w: &Window, rec: &Recording) -> Vec<&'a Record> {
    // A request never sent says nothing about Quartet (an interrupted drill fails anyway).
    let keep = |pred: &dyn Fn(&Record) -> bool| {
        records
            .iter()
            .filter(|r| r.outcome != crate::record::Outcome::NotSent && pred(r))
            .collect()
    };
    match w {
        Window::All => keep(&|_| true),
        Window::Range(a, b) => keep(&|r| r.scheduled >= *a && r.scheduled < *b),
        Window::Before(i) => match rec.faults.get(*i) {
            Some(f) => keep(&|r| r.end < f.start_requested()),
            None => Vec::new(),
        },
        Window::During(i) => match rec.faults.get(*i) {
            Some(f) => keep(&|r| r.sent >= f.start() && r.sent < f.end_requested()),
            None => Vec::new(),
        },
        Window::After(i) => match rec.faults.get(*i) {
            Some(f) => keep(&|r| r.sent >= f.end()),
            None => Vec::new(),
        },
    }
}

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn histogram(latencies: impl IntoIterator<Item = Duration>) -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant histogram bounds are valid");
    for l in latencies {
        h.saturating_record(duration_us(l).max(1));
    }
    h
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

pub fn fmt_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 10_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p == 100.0 || p == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.2}%")
    }
}

fn anchor_time(a: &Anchor, rec: &Recording) -> Option<Duration> {
    match a {
        Anchor::At(t) => Some(*t),
        Anchor::FaultStart(i) => rec.faults.get(*i).map(|f| f.start()),
        Anchor::FaultEnd(i) => rec.faults.get(*i).map(|f| f.end()),
    }
}

fn anchor_words(a: &Anchor) -> String {
    match a {
        Anchor::At(t) => format!("of t={}s", trim_secs(*t)),
        Anchor::FaultStart(i) => format!("of fault {} starting", i + 1),
        Anchor::FaultEnd(i) => format!("after fault {} ends", i + 1),
    }
}

/// `1.5` for 1.5 s, `2` for 2 s.
fn trim_secs(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn target_words(target: &str, endpoint: &Option<String>) -> String {
    match endpoint {
        Some(e) => format!("{target} ({e})"),
        None => target.to_string(),
    }
}

/// Evaluates every expectation of the plan.
pub fn evaluate(plan: &Plan, rec: &Recording) -> Vec<Verdict> {
    plan.expects
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v = evaluate_one(plan, e, rec);
            v.index = i + 1;
            v
        })
        .collect()
}

fn load_name(plan: &Plan, i: usize) -> &str {
    plan.loads.get(i).map_or("?", |l| l.name.as_str())
}

fn records_of(rec: &Recording, i: usize) -> &[Record] {
    rec.loads.get(i).map_or(&[], |l| l.records.as_slice())
}

/// Evaluates one expectation (its `index` is left 0 for the caller to set).
pub fn evaluate_one(plan: &Plan, e: &Expect, rec: &Recording) -> Verdict {
    let verdict = |kind, expected: String, measured: String, value, pass| Verdict {
        index: 0,
        kind,
        expected,
        measured,
        value,
        pass,
    };
    match e {
        Expect::SuccessRate {
            load,
            window,
            at_least,
        } => {
            let expected = format!(
                "success rate of {} {} >= {}",
                load_name(plan, *load),
                window,
                pct(*at_least)
            );
            let rs = select(records_of(rec, *load), window, rec);
            if rs.is_empty() {
                return verdict(
                    "success_rate",
                    expected,
                    "no requests in the window".into(),
                    None,
                    false,
                );
            }
            let ok = rs.iter().filter(|r| r.outcome.is_success()).count();
            let share = ok as f64 / rs.len() as f64;
            verdict(
                "success_rate",
                expected,
                format!("{} ({ok} of {})", pct(share), rs.len()),
                Some(share),
                share >= *at_least,
            )
        }
        Expect::Latency {
            load,
            window,
            percentile,
            under,
        } => {
            let expected = format!(
                "p{percentile} latency of {} {} < {}",
                load_name(plan, *load),
                window,
                fmt_ms(*under)
            );
            let rs = select(records_of(rec, *load), window, rec);
            let done: Vec<&&Record> = rs
                .iter()
                .filter(|r| r.outcome != crate::record::Outcome::NotSent)
                .collect();
            if done.is_empty() {
                return verdict(
                    "latency",
                    expected,
                    "no requests in the window".into(),
                    None,
                    false,
                );
            }
            let h = histogram(done.iter().map(|r| r.latency()));
            let v = Duration::from_micros(h.value_at_quantile(percentile / 100.0));
            verdict(
                "latency",
                expected,
                format!("{} over {} requests", fmt_ms(v), done.len()),
                Some(v.as_secs_f64()),
                v < *under,
            )
        }
        Expect::MaxDuration { load, under } => {
            let expected = format!(
                "no request of {} held longer than {}",
                load_name(plan, *load),
                fmt_ms(*under)
            );
            let rs: Vec<&Record> = records_of(rec, *load)
                .iter()
                .filter(|r| r.outcome != crate::record::Outcome::NotSent)
                .collect();
            let Some(max) = rs.iter().map(|r| r.service_time()).max() else {
                return verdict("max_duration", expected, "no requests".into(), None, false);
            };
            let over = rs.iter().filter(|r| r.service_time() > *under).count();
            let measured = if over == 0 {
                format!("longest {}", fmt_ms(max))
            } else {
                format!("longest {}; {over} over", fmt_ms(max))
            };
            verdict(
                "max_duration",
                expected,
                measured,
                Some(max.as_secs_f64()),
                over == 0,
            )
        }
        Expect::ErrorStatus {
            load,
            window,
            status,
            at_least,
            at_most,
        } => {
            let mut bounds = Vec::new();
            if let Some(l) = at_least {
                bounds.push(format!(">= {}", pct(*l)));
            }
            if let Some(m) = at_most {
                bounds.push(format!("<= {}", pct(*m)));
            }
            let expected = format!(
                "share of {status} for {} {} {}",
                load_name(plan, *load),
                window,
                bounds.join(" and ")
            );
            let rs = select(records_of(rec, *load), window, rec);
            if rs.is_empty() {
                return verdict(
                    "error_status",
                    expected,
                    "no requests in the window".into(),
                    None,
                    false,
                );
            }
            let n = rs
                .iter()
                .filter(|r| r.outcome.status() == Some(*status))
                .count();
            let share = n as f64 / rs.len() as f64;
            let pass = at_least.is_none_or(|l| share >= l) && at_most.is_none_or(|m| share <= m);
            verdict(
                "error_status",
                expected,
                format!("{} ({n} of {})", pct(share), rs.len()),
                Some(share),
                pass,
            )
        }
        Expect::BreakerOpens {
            target,
            endpoint,
            from,
            within,
        } => breaker_verdict(rec, target, endpoint, from, *within, true),
        Expect::BreakerCloses {
            target,
            endpoint,
            from,
            within,
        } => breaker_verdict(rec, target, endpoint, from, *within, false),
    }
}

/// `opens`: the first sample at or after the anchor where a selected breaker is open in
/// any way. Else (closes): the first where every selected breaker is closed.
fn breaker_verdict(
    rec: &Recording,
    target: &str,
    endpoint: &Option<String>,
    from: &Anchor,
    within: Duration,
    opens: bool,
) -> Verdict {
    let kind = if opens {
        "breaker_opens"
    } else {
        "breaker_closes"
    };
    let expected = format!(
        "breaker of {} {} within {} {}",
        target_words(target, endpoint),
        if opens { "opens" } else { "closes" },
        fmt_ms(within),
        anchor_words(from)
    );
    let fail = |measured: String| Verdict {
        index: 0,
        kind,
        expected: expected.clone(),
        measured,
        value: None,
        pass: false,
    };
    let Some(t0) = anchor_time(from, rec) else {
        return fail("the fault was never applied".into());
    };
    let selected = |b: &&BreakerObs| b.matches(target, endpoint.as_deref());
    if !rec
        .samples
        .iter()
        .any(|s| s.breakers.iter().any(|b| selected(&b)))
    {
        return fail(format!(
            "no breaker of {} was seen on /admin/breakers",
            target_words(target, endpoint)
        ));
    }
    let hit = rec.samples.iter().filter(|s| s.t >= t0).find(|s| {
        let mut sel = s.breakers.iter().filter(selected).peekable();
        if sel.peek().is_none() {
            return false;
        }
        if opens {
            sel.any(|b| b.state.is_open())
        } else {
            sel.all(|b| b.state == crate::record::BreakerState::Closed)
        }
    });
    match hit {
        Some(s) => {
            let after = s.t - t0;
            Verdict {
                index: 0,
                kind,
                expected,
                measured: format!(
                    "{} after {}",
                    if opens { "opened" } else { "closed" },
                    fmt_ms(after)
                ),
                value: Some(after.as_secs_f64()),
                pass: after <= within,
            }
        }
        None => fail(if opens {
            "never seen open".into()
        } else {
            "never seen closed again".into()
        }),
    }
}
