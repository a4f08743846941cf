//! Echo calls through our client to our server on the real broker: sequential, then with
//! 16 and 64 concurrent callers. Prints calls/s, p50 and p99 per run.
//!
//! `cargo run -p quartet-amqp --example rpc_echo_bench -- [calls] [amqp-url]`

use quartet_amqp::config::RpcServerSpec;
use quartet_amqp::{AmqpConfig, IncomingCall, RemoteFailure, RpcClient, RpcRequest, RpcServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), quartet_amqp::BoxError> {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let cfg = AmqpConfig {
        url,
        connection_name: "quartet-bench".to_owned(),
        ..AmqpConfig::default()
    };
    let topic = format!("bench-{}", quartet_amqp::codec::new_id());
    let spec = RpcServerSpec {
        topic: topic.clone(),
        exchange: "openstack".to_owned(),
        server: None,
        fanout: false,
        concurrency: 128,
        upstream: None,
        driver: None,
    };
    let server = RpcServer::start(cfg.clone(), spec, |call: IncomingCall| async move {
        Ok::<Value, RemoteFailure>(Value::Object(call.request.args))
    });
    let client = RpcClient::start(cfg);
    server.wait_ready(Duration::from_secs(10)).await?;
    client.wait_ready(Duration::from_secs(10)).await?;

    for concurrency in [1usize, 16, 64] {
        let per_task = calls / concurrency;
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                let topic = topic.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let t = Instant::now();
                        let req = RpcRequest::call(&topic, "echo").arg("i", json!(i));
                        client.call(req).await?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, quartet_amqp::RpcError>(lat)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(calls);
        for t in tasks {
            all.extend(t.await??);
        }
        let elapsed = started.elapsed();
        all.sort();
        println!(
            "concurrency {concurrency:>3}: {:>7.0} calls/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} calls)",
            all.len() as f64 / elapsed.as_secs_f64(),
            percentile(&all, 0.5).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.len()
        );
    }
    client.close().await;
    server.close().await;
    Ok(())
}
