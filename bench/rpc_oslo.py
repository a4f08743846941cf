"""oslo.messaging's own RPC client calling an oslo.messaging echo server, for bench/rpc.sh.

Usage: rpc_oslo.py --url URL --topic TOPIC --duration SECONDS --threads 1,16

The server is adapters/amqp/tests/peers/oslo_rpc_server.py (started by bench/rpc.sh);
this client calls its `echo` method for DURATION seconds with each number of threads
(one shared RPCClient, as a service's process would have) and prints one line per run:
`oslo <threads> <calls/s> <p50 ms> <p99 ms> <calls> <errors>`.
"""
import argparse
import threading
import time

import oslo_messaging as om
from oslo_config import cfg


def percentile(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    i = int(round((len(sorted_lat) - 1) * p))
    return sorted_lat[i]


def run(client, threads, duration):
    lats = [[] for _ in range(threads)]
    errors = [0] * threads
    stop = time.monotonic() + duration

    def worker(n):
        ctxt = {"request_id": "req-bench"}
        mine = lats[n]
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                client.call(ctxt, "echo", i=n, s="hello")
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors[n] += 1
                continue
            mine.append(time.monotonic() - t)

    started = time.monotonic()
    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - started
    all_lat = sorted(x for l in lats for x in l)
    print("oslo %d %.0f %.3f %.3f %d %d" % (
        threads, len(all_lat) / elapsed, percentile(all_lat, 0.5) * 1e3,
        percentile(all_lat, 0.99) * 1e3, len(all_lat), sum(errors)), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--threads", default="1,16")
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    cfg.CONF([], project="quartet-bench")
    transport = om.get_rpc_transport(cfg.CONF, url=a.url)
    client = om.get_rpc_client(transport, om.Target(topic=a.topic), timeout=30)
    # Warm up: the reply queue and the first connections.
    end = time.monotonic() + a.warmup
    while time.monotonic() < end:
        client.call({}, "echo", i=0)
    for threads in [int(x) for x in a.threads.split(",")]:
        run(client, threads, a.duration)
    transport.cleanup()


if __name__ == "__main__":
    main()
