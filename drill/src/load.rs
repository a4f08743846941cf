//! The load generators: how each channel's request is built and sent, and the open- and
//! closed-loop schedules that send them.
//!
//! REST, RPC and native calls are HTTP requests to Quartet's public listener (`/rpc/{topic}`
//! and `/native/{driver}/{operation}` for the latter two); a SQL request is a statement run
//! on a connection to a Quartet SQL listener, one connection per worker, with the simple
//! query protocol (no prepared statements, so it works through a transaction pool).

use crate::record::{Outcome, Record};
use crate::scenario::{Load, Mode, Request};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::Instant;

/// An HTTP request as the drill sends it, built once per load.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpCall {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// Builds the HTTP request of a rest, rpc or native load (`None` for sql).
pub fn http_call(request: &Request, public: SocketAddr) -> Option<HttpCall> {
    let base = format!("http://{public}");
    let json = |v: &serde_json::Value| serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let with_json = |headers: &std::collections::BTreeMap<String, String>| {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            h.push(("content-type".to_string(), "application/json".to_string()));
        }
        h
    };
    match request {
        Request::Rest {
            method,
            path,
            headers,
            body,
        } => Some(HttpCall {
            method: method.clone(),
            url: format!("{base}{path}"),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: body.as_ref().map(|b| b.as_bytes().to_vec()),
        }),
        Request::Rpc {
            topic,
            method,
            args,
            cast,
            headers,
        } => {
            let mut msg = serde_json::json!({ "method": method, "args": args });
            if *cast {
                msg["cast"] = serde_json::Value::Bool(true);
            }
            Some(HttpCall {
                method: reqwest::Method::POST,
                url: format!("{base}/rpc/{topic}"),
                headers: with_json(headers),
                body: Some(json(&msg)),
            })
        }
        Request::Native {
            driver,
            operation,
            args,
            headers,
        } => Some(HttpCall {
            method: reqwest::Method::POST,
            url: format!("{base}/native/{driver}/{operation}"),
            headers: with_json(headers),
            body: Some(json(args)),
        }),
        Request::Sql { .. } => None,
    }
}

/// What a worker sends through.
#[derive(Clone)]
pub enum Caller {
    Http {
        client: reqwest::Client,
        call: HttpCall,
    },
    Sql {
        config: tokio_postgres::Config,
        statement: String,
    },
}

impl Caller {
    pub fn new(load: &Load, public: SocketAddr) -> Result<Self, CallerError> {
        match &load.request {
            Request::Sql { url, statement } => {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(CallerError::SqlUrl)?;
                config.connect_timeout(load.timeout);
                config.application_name("quartet-drill");
                Ok(Caller::Sql {
                    config,
                    statement: statement.clone(),
                })
            }
            other => {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(load.connections as usize)
                    .build()
                    .map_err(CallerError::Http)?;
                let call = http_call(other, public).ok_or(CallerError::NotHttp)?;
                Ok(Caller::Http { client, call })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("not a PostgreSQL URL")]
    SqlUrl(#[source] tokio_postgres::Error),
    #[error("the request is not an HTTP request")]
    NotHttp,
}

/// One worker's connection state (a SQL connection lives across requests).
pub struct Worker {
    caller: Arc<Caller>,
    sql: Option<tokio_postgres::Client>,
}

impl Worker {
    pub fn new(caller: Arc<Caller>) -> Self {
        Self { caller, sql: None }
    }

    /// Sends one request; `limit` bounds it.
    pub async fn call(&mut self, limit: Duration) -> Outcome {
        match tokio::time::timeout(limit, self.call_inner()).await {
            Ok(o) => o,
            Err(_) => {
                // The connection's state is unknown after a cut-off statement.
                self.sql = None;
                Outcome::Timeout
            }
        }
    }

    async fn call_inner(&mut self) -> Outcome {
        match &*self.caller {
            Caller::Http { client, call } => {
                let mut rb = client.request(call.method.clone(), &call.url);
                for (k, v) in &call.headers {
                    rb = rb.header(k, v);
                }
                if let Some(b) = &call.body {
                    rb = rb.body(b.clone());
                }
                match rb.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // The whole answer, so a body that stalls counts.
                        match resp.bytes().await {
                            Ok(_) => Outcome::Status { status },
                            Err(_) => Outcome::Transport,
                        }
                    }
                    Err(e) if e.is_connect() => Outcome::Connect,
                    Err(e) if e.is_timeout() => Outcome::Timeout,
                    Err(_) => Outcome::Transport,
                }
            }
            Caller::Sql { config, statement } => {
                if self.sql.is_none() {
                    match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            tokio::spawn(async move {
                                // Ends when the client is dropped or the server closes.
                                let _ = connection.await;
                            });
                            self.sql = Some(client);
                        }
                        Err(e) => {
                            return match e.code() {
                                Some(code) => Outcome::SqlError {
                                    code: code.code().to_string(),
                                },
                                None => Outcome::Connect,
                            }
                        }
                    }
                }
                let Some(client) = &self.sql else {
                    return Outcome::Connect;
                };
                match client.simple_query(statement).await {
                    Ok(_) => Outcome::SqlOk,
                    Err(e) => {
                        let outcome = match e.code() {
                            Some(code) => Outcome::SqlError {
                                code: code.code().to_string(),
                            },
                            None => Outcome::Transport,
                        };
                        if e.code().is_none() || client.is_closed() {
                            self.sql = None;
                        }
                        outcome
                    }
                }
            }
        }
    }
}

/// Live counters of one load, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    fn count(&self, o: &Outcome) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if o.is_success() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The scheduled starts of an open-loop load: `start + i / rate`, for every `i` with a
/// start before `start + duration`.
pub fn schedule(rate: f64, start: Duration, duration: Duration) -> impl Iterator<Item = Duration> {
    let n = (rate * duration.as_secs_f64()).ceil() as u64;
    (0..n)
        .map(move |i| start + Duration::from_secs_f64(i as f64 / rate))
        .filter(move |t| *t < start + duration)
}

/// Runs one load from `t0` and returns its records, sorted by scheduled start. No request
/// is sent after `deadline`; `cancel` turning true stops it at once (requests in flight
/// are recorded as not sent).
pub async fn run(
    load: Arc<Load>,
    caller: Arc<Caller>,
    t0: Instant,
    deadline: Instant,
    counters: Arc<Counters>,
    cancel: watch::Receiver<bool>,
) -> Vec<Record> {
    let since = move |i: Instant| i.saturating_duration_since(t0);
    let mut tasks = tokio::task::JoinSet::new();
    match load.mode {
        Mode::Rate(rate) => {
            let (tx, rx) = mpsc::channel::<Duration>(load.connections as usize * 4);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..load.connections {
                let rx = rx.clone();
                let caller = caller.clone();
                let counters = counters.clone();
                let load = load.clone();
                let mut cancel = cancel.clone();
                tasks.spawn(async move {
                    let mut worker = Worker::new(caller);
                    let mut records = Vec::new();
                    loop {
                        let next = rx.lock().await.recv().await;
                        let Some(scheduled) = next else { break };
                        let now = Instant::now();
                        if now >= deadline || *cancel.borrow() {
                            records.push(not_sent(scheduled, since(now)));
                            continue;
                        }
                        let sent = since(now);
                        let limit = load.timeout.min(deadline - now);
                        let outcome = tokio::select! {
                            o = worker.call(limit) => o,
                            _ = cancel.wait_for(|c| *c) => Outcome::NotSent,
                        };
                        counters.count(&outcome);
                        records.push(Record {
                            scheduled,
                            sent,
                            end: since(Instant::now()),
                            outcome,
                        });
                    }
                    records
                });
            }
            // The dispatcher: hands out each scheduled start when it comes.
            let mut cancel = cancel.clone();
            let mut unsent = Vec::new();
            for scheduled in schedule(rate, load.start, load.duration) {
                let at = t0 + scheduled;
                if at >= deadline || *cancel.borrow() {
                    unsent.push(not_sent(scheduled, since(Instant::now())));
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = cancel.wait_for(|c| *c) => {
                        unsent.push(not_sent(scheduled, since(Instant::now())));
                        continue;
                    }
                }
                if let Err(e) = tx.send(scheduled).await {
                    unsent.push(not_sent(e.0, since(Instant::now())));
                }
            }
            drop(tx);
            let mut all = unsent;
            while let Some(r) = tasks.join_next().await {
                if let Ok(records) = r {
                    all.extend(records);
                }
            }
            all.sort_by_key(|r| r.scheduled);
            all
        }
        Mode::Concurrency(c) => {
            let stop = (t0 + load.start + load.duration).min(deadline);
            for _ in 0..c {
                let caller = caller.clone();
                let counters = counters.clone();
                let load = load.clone();
                let mut cancel = cancel.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t0 + load.start) => {}
                        _ = cancel.wait_for(|c| *c) => return Vec::new(),
                    }
                    let mut worker = Worker::new(caller);
                    let mut records = Vec::new();
                    loop {
                        let now = Instant::now();
                        if now >= stop || *cancel.borrow() {
                            break;
                        }
                        let sent = since(now);
                        let limit = load.timeout.min(deadline - now);
                        let outcome = tokio::select! {
                            o = worker.call(limit) => o,
                            _ = cancel.wait_for(|c| *c) => Outcome::NotSent,
                        };
                        counters.count(&outcome);
                        records.push(Record {
                            scheduled: sent,
                            sent,
                            end: since(Instant::now()),
                            outcome,
                        });
                    }
                    records
                });
            }
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                if let Ok(records) = r {
                    all.extend(records);
                }
            }
            all.sort_by_key(|r| r.scheduled);
            all
        }
    }
}

fn not_sent(scheduled: Duration, now: Duration) -> Record {
    Record {
        scheduled,
        sent: now.max(scheduled),
        end: now.max(scheduled),
        outcome: Outcome::NotSent,
    }
}
