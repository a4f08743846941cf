//! Command windows (`run`, `undo`): the drill runs them at the window's start and end, and
//! a command that fails stops the drill with its exit status and what it printed. The
//! Quartet here is a stand-in (its admin API answers health and an empty breaker list,
//! its public listener answers 200): what is tested is the timeline, not Quartet.

use axum::routing::get;
use axum::{Json, Router};
use quartet_drill::runner::{self, ProgressMode};
use std::net::SocketAddr;
use std::path::Path;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// An admin API that knows the target `box` (on /readyz) and has no breakers.
async fn stand_in() -> (SocketAddr, SocketAddr) {
    let admin = serve(
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/admin/breakers",
                get(|| async { Json(serde_json::json!([])) }),
            )
            .route(
                "/readyz",
                get(|| async {
                    Json(serde_json::json!({"channels": {"native": {"targets": {"box": {}}}}}))
                }),
            ),
    )
    .await;
    let public = serve(Router::new().route("/x", get(|| async { "ok" }))).await;
    (public, admin)
}

fn scenario(public: SocketAddr, admin: SocketAddr, window: &str) -> String {
    format!(
        r#"
[quartet]
public = "{public}"
admin = "{admin}"

[[load]]
name = "reads"
channel = "rest"
target = "box"
rate = 20
duration = "1s"
request = {{ method = "GET", path = "/x" }}

[[faults]]
at = "200ms"
duration = "300ms"
target = "box"
{window}
"#
    )
}

fn argv(script: &str, file: &Path) -> String {
    serde_json::to_string(&[
        "sh".to_string(),
        "-c".to_string(),
        format!("{script} >> '{}'", file.display()),
    ])
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_the_start_and_undo_at_the_end() {
    let (public, admin) = stand_in().await;
    let dir = std::env::temp_dir().join(format!("quartet-drill-command-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("log");
    let _ = std::fs::remove_file(&log);
    let window = format!(
        "run = {}\nundo = {}",
        argv("echo started", &log),
        argv("echo undone", &log)
    );
    let plan = quartet_drill::scenario::parse(&scenario(public, admin, &window), "c.toml", "c")
        .unwrap_or_else(|e| panic!("{e}"));
    let rec = runner::execute(&plan, ProgressMode::Off, std::future::pending())
        .await
        .unwrap_or_else(|e| panic!("{}", quartet_drill::Chain(&e)));
    assert_eq!(
        std::fs::read_to_string(&log).expect("the commands wrote"),
        "started\nundone\n"
    );
    let f = &rec.faults[0];
    assert!(f.applied_at.is_some() && f.removed_at.is_some(), "{f:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_stops_the_drill_with_its_output() {
    let (public, admin) = stand_in().await;
    let window = r#"run = ["sh", "-c", "echo no such server >&2; exit 3"]"#;
    let plan = quartet_drill::scenario::parse(&scenario(public, admin, window), "c.toml", "c")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = runner::execute(&plan, ProgressMode::Off, std::future::pending())
        .await
        .expect_err("the run command failed");
    let text = quartet_drill::Chain(&err).to_string();
    assert!(text.contains("fault 1 on `box` could not be set"), "{text}");
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("no such server"), "{text}");

    let window = r#"run = ["/nonexistent/program"]"#;
    let plan = quartet_drill::scenario::parse(&scenario(public, admin, window), "c.toml", "c")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = runner::execute(&plan, ProgressMode::Off, std::future::pending())
        .await
        .expect_err("no such program");
    let text = quartet_drill::Chain(&err).to_string();
    assert!(
        text.contains("`/nonexistent/program` could not be started"),
        "{text}"
    );
}
