#!/usr/bin/env bash
# REST channel benchmark: wrk against one nginx upstream serving a small JSON body,
# four ways in one run, alternating, several rounds:
#   direct, nginx as a reverse proxy, HAProxy, Quartet (default policy on the route).
# Prints requests/s, p50 and p99 for each and the ratios to direct.
#
#   bash bench/http.sh                 # 3 rounds of 10 s per way
#   ROUNDS=5 DURATION=20s CONNS=64 bash bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-18080}
UP=$((BASE_PORT + 1)) NGX=$((BASE_PORT + 2)) HAP=$((BASE_PORT + 3)) QRT=$((BASE_PORT + 4)) QADM=$((BASE_PORT + 5))

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need haproxy; then
  echo "installing wrk, nginx, haproxy (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light haproxy >/dev/null
fi

echo "building quartet (release)"
cargo build --release -q -p quartet
QUARTET=${CARGO_TARGET_DIR:-target}/release/quartet

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/up/logs" "$WORK/px/logs"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"version":{"id":"v3.14","status":"stable"}}'; }
  }
}
NGINX
cat > "$WORK/px/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/px/nginx.pid;
error_log $WORK/px/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP
HAP
cat > "$WORK/quartet.toml" <<TOML
[server]
listen = "127.0.0.1:$QRT"
admin_listen = "127.0.0.1:$QADM"

[upstreams.up]
endpoints = ["http://127.0.0.1:$UP"]

[[routes]]
prefix = "/"
upstream = "up"
TOML

nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
haproxy -f "$WORK/haproxy.cfg" -q & pids+=($!)
RUST_LOG=warn "$QUARTET" serve --config "$WORK/quartet.toml" >"$WORK/quartet.log" 2>&1 & pids+=($!)

wait_port() {
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.1
  done
  echo "port $1 did not answer" >&2; cat "$WORK/quartet.log" >&2; exit 1
}
for p in $UP $NGX $HAP $QRT; do wait_port "$p"; done

# wrk's --latency output -> "rps p50_ms p99_ms"
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }
run_wrk() {
  local out rps p50 p99
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1/")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  echo "$rps $p50 $p99"
}

declare -A RPS P50 P99
names=(direct nginx haproxy quartet)
ports=($UP $NGX $HAP $QRT)
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!names[@]}"; do
    n=${names[$i]}
    read -r rps p50 p99 < <(run_wrk "${ports[$i]}")
    printf 'round %d %-8s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$r" "$n" "$rps" "$p50" "$p99"
    RPS[$n]="${RPS[$n]:-} $rps"; P50[$n]="${P50[$n]:-} $p50"; P99[$n]="${P99[$n]:-} $p99"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
echo
echo "median of $ROUNDS rounds, wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores"
printf '%-8s %12s %10s %10s %10s %10s\n' way req/s p50_ms p99_ms rps/direct p99/direct
d_rps=$(median <<<"${RPS[direct]}"); d_p99=$(median <<<"${P99[direct]}")
for n in "${names[@]}"; do
  rps=$(median <<<"${RPS[$n]}"); p50=$(median <<<"${P50[$n]}"); p99=$(median <<<"${P99[$n]}")
  printf '%-8s %12.0f %10.3f %10.3f %10.2f %10.2f\n' "$n" "$rps" "$p50" "$p99" \
    "$(awk -v a="$rps" -v b="$d_rps" 'BEGIN{print a/b}')" "$(awk -v a="$p99" -v b="$d_p99" 'BEGIN{print a/b}')"
done
