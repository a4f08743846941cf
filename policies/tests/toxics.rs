//! Connection-level faults (toxics) on in-memory streams (`tokio::io::duplex`), with paused
//! time: every duration asserted is tokio's paused clock, which is deterministic.
//!
//! In each test `near` is the end wrapped in `Toxic` (the gateway's side of a backend
//! connection) and `far` plays the backend.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use quartet_policies::fault::toxic::{relay, Toxic, IDLE_RECHECK, RECHECK};
use quartet_policies::fault::FaultHandle;
use quartet_policies::metrics::Metrics;
use quartet_policies::spec::{Direction, FaultSpec, PolicySpec, ToxicKind, ToxicSpec};
use quartet_policies::Target;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn faults(toxics: Vec<ToxicSpec>) -> Option<FaultSpec> {
    Some(FaultSpec {
        connection: toxics,
        ..FaultSpec::default()
    })
}

fn handle(toxics: Vec<ToxicSpec>) -> (FaultHandle, Arc<Metrics>) {
    let metrics = Metrics::new();
    let h = FaultHandle::new(
        Target::new("sql", "primary"),
        faults(toxics),
        metrics.clone(),
    );
    (h, metrics)
}

fn injected(metrics: &Metrics, kind: &str) -> u64 {
    metrics
        .faults_injected
        .with_label_values(&["sql", "primary", kind])
        .get()
}

fn pair(h: &FaultHandle) -> (Toxic<DuplexStream>, DuplexStream) {
    let (near, far) = duplex(64 * 1024);
    (Toxic::new(near, h.clone()), far)
}

/// Reads one chunk; returns it and the paused time it took.
async fn timed_read(t: &mut Toxic<DuplexStream>) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut buf = vec![0; 1024];
    let n = t.read(&mut buf).await.expect("read");
    buf.truncate(n);
    (buf, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn no_toxics_pass_data_at_once() {
    let (h, _) = handle(vec![]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"hello").await.unwrap();
    assert_eq!(
        timed_read(&mut t).await,
        (b"hello".to_vec(), Duration::ZERO)
    );
    t.write_all(b"world").await.unwrap();
    let mut buf = [0; 5];
    far.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"world");
}

#[tokio::test(start_paused = true)]
async fn latency_delays_each_chunk() {
    let (h, metrics) = handle(vec![ToxicSpec::latency(100 * MS, Duration::ZERO)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"one").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"one".to_vec(), 100 * MS));
    far.write_all(b"two").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"two".to_vec(), 100 * MS));
    // Downstream only (the default): writes are not delayed.
    let start = Instant::now();
    t.write_all(b"up").await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        injected(&metrics, "latency"),
        1,
        "counted once per connection"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_with_jitter_stays_within_bounds() {
    let (h, _) = handle(vec![ToxicSpec::latency(100 * MS, 40 * MS)]);
    let (mut t, mut far) = pair(&h);
    for _ in 0..50 {
        far.write_all(b"x").await.unwrap();
        let (data, took) = timed_read(&mut t).await;
        assert_eq!(data, b"x");
        assert!(took >= 60 * MS && took <= 140 * MS, "{took:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_latency_delays_writes_only() {
    let (h, _) = handle(vec![
        ToxicSpec::latency(250 * MS, Duration::ZERO).with_direction(Direction::Upstream)
    ]);
    let (mut t, mut far) = pair(&h);
    let start = Instant::now();
    t.write_all(b"query").await.unwrap();
    assert_eq!(start.elapsed(), 250 * MS);
    let mut buf = [0; 5];
    far.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"query");
    far.write_all(b"rows").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"rows".to_vec(), Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn both_directions_delay_reads_and_writes() {
    let (h, _) = handle(vec![
        ToxicSpec::latency(50 * MS, Duration::ZERO).with_direction(Direction::Both)
    ]);
    let (mut t, mut far) = pair(&h);
    let start = Instant::now();
    t.write_all(b"q").await.unwrap();
    assert_eq!(start.elapsed(), 50 * MS);
    far.write_all(b"r").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"r".to_vec(), 50 * MS));
}

#[tokio::test(start_paused = true)]
async fn bandwidth_spreads_bytes_over_time_downstream() {
    let (h, metrics) = handle(vec![ToxicSpec::bandwidth(100)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(&[7; 1000]).await.unwrap();
    drop(far);
    let start = Instant::now();
    let mut all = Vec::new();
    t.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, vec![7; 1000]);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(injected(&metrics, "bandwidth"), 1);
}

#[tokio::test(start_paused = true)]
async fn bandwidth_spreads_bytes_over_time_upstream() {
    let (h, _) = handle(vec![
        ToxicSpec::bandwidth(1000).with_direction(Direction::Upstream)
    ]);
    let (mut t, mut far) = pair(&h);
    let start = Instant::now();
    t.write_all(&[1; 5000]).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let mut buf = vec![0; 5000];
    far.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, vec![1; 5000]);
}

#[tokio::test(start_paused = true)]
async fn reset_fails_reads_and_writes_with_connection_reset() {
    let (h, metrics) = handle(vec![ToxicSpec::reset(Duration::ZERO)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"never seen").await.unwrap();
    let mut buf = [0; 16];
    let err = t.read(&mut buf).await.expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(t.is_reset());
    let err = t.write_all(b"x").await.expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(
        t.flush().await.expect_err("reset").kind(),
        ErrorKind::ConnectionReset
    );
    // A reset is final: removing the toxic does not revive the connection.
    h.set(None);
    assert_eq!(
        t.read(&mut buf).await.expect_err("reset").kind(),
        ErrorKind::ConnectionReset
    );
    assert_eq!(injected(&metrics, "reset"), 1);
}

#[tokio::test(start_paused = true)]
async fn reset_after_a_timeout_lets_data_through_until_then() {
    // Direction does not matter for a reset: an upstream reset ends a pending read too.
    let (h, _) = handle(vec![
        ToxicSpec::reset(Duration::from_secs(2)).with_direction(Direction::Upstream)
    ]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"early").await.unwrap();
    assert_eq!(
        timed_read(&mut t).await,
        (b"early".to_vec(), Duration::ZERO)
    );
    let start = Instant::now();
    let mut buf = [0; 16];
    let err = t.read(&mut buf).await.expect_err("reset while waiting");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn stall_holds_data_until_removed() {
    let (h, metrics) = handle(vec![ToxicSpec::stall(Duration::ZERO)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"held").await.unwrap();
    let remover = {
        let h = h.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            h.set(None);
        })
    };
    let (data, took) = timed_read(&mut t).await;
    assert_eq!(data, b"held");
    assert!(
        took >= Duration::from_secs(30) && took <= Duration::from_secs(30) + RECHECK,
        "{took:?}"
    );
    remover.await.unwrap();
    // Flowing again, at once.
    far.write_all(b"free").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"free".to_vec(), Duration::ZERO));
    assert_eq!(injected(&metrics, "stall"), 1);
}

#[tokio::test(start_paused = true)]
async fn stall_downstream_leaves_writes_alone() {
    let (h, _) = handle(vec![ToxicSpec::stall(Duration::ZERO)]);
    let (mut t, mut far) = pair(&h);
    t.write_all(b"insert").await.unwrap();
    let mut buf = [0; 6];
    far.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"insert");
    far.write_all(b"ok").await.unwrap();
    let mut one = [0; 2];
    let held = tokio::time::timeout(Duration::from_secs(60), t.read(&mut one)).await;
    assert!(held.is_err(), "a stall without timeout holds the data");
}

#[tokio::test(start_paused = true)]
async fn stall_upstream_holds_writes() {
    let (h, _) = handle(vec![
        ToxicSpec::stall(Duration::ZERO).with_direction(Direction::Upstream)
    ]);
    let (mut t, _far) = pair(&h);
    let held = tokio::time::timeout(Duration::from_secs(60), t.write_all(b"x")).await;
    assert!(held.is_err(), "stalled write");
    h.set(None);
    let start = Instant::now();
    t.write_all(b"x").await.unwrap();
    assert!(start.elapsed() <= RECHECK);
}

#[tokio::test(start_paused = true)]
async fn stall_with_timeout_resets_after_it() {
    let (h, _) = handle(vec![ToxicSpec::stall(Duration::from_secs(5))]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"lost").await.unwrap();
    let start = Instant::now();
    let mut buf = [0; 8];
    let err = t.read(&mut buf).await.expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn close_after_lets_exactly_n_bytes_down_then_eof() {
    let (h, metrics) = handle(vec![ToxicSpec::close_after(10)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(&[9; 25]).await.unwrap();
    let mut all = Vec::new();
    t.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, vec![9; 10]);
    assert!(t.is_closed());
    let err = t.write_all(b"more").await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    assert_eq!(injected(&metrics, "close_after"), 1);
}

#[tokio::test(start_paused = true)]
async fn close_after_lets_exactly_n_bytes_up_then_fails_writes() {
    let (h, _) = handle(vec![
        ToxicSpec::close_after(10).with_direction(Direction::Upstream)
    ]);
    let (mut t, mut far) = pair(&h);
    let err = t.write_all(&[3; 25]).await.expect_err("closed");
    assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    drop(t);
    let mut all = Vec::new();
    far.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, vec![3; 10]);
}

#[tokio::test(start_paused = true)]
async fn close_after_zero_closes_at_once() {
    let (h, _) = handle(vec![ToxicSpec::close_after(0)]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"x").await.unwrap();
    let mut buf = [0; 4];
    assert_eq!(t.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn probability_zero_never_applies_and_one_always_does() {
    let (never, metrics) = handle(vec![ToxicSpec::reset(Duration::ZERO).with_probability(0.0)]);
    for _ in 0..100 {
        let (mut t, mut far) = pair(&never);
        far.write_all(b"ok").await.unwrap();
        assert_eq!(timed_read(&mut t).await.0, b"ok");
    }
    assert_eq!(injected(&metrics, "reset"), 0);
    let (always, metrics) = handle(vec![ToxicSpec::reset(Duration::ZERO).with_probability(1.0)]);
    for _ in 0..100 {
        let (mut t, _far) = pair(&always);
        let mut buf = [0; 2];
        let err = t.read(&mut buf).await.expect_err("reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    }
    assert_eq!(injected(&metrics, "reset"), 100);
}

#[tokio::test(start_paused = true)]
async fn probability_is_drawn_once_per_connection() {
    let (h, metrics) = handle(vec![ToxicSpec::reset(Duration::ZERO).with_probability(0.5)]);
    let mut reset = 0;
    for _ in 0..200 {
        let (mut t, mut far) = pair(&h);
        far.write_all(b"ab").await.unwrap();
        let mut one = [0; 1];
        let first = t.read(&mut one).await.is_err();
        // The second read of the same connection agrees with the first.
        let second = t.read(&mut one).await.is_err();
        assert_eq!(first, second);
        reset += u64::from(first);
    }
    assert!((50..150).contains(&reset), "reset {reset} of 200");
    assert_eq!(injected(&metrics, "reset"), reset);
}

#[tokio::test(start_paused = true)]
async fn toxics_added_and_removed_on_an_open_connection() {
    let (h, _) = handle(vec![]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"a").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"a".to_vec(), Duration::ZERO));

    h.set(faults(vec![ToxicSpec::latency(300 * MS, Duration::ZERO)]));
    far.write_all(b"b").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"b".to_vec(), 300 * MS));

    h.set(None);
    far.write_all(b"c").await.unwrap();
    assert_eq!(timed_read(&mut t).await, (b"c".to_vec(), Duration::ZERO));

    // A request-level change that keeps the toxic keeps the connection's draw.
    h.set(faults(vec![ToxicSpec::close_after(3)]));
    far.write_all(b"de").await.unwrap();
    assert_eq!(timed_read(&mut t).await.0, b"de");
    h.set(Some(FaultSpec {
        abort_percent: 10.0,
        connection: vec![ToxicSpec::close_after(3)],
        ..FaultSpec::default()
    }));
    far.write_all(b"fg").await.unwrap();
    assert_eq!(timed_read(&mut t).await.0, b"f", "one byte left of three");
    assert_eq!(timed_read(&mut t).await.0, b"", "then end of file");
}

#[tokio::test(start_paused = true)]
async fn a_stall_added_while_a_read_waits_holds_it() {
    let (h, _) = handle(vec![]);
    let (mut t, mut far) = pair(&h);
    h.set(faults(vec![ToxicSpec::stall(Duration::ZERO)]));
    let writer = tokio::spawn(async move {
        far.write_all(b"late").await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.set(None);
        far
    });
    let (data, took) = timed_read(&mut t).await;
    assert_eq!(data, b"late");
    assert!(took >= Duration::from_secs(10) && took <= Duration::from_secs(10) + RECHECK);
    writer.await.unwrap();
}

/// Runs `relay` between a client pair and a server pair; returns the client's end, the
/// server's end and the relay's task.
#[allow(clippy::type_complexity)]
fn relayed(
    h: &FaultHandle,
) -> (
    DuplexStream,
    DuplexStream,
    tokio::task::JoinHandle<std::io::Result<(u64, u64)>>,
) {
    let (client, client_side) = duplex(64 * 1024);
    let (server_side, server) = duplex(64 * 1024);
    let task = tokio::spawn(relay(client_side, server_side, h.clone()));
    (client, server, task)
}

#[tokio::test(start_paused = true)]
async fn relay_copies_both_ways_without_toxics() {
    let (h, _) = handle(vec![]);
    let (mut client, mut server, task) = relayed(&h);
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong!").await.unwrap();
    let mut buf = [0; 5];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong!");
    drop(client);
    drop(server);
    assert_eq!(task.await.unwrap().unwrap(), (4, 5));
}

#[tokio::test(start_paused = true)]
async fn relay_applies_toxics_to_the_server_side() {
    let (h, _) = handle(vec![
        ToxicSpec::latency(200 * MS, Duration::ZERO),
        ToxicSpec::latency(50 * MS, Duration::ZERO).with_direction(Direction::Upstream),
    ]);
    let (mut client, mut server, task) = relayed(&h);
    let start = Instant::now();
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(start.elapsed(), 50 * MS);
    server.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(start.elapsed(), 250 * MS);
    drop(client);
    drop(server);
    assert_eq!(task.await.unwrap().unwrap(), (4, 4));
}

#[tokio::test(start_paused = true)]
async fn relay_ends_with_connection_reset_and_the_client_sees_the_close() {
    let (h, _) = handle(vec![]);
    let (mut client, _server, task) = relayed(&h);
    client.write_all(b"ping").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.set(faults(vec![ToxicSpec::reset(Duration::ZERO)]));
    client.write_all(b"again").await.unwrap();
    let err = task.await.unwrap().expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let mut buf = [0; 4];
    assert_eq!(
        client.read(&mut buf).await.unwrap(),
        0,
        "the relay dropped the client"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_set_on_an_idle_relay_ends_it_without_traffic() {
    let (h, _) = handle(vec![]);
    let (mut client, _server, task) = relayed(&h);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let set_at = Instant::now();
    h.set(faults(vec![ToxicSpec::reset(Duration::ZERO)]));
    let err = task.await.unwrap().expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(set_at.elapsed() <= IDLE_RECHECK, "{:?}", set_at.elapsed());
    let mut buf = [0; 4];
    assert_eq!(client.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stall_timeout_set_on_an_idle_connection_resets_it() {
    let (h, _) = handle(vec![]);
    let (mut t, _far) = pair(&h);
    let reader = tokio::spawn(async move {
        let mut buf = [0; 4];
        t.read(&mut buf).await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let set_at = Instant::now();
    h.set(faults(vec![ToxicSpec::stall(Duration::from_secs(2))]));
    let err = reader.await.unwrap().expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let took = set_at.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took <= Duration::from_secs(2) + IDLE_RECHECK,
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn relay_with_close_after_gives_the_client_n_bytes_then_eof() {
    let (h, _) = handle(vec![ToxicSpec::close_after(3)]);
    let (mut client, mut server, task) = relayed(&h);
    server.write_all(b"abcdef").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0; 16];
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"abc");
    drop(client);
    assert_eq!(task.await.unwrap().unwrap(), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn extreme_values_never_panic() {
    let (h, _) = handle(vec![
        ToxicSpec::latency(Duration::MAX, Duration::MAX).with_direction(Direction::Both),
        ToxicSpec::bandwidth(u64::MAX),
        ToxicSpec::reset(Duration::MAX),
        ToxicSpec::stall(Duration::MAX).with_direction(Direction::Upstream),
        ToxicSpec::close_after(u64::MAX),
    ]);
    let (mut t, mut far) = pair(&h);
    far.write_all(b"x").await.unwrap();
    let mut buf = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf)).await;
    assert!(read.is_err(), "held for an age");
    let write = tokio::time::timeout(Duration::from_secs(5), t.write_all(b"y")).await;
    assert!(write.is_err(), "stalled");
    // The admin API refuses a duration past ten years; the longest it takes still holds.
    let err = serde_json::from_str::<FaultSpec>(
        r#"{"connection": [{"kind": "latency", "latency": "500000years", "jitter": "1ns"}]}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(quartet_policies::duration::TOO_LONG),
        "{err}"
    );
    let huge: FaultSpec = serde_json::from_str(
        r#"{"connection": [{"kind": "latency", "latency": "3650d", "jitter": "1ns"}]}"#,
    )
    .unwrap();
    huge.validate().unwrap();
    h.set(Some(huge));
    let (mut t, mut far) = pair(&h);
    far.write_all(b"x").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf)).await;
    assert!(read.is_err());
}

#[test]
fn old_fault_specs_without_connection_still_parse() {
    let json: FaultSpec = serde_json::from_str(
        r#"{"delay": "250ms", "delay_percent": 50, "abort_percent": 10, "abort_status": 503}"#,
    )
    .unwrap();
    assert!(json.connection.is_empty());
    assert_eq!(json.delay, Some(250 * MS));
    // Written back, it has no `connection` key: old readers see the old shape.
    let out = serde_json::to_value(&json).unwrap();
    assert!(out.get("connection").is_none(), "{out}");

    let policy: PolicySpec = toml::from_str(
        r#"
        timeout = "5s"
        fault = { abort_percent = 20.0, abort_status = 503 }
        "#,
    )
    .unwrap();
    policy.validate().unwrap();
    assert!(policy.fault.unwrap().connection.is_empty());
}

#[test]
fn connection_faults_parse_from_json_and_toml() {
    let json: FaultSpec = serde_json::from_str(
        r#"{"connection": [
            {"kind": "latency", "latency": "100ms", "jitter": "10ms"},
            {"kind": "bandwidth", "rate": 1024, "direction": "upstream"},
            {"kind": "reset", "timeout": "2s", "probability": 0.25},
            {"kind": "stall", "direction": "both"},
            {"kind": "close_after", "bytes": 4096}
        ]}"#,
    )
    .unwrap();
    json.validate().unwrap();
    assert_eq!(
        json.connection,
        vec![
            ToxicSpec::latency(100 * MS, 10 * MS),
            ToxicSpec::bandwidth(1024).with_direction(Direction::Upstream),
            ToxicSpec::reset(Duration::from_secs(2)).with_probability(0.25),
            ToxicSpec::stall(Duration::ZERO).with_direction(Direction::Both),
            ToxicSpec::close_after(4096),
        ]
    );
    // It writes back to what it read.
    let back: FaultSpec = serde_json::from_value(serde_json::to_value(&json).unwrap()).unwrap();
    assert_eq!(back, json);

    let policy: PolicySpec = toml::from_str(
        r#"
        [fault]
        abort_percent = 5.0
        [[fault.connection]]
        kind = "timeout"
        timeout = "3s"
        [[fault.connection]]
        kind = "limit_data"
        bytes = 10
        [[fault.connection]]
        kind = "reset_peer"
        "#,
    )
    .unwrap();
    policy.validate().unwrap();
    let kinds: Vec<ToxicKind> = policy
        .fault
        .unwrap()
        .connection
        .iter()
        .map(|t| t.kind)
        .collect();
    assert_eq!(
        kinds,
        [ToxicKind::Stall, ToxicKind::CloseAfter, ToxicKind::Reset]
    );
}

#[test]
fn bad_connection_faults_are_refused_naming_the_key() {
    let key_of = |toxic: &str| -> String {
        let policy: PolicySpec = serde_json::from_str(&format!(
            r#"{{"fault": {{"connection": [{{"kind": "reset"}}, {toxic}]}}}}"#
        ))
        .unwrap();
        let err = policy.validate().expect_err("invalid");
        assert!(!err.message.is_empty());
        assert_eq!(err.message, err.message.to_lowercase());
        err.key
    };
    assert_eq!(
        key_of(r#"{"kind": "latency"}"#),
        "fault.connection[1].latency"
    );
    assert_eq!(
        key_of(r#"{"kind": "bandwidth"}"#),
        "fault.connection[1].rate"
    );
    assert_eq!(
        key_of(r#"{"kind": "bandwidth", "rate": 0}"#),
        "fault.connection[1].rate"
    );
    assert_eq!(
        key_of(r#"{"kind": "close_after"}"#),
        "fault.connection[1].bytes"
    );
    assert_eq!(
        key_of(r#"{"kind": "reset", "probability": 1.5}"#),
        "fault.connection[1].probability"
    );
    assert_eq!(
        key_of(r#"{"kind": "reset", "probability": -0.1}"#),
        "fault.connection[1].probability"
    );
    assert_eq!(
        key_of(r#"{"kind": "bandwidth", "rate": 10, "jitter": "1ms"}"#),
        "fault.connection[1].jitter"
    );
    assert_eq!(
        key_of(r#"{"kind": "stall", "bytes": 5}"#),
        "fault.connection[1].bytes"
    );
    let err = ToxicSpec::latency(MS, MS)
        .with_probability(f64::NAN)
        .validate()
        .expect_err("nan");
    assert_eq!(err.key, "probability");
    assert_eq!(
        ToxicSpec::bandwidth(1)
            .with_direction(Direction::Both)
            .validate()
            .ok(),
        Some(())
    );

    // Unknown keys, unknown kinds, bad durations: serde refuses them.
    for bad in [
        r#"{"connection": [{"kind": "latency", "latency": "1ms", "lag": 1}]}"#,
        r#"{"connection": [{"kind": "slow_close"}]}"#,
        r#"{"connection": [{"kind": "latency", "latency": "soon"}]}"#,
        r#"{"connection": [{"kind": "reset", "direction": "sideways"}]}"#,
        r#"{"connection": [{"latency": "1ms"}]}"#,
    ] {
        assert!(serde_json::from_str::<FaultSpec>(bad).is_err(), "{bad}");
    }
}

#[test]
fn kinds_name_their_metric_labels() {
    let names: Vec<&str> = [
        ToxicKind::Latency,
        ToxicKind::Bandwidth,
        ToxicKind::Reset,
        ToxicKind::Stall,
        ToxicKind::CloseAfter,
    ]
    .iter()
    .map(|k| k.as_str())
    .collect();
    assert_eq!(
        names,
        ["latency", "bandwidth", "reset", "stall", "close_after"]
    );
}
