#!/usr/bin/env bash
# What each pooler of bench/sql.sh costs per pgbench transaction, measured on the pooler
# process itself: user and system CPU time per transaction (from /proc/PID/stat), and the
# share of the machine left idle during the run (from /proc/stat). It says where a
# pooler's time goes (user space, or the kernel's socket work that every pooler pays the
# same), and whether the run was bound by CPU at all; bench/sql.sh says which is faster.
#
#   bash bench/sql-cpu.sh                               # -S -c 8, then -S -C -c 8
#   ROUNDS=5 DURATION=10 CASES="C8" bash bench/sql-cpu.sh
#   QUARTET=target/release/quartet bash bench/sql-cpu.sh   # no build
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
POOL=${POOL:-20}
BASE_PORT=${BASE_PORT:-16932}
MAX_CLIENTS=1000
. bench/sql-env.sh
start_poolers

# utime and stime of process $1, in clock ticks.
proc_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Idle and total ticks of the whole machine.
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }
hz=$(getconf CLK_TCK)

names=(pgbouncer quartet)
ports=("$PGB" "$QRT")
cases=("S8:-S -c 8 -j 2" "C8:-S -C -c 8 -j 2")
pick_cases

declare -A USER SYS IDLE TPS
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(0 1); else order=(1 0); fi
  for c in "${cases[@]}"; do
    label=${c%%:*}; args=${c#*:}
    for i in "${order[@]}"; do
      n=${names[$i]} pid=${pids[$i]}
      read -r u0 s0 < <(proc_ticks "$pid")
      read -r i0 t0 < <(machine_ticks)
      # shellcheck disable=SC2086
      out=$(pgbench -n -h 127.0.0.1 -p "${ports[$i]}" -U postgres -T "$DURATION" $args "$DB" 2>&1) || {
        echo "pgbench failed through $n:" >&2; echo "$out" >&2; exit 1; }
      read -r u1 s1 < <(proc_ticks "$pid")
      read -r i1 t1 < <(machine_ticks)
      tx=$(awk -F': ' '/number of transactions actually processed/ {print $2 + 0}' <<<"$out")
      tps=$(awk '/^tps/ {print $3}' <<<"$out")
      [ "${tx:-0}" -gt 0 ] || { echo "no transactions through $n" >&2; exit 1; }
      read -r us ss idle < <(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v tx="$tx" -v hz="$hz" \
        -v i=$((i1 - i0)) -v t=$((t1 - t0)) \
        'BEGIN { printf "%.1f %.1f %.2f\n", u * 1e6 / hz / tx, s * 1e6 / hz / tx, (t > 0 ? i / t : 0) }')
      printf 'round %d %-3s %-10s %8.0f tps  user %6.1f us/tx  system %6.1f us/tx  machine idle %.2f\n' \
        "$r" "$label" "$n" "$tps" "$us" "$ss" "$idle"
      USER[$label.$n]="${USER[$label.$n]:-} $us"; SYS[$label.$n]="${SYS[$label.$n]:-} $ss"
      IDLE[$label.$n]="${IDLE[$label.$n]:-} $idle"; TPS[$label.$n]="${TPS[$label.$n]:-} $tps"
    done
  done
done

. bench/stats.sh
echo
echo "median of $ROUNDS rounds, pgbench -T $DURATION, pool size $POOL, $(nproc) cores; CPU of the pooler process per transaction"
printf '%-4s %-10s %9s %12s %14s %13s\n' case way tps user_us/tx system_us/tx machine_idle
for c in "${cases[@]}"; do
  label=${c%%:*}
  for n in "${names[@]}"; do
    printf '%-4s %-10s %9.0f %12s %14s %13s\n' "$label" "$n" "$(median <<<"${TPS[$label.$n]}")" \
      "$(median <<<"${USER[$label.$n]}")" "$(median <<<"${SYS[$label.$n]}")" "$(median <<<"${IDLE[$label.$n]}")"
  done
done
