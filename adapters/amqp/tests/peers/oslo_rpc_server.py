"""A plain oslo.messaging RPC server for quartet-amqp's integration tests.

Usage: oslo_rpc_server.py --url URL --topic TOPIC --server NAME [--exchange EX]

Prints "READY" once it consumes, then one JSON line per event the tests wait on
("slow-start", "record"). Stops on SIGTERM or when stdin closes.
"""
import argparse
import json
import signal
import sys
import threading
import time

import oslo_messaging as om
from oslo_config import cfg


class GatewayDemoError(Exception):
    pass


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Endpoint(object):
    target = om.Target(version="1.3")

    def __init__(self, server):
        self.server = server

    def echo(self, ctxt, **kwargs):
        return kwargs

    def add(self, ctxt, a, b):
        return a + b

    def shapes(self, ctxt):
        return [1, "two", {"three": 3.5}, None, True, "\u00e9t\u00e9"]

    def whoami(self, ctxt):
        return {"server": self.server, "context": ctxt}

    def fail(self, ctxt, kind="value", message="boom"):
        if kind == "value":
            raise ValueError(message)
        raise GatewayDemoError(message)

    @om.expected_exceptions(KeyError)
    def fail_expected(self, ctxt, message="boom"):
        raise KeyError(message)

    def slow(self, ctxt, seconds, tag=None):
        say({"event": "slow-start", "tag": tag, "server": self.server})
        time.sleep(seconds)
        return {"slept": seconds, "tag": tag}

    def record(self, ctxt, tag):
        say({"event": "record", "tag": tag, "server": self.server})


class NamespacedEndpoint(object):
    target = om.Target(namespace="quartet_ns", version="2.1")

    def ns_echo(self, ctxt, **kwargs):
        return {"namespace": "quartet_ns", "args": kwargs}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--exchange", default="openstack")
    a = p.parse_args()
    cfg.CONF([], project="quartet-peer")
    om.set_transport_defaults(control_exchange=a.exchange)
    transport = om.get_rpc_transport(cfg.CONF, url=a.url)
    target = om.Target(topic=a.topic, server=a.server)
    server = om.get_rpc_server(
        transport, target, [Endpoint(a.server), NamespacedEndpoint()],
        access_policy=om.DefaultRPCAccessPolicy)
    server.start()
    say({"event": "ready", "server": a.server})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    server.stop()
    server.wait()
    transport.cleanup()


if __name__ == "__main__":
    main()
