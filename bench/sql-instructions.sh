#!/usr/bin/env bash
# Instructions per pgbench transaction of each pooler, counted by valgrind's callgrind:
# PgBouncer and Quartet in transaction mode with the pool of bench/sql.sh, one after the
# other, each started under callgrind, driven by pgbench for DURATION seconds, then
# stopped; the instructions it ran in user space (its whole life: start-up is a few
# million, lost in a run of hundreds of millions) divided by the transactions pgbench
# made. The count barely moves with machine load (valgrind slows the pooler, not the
# count per transaction), where tps on a 2-core machine moves by 10%. bench/sql.sh is
# still what says how fast a way is; this says what a change to the SQL path costs.
#
#   bash bench/sql-instructions.sh                       # -S -c 8, 12 s each
#   ARGS="-S -C -c 8 -j 2" bash bench/sql-instructions.sh   # per connection
#   ONLY=quartet KEEP=/tmp/cg bash bench/sql-instructions.sh  # keep the callgrind files,
#                                        # for callgrind_annotate --inclusive=yes FILE
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-12}
ARGS=${ARGS:--S -c 8 -j 2}
ONLY=${ONLY:-"pgbouncer quartet"}
POOL=${POOL:-20}
BASE_PORT=${BASE_PORT:-16532}
MAX_CLIENTS=1000
EXTRA_PKGS="valgrind " EXTRA_TOOLS=valgrind
. bench/sql-env.sh
OUT=${KEEP:-$WORK}
mkdir -p "$OUT"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

declare -A PER
for way in $ONLY; do
  file="$WORK/callgrind.$way.out"
  case $way in
    pgbouncer)
      port=$PGB
      # PgBouncer refuses to run as root; its callgrind file goes where postgres may write.
      runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$PGBOUNCER" "$WORK/pgbouncer.ini" >"$WORK/$way.out" 2>&1 &
      ;;
    quartet)
      port=$QRT
      RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$QUARTET" serve --config "$WORK/quartet.toml" >"$WORK/$way.out" 2>&1 &
      ;;
    *) echo "unknown way $way (pgbouncer, quartet)" >&2; exit 2 ;;
  esac
  pid=$!
  for _ in $(seq 1 300); do
    "${PSQL[@]}" -p "$port" -d "$DB" -Atc 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  # shellcheck disable=SC2086
  out=$(pgbench -n -h 127.0.0.1 -p "$port" -U postgres -T "$DURATION" $ARGS "$DB" 2>&1) || {
    echo "pgbench failed through $way:" >&2; echo "$out" >&2; cat "$WORK/$way.out" >&2; exit 1; }
  tx=$(awk -F': ' '/number of transactions actually processed/ {print $2+0}' <<<"$out")
  # SIGINT: PgBouncer's immediate shutdown; Quartet drains (nothing is in flight).
  if [ "$way" = pgbouncer ]; then pkill -INT -f "$WORK/pgbouncer.ini" || true; else kill -TERM "$pid"; fi
  wait "$pid" 2>/dev/null || true
  pid=
  total=
  for _ in $(seq 1 60); do
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$file" 2>/dev/null || true)
    [ -n "$total" ] && break
    sleep 0.5
  done
  [ -n "$total" ] && [ "${tx:-0}" -gt 0 ] || {
    echo "no instruction total or no transactions for $way (tx=${tx:-none})" >&2; cat "$WORK/$way.out" >&2; exit 1; }
  [ "$OUT" != "$WORK" ] && cp "$file" "$OUT/"
  PER[$way]=$((total / tx))
  printf '%-10s %10d transactions %14d instructions %8d per transaction\n' "$way" "$tx" "$total" "${PER[$way]}"
done

echo
echo "user-space instructions per transaction of the pooler (callgrind), pgbench $ARGS -T $DURATION"
for way in $ONLY; do
  if [ -n "${PER[pgbouncer]:-}" ]; then
    printf '%-10s %8d  %5.2f x PgBouncer\n' "$way" "${PER[$way]}" "$(awk -v a="${PER[$way]}" -v b="${PER[pgbouncer]}" 'BEGIN{print a/b}')"
  else
    printf '%-10s %8d\n' "$way" "${PER[$way]}"
  fi
done
