"""A plain oslo.messaging RPC client that calls Quartet's RPC server side.

Usage: oslo_rpc_client.py --url URL --topic TOPIC [--server NAME] [--exchange EX]

Runs a fixed list of calls and casts and prints one JSON object with what each gave
(a result, or the exception's type, module and text as the oslo client sees it).
"""
import argparse
import json
import sys

import oslo_messaging as om
from oslo_config import cfg


def outcome(fn):
    try:
        return {"result": fn()}
    except Exception as e:  # noqa: BLE001 - we report every exception
        out = {"exception": type(e).__name__, "module": type(e).__module__, "text": str(e)}
        if isinstance(e, om.RemoteError):
            out["exc_type"] = e.exc_type
            out["value"] = e.value
        return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--server")
    p.add_argument("--exchange", default="openstack")
    a = p.parse_args()
    cfg.CONF([], project="quartet-peer")
    om.set_transport_defaults(control_exchange=a.exchange)
    transport = om.get_rpc_transport(cfg.CONF, url=a.url)
    target = om.Target(topic=a.topic, version="1.0")
    client = om.get_rpc_client(transport, target, timeout=10)
    ctxt = {"user": "u1", "project_id": "p1", "roles": ["member"], "request_id": "req-1"}
    out = {}
    out["echo"] = outcome(lambda: client.call(ctxt, "echo", text="hello", n=1, nested={"a": [1, 2, 3]}))
    out["add"] = outcome(lambda: client.call(ctxt, "add", a=2, b=3))
    out["context"] = outcome(lambda: client.call(ctxt, "context"))
    out["fail_value"] = outcome(lambda: client.call(ctxt, "fail", kind="value", message="boom-value"))
    out["fail_custom"] = outcome(lambda: client.call(ctxt, "fail", kind="custom", message="boom-custom"))
    out["no_such_method"] = outcome(lambda: client.call(ctxt, "no_such_method"))
    out["slow_monitored"] = outcome(lambda: client.prepare(timeout=10, call_monitor_timeout=2).call(ctxt, "slow", seconds=2.5))
    if a.server:
        out["direct"] = outcome(lambda: client.prepare(server=a.server).call(ctxt, "whoami"))
    out["cast"] = outcome(lambda: client.cast(ctxt, "record", tag="cast-1"))
    out["fanout"] = outcome(lambda: client.prepare(fanout=True).cast(ctxt, "record", tag="fanout-1"))
    # So the test can delete it (oslo leaves it to x-expires).
    out["reply_q"] = getattr(transport._driver, "_reply_q", None)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    transport.cleanup()


if __name__ == "__main__":
    main()
