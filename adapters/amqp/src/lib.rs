//! Quartet's AMQP adapter: oslo.messaging's RPC over RabbitMQ, both ways.
//!
//! - [`codec`]: the oslo.messaging 2.0 envelope, requests, replies, heartbeats and remote
//!   failures (and the 1.0 bare dict on input). Bad input is a typed error, never a panic.
//! - [`client`]: [`RpcClient`], oslo's `RPCClient` over lapin: call, cast, fanout cast,
//!   server-targeted call, publisher confirms, mandatory publishing, call-monitor
//!   heartbeats, late and duplicate replies dropped, connection supervision. It is a
//!   `tower::Service<RpcRequest>` with `Error = BoxError`.
//! - [`server`]: [`RpcServer`], oslo's RPC server: consumes `<topic>`, `<topic>.<server>`
//!   and the fanout queue, hands requests to an [`RpcHandler`] and replies in oslo's
//!   format (heartbeats included).
//! - [`classify`]: [`RpcClassify`] for the policy stack.
//! - [`config`]: the `[amqp]` and `[rpc]` config tables.
//! - [`toxic`]: connection-level faults (toxics) on the broker connections, target
//!   `rpc:broker`.
//!
//! Plain tower services and lapin; no axum, no config file.

pub mod broker;
pub mod classify;
pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub mod server;
pub mod toxic;

pub use broker::{State, Status};
pub use classify::{RpcClassify, RpcReplay};
pub use client::{CallKind, ClientStats, RpcClient, RpcRequest, RpcResponse};
pub use codec::{Caller, Context, RemoteFailure};
pub use config::{AmqpConfig, RpcConfig, RpcRoute, RpcServerSpec, RpcTopic};
pub use error::{ConnectError, RpcError};
pub use quartet_policies::BoxError;
pub use server::{IncomingCall, RpcHandler, RpcServer, ServerStats};
pub use toxic::{ConnectionFaults, BROKER_TARGET};
