//! The one metrics registry. The gateway creates one [`Metrics`] and hands it to every
//! layer and adapter; `/metrics` renders [`Metrics::render`].

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;

pub struct Metrics {
    pub registry: Registry,
    /// `quartet_requests_total{channel,target,outcome}`; outcome is `success`, `failure`,
    /// `timeout`, `breaker_open`, `overloaded`, `rate_limited`, `fault`, `no_endpoint`.
    pub requests: IntCounterVec,
    /// `quartet_request_duration_seconds{channel,target}`
    pub duration: HistogramVec,
    /// `quartet_in_flight{channel,target}`
    pub in_flight: IntGaugeVec,
    /// `quartet_retries_total{channel,target}`
    pub retries: IntCounterVec,
    /// `quartet_retry_budget_exhausted_total{channel,target}`
    pub budget_exhausted: IntCounterVec,
    /// `quartet_breaker_state{channel,target,endpoint}`: 0 closed, 1 open, 2 half-open,
    /// 3 forced open, 4 disabled.
    pub breaker_state: IntGaugeVec,
    /// `quartet_breaker_transitions_total{channel,target,endpoint,to}`
    pub breaker_transitions: IntCounterVec,
    /// `quartet_faults_injected_total{channel,target,kind}`; kind is `delay` or `abort`.
    pub faults_injected: IntCounterVec,
    /// `quartet_fault_active{channel,target}`: 1 while a fault is set on the target.
    pub fault_active: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let requests = counter(
            "quartet_requests_total",
            "Calls by channel, target and outcome.",
            &["channel", "target", "outcome"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "quartet_request_duration_seconds",
                "Call duration, retries included.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["channel", "target"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique metric");
        Arc::new(Self {
            requests,
            duration,
            in_flight: gauge(
                "quartet_in_flight",
                "Calls in flight.",
                &["channel", "target"],
            ),
            retries: counter(
                "quartet_retries_total",
                "Retries sent (attempts after the first).",
                &["channel", "target"],
            ),
            budget_exhausted: counter(
                "quartet_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent.",
                &["channel", "target"],
            ),
            breaker_state: gauge(
                "quartet_breaker_state",
                "Breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled.",
                &["channel", "target", "endpoint"],
            ),
            breaker_transitions: counter(
                "quartet_breaker_transitions_total",
                "Breaker transitions by the state entered.",
                &["channel", "target", "endpoint", "to"],
            ),
            faults_injected: counter(
                "quartet_faults_injected_total",
                "Faults injected by kind (delay, abort; latency, bandwidth, reset, stall, close_after on connections).",
                &["channel", "target", "kind"],
            ),
            fault_active: gauge(
                "quartet_fault_active",
                "1 while a fault is set on the target.",
                &["channel", "target"],
            ),
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
