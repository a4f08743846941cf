# Sourced by bench/http.sh and bench/cpu.sh: starts the REST benchmark's processes on
# loopback and defines the ways to compare. Not meant to be run on its own.
#
# Ways (name -> port): direct (nginx serving a 44-byte JSON body), nginx (nginx as a
# reverse proxy, upstream keepalive), haproxy (a bare `mode http` proxy), haproxy-full (the
# same doing the work Quartet's default policy does; its config below), quartet (the
# default policy on a `/` route),
# quartet-auth (the same route with `auth = "required"`: the embedded identity, one token
# validated once and then served from the token cache).
#
# QUARTET_RUNTIME=per_core or multi_thread sets Quartet's `server.runtime` (unset: its default).
# WRAP="cmd args" starts HAProxy and both Quartets under that command (bench/instructions.sh
# runs them under callgrind); WAIT_TRIES (default 200) tenths of a second for each port.
#
# After sourcing: WAYS (names), PORT[name], PIDS[name] (the processes whose CPU is the
# way's cost; empty for direct, whose cost is the upstream alone), UP_PIDS (the upstream
# nginx's), TOKEN_OF[name] (the X-Auth-Token to send, for quartet-auth), WORK (temp dir).

BASE_PORT=${BASE_PORT:-18080}
UP=$((BASE_PORT + 1)) NGX=$((BASE_PORT + 2)) HAP=$((BASE_PORT + 3)) QRT=$((BASE_PORT + 4))
QADM=$((BASE_PORT + 5)) QAUTH=$((BASE_PORT + 6)) QAUTH_ADM=$((BASE_PORT + 7))
HAPF=$((BASE_PORT + 8))

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need haproxy; then
  echo "installing wrk, nginx, haproxy (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light haproxy >/dev/null
fi

if [ -z "${QUARTET:-}" ]; then
  echo "building quartet (release)"
  cargo build --release -q -p quartet
  QUARTET=${CARGO_TARGET_DIR:-target}/release/quartet
fi

WORK=$(mktemp -d)
bg_pids=()
cleanup() {
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  nginx -p "$WORK/px" -c "$WORK/px/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/up/logs" "$WORK/px/logs"
# The upstream reads request heads into a 2 KiB buffer: the auth way's heads (the token
# and keystonemiddleware's headers, 1.3 KiB) would be copied to a second buffer with
# nginx's default 1k (bench/README.md, eighth round). UP_HEADER_BUFFER=1k: the default.
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_header_buffer_size ${UP_HEADER_BUFFER:-2k};
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
# What both HAProxy ways share; `timeout server` is each way's own.
HAP_COMMON="global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  option http-keep-alive"
cat > "$WORK/haproxy.cfg" <<HAP
$HAP_COMMON
  timeout server 30s
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP
HAP
# The same HAProxy set up to do what Quartet's default policy does to a request, so the
# two can be compared at equal work as well: the forwarded headers, an
# X-OpenStack-Request-ID made for the request and returned on the response, up to two
# retries of an idempotent request (per-try limit 10 s), and an endpoint that keeps
# failing taken out (passive checks: `observe layer7`, 5 errors in a row; `observe`
# needs the active check, one every 10 s). A bulkhead of 1024 (`maxconn`, though
# HAProxy queues where Quartet refuses).
cat > "$WORK/haproxy-full.cfg" <<HAP
$HAP_COMMON
  timeout server 10s
  retries 2
  retry-on conn-failure empty-response response-timeout 502 503 504
frontend fe
  bind 127.0.0.1:$HAPF
  maxconn 1024
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  unique-id-format req-%[uuid(4)]
  unique-id-header X-OpenStack-Request-ID
  http-response set-header X-OpenStack-Request-ID %[unique-id]
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP check inter 10s observe layer7 error-limit 5 on-error mark-down
HAP
RUNTIME_LINE=${QUARTET_RUNTIME:+"runtime = \"$QUARTET_RUNTIME\""}
cat > "$WORK/quartet.toml" <<TOML
[server]
listen = "127.0.0.1:$QRT"
admin_listen = "127.0.0.1:$QADM"
$RUNTIME_LINE

[upstreams.up]
endpoints = ["http://127.0.0.1:$UP"]

[[routes]]
prefix = "/"
upstream = "up"
TOML
cat > "$WORK/quartet-auth.toml" <<TOML
[server]
listen = "127.0.0.1:$QAUTH"
admin_listen = "127.0.0.1:$QAUTH_ADM"
$RUNTIME_LINE

[identity]
mode = "embedded"
database = "sqlite://$WORK/identity.db"
key_repository = "$WORK/jws-keys"

[upstreams.up]
endpoints = ["http://127.0.0.1:$UP"]

[[routes]]
prefix = "/"
upstream = "up"
auth = "required"
TOML

nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
read -r -a WRAP_CMD <<<"${WRAP:-}"
"${WRAP_CMD[@]}" haproxy -f "$WORK/haproxy.cfg" -q >"$WORK/haproxy.log" 2>&1 & bg_pids+=($!)
HAP_PID=$!
"${WRAP_CMD[@]}" haproxy -f "$WORK/haproxy-full.cfg" -q >"$WORK/haproxy-full.log" 2>&1 & bg_pids+=($!)
HAPF_PID=$!
RUST_LOG=warn "${WRAP_CMD[@]}" "$QUARTET" serve --config "$WORK/quartet.toml" >"$WORK/quartet.log" 2>&1 & bg_pids+=($!)
QRT_PID=$!
QUARTET_ADMIN_PASSWORD=bench-secret RUST_LOG=warn "${WRAP_CMD[@]}" "$QUARTET" serve --config "$WORK/quartet-auth.toml" >"$WORK/quartet-auth.log" 2>&1 & bg_pids+=($!)
QAUTH_PID=$!

wait_port() {
  for _ in $(seq 1 "${WAIT_TRIES:-200}"); do
    if curl -s -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.1
  done
  echo "port $1 did not answer" >&2; cat "$WORK"/quartet*.log >&2; exit 1
}
for p in $UP $NGX $HAP $HAPF $QRT $QAUTH; do wait_port "$p"; done

# A project-scoped admin token from the embedded identity, validated once by the first
# request and then answered from the token cache.
TOKEN=$(curl -fsS -D - -o /dev/null -H 'Content-Type: application/json' \
  "http://127.0.0.1:$QAUTH/v3/auth/tokens" -d '{"auth":{"identity":{"methods":["password"],
   "password":{"user":{"name":"admin","domain":{"id":"default"},"password":"bench-secret"}}},
   "scope":{"project":{"name":"admin","domain":{"id":"default"}}}}}' |
  awk 'tolower($1)=="x-subject-token:" {print $2}' | tr -d '\r')
if [ -z "$TOKEN" ]; then echo "no token from the embedded identity" >&2; cat "$WORK/quartet-auth.log" >&2; exit 1; fi
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $TOKEN" "http://127.0.0.1:$QAUTH/")
if [ "$code" != 200 ]; then echo "quartet-auth answered $code with the token" >&2; exit 1; fi
code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$QAUTH/")
if [ "$code" != 401 ]; then echo "quartet-auth answered $code without a token (want 401)" >&2; exit 1; fi

children() { awk -v p="$1" '$4==p {print $1}' /proc/[0-9]*/stat 2>/dev/null; }
UP_PIDS=$(children "$(cat "$WORK/up/nginx.pid")")
NGX_PIDS=$(children "$(cat "$WORK/px/nginx.pid")")

WAYS=(direct nginx haproxy haproxy-full quartet quartet-auth)
if [ -n "${ONLY:-}" ]; then read -r -a WAYS <<<"$ONLY"; fi
declare -A PORT=([direct]=$UP [nginx]=$NGX [haproxy]=$HAP [haproxy-full]=$HAPF [quartet]=$QRT [quartet-auth]=$QAUTH)
declare -A PIDS=([direct]="" [nginx]="$NGX_PIDS" [haproxy]="$HAP_PID" [haproxy-full]="$HAPF_PID" [quartet]="$QRT_PID" [quartet-auth]="$QAUTH_PID")
declare -A TOKEN_OF=([direct]="" [nginx]="" [haproxy]="" [haproxy-full]="" [quartet]="" [quartet-auth]="$TOKEN")
