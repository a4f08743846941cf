# shellcheck shell=bash
# What bench/sql.sh and bench/sql-instructions.sh share, sourced by both from the
# repository root: the tools (apt-installed when missing, plus EXTRA_PKGS), PostgreSQL's
# bench database, the release binary (QUARTET, or built), a work directory WORK and the
# two poolers' configs in it, the same pool for both.
#
# In:  POOL, BASE_PORT; MAX_CLIENTS (both poolers' client limit), PARK_AFTER (Quartet's
#      client_park_after), EXTRA_PKGS and EXTRA_TOOLS (more to install and check).
# Out: DB, PSQL, PGBOUNCER, QUARTET, WORK (with pgbouncer.ini, users.txt, quartet.toml),
#      PGB, QRT, QHTTP, QADM (ports).
PGB=$((BASE_PORT + 1)) QRT=$((BASE_PORT + 2)) QHTTP=$((BASE_PORT + 3)) QADM=$((BASE_PORT + 4))
DB=quartet_bench
PSQL=(psql -X -q -h 127.0.0.1 -p 5432 -U postgres)

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=0
for tool in pgbouncer pgbench ${EXTRA_TOOLS:-}; do need "$tool" || missing=1; done
if [ "$missing" -eq 1 ]; then
  echo "installing pgbouncer, pgbench ${EXTRA_PKGS:-}(apt-get)"
  # shellcheck disable=SC2086
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer postgresql-client ${EXTRA_PKGS:-} >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
"${PSQL[@]}" -d postgres -c 'select 1' >/dev/null || {
  echo "PostgreSQL is not reachable on 127.0.0.1:5432 (trust for postgres expected)" >&2; exit 1; }

if [ -z "${QUARTET:-}" ]; then
  echo "building quartet (release)"
  cargo build --release -q -p quartet
  QUARTET=${CARGO_TARGET_DIR:-target}/release/quartet
fi

if ! "${PSQL[@]}" -d postgres -Atc "select 1 from pg_database where datname = '$DB'" | grep -q 1; then
  "${PSQL[@]}" -d postgres -c "create database $DB"
fi
pgbench -q -i -s 1 -h 127.0.0.1 -p 5432 -U postgres "$DB" >/dev/null 2>&1

WORK=$(mktemp -d)
chmod 755 "$WORK"
chown postgres "$WORK"   # PgBouncer runs as postgres and writes its log and pid file there

# PgBouncer refuses to run as root: it runs as the postgres user.
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
$DB = host=127.0.0.1 port=5432 user=postgres dbname=$DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = $MAX_CLIENTS
max_db_connections = $POOL
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
echo '"postgres" ""' > "$WORK/users.txt"
chmod 644 "$WORK"/*

cat > "$WORK/quartet.toml" <<TOML
[server]
listen = "127.0.0.1:$QHTTP"
admin_listen = "127.0.0.1:$QADM"

[[sql.listeners]]
name = "bench"
listen = "127.0.0.1:$QRT"
pool_mode = "transaction"
pool_size = $POOL
max_clients = $MAX_CLIENTS
backends = ["postgres://postgres@127.0.0.1:5432/$DB"]
auth = "trust"
client_park_after = "${PARK_AFTER:-1s}"
TOML

# Starts PgBouncer and Quartet on their ports ($PGB_PID, $QRT_PID), waits until both
# answer, and stops them and removes $WORK when the script exits.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
start_poolers() {
  trap cleanup EXIT
  "$PGBOUNCER" -u postgres "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 & pids+=($!)
  RUST_LOG=warn "$QUARTET" serve --config "$WORK/quartet.toml" >"$WORK/quartet.log" 2>&1 & pids+=($!)
  PGB_PID=${pids[0]} QRT_PID=${pids[1]}
  local port
  for port in "$PGB" "$QRT"; do
    for _ in $(seq 1 100); do
      "${PSQL[@]}" -p "$port" -d "$DB" -Atc 'select 1' >/dev/null 2>&1 && continue 2
      sleep 0.1
    done
    echo "port $port did not answer" >&2; cat "$WORK/quartet.log" "$WORK/pgbouncer.out" >&2; exit 1
  done
}

# Keeps the entries of the array `cases` ("LABEL:pgbench arguments") whose label is one
# of $CASES; all of them when $CASES is empty.
pick_cases() {
  [ -n "${CASES:-}" ] || return 0
  local picked=() c want
  for c in "${cases[@]}"; do
    for want in $CASES; do [ "${c%%:*}" = "$want" ] && picked+=("$c"); done
  done
  cases=("${picked[@]}")
}
