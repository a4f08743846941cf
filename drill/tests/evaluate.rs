//! Expectations evaluated on synthetic recordings (each kind, holding and failing), the
//! result built from them, the summary table, and the HTML report.

use quartet_drill::expect::evaluate;
use quartet_drill::record::{
    BreakerObs, BreakerSample, BreakerState, FaultWindow, LoadRecording, Outcome, Record, Recording,
};
use quartet_drill::{html, result, scenario};
use std::time::Duration;

const SCENARIO: &str = r#"
name = "synthetic"
[quartet]
public = "127.0.0.1:8080"
admin = "127.0.0.1:9090"

[[load]]
name = "reads"
channel = "rest"
target = "api"
rate = 100
duration = "10s"
timeout = "5s"
request = { path = "/api/x" }

[[faults]]
at = "2s"
duration = "2s"
target = "api"
abort_status = 503
abort_percent = 50

[[faults]]
at = "6s"
duration = "1s"
target = "api"
breaker = "forced_open"
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 100 requests a second for 10 s, 10 ms each; during 2..4 s every other one is a 503;
/// during 6..7 s every one is a 503 answered in 1 ms.
fn requests() -> Vec<Record> {
    (0..1000u64)
        .map(|i| {
            let scheduled = ms(i * 10);
            let fault1 = (200..400).contains(&i) && i % 2 == 0;
            let fault2 = (600..700).contains(&i);
            let (outcome, took) = if fault1 || fault2 {
                (Outcome::Status { status: 503 }, 1)
            } else {
                (Outcome::Status { status: 200 }, 10)
            };
            Record {
                scheduled,
                sent: scheduled,
                end: scheduled + ms(took),
                outcome,
            }
        })
        .collect()
}

fn obs(endpoint: &str, state: BreakerState) -> BreakerObs {
    BreakerObs {
        channel: "rest".into(),
        target: "api".into(),
        endpoint: endpoint.into(),
        state,
    }
}

/// Samples every 200 ms; the breaker of b is forced open from 6.0 to 7.0 s, a is closed.
fn samples() -> Vec<BreakerSample> {
    (0..50u64)
        .map(|i| {
            let t = ms(i * 200);
            let b = if t >= ms(6000) && t < ms(7000) {
                BreakerState::ForcedOpen
            } else {
                BreakerState::Closed
            };
            BreakerSample {
                t,
                breakers: vec![
                    obs("127.0.0.1:1", BreakerState::Closed),
                    obs("127.0.0.1:2", b),
                ],
            }
        })
        .collect()
}

fn recording() -> Recording {
    Recording {
        elapsed: ms(10_050),
        loads: vec![LoadRecording {
            name: "reads".into(),
            records: requests(),
        }],
        samples: samples(),
        faults: vec![
            FaultWindow {
                target: "api".into(),
                description: "50% abort 503".into(),
                planned_start: ms(2000),
                planned_end: ms(4000),
                applied_at: Some(ms(2000)),
                removed_at: Some(ms(4000)),
                ..Default::default()
            },
            FaultWindow {
                target: "api".into(),
                description: "breaker forced_open".into(),
                planned_start: ms(6000),
                planned_end: ms(7000),
                applied_at: Some(ms(6000)),
                removed_at: Some(ms(7000)),
                ..Default::default()
            },
        ],
        interrupted: false,
    }
}

/// The scenario with `expects` appended.
fn plan(expects: &str) -> scenario::Plan {
    scenario::parse(
        &format!("{SCENARIO}\n{expects}"),
        "synthetic.toml",
        "synthetic",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Evaluates one `[[expect]]` table on the standard recording.
fn verdict(expect: &str) -> quartet_drill::expect::Verdict {
    verdict_on(expect, &recording())
}

fn verdict_on(expect: &str, rec: &Recording) -> quartet_drill::expect::Verdict {
    let p = plan(&format!("[[expect]]\n{expect}"));
    let mut v = evaluate(&p, rec);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

#[test]
fn success_rate_holds_and_fails_by_window() {
    let v = verdict(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = \"before fault 1\"\nat_least = 0.99",
    );
    assert!(v.pass, "{v:?}");
    assert_eq!(v.value, Some(1.0));
    assert_eq!(v.measured, "100% (199 of 199)");

    let v = verdict(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = \"during fault 1\"\nat_least = 0.99",
    );
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.value, Some(0.5));
    assert_eq!(v.measured, "50.00% (100 of 200)");

    // After fault 1: 4..10 s, with 100 failures of fault 2 among 600.
    let v = verdict(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = \"after fault 1\"\nat_least = 0.8",
    );
    assert!(v.pass, "{v:?}");
    assert_eq!(v.measured, "83.33% (500 of 600)");

    let v = verdict(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = [\"7s\", \"9s\"]\nat_least = 1.0",
    );
    assert!(v.pass, "{v:?}");

    // A window with no request in it fails: nothing was shown.
    let v = verdict(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = [\"20s\", \"30s\"]\nat_least = 0.5",
    );
    assert!(!v.pass);
    assert_eq!(v.measured, "no requests in the window");
}

#[test]
fn windows_follow_the_faults_as_applied() {
    // Applied 100 ms late: "during fault 1" starts at 2.1 s.
    let mut rec = recording();
    rec.faults[0].applied_at = Some(ms(2100));
    let v = verdict_on(
        "kind = \"success_rate\"\nload = \"reads\"\nwindow = \"during fault 1\"\nat_least = 0.0",
        &rec,
    );
    assert_eq!(v.measured, "50.00% (95 of 190)");
}

#[test]
fn requests_in_flight_at_a_fault_edge_belong_to_neither_side() {
    // Asked for at 1.995 s, confirmed at 2.000 s; removal asked at 3.995 s, done at 4.005 s.
    let mut rec = recording();
    rec.faults[0].requested_at = Some(ms(1995));
    rec.faults[0].removing_at = Some(ms(3995));
    rec.faults[0].removed_at = Some(ms(4005));
    let count = |w: &str| {
        let v = verdict_on(
            &format!("kind = \"success_rate\"\nload = \"reads\"\nwindow = \"{w}\"\nat_least = 0.0"),
            &rec,
        );
        v.measured
    };
    // Request 199 (1.990..2.000 s) was in flight when the fault was asked for: not before.
    assert_eq!(count("before fault 1"), "100% (199 of 199)");
    // 200..399 sent from 2.000 s; 399 was sent at 3.990 s, before the removal was asked.
    assert_eq!(count("during fault 1"), "50.00% (100 of 200)");
    // 400 was sent at 4.000 s, before the removal was confirmed: not after.
    assert_eq!(count("after fault 1"), "83.31% (499 of 599)");
}

#[test]
fn latency_percentiles_are_read_from_the_scheduled_start() {
    let v = verdict("kind = \"latency\"\nload = \"reads\"\npercentile = 50\nunder = \"20ms\"");
    assert!(v.pass, "{v:?}");
    let v = verdict("kind = \"latency\"\nload = \"reads\"\npercentile = 99\nunder = \"5ms\"");
    assert!(!v.pass, "{v:?}");
    assert!(
        v.measured.starts_with("10.0ms over 1000 requests"),
        "{}",
        v.measured
    );

    // A request that waited for a free connection: sent late, latency counts the wait.
    let mut rec = recording();
    rec.loads[0].records[0].sent = ms(400);
    rec.loads[0].records[0].end = ms(410);
    let v = verdict_on(
        "kind = \"latency\"\nload = \"reads\"\nwindow = [\"0s\", \"1s\"]\npercentile = 100\nunder = \"100ms\"",
        &rec,
    );
    assert!(!v.pass, "{v:?}");
    assert!(v.measured.starts_with("410"), "{}", v.measured);
}

#[test]
fn max_duration_counts_from_the_send() {
    let v = verdict("kind = \"max_duration\"\nload = \"reads\"\nunder = \"1s\"");
    assert!(v.pass, "{v:?}");
    assert_eq!(v.measured, "longest 10.0ms");

    let mut rec = recording();
    rec.loads[0].records[5].end = rec.loads[0].records[5].sent + ms(3000);
    rec.loads[0].records[6].outcome = Outcome::Timeout;
    rec.loads[0].records[6].end = rec.loads[0].records[6].sent + ms(4999);
    let v = verdict_on(
        "kind = \"max_duration\"\nload = \"reads\"\nunder = \"1s\"",
        &rec,
    );
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.measured, "longest 4999ms; 2 over");
}

#[test]
fn error_status_shares_have_bounds() {
    let v = verdict("kind = \"error_status\"\nload = \"reads\"\nwindow = \"during fault 1\"\nstatus = 503\nat_least = 0.4\nat_most = 0.6");
    assert!(v.pass, "{v:?}");
    let v = verdict("kind = \"error_status\"\nload = \"reads\"\nwindow = \"during fault 1\"\nstatus = 503\nat_most = 0.1");
    assert!(!v.pass, "{v:?}");
    let v = verdict("kind = \"error_status\"\nload = \"reads\"\nwindow = \"during fault 2\"\nstatus = 503\nat_least = 0.99");
    assert!(v.pass, "{v:?}");
    let v = verdict("kind = \"error_status\"\nload = \"reads\"\nwindow = \"before fault 1\"\nstatus = 502\nat_least = 0.01");
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.value, Some(0.0));
}

#[test]
fn breaker_opens_within_or_too_late() {
    let v = verdict("kind = \"breaker_opens\"\ntarget = \"api\"\nfault = 2\nwithin = \"500ms\"");
    assert!(v.pass, "{v:?}");
    assert_eq!(v.measured, "opened after 0.0ms");
    let v = verdict("kind = \"breaker_opens\"\ntarget = \"rest:api\"\nendpoint = \"127.0.0.1:2\"\nat = \"5s\"\nwithin = \"500ms\"");
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.measured, "opened after 1000ms");
    // The other endpoint never opened.
    let v = verdict("kind = \"breaker_opens\"\ntarget = \"api\"\nendpoint = \"127.0.0.1:1\"\nfault = 2\nwithin = \"5s\"");
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.measured, "never seen open");
    // A target no breaker belongs to says so.
    let v = verdict("kind = \"breaker_opens\"\ntarget = \"compute\"\nfault = 2\nwithin = \"5s\"");
    assert!(!v.pass);
    assert!(
        v.measured.contains("no breaker of compute was seen"),
        "{}",
        v.measured
    );
}

#[test]
fn breaker_closes_within_or_never() {
    let v = verdict("kind = \"breaker_closes\"\ntarget = \"api\"\nfault = 2\nwithin = \"300ms\"");
    assert!(v.pass, "{v:?}");
    assert_eq!(v.measured, "closed after 0.0ms");

    // Stuck open after the fault: it fails.
    let mut rec = recording();
    for s in rec.samples.iter_mut().filter(|s| s.t >= ms(6000)) {
        s.breakers[1].state = BreakerState::Open;
    }
    let v = verdict_on(
        "kind = \"breaker_closes\"\ntarget = \"api\"\nfault = 2\nwithin = \"2s\"",
        &rec,
    );
    assert!(!v.pass, "{v:?}");
    assert_eq!(v.measured, "never seen closed again");

    // Closes 1.4 s after: within 2 s holds, within 1 s does not.
    let mut rec = recording();
    for s in rec
        .samples
        .iter_mut()
        .filter(|s| s.t >= ms(6000) && s.t < ms(8400))
    {
        s.breakers[1].state = BreakerState::HalfOpen;
    }
    let v = verdict_on(
        "kind = \"breaker_closes\"\ntarget = \"api\"\nfault = 2\nwithin = \"2s\"",
        &rec,
    );
    assert!(v.pass, "{v:?}");
    assert_eq!(v.measured, "closed after 1400ms");
    let v = verdict_on(
        "kind = \"breaker_closes\"\ntarget = \"api\"\nfault = 2\nwithin = \"1s\"",
        &rec,
    );
    assert!(!v.pass, "{v:?}");
}

#[test]
fn a_fault_never_applied_fails_its_breaker_expectations() {
    let mut rec = recording();
    rec.faults[1].applied_at = None;
    rec.faults[1].removed_at = None;
    // Falls back to the planned time: still measured.
    let v = verdict_on(
        "kind = \"breaker_opens\"\ntarget = \"api\"\nfault = 2\nwithin = \"1s\"",
        &rec,
    );
    assert!(v.pass, "{v:?}");
}

const ALL: &str = r#"
[[expect]]
kind = "success_rate"
load = "reads"
window = "before fault 1"
at_least = 0.99

[[expect]]
kind = "success_rate"
load = "reads"
window = "during fault 1"
at_least = 0.99

[[expect]]
kind = "breaker_opens"
target = "api"
fault = 2
within = "1s"
"#;

#[test]
fn the_result_has_series_bands_and_verdicts() {
    let p = plan(ALL);
    let rec = recording();
    let verdicts = evaluate(&p, &rec);
    assert_eq!(
        verdicts.iter().map(|v| v.index).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let r = result::build(&p, &rec, verdicts);
    assert!(!r.pass);
    let load = &r.loads[0];
    assert_eq!(load.requests, 1000);
    assert_eq!(load.successes, 800);
    assert_eq!(load.series.len(), 10);
    assert_eq!(load.series[2].requests, 100);
    assert_eq!(load.series[2].errors, 50);
    assert_eq!(load.series[2].success_rate, Some(0.5));
    // HDR precision: 3 significant digits.
    let p50 = load.series[0].p50_ms.expect("p50");
    assert!((p50 - 10.0).abs() < 0.02, "{p50}");
    assert_eq!(load.outcomes["503"], 200);
    // Two breakers; b: closed, forced open 6.0..7.0, closed again.
    assert_eq!(r.breakers.len(), 2);
    let b = &r.breakers[1];
    assert_eq!(b.endpoint, "127.0.0.1:2");
    let states: Vec<_> = b.bands.iter().map(|x| x.state).collect();
    assert_eq!(
        states,
        [
            BreakerState::Closed,
            BreakerState::ForcedOpen,
            BreakerState::Closed
        ]
    );
    assert_eq!((b.bands[1].from, b.bands[1].to), (6.0, 7.0));
    assert_eq!(r.faults[0].applied_at, Some(2.0));

    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["expectations"][1]["pass"], false);
    assert_eq!(json["loads"][0]["series"][2]["errors"], 50);
    assert_eq!(json["breakers"][1]["bands"][1]["state"], "forced_open");
    assert_eq!(json["scenario"]["quartet"]["public"], "127.0.0.1:8080");

    let table = result::table(&r);
    assert!(table.contains("PASS"), "{table}");
    assert!(table.contains("FAIL"), "{table}");
    assert!(table.contains("50.00% (100 of 200)"), "{table}");
    assert!(table.contains("FAIL: 2 of 3 expectations hold"), "{table}");
}

#[test]
fn the_html_report_is_self_contained_and_has_its_charts() {
    let p = plan(ALL);
    let rec = recording();
    let r = result::build(&p, &rec, evaluate(&p, &rec));
    let page = html::render(&r);
    for needle in [
        "<svg class=\"chart throughput\"",
        "<svg class=\"chart latency\"",
        "<svg class=\"chart breakers\"",
        "class=\"success-rate\"",
        "class=\"latency-p99\"",
        "class=\"band band-forced_open\"",
        "class=\"fault-window\"",
        "fault 1 · 50% abort 503",
        "<span class=\"verdict fail\">FAIL</span>",
        "id=\"drill-result\"",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
    // Nothing to fetch: no URL, no external script, style sheet, image or font.
    for banned in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!page.contains(banned), "found {banned}");
    }
    // The embedded result is the result.
    let start = page.find("id=\"drill-result\">").expect("json") + "id=\"drill-result\">".len();
    let end = start + page[start..].find("</script>").expect("end");
    let json: serde_json::Value =
        serde_json::from_str(&page[start..end].replace("<\\/", "</")).expect("embedded json");
    assert_eq!(json["name"], "synthetic");
    assert_eq!(json["loads"][0]["requests"], 1000);
    // Scenario text cannot break out of the page.
    let mut r2 = r.clone();
    r2.name = "</script><b>x".into();
    let page2 = html::render(&r2);
    assert!(!page2.contains("</script><b>"));
}

#[test]
fn an_interrupted_drill_does_not_pass() {
    let p = plan(
        "[[expect]]\nkind = \"success_rate\"\nload = \"reads\"\nwindow = \"before fault 1\"\nat_least = 0.5",
    );
    let mut rec = recording();
    rec.interrupted = true;
    // Stopped at 5 s: what was scheduled later was never sent, and counts nowhere.
    for r in rec.loads[0].records.iter_mut().skip(500) {
        r.outcome = Outcome::NotSent;
        r.sent = ms(5000);
        r.end = ms(5000);
    }
    let p_after = plan(
        "[[expect]]\nkind = \"success_rate\"\nload = \"reads\"\nwindow = \"after fault 1\"\nat_least = 0.99",
    );
    let after = evaluate(&p_after, &rec);
    assert_eq!(after[0].measured, "100% (100 of 100)");
    let r = result::build(&p, &rec, evaluate(&p, &rec));
    assert_eq!((r.loads[0].requests, r.loads[0].not_sent), (500, 500));
    assert_eq!(r.loads[0].series[7].requests, 0);
    assert_eq!(r.loads[0].series[7].not_sent, 100);
    assert!(r.expectations[0].pass);
    assert!(!r.pass);
    assert!(html::render(&r).contains("Interrupted"));
}

/// The report opened in headless Chromium (Debian's `chromium`): the charts are in the
/// rendered page, and a screenshot is kept as a test artifact.
#[test]
fn the_report_renders_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    let found = std::process::Command::new(&chromium)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "headless Chromium is missing (`{chromium} --version` failed): install Debian's package, `apt-get install -y chromium`, or set CHROMIUM to its path"
    );
    let p = plan(ALL);
    let rec = recording();
    let r = result::build(&p, &rec, evaluate(&p, &rec));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill-report");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let page = dir.join("report.html");
    std::fs::write(&page, html::render(&r)).expect("write report");
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1200,1900",
            ])
            .args(extra)
            .arg(&page)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let dom = String::from_utf8(run(&["--dump-dom"]).stdout).expect("utf-8 DOM");
    for needle in [
        "class=\"chart throughput\"",
        "class=\"chart latency\"",
        "class=\"chart breakers\"",
        "class=\"band band-forced_open\"",
        "class=\"success-rate\"",
    ] {
        assert!(dom.contains(needle), "the rendered page lacks {needle}");
    }
    let shot_arg = format!("--screenshot={}", shot.display());
    run(&[&shot_arg]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    eprintln!("report screenshot: {}", shot.display());
}

#[test]
fn secrets_stay_out_of_the_result() {
    use quartet_drill::result::redact_url;
    assert_eq!(
        redact_url("postgres://app:secret@127.0.0.1:6432/db"),
        "postgres://app:***@127.0.0.1:6432/db"
    );
    assert_eq!(
        redact_url("postgres://app@127.0.0.1/db?password=secret&sslmode=disable"),
        "postgres://app@127.0.0.1/db?password=***&sslmode=disable"
    );
    assert_eq!(
        redact_url("host=127.0.0.1 user=app password=secret"),
        "host=127.0.0.1 user=app password=***"
    );
    let src = SCENARIO.replace(
        "request = { path = \"/api/x\" }",
        "request = { path = \"/api/x\", headers = { \"X-Auth-Token\" = \"gAAAA-secret\", Accept = \"text/plain\" } }",
    );
    let src = src.replace(
        "admin = \"127.0.0.1:9090\"",
        "admin = \"127.0.0.1:9090\"\nadmin_token = \"admin-secret\"",
    );
    let p = scenario::parse(&src, "s.toml", "s").unwrap_or_else(|e| panic!("{e}"));
    let rec = recording();
    let r = result::build(&p, &rec, evaluate(&p, &rec));
    let json = serde_json::to_string(&r).expect("json");
    assert!(!json.contains("gAAAA-secret"), "{json}");
    assert!(!json.contains("admin-secret"), "{json}");
    assert!(json.contains("text/plain"));
    let page = html::render(&r);
    assert!(!page.contains("gAAAA-secret") && !page.contains("admin-secret"));
}
