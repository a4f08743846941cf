//! An oslo.messaging echo RPC server on the real broker, for `bench/rpc.sh`: every call's
//! result is its keyword arguments. Prints `ready` once it consumes, then serves until it
//! is interrupted or killed.
//!
//! `cargo run -p quartet-amqp --example rpc_echo_server -- TOPIC [amqp-url] [concurrency]`

use quartet_amqp::config::RpcServerSpec;
use quartet_amqp::{AmqpConfig, IncomingCall, RemoteFailure, RpcServer};
use serde_json::Value;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), quartet_amqp::BoxError> {
    let mut args = std::env::args().skip(1);
    let Some(topic) = args.next() else {
        eprintln!("usage: rpc_echo_server TOPIC [amqp-url] [concurrency]");
        std::process::exit(64);
    };
    let url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let cfg = AmqpConfig {
        url,
        connection_name: "quartet-echo".to_owned(),
        ..AmqpConfig::default()
    };
    let spec = RpcServerSpec {
        topic,
        exchange: "openstack".to_owned(),
        server: None,
        fanout: false,
        concurrency,
        upstream: None,
        driver: None,
    };
    let server = RpcServer::start(cfg, spec, |call: IncomingCall| async move {
        Ok::<Value, RemoteFailure>(Value::Object(call.request.args))
    });
    server.wait_ready(Duration::from_secs(30)).await?;
    println!("ready");
    // Serve until interrupted (or killed).
    tokio::signal::ctrl_c().await?;
    server.close().await;
    Ok(())
}
