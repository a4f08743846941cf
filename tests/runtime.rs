//! `server.runtime`: `per_core` (the default) serves the public listener on one thread per
//! core, each with its own `SO_REUSEPORT` socket; `multi_thread` on the shared runtime.
//! Both serve every connection, apply a reload on every thread and drain on SIGTERM.

use http::StatusCode;
use quartet_tests::*;

fn config(runtime: Option<&str>, up: &Upstream, prefixes: &[&str]) -> String {
    let runtime = runtime.map_or(String::new(), |r| format!("runtime = {r:?}\n"));
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{runtime}\n{}",
        upstream_toml("svc", &[up.url()], "")
    );
    for prefix in prefixes {
        text.push_str(&route_toml(prefix, "svc", "strip_prefix = true"));
    }
    text
}

/// The names of the gateway's threads serving the public listener on their own runtime.
fn core_threads(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {dir}: {e}"));
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("quartet-core-"))
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `n` requests, each on a fresh connection (so the kernel spreads them over the sockets).
async fn statuses_on_fresh_connections(gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = raw_http1(
            gw.public,
            &format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
        )
        .await;
        out.push(resp.status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_is_the_default_and_every_thread_serves_and_reloads() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config(None, &up, &["/a"])).await;
    assert_eq!(
        core_threads(gw.process.pid()).len(),
        cores(),
        "one thread per core serves the public listener"
    );
    let n = 8 * cores();
    assert_eq!(
        statuses_on_fresh_connections(&gw, "/a/x", n).await,
        vec![200; n],
        "every connection is served, whichever socket the kernel gave it to"
    );

    gw.rewrite_config(&config(None, &up, &["/a", "/b"]));
    gw.process.signal("HUP");
    let gw_ref = &gw;
    eventually(
        "the reloaded config's new route /b to answer",
        WAIT,
        || async move {
            (statuses_on_fresh_connections(gw_ref, "/b/x", 1).await == [200]).then_some(())
        },
    )
    .await;
    assert_eq!(
        statuses_on_fresh_connections(&gw, "/b/x", n).await,
        vec![200; n],
        "every thread serves the reloaded routes"
    );

    gw.process.signal("TERM");
    let status = gw.process.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "quartet exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_serves_on_the_shared_runtime() {
    let up = Upstream::start("svc").await;
    let mut gw = Gateway::start(&config(Some("multi_thread"), &up, &["/a"])).await;
    assert!(
        core_threads(gw.process.pid()).is_empty(),
        "no per-core threads with runtime = \"multi_thread\""
    );
    let resp = client()
        .get(gw.url("/a/x"))
        .send()
        .await
        .expect("a request");
    assert_eq!(resp.status(), StatusCode::OK);
    echo(resp).await;
    assert_eq!(
        statuses_on_fresh_connections(&gw, "/a/x", 4).await,
        vec![200; 4]
    );
    gw.process.signal("TERM");
    let status = gw.process.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "quartet exits 0 after draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runtime_is_refused_with_its_line() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("quartet.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\nruntime = \"green\"\n",
    )
    .unwrap();
    let out = run_quartet(["check", "--config", "quartet.toml"], dir.path());
    assert_eq!(out.status.code(), Some(64), "{}", out.output());
    assert!(
        out.output().contains("quartet.toml:3: server.runtime: "),
        "{}",
        out.output()
    );
}
