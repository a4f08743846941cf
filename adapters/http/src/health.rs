//! Active health checks: a GET of a path on every endpoint at an interval.
//!
//! Each endpoint starts healthy. Every `interval`, all endpoints are checked at once: a
//! `GET` of the endpoint's base path joined with `path`, answered with a 2xx or 3xx status
//! within `timeout`, passes; anything else fails. After `unhealthy_threshold` failures in a
//! row a healthy endpoint is taken out, after `healthy_threshold` passes in a row an
//! unhealthy one is put back; each transition is logged.

use crate::body::empty;
use crate::client::HttpClient;
use crate::endpoint::join_path;
use crate::spec::HealthSpec;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Aborts the checking task when dropped (on reload, the old config's checks stop).
pub struct HealthChecks {
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Starts checking `endpoints` (base URL and the flag the balancer reads). Must be called
/// within a Tokio runtime.
pub fn spawn(
    spec: &HealthSpec,
    client: HttpClient,
    endpoints: Vec<(http::Uri, Arc<AtomicBool>)>,
) -> HealthChecks {
    let spec = spec.clone();
    let mut states: Vec<Checked> = endpoints
        .into_iter()
        .map(|(base, healthy)| Checked::new(base, &spec.path, healthy))
        .collect();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(spec.interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let results = join_all(
                states
                    .iter()
                    .map(|s| check(&client, s.url.clone(), spec.timeout)),
            )
            .await;
            for (state, result) in states.iter_mut().zip(results) {
                state.record(result, &spec);
            }
        }
    });
    HealthChecks { _task: task }
}

/// One endpoint's check URL and its run of results.
struct Checked {
    url: Option<http::Uri>,
    healthy: Arc<AtomicBool>,
    passes: u32,
    failures: u32,
}

impl Checked {
    fn new(base: http::Uri, path: &str, healthy: Arc<AtomicBool>) -> Self {
        let url = check_url(&base, path);
        if url.is_none() {
            tracing::warn!(endpoint = %base, path, "health check path makes no valid URL; the endpoint fails every check");
        }
        Self {
            url,
            healthy,
            passes: 0,
            failures: 0,
        }
    }

    fn record(&mut self, result: Result<(), String>, spec: &HealthSpec) {
        let url = self.url.as_ref().map(|u| u.to_string()).unwrap_or_default();
        match result {
            Ok(()) => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if !self.healthy.load(Ordering::Relaxed)
                    && self.passes >= spec.healthy_threshold.max(1)
                {
                    self.healthy.store(true, Ordering::Relaxed);
                    tracing::info!(url, passes = self.passes, "endpoint healthy again");
                }
            }
            Err(reason) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.healthy.load(Ordering::Relaxed)
                    && self.failures >= spec.unhealthy_threshold.max(1)
                {
                    self.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(url, failures = self.failures, reason, "endpoint unhealthy");
                } else {
                    tracing::debug!(url, reason, "health check failed");
                }
            }
        }
    }
}

fn check_url(base: &http::Uri, path: &str) -> Option<http::Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = Some(join_path(base.path(), path).parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// One check: `Ok` on a 2xx or 3xx within `timeout`, else why not.
async fn check(
    client: &HttpClient,
    url: Option<http::Uri>,
    timeout: Duration,
) -> Result<(), String> {
    let url = url.ok_or_else(|| "invalid check URL".to_string())?;
    let mut req = http::Request::new(empty());
    *req.uri_mut() = url;
    *req.version_mut() = client.request_version();
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("quartet-health-check"),
    );
    let attempt = async {
        let resp = client.send(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        })?;
        let status = resp.status();
        // Read the (small) body so the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_urls_join_the_base_path() {
        let cases = [
            ("http://a:1", "/", "http://a:1/"),
            ("http://a:1", "/healthcheck", "http://a:1/healthcheck"),
            ("http://a:1/", "healthcheck", "http://a:1/healthcheck"),
            (
                "https://a:1/compute/",
                "/healthcheck?full=1",
                "https://a:1/compute/healthcheck?full=1",
            ),
        ];
        for (base, path, want) in cases {
            let url = check_url(&base.parse().unwrap(), path).unwrap();
            assert_eq!(url.to_string(), want, "{base} + {path}");
        }
        assert!(check_url(&"http://a:1".parse().unwrap(), "/bad path").is_none());
    }
}
