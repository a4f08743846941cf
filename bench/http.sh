#!/usr/bin/env bash
# REST channel benchmark: wrk against one nginx upstream serving a small JSON body,
# six ways in one run, alternating (even rounds in reverse order), several rounds:
#   direct, nginx as a reverse proxy, HAProxy, HAProxy set up to do the work of Quartet's
#   default policy (forwarded headers, request id, retries, passive ejection: see
#   bench/http-env.sh), Quartet (default policy on the route), and Quartet with
#   `auth = "required"` on the route (embedded identity, token cache hits).
# Prints requests/s, p50 and p99 for each, the ratios to direct, Quartet against HAProxy
# and Quartet with auth against Quartet without.
#
#   bash bench/http.sh                 # 3 rounds of 10 s per way
#   ROUNDS=5 DURATION=20s CONNS=64 bash bench/http.sh
#   ONLY="haproxy quartet" bash bench/http.sh
# bench/cpu.sh measures the CPU each way costs per request (robust on a busy machine).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
. bench/http-env.sh

# wrk's --latency output -> "rps p50_ms p99_ms"
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 } printf "%.3f", v }'; }
run_wrk() {
  local out rps p50 p99 non2xx
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency ${TOKEN_OF[$1]:+-H "X-Auth-Token: ${TOKEN_OF[$1]}"} "http://127.0.0.1:${PORT[$1]}/")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  if [ -n "$non2xx" ]; then echo "$1: $non2xx answers were not 2xx" >&2; exit 1; fi
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  echo "$rps $p50 $p99"
}

declare -A RPS P50 P99
for r in $(seq 1 "$ROUNDS"); do
  # Odd rounds run the ways in order, even rounds in reverse: on a machine whose speed
  # drifts within a round, the way that ran second in one round runs first in the next,
  # so a paired ratio is not always taken from the same side of the drift.
  order=("${WAYS[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#WAYS[@]} - 1; i >= 0; i--)); do order+=("${WAYS[$i]}"); done
  fi
  for n in "${order[@]}"; do
    read -r rps p50 p99 < <(run_wrk "$n")
    printf 'round %d %-12s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$r" "$n" "$rps" "$p50" "$p99"
    RPS[$n]="${RPS[$n]:-} $rps"; P50[$n]="${P50[$n]:-} $p50"; P99[$n]="${P99[$n]:-} $p99"
  done
done

. bench/stats.sh
echo
echo "median of $ROUNDS rounds, wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores"
printf '%-12s %12s %10s %10s %10s %10s\n' way req/s p50_ms p99_ms rps/direct p99/direct
declare -A MRPS MP99
d_rps=$(median <<<"${RPS[direct]:-}"); d_p99=$(median <<<"${P99[direct]:-}")
for n in "${WAYS[@]}"; do
  MRPS[$n]=$(median <<<"${RPS[$n]}"); p50=$(median <<<"${P50[$n]}"); MP99[$n]=$(median <<<"${P99[$n]}")
  printf '%-12s %12.0f %10.3f %10.3f %10s %10s\n' "$n" "${MRPS[$n]}" "$p50" "${MP99[$n]}" \
    "$(ratio "${MRPS[$n]}" "${d_rps:-0}")" "$(ratio "${MP99[$n]}" "${d_p99:-0}")"
done
if [ -n "${MRPS[haproxy]:-}" ] && [ -n "${MRPS[quartet]:-}" ]; then
  echo "quartet / haproxy, req/s round by round: $(paired "${RPS[quartet]}" "${RPS[haproxy]}")"
fi
if [ -n "${MRPS[quartet]:-}" ] && [ -n "${MRPS[quartet-auth]:-}" ]; then
  echo "quartet-auth / quartet, req/s round by round: $(paired "${RPS[quartet-auth]}" "${RPS[quartet]}")"
fi
if [ -n "${MRPS[haproxy]:-}" ] && [ -n "${MRPS[quartet]:-}" ]; then
  echo "quartet / haproxy: req/s $(ratio "${MRPS[quartet]}" "${MRPS[haproxy]}") (target >= 1), p99 $(ratio "${MP99[quartet]}" "${MP99[haproxy]}") (target <= 1)"
fi
if [ -n "${MRPS[haproxy-full]:-}" ] && [ -n "${MRPS[quartet]:-}" ]; then
  echo "quartet / haproxy-full (HAProxy doing the default policy's work): req/s $(ratio "${MRPS[quartet]}" "${MRPS[haproxy-full]}"), p99 $(ratio "${MP99[quartet]}" "${MP99[haproxy-full]}")"
fi
if [ -n "${MRPS[quartet]:-}" ] && [ -n "${MRPS[quartet-auth]:-}" ]; then
  echo "quartet-auth / quartet: req/s $(ratio "${MRPS[quartet-auth]}" "${MRPS[quartet]}") (target >= 0.90)"
fi
