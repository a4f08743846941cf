#!/usr/bin/env bash
# What each way of bench/http.sh costs per request, measured on the proxy process itself:
# CPU time (user + system) per request, and with `perf` also syscalls and context switches
# per request. These numbers hold up on a machine busy with other work, where req/s and
# latency do not. Then the latency one connection sees (wrk -c1), p50 and p99.
#
#   bash bench/cpu.sh                    # 2 rounds of 8 s per way, then -c1
#   ROUNDS=3 DURATION=10s ONLY="haproxy quartet quartet-auth" bash bench/cpu.sh
#   QUARTET=target/release/quartet bash bench/cpu.sh   # no build
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
C1=${C1:-1}
. bench/http-env.sh

secs=${DURATION%s}
have_perf=0
if command -v perf >/dev/null 2>&1 && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
  have_perf=1
fi

# utime + stime (clock ticks) of these processes, all their threads included.
ticks() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

# One loaded run of way $1: "requests cpu_us syscalls ctxsw" (the last two "-" without perf).
measure() {
  local n=$1 pids=${PIDS[$1]} out before after reqs sc="-" cs="-"
  [ -z "$pids" ] && pids=$UP_PIDS
  # shellcheck disable=SC2086
  before=$(ticks $pids)
  if [ "$have_perf" = 1 ]; then
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(tr ' \n' ',,' <<<"$pids" | sed 's/,*$//')" \
      -o "$WORK/perf.$n" -- sleep "$secs" >/dev/null 2>&1 &
    local perf_pid=$!
  fi
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" ${TOKEN_OF[$n]:+-H "X-Auth-Token: ${TOKEN_OF[$n]}"} "http://127.0.0.1:${PORT[$n]}/")
  # shellcheck disable=SC2086
  after=$(ticks $pids)
  if [ "$have_perf" = 1 ]; then
    wait "$perf_pid" || true
    sc=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ {print $1}' "$WORK/perf.$n")
    cs=$(awk -F, '$3 ~ /context-switches/ {print $1}' "$WORK/perf.$n")
  fi
  if grep -q Non-2xx <<<"$out"; then echo "$n: some answers were not 2xx" >&2; exit 1; fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$reqs $(( (after - before) * 1000000 / $(getconf CLK_TCK) )) $sc $cs"
}

declare -A REQS CPU SC CS
for r in $(seq 1 "$ROUNDS"); do
  for n in "${WAYS[@]}"; do
    read -r reqs cpu sc cs < <(measure "$n")
    REQS[$n]=$(( ${REQS[$n]:-0} + reqs )); CPU[$n]=$(( ${CPU[$n]:-0} + cpu ))
    if [ "$sc" != "-" ]; then SC[$n]=$(( ${SC[$n]:-0} + sc )); CS[$n]=$(( ${CS[$n]:-0} + cs )); fi
    printf 'round %d %-12s %9d requests  %8.1f ms cpu\n' "$r" "$n" "$reqs" "$(awk -v c="$cpu" 'BEGIN{print c/1000}')"
  done
done

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }
echo
echo "wrk -t$THREADS -c$CONNS, $ROUNDS x $DURATION per way, $(nproc) cores; cost of the proxy process(es) per request"
echo "(direct: the upstream nginx itself); latency: wrk -t1 -c$C1 -d$DURATION"
printf '%-12s %10s %12s %12s %12s %10s %10s\n' way req/s cpu_us/req syscalls/req ctxsw/req c1_p50_ms c1_p99_ms
for n in "${WAYS[@]}"; do
  # shellcheck disable=SC2086
  lat=$(wrk -t1 -c"$C1" -d"$DURATION" --latency ${TOKEN_OF[$n]:+-H "X-Auth-Token: ${TOKEN_OF[$n]}"} "http://127.0.0.1:${PORT[$n]}/")
  p50=$(awk '$1=="50%" {print $2}' <<<"$lat" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$lat" | to_ms)
  awk -v n="$n" -v r="${REQS[$n]}" -v c="${CPU[$n]}" -v s="${SC[$n]:-}" -v x="${CS[$n]:-}" \
      -v t="$(awk -v d="$secs" -v k="$ROUNDS" 'BEGIN{print d*k}')" -v p50="$p50" -v p99="$p99" 'BEGIN {
    printf "%-12s %10.0f %12.2f %12s %12s %10s %10s\n", n, r/t, c/r,
      (s == "" ? "-" : sprintf("%.2f", s/r)), (x == "" ? "-" : sprintf("%.3f", x/r)), p50, p99 }'
done
