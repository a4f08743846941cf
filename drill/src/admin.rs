//! A client of Quartet's admin API: the breakers, the faults, health.

use crate::record::BreakerObs;
use crate::scenario::BreakerCommand;
use quartet_policies::spec::FaultSpec;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{op}: cannot reach Quartet's admin listener at {addr}")]
    Unreachable {
        op: String,
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op}: Quartet answered {status}: {message}")]
    Refused {
        op: String,
        status: StatusCode,
        message: String,
    },
    #[error("{op}: the answer is not what the admin API sends")]
    Decode {
        op: String,
        #[source]
        source: reqwest::Error,
    },
}

impl AdminError {
    /// Quartet does not know the target (404 from the admin API).
    pub fn is_unknown_target(&self) -> bool {
        matches!(self, AdminError::Refused { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// Keystone's error body, which Quartet's errors carry.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    message: String,
}

#[derive(Clone, Debug)]
pub struct Admin {
    client: Client,
    addr: SocketAddr,
    token: Option<String>,
}

impl Admin {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            addr,
            token,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, op: String, rb: RequestBuilder) -> Result<reqwest::Response, AdminError> {
        let resp = self
            .auth(rb)
            .send()
            .await
            .map_err(|source| AdminError::Unreachable {
                op: op.clone(),
                addr: self.addr,
                source,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| text.chars().take(200).collect());
        Err(AdminError::Refused {
            op,
            status,
            message,
        })
    }

    pub async fn healthz(&self) -> Result<(), AdminError> {
        let op = "GET /healthz".to_string();
        self.send(op, self.client.get(self.url("/healthz"))).await?;
        Ok(())
    }

    pub async fn breakers(&self) -> Result<Vec<BreakerObs>, AdminError> {
        let op = "GET /admin/breakers".to_string();
        let resp = self
            .send(op.clone(), self.client.get(self.url("/admin/breakers")))
            .await?;
        resp.json()
            .await
            .map_err(|source| AdminError::Decode { op, source })
    }

    /// The target names `GET /readyz` lists, per channel (targets without a breaker too).
    pub async fn ready_targets(&self) -> Result<Vec<String>, AdminError> {
        let op = "GET /readyz".to_string();
        let rb = self.client.get(self.url("/readyz"));
        // 503 (not ready) still carries the targets.
        let resp = self
            .auth(rb)
            .send()
            .await
            .map_err(|source| AdminError::Unreachable {
                op: op.clone(),
                addr: self.addr,
                source,
            })?;
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|source| AdminError::Decode { op, source })?;
        let mut names = Vec::new();
        if let Some(channels) = v.get("channels").and_then(|c| c.as_object()) {
            for ch in channels.values() {
                if let Some(t) = ch.get("targets").and_then(|t| t.as_object()) {
                    names.extend(t.keys().cloned());
                }
            }
        }
        Ok(names)
    }

    pub async fn set_fault(&self, target: &str, fault: &FaultSpec) -> Result<(), AdminError> {
        let path = format!("/admin/faults/{target}");
        let op = format!("PUT {path}");
        self.send(op, self.client.put(self.url(&path)).json(fault))
            .await?;
        Ok(())
    }

    pub async fn clear_fault(&self, target: &str) -> Result<(), AdminError> {
        let path = format!("/admin/faults/{target}");
        let op = format!("DELETE {path}");
        self.send(op, self.client.delete(self.url(&path))).await?;
        Ok(())
    }

    pub async fn set_breaker(
        &self,
        target: &str,
        endpoint: Option<&str>,
        state: BreakerCommand,
    ) -> Result<(), AdminError> {
        let path = format!("/admin/breakers/{target}");
        let op = format!("POST {path} {}", state.as_str());
        let mut rb = self
            .client
            .post(self.url(&path))
            .json(&serde_json::json!({ "state": state.as_str() }));
        if let Some(e) = endpoint {
            rb = rb.query(&[("endpoint", e)]);
        }
        self.send(op, rb).await?;
        Ok(())
    }
}
