#!/usr/bin/env bash
# The cost of the token check on the REST channel: wrk against one nginx upstream through
# one Quartet (release build, embedded identity), two routes to the same upstream:
#   /open  auth = "none"      (identity headers still stripped)
#   /auth  auth = "required"  (X-Auth-Token validated; cache hits after the first request)
# alternating, several rounds. Prints requests/s, p50, p99 and auth ÷ open.
#
#   bash bench/http-auth.sh                   # 3 rounds of 10 s per way
#   ROUNDS=2 DURATION=5s bash bench/http-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-18180}
UP=$((BASE_PORT + 1)) QRT=$((BASE_PORT + 4)) QADM=$((BASE_PORT + 5))

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  echo "installing wrk, nginx (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi

echo "building quartet (release)"
cargo build --release -q -p quartet
QUARTET=${CARGO_TARGET_DIR:-target}/release/quartet

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/up/nginx.pid" ] && kill "$(cat "$WORK/up/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/up/logs"
cat > "$WORK/up/nginx.conf" <<NGX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '{"hello": "world", "n": 1}'; }
  }
}
NGX
cat > "$WORK/quartet.toml" <<TOML
[server]
listen = "127.0.0.1:$QRT"
admin_listen = "127.0.0.1:$QADM"

[upstreams.up]
endpoints = ["http://127.0.0.1:$UP"]

[[routes]]
prefix = "/open"
upstream = "up"
strip_prefix = true
auth = "none"

[[routes]]
prefix = "/auth"
upstream = "up"
strip_prefix = true
auth = "required"

[identity]
database = "sqlite://$WORK/identity.db"
key_repository = "$WORK/jws-keys"
TOML

nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
QUARTET_ADMIN_PASSWORD=bench-pass RUST_LOG=warn "$QUARTET" serve --config "$WORK/quartet.toml" \
  >"$WORK/quartet.log" 2>&1 & pids+=($!)

wait_port() {
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.1
  done
  echo "port $1 did not answer" >&2; cat "$WORK/quartet.log" >&2; exit 1
}
wait_port "$UP"; wait_port "$QRT"

TOKEN=$(curl -si "http://127.0.0.1:$QRT/v3/auth/tokens" -H 'Content-Type: application/json' -d '
  {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin",
     "domain": {"id": "default"}, "password": "bench-pass"}}},
   "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}' \
  | awk 'tolower($1) == "x-subject-token:" {print $2}' | tr -d '\r')
[ -n "$TOKEN" ] || { echo "no token from /v3/auth/tokens" >&2; cat "$WORK/quartet.log" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $TOKEN" "http://127.0.0.1:$QRT/auth/")
[ "$code" = 200 ] || { echo "/auth/ with the token answered $code" >&2; exit 1; }

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }
run_wrk() {
  local out rps p50 p99
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "X-Auth-Token: $TOKEN" "http://127.0.0.1:$QRT$1/")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers on $1:" >&2; echo "$out" >&2; exit 1; fi
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  echo "$rps $p50 $p99"
}

declare -A RPS P50 P99
names=(open auth)
for r in $(seq 1 "$ROUNDS"); do
  for n in "${names[@]}"; do
    read -r rps p50 p99 < <(run_wrk "/$n")
    printf 'round %d %-5s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$r" "$n" "$rps" "$p50" "$p99"
    RPS[$n]="${RPS[$n]:-} $rps"; P50[$n]="${P50[$n]:-} $p50"; P99[$n]="${P99[$n]:-} $p99"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
echo
echo "median of $ROUNDS rounds, wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores"
printf '%-5s %12s %10s %10s %10s\n' way req/s p50_ms p99_ms rps/open
o_rps=$(median <<<"${RPS[open]}")
for n in "${names[@]}"; do
  rps=$(median <<<"${RPS[$n]}"); p50=$(median <<<"${P50[$n]}"); p99=$(median <<<"${P99[$n]}")
  printf '%-5s %12.0f %10.3f %10.3f %10.2f\n' "$n" "$rps" "$p50" "$p99" \
    "$(awk -v a="$rps" -v b="$o_rps" 'BEGIN{print a/b}')"
done
