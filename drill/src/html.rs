//! The self-contained HTML report: inline SVG charts drawn here from the result, the result
//! itself embedded as JSON, inline CSS, no script, no font and no URL to fetch, so it opens
//! the same anywhere, offline.

use crate::record::BreakerState;
use crate::result::{DrillResult, FaultResult, LoadResult};
use std::fmt::Write;

const W: f64 = 1040.0;
const ML: f64 = 58.0;
const MR: f64 = 58.0;
const MT: f64 = 30.0;
const MB: f64 = 34.0;

const OK: &str = "#2b8a3e";
const ERR: &str = "#e03131";
const RATE: &str = "#1971c2";
const P50: &str = "#1c7ed6";
const P90: &str = "#7048e8";
const P99: &str = "#e8590c";
const FAULT: &str = "#f08c00";
/// The top of the success-rate scale, in percent.
const RATE_TOP: f64 = 115.0;

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn state_color(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "#40c057",
        BreakerState::Open => "#e03131",
        BreakerState::HalfOpen => "#fab005",
        BreakerState::ForcedOpen => "#9c36b5",
        BreakerState::Disabled => "#adb5bd",
        BreakerState::Unknown => "#dee2e6",
    }
}

/// A "nice" step for about `n` ticks over `0..max`.
fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let k = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * mag
}

/// A step of whole seconds for about 12 ticks over `0..t_max`.
fn time_step(t_max: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
    .find(|s| t_max / s <= 12.0)
    .unwrap_or(1200.0)
}

fn fmt_num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e9 {
        format!("{}", v as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The frame shared by the time charts: x from 0 to `t_max` seconds.
struct Frame {
    h: f64,
    t_max: f64,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        ML + (t / self.t_max).clamp(0.0, 1.0) * (W - ML - MR)
    }
    fn plot_h(&self) -> f64 {
        self.h - MT - MB
    }
    fn y(&self, v: f64, max: f64) -> f64 {
        MT + self.plot_h() * (1.0 - (v / max).clamp(0.0, 1.0))
    }

    fn open(&self, out: &mut String, class: &str, label: &str) {
        let _ = write!(
            out,
            r#"<svg class="chart {class}" role="img" aria-label="{label}" viewBox="0 0 {W} {h}">"#,
            label = esc(label),
            h = self.h
        );
    }

    /// Shaded fault windows with their labels, under everything else.
    fn faults(&self, out: &mut String, faults: &[FaultResult], top: f64, bottom: f64) {
        for f in faults {
            let a = f.applied_at.unwrap_or(f.planned_start);
            let b = f.removed_at.unwrap_or(f.planned_end);
            let (x0, x1) = (self.x(a), self.x(b));
            let _ = write!(
                out,
                r#"<g class="fault-window"><rect x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{h:.1}" fill="{FAULT}" fill-opacity="0.13" stroke="{FAULT}" stroke-opacity="0.5" stroke-dasharray="4 3"><title>fault {i} on {t}: {d} ({a:.2}s to {b:.2}s)</title></rect><text x="{tx:.1}" y="{ty:.1}" class="fault-label">fault {i} · {d}</text></g>"#,
                w = (x1 - x0).max(1.0),
                h = bottom - top,
                i = f.index,
                t = esc(&f.target),
                d = esc(&f.description),
                tx = x0 + 4.0,
                ty = top + 12.0,
            );
        }
    }

    fn x_axis(&self, out: &mut String, bottom: f64) {
        let step = time_step(self.t_max);
        let mut t = 0.0;
        while t <= self.t_max + 1e-9 {
            let x = self.x(t);
            let _ = write!(
                out,
                r#"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{y2:.1}" class="tick"/><text x="{x:.1}" y="{ty:.1}" class="axis" text-anchor="middle">{l}s</text>"#,
                y2 = bottom + 4.0,
                ty = bottom + 17.0,
                l = fmt_num(t)
            );
            t += step;
        }
        let _ = write!(
            out,
            r#"<line x1="{ML}" y1="{bottom:.1}" x2="{x2}" y2="{bottom:.1}" class="axis-line"/>"#,
            x2 = W - MR
        );
    }

    /// Horizontal grid lines and labels for `0..max` on the left (or right) side.
    /// Ticks from 0 to `until` (at most `max`, the top of the scale).
    fn y_axis(&self, out: &mut String, max: f64, until: f64, step: f64, right: bool, unit: &str) {
        let mut v = 0.0;
        while v <= until.min(max) + 1e-9 {
            let y = self.y(v, max);
            if !right {
                let _ = write!(
                    out,
                    r#"<line x1="{ML}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" class="grid"/>"#,
                    x2 = W - MR
                );
            }
            let (x, anchor) = if right {
                (W - MR + 6.0, "start")
            } else {
                (ML - 6.0, "end")
            };
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{ty:.1}" class="axis" text-anchor="{anchor}">{l}{unit}</text>"#,
                ty = y + 4.0,
                l = fmt_num(v)
            );
            v += step;
        }
    }
}

fn t_max(result: &DrillResult) -> f64 {
    let series = result
        .loads
        .iter()
        .map(|l| l.series.len() as f64)
        .fold(0.0, f64::max);
    let faults = result
        .faults
        .iter()
        .map(|f| f.removed_at.unwrap_or(f.planned_end))
        .fold(0.0, f64::max);
    series.max(faults).max(result.elapsed.floor()).max(1.0)
}

fn legend(out: &mut String, items: &[(&str, &str, bool)]) {
    out.push_str(r#"<div class="legend">"#);
    for (color, label, line) in items {
        let _ = write!(
            out,
            r#"<span><i class="{}" style="background:{color}"></i>{}</span>"#,
            if *line { "line" } else { "box" },
            esc(label)
        );
    }
    out.push_str("</div>");
}

fn throughput_chart(out: &mut String, l: &LoadResult, faults: &[FaultResult], tmax: f64) {
    let f = Frame {
        h: 270.0,
        t_max: tmax,
    };
    let max_req = l.series.iter().map(|s| s.requests).max().unwrap_or(0) as f64;
    // Headroom above the tallest bar, for the fault labels.
    let step = nice_step(max_req.max(1.0) * 1.2, 4.0);
    let ymax = (max_req * 1.2 / step).ceil().max(1.0) * step;
    f.open(
        out,
        "throughput",
        &format!("requests per second and success rate of {}", l.name),
    );
    let bottom = f.h - MB;
    f.y_axis(out, ymax, ymax, step, false, "");
    // 100% a little below the top, clear of the fault labels.
    f.y_axis(out, RATE_TOP, 100.0, 25.0, true, "%");
    f.faults(out, faults, MT, bottom);
    let bw = ((W - ML - MR) / tmax * 0.78).max(1.0);
    for s in &l.series {
        let x = f.x(s.t as f64) + ((W - ML - MR) / tmax - bw) / 2.0;
        let y_ok = f.y(s.successes as f64, ymax);
        let y_all = f.y(s.requests as f64, ymax);
        let tip = format!(
            "{}s: {} requests, {} ok, {} errors",
            s.t, s.requests, s.successes, s.errors
        );
        let _ = write!(
            out,
            r#"<g class="bar"><title>{tip}</title><rect x="{x:.1}" y="{y_ok:.1}" width="{bw:.1}" height="{h_ok:.1}" fill="{OK}" fill-opacity="0.85"/><rect x="{x:.1}" y="{y_all:.1}" width="{bw:.1}" height="{h_err:.1}" fill="{ERR}" fill-opacity="0.9"/></g>"#,
            h_ok = bottom - y_ok,
            h_err = (y_ok - y_all).max(0.0),
        );
    }
    // Success rate, a line at the middle of each second, broken where nothing was sent.
    let mut d = String::new();
    let mut pen_down = false;
    for s in &l.series {
        match s.success_rate {
            Some(r) => {
                let x = f.x(s.t as f64 + 0.5);
                let y = f.y(r * 100.0, RATE_TOP);
                let _ = write!(d, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let _ = write!(
        out,
        r#"<path class="success-rate" d="{d}" fill="none" stroke="{RATE}" stroke-width="2.2" stroke-linejoin="round"/>"#
    );
    f.x_axis(out, bottom);
    let _ = write!(
        out,
        r#"<text x="{ML}" y="16" class="axis-title">requests / s</text><text x="{x}" y="16" class="axis-title" text-anchor="end">success rate</text></svg>"#,
        x = W - MR + 40.0
    );
    legend(
        out,
        &[
            (OK, "successes / s", false),
            (ERR, "errors / s", false),
            (RATE, "success rate", true),
            (FAULT, "fault window", false),
        ],
    );
}

fn latency_chart(out: &mut String, l: &LoadResult, faults: &[FaultResult], tmax: f64) {
    let f = Frame {
        h: 270.0,
        t_max: tmax,
    };
    let max = l
        .series
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(0.0, f64::max)
        .max(1.0);
    let step = nice_step(max * 1.2, 4.0);
    let ymax = (max * 1.2 / step).ceil() * step;
    f.open(
        out,
        "latency",
        &format!("latency percentiles of {}", l.name),
    );
    let bottom = f.h - MB;
    f.y_axis(out, ymax, ymax, step, false, "");
    f.faults(out, faults, MT, bottom);
    type Line = (
        &'static str,
        &'static str,
        fn(&crate::result::Second) -> Option<f64>,
    );
    let series: [Line; 3] = [
        ("p50", P50, |s| s.p50_ms),
        ("p90", P90, |s| s.p90_ms),
        ("p99", P99, |s| s.p99_ms),
    ];
    for (name, color, get) in series {
        let mut d = String::new();
        let mut pen_down = false;
        for s in &l.series {
            match get(s) {
                Some(v) => {
                    let x = f.x(s.t as f64 + 0.5);
                    let y = f.y(v, ymax);
                    let _ = write!(d, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            out,
            r#"<path class="latency-{name}" d="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#
        );
        for s in &l.series {
            if let Some(v) = get(s) {
                let _ = write!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.4" fill="{color}"><title>{t}s {name}: {v:.1} ms</title></circle>"#,
                    x = f.x(s.t as f64 + 0.5),
                    y = f.y(v, ymax),
                    t = s.t
                );
            }
        }
    }
    f.x_axis(out, bottom);
    let _ = write!(
        out,
        r#"<text x="{ML}" y="16" class="axis-title">latency, ms (from the scheduled start)</text></svg>"#
    );
    legend(
        out,
        &[
            (P50, "p50", true),
            (P90, "p90", true),
            (P99, "p99", true),
            (FAULT, "fault window", false),
        ],
    );
}

fn breaker_chart(out: &mut String, result: &DrillResult, tmax: f64) {
    let rows = result.breakers.len().max(1) as f64;
    let row_h = 26.0;
    let label_w = 230.0;
    let f = Frame {
        h: MT + rows * row_h + MB,
        t_max: tmax,
    };
    // This chart needs a wider left margin for its row labels: drawn in its own frame.
    let x = |t: f64| label_w + (t / tmax).clamp(0.0, 1.0) * (W - label_w - MR);
    let _ = write!(
        out,
        r#"<svg class="chart breakers" role="img" aria-label="breaker states over time" viewBox="0 0 {W} {h}">"#,
        h = f.h
    );
    let bottom = f.h - MB;
    for fw in &result.faults {
        let a = fw.applied_at.unwrap_or(fw.planned_start);
        let b = fw.removed_at.unwrap_or(fw.planned_end);
        let _ = write!(
            out,
            r#"<rect class="fault-window" x="{x0:.1}" y="{MT}" width="{w:.1}" height="{h:.1}" fill="{FAULT}" fill-opacity="0.13" stroke="{FAULT}" stroke-opacity="0.5" stroke-dasharray="4 3"><title>fault {i}: {d}</title></rect>"#,
            x0 = x(a),
            w = (x(b) - x(a)).max(1.0),
            h = bottom - MT,
            i = fw.index,
            d = esc(&fw.description)
        );
    }
    if result.breakers.is_empty() {
        let _ = write!(
            out,
            r#"<text x="{cx}" y="{cy}" class="axis" text-anchor="middle">no breakers were seen on /admin/breakers</text>"#,
            cx = W / 2.0,
            cy = MT + row_h / 2.0 + 4.0
        );
    }
    for (i, b) in result.breakers.iter().enumerate() {
        let y = MT + i as f64 * row_h;
        let _ = write!(
            out,
            r##"<text x="{lx}" y="{ty:.1}" class="row-label" text-anchor="end">{t} <tspan class="endpoint">{e}</tspan></text><rect x="{x0}" y="{ry:.1}" width="{w:.1}" height="{rh:.1}" fill="#f1f3f5"/>"##,
            lx = label_w - 8.0,
            ty = y + row_h / 2.0 + 4.0,
            t = esc(&b.target),
            e = esc(&b.endpoint),
            x0 = label_w,
            ry = y + 4.0,
            w = W - label_w - MR,
            rh = row_h - 8.0
        );
        for band in &b.bands {
            // A band lasts until the next sample; the last one at least one sample period.
            let to = if band.to > band.from {
                band.to
            } else {
                band.from + crate::runner::SAMPLE_EVERY.as_secs_f64()
            };
            let _ = write!(
                out,
                r#"<rect class="band band-{s}" x="{x0:.1}" y="{ry:.1}" width="{w:.1}" height="{rh:.1}" fill="{c}"><title>{t} {e}: {s} from {a:.2}s to {to:.2}s</title></rect>"#,
                s = band.state.as_str(),
                x0 = x(band.from),
                ry = y + 4.0,
                w = (x(to) - x(band.from)).max(1.5),
                rh = row_h - 8.0,
                c = state_color(band.state),
                t = esc(&b.target),
                e = esc(&b.endpoint),
                a = band.from
            );
        }
    }
    let step = time_step(tmax);
    let mut t = 0.0;
    while t <= tmax + 1e-9 {
        let _ = write!(
            out,
            r#"<line x1="{xx:.1}" y1="{bottom:.1}" x2="{xx:.1}" y2="{y2:.1}" class="tick"/><text x="{xx:.1}" y="{ty:.1}" class="axis" text-anchor="middle">{l}s</text>"#,
            xx = x(t),
            y2 = bottom + 4.0,
            ty = bottom + 17.0,
            l = fmt_num(t)
        );
        t += step;
    }
    let _ = write!(
        out,
        r#"<line x1="{label_w}" y1="{bottom:.1}" x2="{x2}" y2="{bottom:.1}" class="axis-line"/>"#,
        x2 = W - MR
    );
    // The fault windows' edges again, over the bands, so they show across every row.
    for fw in &result.faults {
        let a = fw.applied_at.unwrap_or(fw.planned_start);
        let b = fw.removed_at.unwrap_or(fw.planned_end);
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{MT}" width="{w:.1}" height="{h:.1}" fill="none" stroke="{FAULT}" stroke-width="1.5" stroke-dasharray="4 3"/><text x="{tx:.1}" y="{ty:.1}" class="fault-label">fault {i}</text>"#,
            x0 = x(a),
            w = (x(b) - x(a)).max(1.0),
            h = bottom - MT,
            tx = x(a) + 3.0,
            ty = MT - 4.0,
            i = fw.index,
        );
    }
    out.push_str("</svg>");
    legend(
        out,
        &[
            (state_color(BreakerState::Closed), "closed", false),
            (state_color(BreakerState::Open), "open", false),
            (state_color(BreakerState::HalfOpen), "half-open", false),
            (state_color(BreakerState::ForcedOpen), "forced open", false),
            (state_color(BreakerState::Disabled), "disabled", false),
            (FAULT, "fault window", false),
        ],
    );
}

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f8; color: #212529;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: linear-gradient(120deg, #1b2a41 0%, #243b5a 100%); color: #fff; padding: 26px 0 22px; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header h1 { margin: 0; font-size: 24px; font-weight: 650; letter-spacing: .2px; }
header .sub { margin-top: 6px; color: #c5d0de; font-size: 13px; }
header .sub code { color: #e7edf5; }
.verdict { display: inline-block; margin-left: 12px; padding: 3px 12px; border-radius: 999px; font-size: 13px;
  font-weight: 700; letter-spacing: .8px; vertical-align: 4px; }
.verdict.pass { background: #2b8a3e; color: #fff; }
.verdict.fail { background: #e03131; color: #fff; }
.stats { display: flex; gap: 14px; margin-top: 18px; flex-wrap: wrap; }
.stat { background: rgba(255,255,255,.08); border: 1px solid rgba(255,255,255,.12); border-radius: 10px;
  padding: 10px 16px; min-width: 150px; }
.stat b { display: block; font-size: 20px; font-weight: 650; }
.stat span { color: #c5d0de; font-size: 12px; text-transform: uppercase; letter-spacing: .6px; }
main { padding: 22px 0 40px; }
section.card { background: #fff; border: 1px solid #e3e7ec; border-radius: 12px; padding: 18px 20px 16px;
  margin-bottom: 18px; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
section.card h2 { font-size: 16px; margin: 0 0 4px; font-weight: 650; }
section.card p.note { margin: 0 0 10px; color: #6c757d; font-size: 12.5px; }
table { width: 100%; border-collapse: collapse; font-size: 13.5px; }
th { text-align: left; color: #6c757d; font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: .5px; border-bottom: 1px solid #e3e7ec; padding: 6px 8px; }
td { border-bottom: 1px solid #f1f3f5; padding: 7px 8px; vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
.pill { display: inline-block; min-width: 46px; text-align: center; border-radius: 6px; padding: 1px 8px;
  font-weight: 700; font-size: 12px; letter-spacing: .5px; }
.pill.pass { background: #d3f9d8; color: #2b8a3e; }
.pill.fail { background: #ffe3e3; color: #c92a2a; }
svg.chart { width: 100%; height: auto; display: block; margin-top: 6px; }
svg .grid { stroke: #eef1f4; stroke-width: 1; }
svg .tick, svg .axis-line { stroke: #adb5bd; stroke-width: 1; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
svg .axis { fill: #6c757d; font-size: 11px; }
svg .axis-title { fill: #495057; font-size: 12px; font-weight: 600; }
svg .fault-label { fill: #d9480f; font-size: 11px; font-weight: 600; paint-order: stroke;
  stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg .row-label { fill: #343a40; font-size: 12px; font-weight: 600; }
svg .row-label .endpoint { fill: #868e96; font-weight: 400; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; font-size: 12px; color: #495057; margin: 6px 0 2px 58px; }
.legend i { display: inline-block; vertical-align: middle; margin-right: 6px; }
.legend i.box { width: 12px; height: 12px; border-radius: 3px; }
.legend i.line { width: 18px; height: 3px; border-radius: 2px; }
.grid2 { display: grid; grid-template-columns: 1fr; gap: 0; }
footer { color: #868e96; font-size: 12px; text-align: center; padding: 10px 0 30px; }
"#;

/// Renders the report.
pub fn render(result: &DrillResult) -> String {
    let tmax = t_max(result);
    let mut out = String::with_capacity(64 * 1024);
    let passed = result.expectations.iter().filter(|v| v.pass).count();
    let total_req: u64 = result.loads.iter().map(|l| l.requests).sum();
    let total_ok: u64 = result.loads.iter().map(|l| l.successes).sum();
    let _ = write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Quartet drill: {name} ({verdict})</title><style>{CSS}</style></head><body>
<header><div class="wrap"><h1>Quartet drill · {name}<span class="verdict {vclass}">{verdict}</span></h1>
<div class="sub"><code>{file}</code>{desc}</div>
<div class="stats"><div class="stat"><b>{passed} / {nexp}</b><span>expectations hold</span></div>
<div class="stat"><b>{elapsed:.1} s</b><span>duration</span></div>
<div class="stat"><b>{total_req}</b><span>requests</span></div>
<div class="stat"><b>{ok_rate}</b><span>succeeded</span></div>
<div class="stat"><b>{nf}</b><span>fault windows</span></div></div></div></header>
<main><div class="wrap">
"#,
        name = esc(&result.name),
        verdict = if result.pass { "PASS" } else { "FAIL" },
        vclass = if result.pass { "pass" } else { "fail" },
        file = esc(&result.scenario_file),
        desc = result
            .scenario
            .description
            .as_ref()
            .map(|d| format!(" — {}", esc(d)))
            .unwrap_or_default(),
        nexp = result.expectations.len(),
        elapsed = result.elapsed,
        ok_rate = if total_req == 0 {
            "—".to_string()
        } else {
            format!("{:.2}%", total_ok as f64 * 100.0 / total_req as f64)
        },
        nf = result.faults.len(),
    );
    if result.interrupted {
        out.push_str(r#"<section class="card"><h2>Interrupted</h2><p class="note">The drill was stopped before its end; its faults were removed. Expectations on the missing part fail.</p></section>"#);
    }

    // Expectations.
    out.push_str(r#"<section class="card expectations"><h2>Expectations</h2><table><thead><tr><th>#</th><th>result</th><th>expectation</th><th>measured</th></tr></thead><tbody>"#);
    for v in &result.expectations {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td><span class="pill {c}">{p}</span></td><td>{}</td><td>{}</td></tr>"#,
            v.index,
            esc(&v.expected),
            esc(&v.measured),
            c = if v.pass { "pass" } else { "fail" },
            p = if v.pass { "PASS" } else { "FAIL" },
        );
    }
    if result.expectations.is_empty() {
        out.push_str(r#"<tr><td colspan="4">no expectations</td></tr>"#);
    }
    out.push_str("</tbody></table></section>\n");

    for l in &result.loads {
        let _ = write!(
            out,
            r#"<section class="card load"><h2>Load <code>{n}</code>: throughput and success rate</h2><p class="note">{ch} → target <code>{t}</code>; bars by scheduled second, errors stacked on successes.</p>"#,
            n = esc(&l.name),
            ch = l.channel,
            t = esc(&l.target)
        );
        throughput_chart(&mut out, l, &result.faults, tmax);
        let _ = write!(
            out,
            r#"<h2 style="margin-top:16px">Load <code>{n}</code>: latency percentiles per second</h2><p class="note">Measured from each request's scheduled start, so a slow server cannot hide its queue (no coordinated omission).</p>"#,
            n = esc(&l.name)
        );
        latency_chart(&mut out, l, &result.faults, tmax);
        out.push_str("</section>\n");
    }

    out.push_str(r#"<section class="card"><h2>Breaker states</h2><p class="note">Sampled from <code>GET /admin/breakers</code>, one row per endpoint.</p>"#);
    breaker_chart(&mut out, result, tmax);
    out.push_str("</section>\n");

    // Loads and faults tables.
    out.push_str(r#"<section class="card"><h2>Loads</h2><table><thead><tr><th>load</th><th>channel → target</th><th>requests</th><th>success</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>outcomes</th></tr></thead><tbody>"#);
    for l in &result.loads {
        let outcomes: Vec<String> = l
            .outcomes
            .iter()
            .map(|(k, v)| format!("{} × {v}", esc(k)))
            .collect();
        let _ = write!(
            out,
            r#"<tr><td><code>{}</code></td><td>{} → <code>{}</code></td><td class="num">{}</td><td class="num">{:.2}%</td><td class="num">{:.1} ms</td><td class="num">{:.1} ms</td><td class="num">{:.1} ms</td><td class="num">{:.1} ms</td><td class="num">{:.1} ms</td><td>{}</td></tr>"#,
            esc(&l.name),
            l.channel,
            esc(&l.target),
            l.requests,
            l.success_rate * 100.0,
            l.latency_ms.p50,
            l.latency_ms.p90,
            l.latency_ms.p99,
            l.latency_ms.p999,
            l.latency_ms.max,
            outcomes.join(", ")
        );
    }
    out.push_str("</tbody></table></section>\n");
    if !result.faults.is_empty() {
        out.push_str(r#"<section class="card"><h2>Fault windows</h2><table><thead><tr><th>#</th><th>target</th><th>fault</th><th>planned</th><th>applied</th></tr></thead><tbody>"#);
        for f in &result.faults {
            let applied = match (f.applied_at, f.removed_at) {
                (Some(a), Some(r)) => format!("{a:.2}s → {r:.2}s"),
                (Some(a), None) => format!("{a:.2}s → (not removed)"),
                _ => "never".to_string(),
            };
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}s → {}s</td><td>{}</td></tr>"#,
                f.index,
                esc(&f.target),
                esc(&f.description),
                fmt_num(f.planned_start),
                fmt_num(f.planned_end),
                applied
            );
        }
        out.push_str("</tbody></table></section>\n");
    }

    // The result itself, for anyone who wants to read the numbers from the page.
    let json = serde_json::to_string(result)
        .unwrap_or_else(|_| "null".to_string())
        .replace("</", "<\\/")
        .replace("<!--", "<\\!--");
    let _ = write!(
        out,
        r#"</div></main><footer>quartet drill · {} · self-contained report: no network needed</footer>
<script type="application/json" id="drill-result">{json}</script>
</body></html>
"#,
        esc(&result.name)
    );
    out
}
