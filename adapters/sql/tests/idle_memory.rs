//! The heap an idle, logged-in PostgreSQL client holds in Quartet, counted exactly with
//! dhat's allocator: everything the listener allocates for it (the task, tokio's
//! registration of its socket, the session, buffers, the cancel key), and nothing of the
//! allocator's own overhead or the kernel's socket memory (bench/sql.sh measures the
//! resident memory of the whole process instead).
//!
//! The clients are blocking std sockets on the test thread, so they allocate nothing on
//! the heap themselves: what grows while they log in is the listener's.
//!
//!     cargo test -p quartet-sql --test idle_memory -- --nocapture
//!
//! The clients are parked (`client_park_after` is 10 ms here), as every idle client in
//! transaction mode is after 1 s by default: no task and no tokio registration. In
//! this test's build (2026-11-26): 388 to 414 bytes in 2 blocks per client: the parked
//! session with its socket and guard (272), the cancel slot (64), the cancel map's
//! share (about 34) and the parked table's slot (16). Before parking: 923 bytes in 4
//! blocks (the task 512, tokio's `ScheduledIo` 256, the cancel slot 64, the `JoinSet`
//! entry 56, the map's share).
//!
//! With `QUARTET_DHAT_FILE=PATH` the profile (what is still allocated at the end, by
//! call site, while the clients are connected) is written there for dhat's viewer.

mod common;

use common::*;
use quartet_sql::{AuthMethod, PgListener, PoolMode, SqlContext};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CLIENTS: usize = 1000;

/// A startup packet for user `postgres`, database `test` (protocol 3.0).
fn startup() -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", "postgres", "database", "test", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Logs a client in (trust) and returns it once `ReadyForQuery` came. Reads into a
/// stack buffer: the client side allocates nothing but the socket.
fn login(addr: SocketAddr, packet: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to the listener");
    s.write_all(packet).expect("send startup");
    let mut head = [0u8; 5];
    let mut body = [0u8; 512];
    loop {
        s.read_exact(&mut head).expect("read a frame header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut left = len;
        while left > 0 {
            let n = left.min(body.len());
            s.read_exact(&mut body[..n]).expect("read a frame body");
            left -= n;
        }
        match head[0] {
            b'E' => panic!(
                "login refused: {}",
                String::from_utf8_lossy(&body[..len.min(512)])
            ),
            b'Z' => return s,
            _ => {}
        }
    }
}

#[test]
fn an_idle_client_holds_little_heap() {
    let profiler = match std::env::var("QUARTET_DHAT_FILE") {
        Ok(path) => dhat::Profiler::builder().file_name(path).build(),
        Err(_) => dhat::Profiler::builder().testing().build(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut spec = spec(PoolMode::Transaction, 4);
    spec.auth = AuthMethod::Trust;
    spec.users.clear();
    spec.max_clients = CLIENTS + 10;
    spec.health_interval = Duration::from_secs(3600);
    spec.client_park_after = Duration::from_millis(10);
    let (addr, handle) = rt.block_on(async {
        let _ = direct().await;
        let l = PgListener::bind(spec, SqlContext::default())
            .await
            .expect("bind");
        let (addr, handle) = (l.local_addr(), l.handle());
        tokio::spawn(l.run(std::future::pending()));
        (addr, handle)
    });
    // Idle: no server lent out, and every client parked.
    let idle = || {
        let st = handle.state();
        st.pools.iter().all(|p| p.servers_active == 0) && st.clients_parked == st.clients
    };
    let wait_idle = || {
        while !idle() {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let packet = startup();
    // Warm up: the pool, its server connection, the cancel map's first table.
    let mut clients = Vec::with_capacity(CLIENTS + 10);
    for _ in 0..10 {
        clients.push(login(addr, &packet));
    }
    wait_idle();
    let before = dhat::HeapStats::get();
    for _ in 0..CLIENTS {
        clients.push(login(addr, &packet));
    }
    wait_idle();
    let with = dhat::HeapStats::get();
    let bytes = (with.curr_bytes - before.curr_bytes) as f64 / CLIENTS as f64;
    let blocks = (with.curr_blocks - before.curr_blocks) as f64 / CLIENTS as f64;
    eprintln!("per idle client: {bytes:.0} bytes of heap in {blocks:.1} blocks");
    // The profile's end is now, with the clients connected.
    drop(profiler);
    assert!(
        bytes <= 512.0,
        "an idle client holds {bytes:.0} bytes of heap ({blocks:.1} blocks)"
    );
    drop(clients);
}
