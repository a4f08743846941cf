#!/usr/bin/env bash
# RPC channel benchmark, in one run on the real RabbitMQ (127.0.0.1:5672 by default):
#
#   quartet  HTTP POST /rpc/{topic} through Quartet (release build, default policy on the
#            topic: the whole stack, publisher confirms on) to a Rust oslo.messaging echo
#            server (adapters/amqp/examples/rpc_echo_server.rs); wrk with a Lua script for
#            the POST body, sequential (1 connection) and with 16 and 64 connections;
#   oslo     oslo.messaging's own Python client (one RPCClient, 1 and 16 threads) calling
#            oslo.messaging's Python RPC server (adapters/amqp/tests/peers/oslo_rpc_server.py).
#
# Prints calls/s, p50 and p99 for each, and Quartet's throughput as a ratio of oslo's.
#
#   bash bench/rpc.sh                          # 10 s per run
#   DURATION=5 bash bench/rpc.sh
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f QUARTET_VENV=/work/venv bash bench/rpc.sh
#   CONNS="16 64" OSLO=0 bash bench/rpc.sh     # only Quartet, only those connection counts
#
# Also prints the CPU time Quartet and the echo server spent per call (user + system, from
# /proc): less noisy than calls/s on a machine shared with other work.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNS=${CONNS:-1 16 64}
OSLO=${OSLO:-1}
BASE_PORT=${BASE_PORT:-18180}
QRT=$BASE_PORT QADM=$((BASE_PORT + 1))
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
# oslo.messaging's URL for the same broker (rabbit://user:pass@host:port/vhost).
RABBIT_URL=${RABBIT_URL:-rabbit://guest:guest@127.0.0.1:5672/}
VENV=${QUARTET_VENV:-.venv}
PY="$VENV/bin/python"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk; then
  echo "installing wrk (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
if [ "$OSLO" = 1 ] && ! "$PY" -c 'import oslo_messaging' 2>/dev/null; then
  echo "no Python with oslo.messaging at $PY: run bash tests/run.sh (it builds .venv) or set QUARTET_VENV" >&2
  exit 1
fi

# PROFILE=debug for a quick check of the script itself (the numbers mean nothing then).
PROFILE=${PROFILE:-release}
echo "building quartet and the echo server ($PROFILE)"
cargo build --profile "$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")" -q -p quartet
cargo build --profile "$([ "$PROFILE" = debug ] && echo dev || echo "$PROFILE")" -q -p quartet-amqp --example rpc_echo_server
TARGET=${CARGO_TARGET_DIR:-target}/$PROFILE
QUARTET=${QUARTET_BIN:-$TARGET/quartet}  # QUARTET_BIN: another build, for an A/B run
ECHO=$TARGET/examples/rpc_echo_server

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

QTOPIC="bench_q_$$"
OTOPIC="bench_o_$$"

cat > "$WORK/quartet.toml" <<TOML
[server]
listen = "127.0.0.1:$QRT"
admin_listen = "127.0.0.1:$QADM"

[amqp]
url = "$AMQP_URL"
connection_name = "quartet-bench"

[[rpc.topics]]
topic = "$QTOPIC"
TOML

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"method": "echo", "args": {"i": 1, "s": "hello"}}'
wrk.headers["Content-Type"] = "application/json"
LUA

"$ECHO" "$QTOPIC" "$AMQP_URL" >"$WORK/echo.log" 2>&1 & pids+=($!)
ECHO_PID=$!
RUST_LOG=warn "$QUARTET" serve --config "$WORK/quartet.toml" >"$WORK/quartet.log" 2>&1 & pids+=($!)
QUARTET_PID=$!
if [ "$OSLO" = 1 ]; then
  # The oslo server stops when its stdin closes: hold it open on a FIFO of our own.
  mkfifo "$WORK/hold" && exec 3<>"$WORK/hold"
  "$PY" adapters/amqp/tests/peers/oslo_rpc_server.py --url "$RABBIT_URL" --topic "$OTOPIC" \
    --server bench1 >"$WORK/oslo_server.log" 2>&1 <&3 & pids+=($!)
fi

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$what did not happen" >&2
  tail -n 20 "$WORK"/*.log >&2
  exit 1
}
wait_for "the echo server is ready" grep -q ready "$WORK/echo.log"
[ "$OSLO" = 1 ] && wait_for "the oslo server is ready" grep -q '"ready"' "$WORK/oslo_server.log"
wait_for "quartet's rpc channel is ready" curl -fsS "http://127.0.0.1:$QADM/readyz"
curl -fsS -H 'Content-Type: application/json' -d '{"method": "echo", "args": {"i": 1}}' \
  "http://127.0.0.1:$QRT/rpc/$QTOPIC" >/dev/null

# wrk's --latency output -> "rps p50_ms p99_ms errors"
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }
# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run_wrk() { # connections -> "rps p50_ms p99_ms errors quartet_cpu_us_per_call echo_cpu_us_per_call"
  local c=$1 t=1 out rps p50 p99 errs calls q0 e0 q1 e1 hz
  [ "$c" -gt 1 ] && t=2
  q0=$(cpu_ticks "$QUARTET_PID") e0=$(cpu_ticks "$ECHO_PID")
  out=$(wrk -t"$t" -c"$c" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$QRT/rpc/$QTOPIC")
  q1=$(cpu_ticks "$QUARTET_PID") e1=$(cpu_ticks "$ECHO_PID")
  hz=$(getconf CLK_TCK)
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  calls=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  awk -v r="$rps" -v p50="$p50" -v p99="$p99" -v e="${errs:-0}" -v n="$calls" -v hz="$hz" \
    -v q=$((q1 - q0)) -v s=$((e1 - e0)) \
    'BEGIN { printf "%s %s %s %s %.1f %.1f\n", r, p50, p99, e, q / hz * 1e6 / n, s / hz * 1e6 / n }'
}

declare -A RPS P50 P99
echo
echo "$(nproc) cores, ${DURATION}s per run; the load generators share the cores"
for c in $CONNS; do
  read -r rps p50 p99 errs qcpu ecpu < <(run_wrk "$c")
  printf 'quartet %3d conns  %8.0f calls/s  p50 %7.3f ms  p99 %7.3f ms  non-2xx %s  cpu/call: quartet %s us, echo %s us\n' \
    "$c" "$rps" "$p50" "$p99" "$errs" "$qcpu" "$ecpu"
  RPS[q$c]=$rps P50[q$c]=$p50 P99[q$c]=$p99
done
[ "$OSLO" = 1 ] || exit 0
while read -r _ threads rps p50 p99 calls errs; do
  printf 'oslo    %3d thrds  %8.0f calls/s  p50 %7.3f ms  p99 %7.3f ms  errors %s\n' "$threads" "$rps" "$p50" "$p99" "$errs"
  RPS[o$threads]=$rps P50[o$threads]=$p50 P99[o$threads]=$p99
done < <("$PY" bench/rpc_oslo.py --url "$RABBIT_URL" --topic "$OTOPIC" --duration "$DURATION" --threads 1,16 2>"$WORK/oslo_client.log")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
printf '%-22s %10s %9s %9s\n' way calls/s p50_ms p99_ms
for k in q1 q16 q64 o1 o16; do
  case $k in q*) name="quartet ${k#q} conns" ;; o*) name="oslo ${k#o} threads" ;; esac
  printf '%-22s %10.0f %9.3f %9.3f\n' "$name" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}"
done
echo
echo "quartet sequential / oslo sequential:   $(ratio "${RPS[q1]}" "${RPS[o1]}")x calls/s"
echo "quartet 16 conns / oslo 16 threads:     $(ratio "${RPS[q16]}" "${RPS[o16]}")x calls/s"
echo "quartet 64 conns / oslo 16 threads:     $(ratio "${RPS[q64]}" "${RPS[o16]}")x calls/s (target >= 5x)"
echo "quartet sequential p50:                 ${P50[q1]} ms (target < 1 ms)"
