//! The scenario file: what it accepts, and how each mistake is named (`FILE:LINE: KEY:
//! message`, exit status 2). Also how each channel's request is built.

use quartet_drill::load::{http_call, Caller};
use quartet_drill::scenario::{
    self, Anchor, BreakerCommand, Channel, Expect, FaultAction, Mode, Request, Window,
};
use std::process::ExitCode;

const GOOD: &str = r#"
name = "half-failing"
description = "a REST upstream failing half its calls"

[quartet]
public = "127.0.0.1:8080"
admin = "localhost:9090"
admin_token = "s3cret"

[[load]]
name = "reads"
channel = "rest"
target = "api"
rate = 50
duration = "10s"
timeout = "5s"
request = { method = "get", path = "/api/items?limit=1", headers = { "X-Auth-Token" = "t" } }

[[load]]
name = "calls"
channel = "rpc"
target = "compute"
concurrency = 4
duration = "5s"
start = "1s"
request = { topic = "compute", method = "ping", args = { n = 1, deep = { x = [1, 2] } } }

[[load]]
name = "queries"
channel = "sql"
target = "main"
rate = 10
connections = 2
duration = "5s"
request = { url = "postgres://app:secret@127.0.0.1:6432/test", statement = "SELECT 1" }

[[load]]
name = "volumes"
channel = "native"
target = "volumes"
concurrency = 1
duration = "5s"
request = { driver = "volumes", operation = "info", args = { name = "v1" } }

[[faults]]
at = "2s"
duration = "3s"
target = "api"
abort_status = 503
abort_percent = 50

[[faults]]
at = "6s"
duration = "1s"
target = "api"
breaker = "forced_open"
endpoint = "127.0.0.1:8001"

[[faults]]
at = "7s"
duration = "1s"
target = "compute"
delay = "100ms"

[[expect]]
kind = "success_rate"
load = "reads"
window = "before fault 1"
at_least = 0.99

[[expect]]
kind = "latency"
load = "reads"
window = ["0s", "2s"]
percentile = 99.9
under = "200ms"

[[expect]]
kind = "breaker_opens"
target = "api"
fault = 2
within = "1s"

[[expect]]
kind = "breaker_closes"
target = "api"
endpoint = "127.0.0.1:8001"
fault = 2
within = "2s"

[[expect]]
kind = "max_duration"
load = "reads"
under = "4s"

[[expect]]
kind = "error_status"
load = "reads"
window = "during fault 1"
status = 503
at_least = 0.3
at_most = 0.7

[[expect]]
kind = "success_rate"
load = "queries"
window = "after fault 3"
at_least = 0.5

[[expect]]
kind = "breaker_opens"
target = "rest:api"
at = "0s"
within = "3s"
"#;

fn parse(src: &str) -> Result<scenario::Plan, String> {
    scenario::parse(src, "drill.toml", "drill").map_err(|e| e.to_string())
}

fn err(src: &str) -> String {
    match parse(src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e,
    }
}

/// GOOD with `from` replaced by `to` (which must be there).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} is not in GOOD");
    GOOD.replacen(from, to, 1)
}

fn line_of(src: &str, needle: &str) -> usize {
    let at = src.find(needle).expect("needle in source");
    src[..at].matches('\n').count() + 1
}

#[test]
fn a_full_scenario_is_planned() {
    let plan = parse(GOOD).expect("valid");
    assert_eq!(plan.name, "half-failing");
    assert_eq!(plan.admin.to_string(), "127.0.0.1:9090");
    assert_eq!(plan.admin_token.as_deref(), Some("s3cret"));
    assert_eq!(plan.loads.len(), 4);
    assert_eq!(plan.loads[0].mode, Mode::Rate(50.0));
    assert_eq!(plan.loads[0].connections, 64);
    assert_eq!(plan.loads[1].mode, Mode::Concurrency(4));
    assert_eq!(plan.loads[1].start.as_secs(), 1);
    assert_eq!(plan.loads[2].connections, 2);
    assert_eq!(plan.loads[2].channel, Channel::Sql);
    match &plan.loads[0].request {
        Request::Rest { method, path, .. } => {
            assert_eq!(method, "GET");
            assert_eq!(path, "/api/items?limit=1");
        }
        other => panic!("{other:?}"),
    }
    match &plan.faults[0].action {
        FaultAction::Request(f) => {
            assert_eq!(f.abort_status, Some(503));
            assert_eq!(f.abort_percent, 50.0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan.faults[1].action,
        FaultAction::Breaker {
            state: BreakerCommand::ForcedOpen,
            endpoint: Some("127.0.0.1:8001".into())
        }
    );
    // A delay alone applies to every call.
    match &plan.faults[2].action {
        FaultAction::Request(f) => assert_eq!(f.delay_percent, 100.0),
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.faults[2].action.describe(), "100% delay 100ms");
    assert_eq!(plan.faults[0].action.describe(), "50% abort 503");
    assert!(matches!(
        plan.expects[0],
        Expect::SuccessRate {
            load: 0,
            window: Window::Before(0),
            ..
        }
    ));
    assert!(matches!(
        plan.expects[2],
        Expect::BreakerOpens {
            from: Anchor::FaultStart(1),
            ..
        }
    ));
    assert!(matches!(
        plan.expects[3],
        Expect::BreakerCloses {
            from: Anchor::FaultEnd(1),
            ..
        }
    ));
    assert!(matches!(
        plan.expects[6],
        Expect::SuccessRate {
            load: 2,
            window: Window::After(2),
            ..
        }
    ));
}

#[test]
fn the_name_defaults_to_the_file_stem() {
    let src = GOOD.replacen("name = \"half-failing\"\n", "", 1);
    let plan = scenario::parse(&src, "drills/x.toml", "x").expect("valid");
    assert_eq!(plan.name, "x");
}

#[test]
fn an_unknown_key_names_file_line_and_key() {
    let src = edit("rate = 50\n", "rate = 50\nrat = 5\n");
    let e = err(&src);
    let line = line_of(&src, "rat = 5");
    assert!(
        e.starts_with(&format!(
            "drill.toml:{line}: load[0].rat: unknown field `rat`"
        )),
        "{e}"
    );
}

#[test]
fn a_bad_duration_names_its_line_and_key() {
    let src = edit("duration = \"10s\"", "duration = \"ten seconds\"");
    let e = err(&src);
    let line = line_of(&src, "ten seconds");
    assert!(
        e.starts_with(&format!("drill.toml:{line}: load[0].duration:")),
        "{e}"
    );
}

#[test]
fn a_key_of_another_channel_is_refused() {
    let src = edit(
        "method = \"get\", path",
        "method = \"get\", topic = \"x\", path",
    );
    let e = err(&src);
    assert!(
        e.contains("load[0].request.topic: is not a key of rest requests"),
        "{e}"
    );
    let line = line_of(&src, "topic = \"x\"");
    assert!(e.starts_with(&format!("drill.toml:{line}:")), "{e}");
}

#[test]
fn missing_request_keys_are_named() {
    let e = err(&edit("topic = \"compute\", method", "method"));
    assert!(
        e.contains("load[1].request.topic: is required for rpc requests"),
        "{e}"
    );
    let e = err(&edit(", statement = \"SELECT 1\"", ""));
    assert!(
        e.contains("load[2].request.statement: is required for sql requests"),
        "{e}"
    );
    let e = err(&edit(
        "path = \"/api/items?limit=1\"",
        "path = \"http://10.0.0.1/x\"",
    ));
    assert!(
        e.contains("load[0].request.path: must start with `/`"),
        "{e}"
    );
}

#[test]
fn only_loopback_addresses_are_accepted() {
    let e = err(&edit(
        "public = \"127.0.0.1:8080\"",
        "public = \"10.1.2.3:8080\"",
    ));
    assert!(
        e.contains("quartet.public: `10.1.2.3:8080` is not a loopback address"),
        "{e}"
    );
    let e = err(&edit(
        "admin = \"localhost:9090\"",
        "admin = \"example.org:9090\"",
    ));
    assert!(e.contains("quartet.admin:"), "{e}");
    let e = err(&edit("@127.0.0.1:6432", "@db.example.org:6432"));
    assert!(
        e.contains("load[2].request.url: host `db.example.org` is not a loopback address"),
        "{e}"
    );
    // IPv6 loopback and a Unix socket are fine.
    parse(&edit(
        "public = \"127.0.0.1:8080\"",
        "public = \"[::1]:8080\"",
    ))
    .expect("::1");
    parse(&edit(
        "postgres://app:secret@127.0.0.1:6432/test",
        "host=/run/postgresql user=app dbname=test",
    ))
    .expect("unix socket");
}

#[test]
fn rate_and_concurrency_are_exclusive_and_one_is_needed() {
    let e = err(&edit("rate = 50\n", "rate = 50\nconcurrency = 2\n"));
    assert!(e.contains("load[0].concurrency: give `rate`"), "{e}");
    let e = err(&edit("rate = 50\n", ""));
    assert!(e.contains("load[0]: needs `rate`"), "{e}");
    let e = err(&edit("rate = 50\n", "rate = 0\n"));
    assert!(e.contains("load[0].rate: must be above 0"), "{e}");
    let e = err(&edit(
        "concurrency = 4\n",
        "concurrency = 4\nconnections = 3\n",
    ));
    assert!(
        e.contains("load[1].connections: applies to `rate` loads"),
        "{e}"
    );
}

#[test]
fn load_names_are_unique_and_expectations_name_a_load() {
    let e = err(&edit("name = \"calls\"", "name = \"reads\""));
    assert!(
        e.contains("load[1].name: `reads` names another load too"),
        "{e}"
    );
    let e = err(&edit(
        "load = \"reads\"\nwindow = \"before",
        "load = \"writes\"\nwindow = \"before",
    ));
    assert!(
        e.contains("expect[0].load: `writes` names no [[load]]"),
        "{e}"
    );
}

#[test]
fn windows_must_name_a_fault_that_exists() {
    let e = err(&edit(
        "window = \"before fault 1\"",
        "window = \"before fault 4\"",
    ));
    assert!(
        e.contains("expect[0].window: names fault 4, but the scenario has 3 [[faults]]"),
        "{e}"
    );
    let e = err(&edit(
        "window = \"before fault 1\"",
        "window = \"sometimes\"",
    ));
    assert!(e.contains("expect[0].window: must be"), "{e}");
    let e = err(&edit(
        "window = [\"0s\", \"2s\"]",
        "window = [\"2s\", \"1s\"]",
    ));
    assert!(
        e.contains("expect[1].window: the end must come after the start"),
        "{e}"
    );
    let e = err(&edit(
        "window = [\"0s\", \"2s\"]",
        "window = [\"0s\", \"soon\"]",
    ));
    assert!(e.contains("expect[1].window[1]: not a duration"), "{e}");
}

#[test]
fn expectation_keys_belong_to_their_kind() {
    let e = err(&edit(
        "at_least = 0.99\n",
        "at_least = 0.99\npercentile = 99\n",
    ));
    assert!(
        e.contains("expect[0].percentile: is not a key of `success_rate` expectations"),
        "{e}"
    );
    let e = err(&edit("at_least = 0.99\n", ""));
    assert!(
        e.contains("expect[0].at_least: is required for `success_rate`"),
        "{e}"
    );
    let e = err(&edit("at_least = 0.99\n", "at_least = 99\n"));
    assert!(
        e.contains("expect[0].at_least: must be a share between 0 and 1"),
        "{e}"
    );
    let e = err(&edit("fault = 2\nwithin = \"1s\"", "within = \"1s\""));
    assert!(
        e.contains("expect[2].fault: `breaker_opens` needs `fault = N`"),
        "{e}"
    );
    let e = err(&edit("under = \"4s\"", "under = \"5s\""));
    assert!(
        e.contains("expect[4].under: must be less than the load's own `timeout` (5s)"),
        "{e}"
    );
    let e = err(&edit("at_least = 0.5\n", "at_least = 0.5\nstatus = 500\n"));
    assert!(
        e.contains("expect[6].status: is not a key of `success_rate`"),
        "{e}"
    );
    let e = err(&edit("kind = \"max_duration\"", "kind = \"max_latency\""));
    assert!(e.contains("unknown variant `max_latency`"), "{e}");
}

#[test]
fn fault_windows_are_checked() {
    let e = err(&edit("abort_percent = 50", "abort_percent = 150"));
    assert!(
        e.contains("faults[0].abort_percent: must be between 0 and 100"),
        "{e}"
    );
    let line = line_of(
        &edit("abort_percent = 50", "abort_percent = 150"),
        "abort_percent = 150",
    );
    assert!(e.starts_with(&format!("drill.toml:{line}:")), "{e}");
    let e = err(&edit("breaker = \"forced_open\"", "breaker = \"closed\""));
    assert!(
        e.contains("faults[1].breaker: must be \"forced_open\" or \"disabled\""),
        "{e}"
    );
    let e = err(&edit(
        "breaker = \"forced_open\"",
        "breaker = \"forced_open\"\nabort_percent = 5",
    ));
    assert!(
        e.contains("faults[1].abort_percent: a fault window is either"),
        "{e}"
    );
    let e = err(&edit("abort_status = 503\nabort_percent = 50\n", ""));
    assert!(e.contains("faults[0]: needs a request fault"), "{e}");
    // Two request faults overlapping on one target would remove each other.
    let e = err(&edit("at = \"6s\"\nduration = \"1s\"\ntarget = \"api\"\nbreaker = \"forced_open\"\nendpoint = \"127.0.0.1:8001\"", "at = \"3s\"\nduration = \"1s\"\ntarget = \"api\"\nabort_percent = 5"));
    assert!(
        e.contains("faults[1]: overlaps fault 1 on the same target `api`"),
        "{e}"
    );
}

#[test]
fn an_invalid_scenario_exits_2_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("drill-scn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, edit("rate = 50\n", "rate = -1\n")).expect("write");
    let opts = quartet_drill::Options {
        quiet: true,
        ignore_ctrl_c: true,
        ..Default::default()
    };
    assert_eq!(quartet_drill::run(&path, &opts), ExitCode::from(2));
    // A missing file is an invalid scenario too.
    assert_eq!(
        quartet_drill::run(&dir.join("missing.toml"), &opts),
        ExitCode::from(2)
    );
    let e = scenario::load(&dir.join("missing.toml")).expect_err("missing");
    assert!(
        e.to_string().contains("missing.toml: cannot read the file"),
        "{e}"
    );
    // No Quartet there: the drill cannot run, exit 1 (not 2: the scenario is fine).
    let good = edit("public = \"127.0.0.1:8080\"", "public = \"127.0.0.1:1\"")
        .replace("admin = \"localhost:9090\"", "admin = \"127.0.0.1:1\"");
    std::fs::write(&path, good).expect("write");
    assert_eq!(quartet_drill::run(&path, &opts), ExitCode::from(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_channel_builds_its_request() {
    let plan = parse(GOOD).expect("valid");
    let public = plan.public;
    let rest = http_call(&plan.loads[0].request, public).expect("http");
    assert_eq!(rest.method, "GET");
    assert_eq!(rest.url, "http://127.0.0.1:8080/api/items?limit=1");
    assert_eq!(rest.headers, vec![("X-Auth-Token".into(), "t".into())]);
    assert_eq!(rest.body, None);

    let rpc = http_call(&plan.loads[1].request, public).expect("http");
    assert_eq!(rpc.method, "POST");
    assert_eq!(rpc.url, "http://127.0.0.1:8080/rpc/compute");
    assert!(rpc
        .headers
        .contains(&("content-type".into(), "application/json".into())));
    let body: serde_json::Value =
        serde_json::from_slice(rpc.body.as_deref().expect("body")).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"method": "ping", "args": {"n": 1, "deep": {"x": [1, 2]}}})
    );

    let native = http_call(&plan.loads[3].request, public).expect("http");
    assert_eq!(native.method, "POST");
    assert_eq!(native.url, "http://127.0.0.1:8080/native/volumes/info");
    let body: serde_json::Value =
        serde_json::from_slice(native.body.as_deref().expect("body")).expect("json");
    assert_eq!(body, serde_json::json!({"name": "v1"}));

    // A cast says so; a call does not.
    let src = edit("method = \"ping\",", "method = \"ping\", cast = true,");
    let plan2 = parse(&src).expect("valid");
    let cast = http_call(&plan2.loads[1].request, public).expect("http");
    let body: serde_json::Value =
        serde_json::from_slice(cast.body.as_deref().expect("body")).expect("json");
    assert_eq!(body["cast"], serde_json::json!(true));

    // SQL is not HTTP: it gets a PostgreSQL connection config.
    assert!(http_call(&plan.loads[2].request, public).is_none());
    match Caller::new(&plan.loads[2], public).expect("caller") {
        Caller::Sql { config, statement } => {
            assert_eq!(statement, "SELECT 1");
            assert_eq!(config.get_user(), Some("app"));
            assert_eq!(config.get_dbname(), Some("test"));
            assert_eq!(config.get_ports(), &[6432]);
            assert_eq!(
                config.get_connect_timeout(),
                Some(&std::time::Duration::from_secs(10))
            );
        }
        Caller::Http { .. } => panic!("sql load built an HTTP caller"),
    }
}

#[test]
fn the_open_loop_schedule_is_evenly_spaced() {
    use std::time::Duration;
    let s: Vec<Duration> =
        quartet_drill::load::schedule(4.0, Duration::from_secs(1), Duration::from_secs(2))
            .collect();
    assert_eq!(s.len(), 8);
    assert_eq!(s[0], Duration::from_secs(1));
    assert_eq!(s[1], Duration::from_millis(1250));
    assert_eq!(s[7], Duration::from_millis(2750));
}

#[test]
fn every_scenario_of_the_drills_folder_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../drills");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("drills/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".toml") || name.ends_with(".quartet.toml") {
            continue;
        }
        let plan = scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!plan.expects.is_empty(), "{name}");
        assert!(!plan.faults.is_empty(), "{name}");
        names.push(name.to_string());
    }
    names.sort();
    // One per channel and one across channels.
    assert_eq!(
        names,
        [
            "cross-channel.toml",
            "driver-hanging.toml",
            "pg-primary-gone.toml",
            "rest-half-failing.toml",
            "rpc-slow-server.toml"
        ]
    );
}

/// GOOD with its first fault window replaced by `window` (the keys after `target`).
fn with_window(window: &str) -> String {
    edit("abort_status = 503\nabort_percent = 50\n", window)
}

#[test]
fn a_command_window_runs_a_program_and_undoes_it() {
    let plan = parse(&with_window(
        "run = [\"pg_ctl\", \"-D\", \"/data\", \"stop\"]\nundo = [\"pg_ctl\", \"-D\", \"/data\", \"start\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    match &plan.faults[0].action {
        FaultAction::Command { run, undo } => {
            assert_eq!(run, &["pg_ctl", "-D", "/data", "stop"]);
            assert_eq!(
                undo.as_deref(),
                Some(&["pg_ctl", "-D", "/data", "start"].map(String::from)[..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan.faults[0].action.describe(),
        "run `pg_ctl -D /data stop`"
    );
    // `undo` is optional.
    let plan = parse(&with_window("run = [\"true\"]\n")).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        &plan.faults[0].action,
        FaultAction::Command { undo: None, .. }
    ));

    let e = err(&with_window("run = []\n"));
    assert!(e.contains("faults[0].run: must name a program"), "{e}");
    let e = err(&with_window("run = [\"true\"]\nundo = [\"\"]\n"));
    assert!(e.contains("faults[0].undo: must name a program"), "{e}");
    let e = err(&with_window("undo = [\"true\"]\n"));
    assert!(e.contains("faults[0].undo: applies with `run`"), "{e}");
    let e = err(&with_window("run = [\"true\"]\nabort_percent = 5\n"));
    assert!(
        e.contains("faults[0].abort_percent: a fault window is either a command"),
        "{e}"
    );
}

#[test]
fn a_window_may_set_connection_toxics() {
    let plan = parse(&with_window(
        "connection = [{ kind = \"stall\" }, { kind = \"latency\", latency = \"20ms\" }]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    match &plan.faults[0].action {
        FaultAction::Request(f) => {
            assert_eq!(f.connection.len(), 2);
            assert_eq!(f.abort_percent, 0.0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        plan.faults[0].action.describe(),
        "stall toxic, latency toxic"
    );
    // The toxic's own checks, named by key.
    let e = err(&with_window("connection = [{ kind = \"latency\" }]\n"));
    assert!(
        e.contains("faults[0].connection[0].latency: is required for a latency toxic"),
        "{e}"
    );
}
