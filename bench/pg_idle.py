#!/usr/bin/env python3
"""Opens N PostgreSQL client connections to HOST:PORT, logs each in (trust), leaves
them idle, prints "ready N" and holds them until stdin closes or says anything.

    python3 bench/pg_idle.py 127.0.0.1 16433 10000 postgres quartet_bench

Used by bench/sql.sh to measure the resident memory of a pooler per idle client.
Plain asyncio, no driver: a startup message, then frames until ReadyForQuery.
"""
import asyncio
import struct
import sys


def startup(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def login(host, port, user, database):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(startup(user, database))
    await writer.drain()
    while True:
        head = await reader.readexactly(5)
        tag, length = head[:1], struct.unpack("!i", head[1:])[0]
        body = await reader.readexactly(length - 4)
        if tag == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
            raise RuntimeError("the pooler asks for a password; use trust")
        if tag == b"Z":
            return reader, writer


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    user = sys.argv[4] if len(sys.argv) > 4 else "postgres"
    database = sys.argv[5] if len(sys.argv) > 5 else "postgres"
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            conns.append(await login(host, port, user, database))

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, w in conns:
        w.close()


asyncio.run(main())
