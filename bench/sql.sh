#!/usr/bin/env bash
# SQL channel benchmark: pgbench in one run, three ways, alternating, several rounds:
#   direct (PostgreSQL on 127.0.0.1:5432), PgBouncer (transaction mode) and Quartet
#   (transaction mode), the same pool size for both poolers and trust auth everywhere
#   (so the -C case measures pooling, not SCRAM's key stretching in pgbench).
# Cases: select-only (-S) with 8 and 64 clients, and -S -C (a new connection per
# transaction) with 8 clients. Prints tps and average latency per way and the ratios.
# Then the resident memory (VmRSS) of PgBouncer and of Quartet holding IDLE idle
# logged-in client connections (bench/pg_idle.py), and the memory per idle client.
#
#   bash bench/sql.sh                         # 3 rounds of 10 s per way and case
#   ROUNDS=1 DURATION=5 IDLE=2000 bash bench/sql.sh
#   CASES="C8" ROUNDS=6 IDLE=0 bash bench/sql.sh   # one case only (S8, S64, C8)
#   IDLE=0 bash bench/sql.sh                  # throughput only, no memory measurement
#   ROUNDS=0 QUARTET=/tmp/quartet-before bash bench/sql.sh   # memory only, a given binary
#   SETTLE=3: seconds between the idle clients' login and the reading of VmRSS
#   PARK_AFTER=0s: Quartet's client_park_after ("0s": idle clients are never parked)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
POOL=${POOL:-20}
IDLE=${IDLE:-10000}
BASE_PORT=${BASE_PORT:-16432}
MAX_CLIENTS=$((IDLE + 1000))
# Each pooler holds IDLE client sockets, the idle script as many.
ulimit -n "$((IDLE * 2 + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
. bench/sql-env.sh
start_poolers

# pgbench output -> "tps latency_ms"
run_pgbench() {
  local port=$1; shift
  local out
  # The direct way with 64 clients needs 64 of PostgreSQL's max_connections, which
  # other users of a shared server may hold: a failed run is reported and left out.
  if ! out=$(pgbench -n -h 127.0.0.1 -p "$port" -U postgres -T "$DURATION" "$@" "$DB" 2>&1); then
    echo "pgbench failed on port $port (left out): $(grep -m1 -i error <<<"$out")" >&2
    echo "- -"; return
  fi
  awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} END {print tps, lat}' <<<"$out"
}

declare -A TPS LAT
names=(direct pgbouncer quartet)
ports=(5432 $PGB $QRT)
cases=("S8:-S -c 8 -j 2" "S64:-S -c 64 -j 2" "C8:-S -C -c 8 -j 2")
# CASES="C8" (or "S8 C8"): only those cases.
pick_cases
for r in $(seq 1 "$ROUNDS"); do
  # The two poolers take turns at going first: a way that runs right after the other
  # meets what that one left (with -C, some 20,000 sockets in TIME_WAIT).
  if [ $((r % 2)) -eq 1 ]; then order=(0 1 2); else order=(0 2 1); fi
  for c in "${cases[@]}"; do
    label=${c%%:*}; args=${c#*:}
    for i in "${order[@]}"; do
      n=${names[$i]}
      # shellcheck disable=SC2086
      read -r tps lat < <(run_pgbench "${ports[$i]}" $args)
      [ "$tps" = "-" ] && continue
      printf 'round %d %-4s %-10s %10.0f tps  latency %7.3f ms\n' "$r" "$label" "$n" "$tps" "$lat"
      TPS[$label.$n]="${TPS[$label.$n]:-} $tps"; LAT[$label.$n]="${LAT[$label.$n]:-} $lat"
    done
  done
done

if [ "$ROUNDS" -gt 0 ]; then
# (`grep -v` fails on no input: with pipefail and -e, a way whose every run failed
# would end the script before the table.)
. bench/stats.sh
echo
echo "median of $ROUNDS rounds, pgbench -T $DURATION, pool size $POOL, $(nproc) cores"
printf '%-5s %-10s %10s %10s %9s %12s\n' case way tps lat_ms /direct /pgbouncer
for c in "${cases[@]}"; do
  label=${c%%:*}
  d=$(median <<<"${TPS[$label.direct]:-}"); b=$(median <<<"${TPS[$label.pgbouncer]:-}")
  for n in "${names[@]}"; do
    t=$(median <<<"${TPS[$label.$n]:-}"); l=$(median <<<"${LAT[$label.$n]:-}")
    printf '%-5s %-10s %10.0f %10.3f %9s %12s\n' "$label" "$n" "$t" "$l" "$(ratio "$t" "$d")" "$(ratio "$t" "$b")"
  done
done
for c in "${cases[@]}"; do
  label=${c%%:*}
  echo "$label quartet / pgbouncer round by round: $(paired "${TPS[$label.quartet]:-}" "${TPS[$label.pgbouncer]:-}")"
done
fi

# Resident memory with IDLE idle clients.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
idle_rss() {
  local port=$1 pid=$2 before after ready
  before=$(rss_kb "$pid")
  coproc IDLER { python3 bench/pg_idle.py 127.0.0.1 "$port" "$IDLE" postgres "$DB"; }
  read -r ready _ <&"${IDLER[0]}" || { echo "idle clients failed on port $port" >&2; exit 1; }
  # Settle: Quartet parks a client quiet for client_park_after (1 s by default), so
  # the last clients to log in are parked too (PgBouncer is measured the same way).
  sleep "${SETTLE:-3}"
  after=$(rss_kb "$pid")
  echo >&"${IDLER[1]}"
  wait "$IDLER_PID" 2>/dev/null || true
  echo "$before $after"
}
if [ "$IDLE" -eq 0 ]; then exit 0; fi   # IDLE=0: no memory measurement
echo
read -r pb_before pb_after < <(idle_rss "$PGB" "$PGB_PID")
read -r q_before q_after < <(idle_rss "$QRT" "$QRT_PID")
echo "resident memory with $IDLE idle clients (VmRSS, KiB): before, with, per client"
printf '%-10s %10d %10d %10.2f\n' pgbouncer "$pb_before" "$pb_after" "$(awk -v a="$pb_after" -v b="$pb_before" -v n="$IDLE" 'BEGIN{print (a-b)/n}')"
printf '%-10s %10d %10d %10.2f\n' quartet "$q_before" "$q_after" "$(awk -v a="$q_after" -v b="$q_before" -v n="$IDLE" 'BEGIN{print (a-b)/n}')"
