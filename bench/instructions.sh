#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: HAProxy, Quartet and
# Quartet with `auth = "required"`, each under the same wrk load as bench/http.sh, on the
# same nginx upstream (bench/http-env.sh). Callgrind counts the instructions the proxy
# process executes in user space, whatever else the machine is doing, so two runs of the
# same binaries agree within about 1% (the share of idle-loop and wake-up work moves a
# little with the request rate) where req/s on a 2-core machine moves by 15%.
# Use it to see what a change to the request path costs or saves; bench/http.sh is still
# what says how fast a way is.
#
#   bash bench/instructions.sh
#   ONLY="haproxy quartet" DURATION=20s bash bench/instructions.sh
#   KEEP=/tmp/cg bash bench/instructions.sh   # keep the callgrind files, for
#                                             # callgrind_annotate --inclusive=yes FILE
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
  echo "installing valgrind (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
OUT=${KEEP:-$(mktemp -d)}
mkdir -p "$OUT"
# %p: one file per process; each dump adds a numbered file beside it.
WRAP="valgrind --tool=callgrind --callgrind-out-file=$OUT/callgrind.%p.out"
WAIT_TRIES=1200 # valgrind starts Quartet (and hashes the identity's admin password) slowly
ONLY=${ONLY:-"haproxy quartet quartet-auth"}
. bench/http-env.sh

# The Ir total of the newest dump of process $1.
dumped_total() {
  local f
  f=$(ls -t "$OUT"/callgrind."$1".out.* 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "no callgrind dump for process $1" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}

declare -A PER_REQ
for n in "${WAYS[@]}"; do
  pid=${PIDS[$n]}
  hdr=()
  [ -n "${TOKEN_OF[$n]}" ] && hdr=(-H "X-Auth-Token: ${TOKEN_OF[$n]}")
  # Warm up (pools, token cache), then count only the measured run.
  wrk -t1 -c10 -d3s "${hdr[@]}" "http://127.0.0.1:${PORT[$n]}/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "${hdr[@]}" "http://127.0.0.1:${PORT[$n]}/")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  if grep -q Non-2xx <<<"$out"; then echo "$n: some answers were not 2xx" >&2; exit 1; fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  if [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
    echo "$n: wrk got no answers; the proxy's log:" >&2
    tail -20 "$WORK/$n.log" >&2 2>/dev/null || true
    exit 1
  fi
  total=$(dumped_total "$pid")
  if [ -z "$total" ]; then echo "$n: the callgrind dump of process $pid has no total" >&2; exit 1; fi
  PER_REQ[$n]=$((total / reqs))
  printf '%-13s %9d requests  %14d instructions  %8d per request\n' "$n" "$reqs" "$total" "${PER_REQ[$n]}"
done

echo
echo "user-space instructions per request of the proxy process (callgrind), wrk -t$THREADS -c$CONNS -d$DURATION"
for n in "${WAYS[@]}"; do
  ratio=""
  if [ -n "${PER_REQ[haproxy]:-}" ] && [ "$n" != haproxy ]; then
    ratio=$(awk -v a="${PER_REQ[$n]}" -v b="${PER_REQ[haproxy]}" 'BEGIN {printf "%.2f x HAProxy", a / b}')
  fi
  printf '%-13s %8d  %s\n' "$n" "${PER_REQ[$n]}" "$ratio"
done
[ -n "${KEEP:-}" ] || rm -rf "$OUT"
